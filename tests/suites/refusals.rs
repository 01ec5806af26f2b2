//! Roots and images that do not fit are refused before anything changes.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use fixtures::{BASE_IMAGE, Fixtures, MIGRATION_IMAGE, ScratchRoot, serial, show, tree_checksum};

/// Runs `migrate run` on `root` with `image`; asserts exit 2, one line on
/// stderr containing `expect`, and a byte-identical root.
fn assert_refused(root: &Path, image: &str, expect: &str) {
    let f = Fixtures::get();
    let before = tree_checksum(root).unwrap();
    let out = f
        .migrate()
        .args(["run", "--root"])
        .arg(root)
        .args(["--image", image])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in {stderr}");
    assert_eq!(tree_checksum(root).unwrap(), before, "the root changed");
}

fn with_os_release(f: &Fixtures, text: &str) -> ScratchRoot {
    let root = f.copy_root(&f.bookworm).unwrap();
    let path = root.join("usr/lib/os-release");
    std::fs::write(path, text).unwrap();
    root
}

#[test]
fn an_already_upgraded_root_is_refused_unchanged() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.trixie).unwrap();
    assert_refused(&root.path, MIGRATION_IMAGE, "already is debian:13");
}

#[test]
fn a_root_of_another_distribution_or_release_is_refused_unchanged() {
    let _serial = serial();
    let f = Fixtures::get();
    let ubuntu = with_os_release(
        f,
        "ID=ubuntu\nVERSION_ID=\"24.04\"\nPRETTY_NAME=\"Ubuntu 24.04 LTS\"\n",
    );
    assert_refused(&ubuntu.path, MIGRATION_IMAGE, "the root is ubuntu:24.04");
    let bullseye = with_os_release(
        f,
        "ID=debian\nVERSION_ID=\"11\"\nVERSION_CODENAME=bullseye\n",
    );
    assert_refused(&bullseye.path, MIGRATION_IMAGE, "upgrades only debian:12");
    let unknown = with_os_release(f, "NAME=\"Something\"\n");
    assert_refused(
        &unknown.path,
        MIGRATION_IMAGE,
        "the root is linux (Something)",
    );
}

#[test]
fn an_image_that_is_not_a_migration_image_is_refused_unchanged() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    assert_refused(&root.path, BASE_IMAGE, "is not a migration image");
    assert_refused(
        &root.path,
        "localhost/migrate-test/no-such-image:1",
        "does not exist",
    );
}

#[test]
fn running_as_an_ordinary_user_is_an_environment_error() {
    let f = Fixtures::get();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&f.migrate)
        .args(["run", "--root", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as root"));
}

//! zypper and dnf upgrades of TestOS roots from release 1 to release 2, with
//! the real package managers against real repositories on loopback HTTP.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use fixtures::rpm::{self, Flavor, RepoServer};
use fixtures::{Fixtures, dropin, report, serial, show, tree_checksum_except};

/// What "the root is unchanged" ignores: caches, logs, migrate's own state,
/// the tmpfs-backed /run and /tmp, and the rpm database files (sqlite touches
/// them on read); packages are compared with `rpm -qa` instead.
const VOLATILE: &[&str] = &[
    "var/cache",
    "var/log",
    "var/lib/migrate",
    "run",
    "tmp",
    "usr/lib/sysimage/rpm",
];

struct TestRoot {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

/// A TestOS 1 root of `flavor` with an edited config file, whose plan points
/// the upgrade at `release` of `server`.
fn testos_root(f: &Fixtures, flavor: Flavor, server: &RepoServer, release: &str) -> TestRoot {
    rpm::build_image(f, flavor).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("testos-")
        .tempdir_in(&f.scratch)
        .unwrap();
    let path = dir.path().join("root");
    rpm::bootstrap(f, flavor, server, &path).unwrap();
    let conf = path.join("etc/base-tools.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("local=edited\n");
    std::fs::write(&conf, text).unwrap();
    // zypper roots check their repository's signature (see
    // rpm::bootstrap); the dnf ones do not.
    let gpgcheck = match flavor {
        Flavor::Zypper => "",
        Flavor::Dnf => "gpgcheck = false\n",
    };
    dropin(
        &path,
        "50-repositories.toml",
        &format!(
            "[[step]]\nid = \"upgrade-packages\"\n\n[[step.repositories]]\nid = \"testos\"\nurl = \"{}\"\n{gpgcheck}",
            server.release(release)
        ),
    )
    .unwrap();
    TestRoot { _dir: dir, path }
}

fn server(f: &Fixtures) -> RepoServer {
    RepoServer::start(&rpm::repositories(&f.cache).unwrap()).unwrap()
}

fn migrate_run(f: &Fixtures, flavor: Flavor, root: &Path) -> std::process::Output {
    f.migrate()
        .args(["run", "--image", flavor.image(), "--root"])
        .arg(root)
        .output()
        .unwrap()
}

/// The run log, for assertion messages.
fn log(root: &Path) -> String {
    std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap_or_default()
}

fn state(root: &Path) -> (String, Vec<String>) {
    (
        tree_checksum_except(root, VOLATILE).unwrap(),
        rpm::installed(root).unwrap(),
    )
}

fn upgrades_to_release_2(flavor: Flavor) {
    let _serial = serial();
    let f = Fixtures::get();
    let server = server(f);
    let root = testos_root(f, flavor, &server, "2");
    // Three vendors' repositories beside TestOS's, their packages
    // installed: release 1 only (disabled, its package kept), every
    // release through $releasever (switched), and one a vendor map moves.
    let u = &server.url;
    let repo_dir = std::path::Path::new(flavor.repo_file()).parent().unwrap();
    let vendors_repo = root.path.join(repo_dir).join("vendors.repo");
    std::fs::write(
        &vendors_repo,
        format!(
            "[vendor-a]\nname=Vendor A\nbaseurl={u}/vendor-a/$releasever/\nenabled=1\ntype=rpm-md\ngpgcheck=0\n\n\
             [vendor-b]\nname=Vendor B\nbaseurl={u}/vendor-b/$releasever/\nenabled=1\ntype=rpm-md\ngpgcheck=0\n\n\
             [vendor-c]\nname=Vendor C\nbaseurl={u}/vendor-c/old/\nenabled=1\ntype=rpm-md\ngpgcheck=0\n"
        ),
    )
    .unwrap();
    // dnf: a second repository of TestOS that no plan names, told to be the
    // distribution's by its key file, which holds the key the image names.
    let updates_repo = root.path.join(repo_dir).join("testos-updates.repo");
    if flavor == Flavor::Dnf {
        let key = root.path.join("etc/pki/rpm-gpg/RPM-GPG-KEY-testos");
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("images/testos-dnf/keys/RPM-GPG-KEY-testos"),
            &key,
        )
        .unwrap();
        std::fs::write(
            &updates_repo,
            format!(
                "[testos-updates]\nname=TestOS updates\nbaseurl={u}/$releasever/\nenabled=1\ngpgcheck=0\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-testos\n"
            ),
        )
        .unwrap();
    }
    let repos = rpm::repositories(&f.cache).unwrap();
    let mut install = vec!["-i".to_string()];
    for (dir, name, version) in rpm::VENDOR_REPOSITORIES {
        if version == "1.0" {
            install.push(
                repos
                    .join(dir)
                    .join(format!("{name}-{version}-1.noarch.rpm"))
                    .display()
                    .to_string(),
            );
        }
    }
    let args: Vec<&str> = install.iter().map(String::as_str).collect();
    let out = rpm::rpm(&root.path, &args).unwrap();
    assert!(out.status.success(), "{}", show(&out));
    dropin(
        &root.path,
        "55-vendors.toml",
        &format!(
            "[[step]]\nid = \"upgrade-packages\"\nvendors = [{{ vendor = \"Vendor C\", match = \"{u}/vendor-c/old\", url = \"{u}/vendor-c/new/\" }}]\n"
        ),
    )
    .unwrap();
    // dnf's plan removes what release 2 no longer has (but the vendor's
    // package it keeps); zypper's lists it.
    let remove = flavor == Flavor::Dnf;
    if remove {
        dropin(
            &root.path,
            "60-obsolete.toml",
            "[[step]]\nid = \"verify-release\"\nremove_obsolete = true\nkeep = [\"vendor-a\"]\n",
        )
        .unwrap();
    }
    let out = migrate_run(f, flavor, &root.path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let os = std::fs::read_to_string(root.path.join("etc/os-release")).unwrap();
    assert!(os.contains("VERSION_ID=\"2\""), "{os}");
    let installed = rpm::installed(&root.path).unwrap();
    assert!(
        installed.contains(&"base-tools-2.0-1".to_string()),
        "{installed:?}"
    );
    assert!(
        installed.contains(&"libfoo-2.0-1".to_string()),
        "{installed:?}"
    );
    assert!(
        installed.contains(&"newtool-2.0-1".to_string()),
        "renamed through Obsoletes: {installed:?}"
    );
    assert!(
        !installed.iter().any(|p| p.starts_with("oldtool-")),
        "{installed:?}"
    );

    // rpm -Va: nothing but the config file edited on purpose.
    let verify = rpm::rpm(&root.path, &["-Va"]).unwrap();
    let changes = String::from_utf8_lossy(&verify.stdout);
    for line in changes.lines() {
        assert!(
            line.ends_with(" c /etc/base-tools.conf"),
            "unexpected change: {line}\n{changes}"
        );
    }
    let conf = std::fs::read_to_string(root.path.join("etc/base-tools.conf")).unwrap();
    assert_eq!(
        conf, "setting=1\nlocal=edited\n",
        "the edited config is kept"
    );
    let new = std::fs::read_to_string(root.path.join("etc/base-tools.conf.rpmnew")).unwrap();
    assert_eq!(new, "setting=2\n", "the new config is beside it");

    let repo = std::fs::read_to_string(root.path.join(flavor.repo_file())).unwrap();
    assert!(
        repo.contains(&format!("baseurl={}", server.release("2"))),
        "{repo}"
    );
    let r = report(&root.path).unwrap();
    assert_eq!(r["result"], "succeeded", "{r:#}");
    // Release 2 no longer has `dropped`, and vendor-a's repository was
    // disabled: both listed (and what stays installed warned of).
    assert!(
        log(&root.path).contains("installed, in no repository of testos:2: dropped vendor-a\n"),
        "{}",
        log(&root.path)
    );
    let finding = |id: &str| fixtures::finding(&r, id);
    let obsolete = finding("obsolete-packages").unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(obsolete["severity"], "warning");
    let listed = obsolete["message"].as_str().unwrap();
    let run_log = log(&root.path);
    if remove {
        assert!(listed.ends_with("get no updates: vendor-a"), "{obsolete}");
        assert!(
            run_log.contains("vendor-a: kept (the plan's `keep`)\n")
                && run_log.contains("removed, as the plan's remove_obsolete says: dropped\n"),
            "{run_log}"
        );
        assert!(
            !installed.iter().any(|p| p.starts_with("dropped-")),
            "{installed:?}"
        );
    } else {
        assert!(
            listed.ends_with("get no updates: dropped, vendor-a"),
            "{obsolete}"
        );
        assert!(
            installed.contains(&"dropped-1.0-1".to_string()),
            "{installed:?}"
        );
    }
    // The vendors' repositories as decided, and their packages.
    for p in ["vendor-a-1.0-1", "vendor-b-2.0-1", "vendor-c-2.0-1"] {
        assert!(installed.contains(&p.to_string()), "{p} in {installed:?}");
    }
    if flavor == Flavor::Dnf {
        let line = format!(
            "/{} [testos-updates] {u}/$releasever/: the distribution's; as the plan's repositories and release version say",
            repo_dir.join("testos-updates.repo").display()
        );
        assert!(run_log.contains(&line), "{line}\n{run_log}");
    }
    let shown = format!("/{}", repo_dir.join("vendors.repo").display());
    for line in [
        format!(
            "{shown} [vendor-a] {u}/vendor-a/$releasever/: third-party (no signing key of the distribution); disabled: it does not answer for release 2"
        ),
        format!(
            "{shown} [vendor-b] {u}/vendor-b/$releasever/: third-party (no signing key of the distribution); switched to release 2 ($releasever)"
        ),
        format!(
            "{shown} [vendor-c] {u}/vendor-c/old/: third-party (no signing key of the distribution); mapped by the Vendor C vendor map to {u}/vendor-c/new/"
        ),
    ] {
        assert!(run_log.contains(&line), "{line}\n{run_log}");
    }
    let vendors = std::fs::read_to_string(&vendors_repo).unwrap();
    assert!(
        vendors.contains("[vendor-a]\n# migrate: migration ")
            && vendors.contains(
                " to release 2: disabled, it does not answer for release 2\nname=Vendor A\n"
            )
            && vendors.contains("/vendor-a/$releasever/\nenabled=0\n")
            && vendors.contains(&format!("baseurl={u}/vendor-c/new/\n"))
            && vendors.contains("/vendor-b/$releasever/\nenabled=1\n"),
        "{vendors}"
    );
    let disabled = finding("repositories.third-party").unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(
        disabled["message"],
        format!(
            "1 third-party repositories will be disabled in the cutover: {shown} [vendor-a] {u}/vendor-a/$releasever/ (it does not answer for release 2)"
        )
    );
    // Before anything changed, the third-party check named each vendor's
    // package with what the upgrade would do to it, and the package no
    // repository of release 2 has.
    let packages = finding("third-party.packages").unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(
        packages["message"],
        "4 installed packages are not from the distribution: vendor-a (kept at 1.0-1), vendor-b (upgraded to 2.0-1 from vendor-b), vendor-c (upgraded to 2.0-1 from vendor-c), dropped (kept at 1.0-1: no repository of release 2 has it)",
        "{packages}"
    );
    // The kept configuration, its new version beside it.
    let drift = finding("config-drift").unwrap_or_else(|| panic!("{r:#}"));
    assert!(
        drift["message"]
            .as_str()
            .unwrap()
            .ends_with(": /etc/base-tools.conf (new: /etc/base-tools.conf.rpmnew)"),
        "{drift}"
    );
    // The packages were downloaded in the sync phase, into the root's cache.
    let prefetch = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "prefetch")
        .unwrap();
    assert_eq!(prefetch["status"], "succeeded", "{prefetch:#}");
    let held = log(&root.path)
        .lines()
        .find(|l| l.contains("[prefetch]") && l.contains(" holds "))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        !held.is_empty() && !held.contains(" holds 0 packages"),
        "the prefetch downloaded the upgrade's packages: {held:?}"
    );
    if flavor == Flavor::Zypper {
        // The plan's key, and only it, was imported to check the signature.
        assert_eq!(
            trusted_keys(&root.path),
            [format!(
                "gpg-pubkey-{}",
                rpm::TESTOS_KEY[32..].to_ascii_lowercase()
            )],
            "{}",
            log(&root.path)
        );
    }
    let backup = Path::new(&root.path)
        .join("var/lib/migrate/backup")
        .join(r["run_id"].as_str().unwrap())
        .join("upgrade-packages")
        .join(flavor.repo_file());
    let old = std::fs::read_to_string(&backup).unwrap();
    assert!(
        old.contains(&server.release("1")),
        "the old repository file is backed up: {old}"
    );
}

/// The upgrade step's own guarantee: with the solver-running check
/// disabled, the dependency problem stops the download phase, before the
/// repositories are switched or a package changes.
fn unsatisfiable_dependency_fails_naming_the_problem(flavor: Flavor, expect: &str) {
    let _serial = serial();
    let f = Fixtures::get();
    let server = server(f);
    let root = testos_root(f, flavor, &server, "2-broken");
    // Neither the solver-running check nor the prefetch, which would find
    // the problem first.
    dropin(
        &root.path,
        "60-no-estimate.toml",
        "[[step]]\nid = \"disk-space\"\nenabled = false\n\n[[step]]\nid = \"prefetch\"\nenabled = false\n",
    )
    .unwrap();
    let before = state(&root.path);
    let out = migrate_run(f, flavor, &root.path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("step upgrade-packages failed"), "{stderr}");
    assert!(stderr.contains(expect), "the problem is named: {stderr}");
    assert!(
        log(&root.path).contains("libfoo >= 3.0"),
        "the solver's output is in the log"
    );
    assert_eq!(state(&root.path), before, "the root changed");
    let repo = std::fs::read_to_string(root.path.join(flavor.repo_file())).unwrap();
    assert!(
        repo.contains(&server.release("1")),
        "the repositories were not switched: {repo}"
    );
}

/// The documented safety net: `allow_removal` names what the upgrade may
/// remove, and dnf then removes exactly that (the package whose new version
/// cannot be installed) and upgrades the rest.
#[test]
fn dnf_removes_what_allow_removal_names_and_upgrades_the_rest() {
    let _serial = serial();
    let f = Fixtures::get();
    let server = server(f);
    let root = testos_root(f, Flavor::Dnf, &server, "2-broken");
    dropin(
        &root.path,
        "60-allow-removal.toml",
        "[[step]]\nid = \"upgrade-packages\"\nallow_removal = [\"base-tools\"]\n",
    )
    .unwrap();
    let out = migrate_run(f, Flavor::Dnf, &root.path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        show(&out),
        log(&root.path)
    );
    let installed = rpm::installed(&root.path).unwrap();
    assert!(
        !installed.iter().any(|p| p.starts_with("base-tools-")),
        "{installed:?}"
    );
    assert!(
        installed.contains(&"libfoo-2.0-1".to_string()),
        "{installed:?}"
    );
    let os = std::fs::read_to_string(root.path.join("etc/os-release")).unwrap();
    assert!(os.contains("VERSION_ID=\"2\""), "{os}");
}

/// With the default checks, the same problem is found before anything runs:
/// an inhibitor, and the root byte-identical.
fn unsatisfiable_dependency_inhibits_the_run(flavor: Flavor, expect: &str) {
    let _serial = serial();
    let f = Fixtures::get();
    let server = server(f);
    let root = testos_root(f, flavor, &server, "2-broken");
    let before = byte_state(&root.path);
    let out = migrate_run(f, flavor, &root.path);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("inhibitor"), "{stderr}");
    assert!(stderr.contains(expect), "the problem is named: {stderr}");
    assert_eq!(byte_state(&root.path), before, "the root changed");
}

/// Every byte of the root outside the rpm database, and the database's
/// contents (each package with its install time and digest). The database's
/// files are compared by content because SQLite rewrites them on reads (its
/// shared-memory index; a pending write-ahead log is checkpointed by the
/// first reader), as `rpm -q` from the host does too.
fn byte_state(root: &Path) -> (String, String) {
    let files = fixtures::tree_checksum_except(root, &["usr/lib/sysimage/rpm"]).unwrap();
    let db = rpm::rpm(
        root,
        &[
            "-qa",
            "--qf",
            "%{NAME}-%{VERSION}-%{RELEASE} %{INSTALLTIME} %{SIGMD5}\\n",
        ],
    )
    .unwrap();
    (files, String::from_utf8_lossy(&db.stdout).into_owned())
}

/// The signing keys in a root's rpm database (`gpg-pubkey-KEYID`).
fn trusted_keys(root: &Path) -> Vec<String> {
    let out = rpm::rpm(root, &["-q", "gpg-pubkey", "--qf", "%{NAME}-%{VERSION}\\n"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("gpg-pubkey-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn zypper_refuses_a_repository_signed_by_a_key_the_plan_does_not_name() {
    let _serial = serial();
    let f = Fixtures::get();
    let server = server(f);
    // A bad mirror: release 2 with a key of its own beside it.
    let root = testos_root(f, Flavor::Zypper, &server, "2-rogue");
    let before = byte_state(&root.path);
    for verb in ["check", "run"] {
        let out = f
            .migrate()
            .args([verb, "--image", Flavor::Zypper.image(), "--root"])
            .arg(&root.path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{verb}: {}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("Signature verification failed") && stdout.contains("trusted_keys"),
            "{verb}: the refusal says why and what to do: {}",
            show(&out)
        );
        assert_eq!(byte_state(&root.path), before, "{verb}: the root changed");
        assert!(
            trusted_keys(&root.path).is_empty(),
            "{verb}: a key was imported"
        );
    }
}

fn unreachable_repository_mid_run_then_rerun(flavor: Flavor) {
    let _serial = serial();
    let f = Fixtures::get();
    let server = server(f);
    let root = testos_root(f, flavor, &server, "2");
    let before = state(&root.path);
    // Metadata answers, packages do not: the repository goes away mid-run.
    server.fail_packages(true);
    let out = migrate_run(f, flavor, &root.path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&server.url) && stderr.contains(".rpm"),
        "the error names the download that failed: {stderr}\n{}",
        log(&root.path)
    );
    assert_eq!(state(&root.path), before, "the root changed");

    server.fail_packages(false);
    let out = migrate_run(f, flavor, &root.path);
    assert_eq!(out.status.code(), Some(0), "the rerun: {}", show(&out));
    let os = std::fs::read_to_string(root.path.join("etc/os-release")).unwrap();
    assert!(os.contains("VERSION_ID=\"2\""), "{os}");
    assert_eq!(report(&root.path).unwrap()["resumed"], true);
}

#[test]
fn zypper_dup_upgrades_testos_1_to_2_keeping_the_edited_config() {
    upgrades_to_release_2(Flavor::Zypper);
}

#[test]
fn dnf_distro_sync_upgrades_testos_1_to_2_keeping_the_edited_config() {
    upgrades_to_release_2(Flavor::Dnf);
}

#[test]
fn zypper_names_an_unsatisfiable_dependency_and_leaves_the_root_unchanged() {
    unsatisfiable_dependency_fails_naming_the_problem(Flavor::Zypper, "nothing provides");
}

#[test]
fn dnf_names_an_unsatisfiable_dependency_and_leaves_the_root_unchanged() {
    unsatisfiable_dependency_fails_naming_the_problem(Flavor::Dnf, "libfoo >= 3.0");
}

#[test]
fn zypper_dependency_problems_are_inhibitors_when_the_checks_run() {
    unsatisfiable_dependency_inhibits_the_run(Flavor::Zypper, "nothing provides");
}

#[test]
fn dnf_dependency_problems_are_inhibitors_when_the_checks_run() {
    unsatisfiable_dependency_inhibits_the_run(Flavor::Dnf, "libfoo >= 3.0");
}

#[test]
fn zypper_survives_a_repository_that_goes_away_mid_run() {
    unreachable_repository_mid_run_then_rerun(Flavor::Zypper);
}

#[test]
fn dnf_survives_a_repository_that_goes_away_mid_run() {
    unreachable_repository_mid_run_then_rerun(Flavor::Dnf);
}

/// migrate's own `.rpm` installs with rpm into a TestOS root (which has no
/// shell: its scriptlets are rpm's Lua) and runs there; its removal leaves
/// the operator's /etc/migrate.
#[test]
fn the_rpm_installs_into_a_testos_root_and_runs_there() {
    let f = Fixtures::get();
    let rpm_file = &fixtures::packages::packages(f).unwrap().rpm;
    let server = server(f);
    let dir = tempfile::Builder::new()
        .prefix("testos-")
        .tempdir_in(&f.scratch)
        .unwrap();
    let root = dir.path().join("root");
    rpm::bootstrap(f, Flavor::Zypper, &server, &root).unwrap();
    let file = rpm_file.to_str().unwrap();
    let out = rpm::rpm(&root, &["--install", file]).unwrap();
    assert!(out.status.success(), "{}", show(&out));
    fixtures::packages::check_migrate_runs_in(&root).unwrap();
    for path in [
        "usr/lib/systemd/system/migrate-cleanup.service",
        "usr/lib/systemd/system-preset/90-migrate.preset",
        "usr/share/man/man8/migrate.8.gz",
        "usr/share/zsh/site-functions/_migrate",
        "usr/share/fish/vendor_completions.d/migrate.fish",
    ] {
        assert!(root.join(path).is_file(), "{path} missing");
    }
    std::fs::write(root.join("etc/migrate/config.toml"), "enabled = false\n").unwrap();
    let out = rpm::rpm(&root, &["--erase", "migrate"]).unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(!root.join("usr/bin/migrate").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/migrate/config.toml")).unwrap(),
        "enabled = false\n"
    );
}

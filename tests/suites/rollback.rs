//! A failed cutover, then `migrate rollback`: refused while it would put the
//! old release's /etc over the new release's packages, unless asked for
//! with `--etc-only`: then /etc comes back exactly, the rollback says what
//! it could not restore and is partial, and `migrate status` follows.
//!
//! On btrfs (a loop-mounted file system of the test's own): the safety
//! backup is a snapshot (snapper's where the root has it configured), a
//! second one is taken after the cutover, and `migrate rollback` puts a copy
//! of the first in the root's place: every package and file as before, the
//! migration's records kept, the migrated root kept beside it.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use fixtures::btrfs::{Btrfs, bookworm_with_snapshot_tools};
use fixtures::{
    Fixtures, LiveRun, MIGRATION_IMAGE, dropin, report, serial, show, tree_checksum,
    tree_checksum_except,
};

/// What a rollback from a snapshot does not bring back as it was: the
/// migration's records (kept), the snapshots (moved into the root), and
/// the packages the sync phase's prefetch downloaded into apt's cache (the
/// snapshot is taken when the cutover begins, after the sync phase).
const RECORDS: [&str; 4] = [
    ".snapshots",
    "var/lib/migrate",
    "var/log/migrate",
    "var/cache/apt/archives",
];

fn chroot(root: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root's snapper, as on a booted system: the root a mount point, /proc
/// mounted (snapper finds its file system in /etc/mtab).
fn snapper(root: &Path, args: &[&str]) -> String {
    let mount = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount {args:?}: {}", show(&out));
    };
    mount(&["--bind".as_ref(), root.as_os_str(), root.as_os_str()]);
    mount(&[
        "-t".as_ref(),
        "proc".as_ref(),
        "proc".as_ref(),
        root.join("proc").as_os_str(),
    ]);
    let mut all = vec!["snapper", "--no-dbus", "-c", "root"];
    all.extend_from_slice(args);
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(&all)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    for m in [root.join("proc"), root.to_path_buf()] {
        let _ = std::process::Command::new("umount").arg(m).status();
    }
    assert!(out.status.success(), "snapper {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn journal(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("var/lib/migrate/state.json")).unwrap())
        .unwrap()
}

fn version_id(root: &Path) -> String {
    std::fs::read_to_string(root.join("usr/lib/os-release"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

const FAIL_AT_THE_END: &str = r#"
[[step]]
id = "fail-on-purpose"
kind = "command"
phase = "cutover"
command = ["sh", "-c", "echo 'post-upgrade hook failed' >&2; exit 7"]
"#;

#[test]
fn after_packages_changed_rollback_refuses_to_mix_releases_unless_asked_for_etc_alone() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    dropin(&root.path, "90-fail.toml", FAIL_AT_THE_END).unwrap();
    let etc_before = tree_checksum(&root.join("etc")).unwrap();

    let out = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "step fail-on-purpose failed: sh failed (exit status: 7): post-upgrade hook failed"
        ),
        "{stderr}"
    );
    assert_ne!(
        tree_checksum(&root.join("etc")).unwrap(),
        etc_before,
        "the upgrade changed /etc"
    );

    // Another plan on top of the unfinished migration is refused.
    let other = root.path.parent().unwrap().join("other-plan.toml");
    std::fs::write(
        &other,
        "[[step]]\nid = \"only\"\nkind = \"check-package-db\"\nphase = \"check\"\n",
    )
    .unwrap();
    let refused = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--plan"])
        .arg(&other)
        .arg("--root")
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is unfinished and used another plan")
    );

    // The packages are Debian 13's now and the backup is a tar of /etc:
    // rolling back /etc alone would mix two releases. Refused, nothing
    // changed, the way forward and the explicit option named.
    let etc_upgraded = tree_checksum(&root.join("etc")).unwrap();
    let journal_before = std::fs::read(root.join("var/lib/migrate/state.json")).unwrap();
    let out = f
        .migrate()
        .arg("rollback")
        .arg("--root")
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("began changing packages")
            && stderr.contains("debian:12's configuration over debian:13's packages")
            && stderr.contains("`migrate run`")
            && stderr.contains("--etc-only"),
        "{stderr}"
    );
    assert_eq!(tree_checksum(&root.join("etc")).unwrap(), etc_upgraded);
    assert_eq!(
        std::fs::read(root.join("var/lib/migrate/state.json")).unwrap(),
        journal_before,
        "the refusal changed nothing"
    );

    // Asked for by name: /etc restored exactly, the rollback partial.
    let out = f
        .migrate()
        .args(["rollback", "--etc-only", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("partial rollback: /etc is debian:12's again"),
        "{}",
        show(&out)
    );
    assert_eq!(
        tree_checksum(&root.join("etc")).unwrap(),
        etc_before,
        "/etc is exactly as before"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/etc restored from var/lib/migrate/backup/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("packages changed since the backup and were not restored"),
        "the rollback says what it could not restore: {stdout}"
    );
    assert!(stdout.contains("libc6:amd64 2.36"), "{stdout}");

    let status = f
        .migrate()
        .args(["status", "--output", "json", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["migration"]["status"], "rolled_back", "{status:#}");
    assert_eq!(
        status["migration"]["state"], "partly_rolled_back",
        "{status:#}"
    );
    assert_eq!(status["last_run"]["verb"], "rollback");
    assert_eq!(status["last_run"]["result"], "failed");

    // The timer does not start a rolled-back migration again by itself.
    std::fs::write(
        root.join("etc/migrate/config.toml"),
        "enabled = true\nmode = \"run\"\n",
    )
    .unwrap();
    let etc_rolled_back = tree_checksum(&root.join("etc")).unwrap();
    let out = f
        .migrate()
        .args(["--unattended", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is partly rolled back; unattended runs do not start it again by themselves")
            && String::from_utf8_lossy(&out.stderr).contains("`migrate run --force-new`"),
        "{}",
        show(&out)
    );
    assert_eq!(tree_checksum(&root.join("etc")).unwrap(), etc_rolled_back);
    assert_eq!(journal(&root.path)["state"], "partly_rolled_back");
}

#[test]
fn status_reports_per_step_states_during_and_after_a_run_and_a_snapper_root_rolls_back_whole() {
    let _serial = serial();
    let f = Fixtures::get();
    let fs = Btrfs::new(f, "4G").unwrap();
    let tools = bookworm_with_snapshot_tools(f).unwrap();
    let root = fs.root_from(&tools, "root").unwrap();
    std::os::unix::fs::symlink("../proc/self/mounts", root.join("etc/mtab")).unwrap();
    snapper(&root, &["create-config", "/"]);
    let files_before = tree_checksum_except(&root, &RECORDS).unwrap();
    let packages_before = chroot(
        &root,
        &["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
    );
    let status = |root: &std::path::Path| -> serde_json::Value {
        let out = f
            .migrate()
            .args(["status", "--output", "json", "--root"])
            .arg(root)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = status(&root);
    assert!(
        before["migration"].is_null() && before["last_run"].is_null(),
        "{before:#}"
    );

    let mut run = LiveRun::start(f, &["run", "--image", MIGRATION_IMAGE], &root).unwrap();
    run.until(|e| e["event"] == "step_started" && e["step"] == "upgrade-packages")
        .expect("the upgrade started");
    let during = status(&root);
    let state = |s: &serde_json::Value, id: &str| -> String {
        s["migration"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .map(|x| x["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(during["migration"]["status"], "in_progress", "{during:#}");
    assert_eq!(state(&during, "disk-space"), "succeeded");
    assert_eq!(state(&during, "safety-backup"), "succeeded");
    assert_eq!(state(&during, "switch-sources"), "succeeded");
    assert_eq!(state(&during, "upgrade-packages"), "running");
    assert_eq!(state(&during, "verify-release"), "pending");
    assert_eq!(during["last_run"]["result"], "running");
    let human = f
        .migrate()
        .args(["status", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("upgrade-packages       cutover  running"),
        "{human}"
    );

    let (code, stderr) = run.finish().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let after = status(&root);
    assert_eq!(after["migration"]["status"], "completed");
    for id in ["switch-sources", "upgrade-packages", "verify-release"] {
        assert_eq!(state(&after, id), "succeeded", "{id}: {after:#}");
    }
    assert_eq!(after["last_run"]["result"], "succeeded");
    assert_eq!(version_id(&root), "13");

    // The safety backup was snapper's "pre", the end of the cutover its
    // "post", both named after the migration, in the journal and report.
    let id = journal(&root)["migration_id"].as_str().unwrap().to_string();
    let backup = journal(&root)["backup"].clone();
    assert_eq!(backup["method"], "snapper", "{backup:#}");
    let (pre, post) = (
        backup["location"].as_str().unwrap().to_string(),
        backup["post_cutover"].as_str().unwrap().to_string(),
    );
    assert_eq!(report(&root).unwrap()["safety_backup"], backup);
    let list = snapper(&root, &["list"]);
    let row = |number: &str| -> String {
        list.lines()
            .find(|l| {
                l.split('|')
                    .next()
                    .is_some_and(|n| n.trim().trim_end_matches(['*', '+', '-']) == number)
            })
            .unwrap_or_else(|| panic!("snapshot {number} not listed: {list}"))
            .to_string()
    };
    assert!(
        row(&pre).contains("pre") && row(&pre).contains(&format!("migrate {id} safety backup")),
        "{list}"
    );
    assert!(
        row(&post).contains("post")
            && row(&post).contains(&format!("migrate {id} after the cutover")),
        "{list}"
    );

    // The disk-space check counted what the snapshot keeps of the
    // replaced packages into what the upgrade needs.
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    let mb_before = |line: &str, marker: &str| -> f64 {
        let head = &line[..line.find(marker).unwrap()];
        head.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let kept_line = log
        .lines()
        .find(|l| l.contains("the safety backup is a snapshot: the "))
        .unwrap_or_else(|| panic!("no snapshot estimate in the log: {log}"));
    let kept = mb_before(kept_line, " MB in it");
    let need_line = log
        .lines()
        .find(|l| l.contains("MB free, the upgrade needs "))
        .unwrap();
    let need = mb_before(need_line, " MB plus a ");
    assert!(kept > 10.0 && need >= kept, "{kept_line}\n{need_line}");

    // The rollback: Debian 12 with every package and file as before.
    let out = f
        .migrate()
        .args(["rollback", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let kept = fs.mount.join(format!("root.rolled-back-{id}"));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("the migrated root is kept as {}", kept.display())),
        "{}",
        show(&out)
    );
    assert_eq!(version_id(&root), "12");
    assert_eq!(
        chroot(
            &root,
            &["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"]
        ),
        packages_before
    );
    assert_eq!(
        tree_checksum_except(&root, &RECORDS).unwrap(),
        files_before,
        "every file as before the migration"
    );
    // apt's cache holds packages, nothing else.
    for e in std::fs::read_dir(root.join("var/cache/apt/archives")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".deb") || name == "lock" || name == "partial",
            "{name} in the package cache"
        );
    }
    assert_eq!(version_id(&kept), "13", "the migrated root is kept");
    // The snapshots stay with the root: snapper lists them there.
    let list = snapper(&root, &["list"]);
    assert!(
        list.contains(&format!("migrate {id} safety backup")),
        "{list}"
    );
    let rolled = status(&root);
    assert_eq!(rolled["migration"]["status"], "rolled_back", "{rolled:#}");
    assert_eq!(rolled["migration"]["state"], "rolled_back", "{rolled:#}");
    assert_eq!(rolled["last_run"]["verb"], "rollback");
    assert_eq!(rolled["last_run"]["result"], "succeeded");
    // The migration's own records came along: its runs in the journal,
    // its log beside the rollback's.
    assert!(
        journal(&root)["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["verb"] == "run"),
        "{:#}",
        journal(&root)
    );
    assert!(
        !fs.mount.join(".root.migrate-restore").exists(),
        "no copy left behind"
    );
}

#[test]
fn a_btrfs_root_is_rolled_back_from_its_snapshot_and_a_missing_snapshot_changes_nothing() {
    let _serial = serial();
    let f = Fixtures::get();
    let fs = Btrfs::new(f, "3G").unwrap();
    let tools = bookworm_with_snapshot_tools(f).unwrap();
    let root = fs.root_from(&tools, "srv").unwrap();
    let files_before = tree_checksum_except(&root, &RECORDS).unwrap();
    // A cheap cutover that changes the system where an upgrade would.
    let plan = fs.mount.parent().unwrap().join("plan.toml");
    std::fs::write(
        &plan,
        r#"
[[step]]
id = "change-the-system"
kind = "command"
phase = "cutover"
chroot = true
command = ["sh", "-c", "rm /etc/hostname; echo migrated > /etc/motd; mkdir -p /opt/new; echo x > /opt/new/file; rm -r /usr/share/doc/bash"]
"#,
    )
    .unwrap();
    let out = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--plan"])
        .arg(&plan)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let id = journal(&root)["migration_id"].as_str().unwrap().to_string();
    let backup = journal(&root)["backup"].clone();
    assert_eq!(backup["method"], "btrfs", "{backup:#}");
    assert_eq!(backup["location"], format!("/.snapshots/migrate-{id}"));
    assert_eq!(
        backup["post_cutover"],
        format!("/.snapshots/migrate-{id}-post")
    );
    let human = f
        .migrate()
        .args(["status", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(&format!("backup: btrfs at /.snapshots/migrate-{id} ("))
            && human.contains(&format!("after the cutover: /.snapshots/migrate-{id}-post")),
        "{human}"
    );
    assert_eq!(report(&root).unwrap()["safety_backup"], backup);
    let subvolumes = fs.subvolumes().unwrap();
    for s in [
        "srv".to_string(),
        "srv/.snapshots".to_string(),
        format!("srv/.snapshots/migrate-{id}"),
        format!("srv/.snapshots/migrate-{id}-post"),
    ] {
        assert!(subvolumes.contains(&s), "{s}: {subvolumes:?}");
    }
    let migrated = tree_checksum_except(&root, &[".snapshots"]).unwrap();
    assert_ne!(tree_checksum_except(&root, &RECORDS).unwrap(), files_before);

    // The snapshot gone: refused in one line, nothing changed.
    let snapshots = root.join(".snapshots");
    std::fs::rename(
        snapshots.join(format!("migrate-{id}")),
        snapshots.join("elsewhere"),
    )
    .unwrap();
    let out = f
        .migrate()
        .args(["rollback", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the btrfs snapshot /.snapshots/migrate-{id} of migration {id} is gone"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    std::fs::rename(
        snapshots.join("elsewhere"),
        snapshots.join(format!("migrate-{id}")),
    )
    .unwrap();
    assert_eq!(
        tree_checksum_except(&root, &[".snapshots"]).unwrap(),
        migrated,
        "the refusal changed nothing"
    );
    assert_eq!(fs.subvolumes().unwrap(), subvolumes);

    // migrate killed in the middle of the rollback: its container goes on
    // with the copy, the root stays as the migration left it; the next
    // rollback waits for that container, then does it all again.
    let mut killed = LiveRun::start(f, &["rollback"], &root).unwrap();
    killed
        .until(|e| e["event"] == "run_started")
        .expect("the rollback started");
    let killed_run = killed.run_id().unwrap();
    killed.kill_host().unwrap();
    assert_eq!(
        tree_checksum_except(&root, &[".snapshots"]).unwrap(),
        migrated,
        "a killed rollback leaves the root as the migration left it"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let out = loop {
        let out = f
            .migrate()
            .args(["rollback", "--root"])
            .arg(&root)
            .output()
            .unwrap();
        let waiting = out.status.code() == Some(4)
            && String::from_utf8_lossy(&out.stderr).contains("is still running in container");
        if waiting && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(500));
            continue;
        }
        break out;
    };
    f.remove_container(&format!("migrate-{killed_run}"));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        tree_checksum_except(&root, &RECORDS).unwrap(),
        files_before,
        "every file as before the migration"
    );
    let kept = fs.mount.join(format!("srv.rolled-back-{id}"));
    assert_eq!(
        std::fs::read_to_string(kept.join("etc/motd")).unwrap(),
        "migrated\n"
    );
    assert!(
        root.join(format!(".snapshots/migrate-{id}/etc/hostname"))
            .exists()
    );
    assert_eq!(journal(&root)["state"], "rolled_back");
    let report = report(&root).unwrap();
    assert_eq!(report["verb"], "rollback");
    assert_eq!(report["result"], "succeeded");
    // The run that migrated left its log; it is in the restored root,
    // followed by the rollback's.
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    let run_id = journal(&root)["runs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        log.contains(&format!("run {run_id} ended: Succeeded")),
        "the migration's log is kept: {log}"
    );
    assert!(log.contains("rollback "), "{log}");
    let mut expected = vec![
        "srv".to_string(),
        "srv/.snapshots".to_string(),
        format!("srv/.snapshots/migrate-{id}"),
        format!("srv/.snapshots/migrate-{id}-post"),
        format!("srv.rolled-back-{id}"),
    ];
    expected.sort();
    assert_eq!(
        fs.subvolumes().unwrap(),
        expected,
        "nothing else left behind"
    );

    // Rolled back once: a second rollback is refused.
    let again = f
        .migrate()
        .args(["rollback", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("was already rolled back"));
}

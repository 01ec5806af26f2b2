//! The systemd side: the units, the reboot through logind, the first boot
//! after a migration (`migrate-cleanup.service`), unattended runs on a timer
//! and the inhibitor lock — with a real systemd booted in a container from a
//! Debian 12 root that has podman, migrate and its units installed (its
//! `.deb`, by dpkg). Migration containers run inside it, on its own
//! podman. Plus `migrate cleanup` on a root directory, for what it removes
//! from podman, and what the package itself installs and leaves behind.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fixtures::btrfs::Btrfs;
use fixtures::systemd::{BootedRoot, dpkg, fake_release_plan, installed_host, read_journal};
use fixtures::{BASE_IMAGE, Fixtures, MIGRATION_IMAGE, report, serial, show, tree_checksum};
use serde_json::Value;

/// Message ids of migrate's journal entries (runner/src/host/journald.rs).
const STARTED: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c01";
const INHIBITED: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c04";
const REBOOTING: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c05";
const CLEANUP: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c06";

const UNITS: [&str; 3] = [
    "/usr/lib/systemd/system/migrate.service",
    "/usr/lib/systemd/system/migrate.timer",
    "/usr/lib/systemd/system/migrate-cleanup.service",
];

fn field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry[key].as_str().unwrap_or_default()
}

/// Index of the first journal entry matching `pred`, with a readable panic.
fn find(journal: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    journal.iter().position(pred).unwrap_or_else(|| {
        let tail: Vec<String> = journal
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(|e| format!("{}: {}", field(e, "SYSLOG_IDENTIFIER"), field(e, "MESSAGE")))
            .collect();
        panic!(
            "no journal entry {what}; the last ones:\n{}",
            tail.join("\n")
        )
    })
}

fn props(
    booted: &BootedRoot,
    unit: &str,
    names: &[&str],
) -> std::collections::HashMap<String, String> {
    booted.unit(unit, names).unwrap().into_iter().collect()
}

/// Asserts how a oneshot unit's last run ended: its exit status and result.
fn assert_ended(booted: &BootedRoot, unit: &str, status: &str, result: &str) {
    let p = props(booted, unit, &["ExecMainStatus", "Result"]);
    assert_eq!(
        (p["ExecMainStatus"].as_str(), p["Result"].as_str()),
        (status, result),
        "{unit}: {p:?}; the report says: {:?}",
        report(&booted.root).ok().map(|r| r["message"].clone())
    );
}

/// Waits until a oneshot unit has run once (its main process exited).
fn wait_ran(booted: &BootedRoot, unit: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        let p = props(
            booted,
            unit,
            &["ExecMainExitTimestampMonotonic", "ActiveState"],
        );
        if p["ExecMainExitTimestampMonotonic"] != "0" && p["ActiveState"] != "activating" {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{unit} did not run within {timeout:?}: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// What an upgrade would change: the programs, the package database and the
/// package sources.
fn system_state(root: &Path) -> Vec<String> {
    ["usr", "var/lib/dpkg", "etc/apt"]
        .iter()
        .map(|p| tree_checksum(&root.join(p)).unwrap())
        .collect()
}

#[test]
fn an_unattended_check_on_schedule_records_the_inhibitor_and_changes_nothing() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = installed_host(f).unwrap();
    write(
        &root.path,
        "etc/migrate/config.toml",
        &format!("enabled = true\nmode = \"check\"\nimage = \"{MIGRATION_IMAGE}\"\n"),
    );
    // The schedule, made near: two seconds after the timer is enabled.
    write(
        &root.path,
        "etc/systemd/system/migrate.timer.d/soon.conf",
        "[Timer]\nOnCalendar=\nOnActiveSec=2s\nRandomizedDelaySec=0\n",
    );
    let before = system_state(&root.path);
    let booted = BootedRoot::boot(f, &root.path).unwrap();

    let mut verify = vec!["systemd-analyze", "verify"];
    verify.extend(UNITS);
    let out = booted.run(&verify).unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        show(&out)
    );
    assert_eq!(
        booted
            .exec(&[
                "systemctl",
                "is-enabled",
                "migrate.timer",
                "migrate-cleanup.service"
            ])
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["disabled", "enabled"],
        "the timer is shipped disabled; the cleanup is enabled"
    );
    // The cleanup found no migration waiting: its condition kept it off.
    assert_eq!(
        props(&booted, "migrate-cleanup.service", &["ConditionResult"])["ConditionResult"],
        "no"
    );

    booted.load_image(MIGRATION_IMAGE).unwrap();
    let out = booted
        .run(&["systemctl", "enable", "--now", "migrate.timer"])
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    wait_ran(&booted, "migrate.service", Duration::from_secs(180));

    // The container has no network: the target's repositories are
    // unreachable, which inhibits the upgrade.
    assert_ended(&booted, "migrate.service", "3", "exit-code");
    let r = report(&root.path).unwrap();
    assert_eq!(r["verb"], "check", "{r:#}");
    assert_eq!(r["result"], "inhibited", "{r:#}");
    assert_eq!(r["exit_code"], 3);
    let inhibitor = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["severity"] == "inhibitor")
        .unwrap_or_else(|| panic!("no inhibitor in {r:#}"));
    assert_eq!(inhibitor["step"], "repositories");
    let run_id = r["run_id"].as_str().unwrap();

    let journal = booted.journal().unwrap();
    let started = find(&journal, "saying the run started", |e| {
        field(e, "MESSAGE_ID") == STARTED && field(e, "MIGRATE_RUN_ID") == run_id
    });
    let inhibited = find(&journal, "saying a check inhibited the run", |e| {
        field(e, "MESSAGE_ID") == INHIBITED && field(e, "MIGRATE_RUN_ID") == run_id
    });
    assert!(started < inhibited);
    let entry = &journal[inhibited];
    assert_eq!(field(entry, "_SYSTEMD_UNIT"), "migrate.service");
    assert_eq!(field(entry, "MIGRATE_EXIT_CODE"), "3");
    assert!(
        field(entry, "MESSAGE").contains("repositories"),
        "the reason is in the journal: {entry}"
    );

    drop(booted);
    assert_eq!(
        system_state(&root.path),
        before,
        "the check changed the system"
    );
    assert!(!root.join("var/lib/migrate/state.json").exists());
    assert!(!root.join("var/lib/migrate/backup").exists());
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("12"));
}

#[test]
fn while_a_run_changes_the_system_its_inhibitor_lock_is_listed() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = installed_host(f).unwrap();
    write(
        &root.path,
        "etc/migrate/wait.toml",
        r#"description = "waits for /var/tmp/release-me"

[[step]]
id = "wait"
kind = "command"
phase = "sync"
chroot = true
command = ["sh", "-c", "while [ ! -e /var/tmp/release-me ]; do sleep 0.2; done"]
"#,
    );
    let booted = BootedRoot::boot(f, &root.path).unwrap();
    booted.load_image(MIGRATION_IMAGE).unwrap();
    let inhibitors = || {
        booted
            .exec(&["systemd-inhibit", "--list", "--no-legend", "--no-pager"])
            .unwrap()
    };
    assert!(!inhibitors().contains("migrate"), "{}", inhibitors());

    let run = f
        .podman()
        .args(["exec", &booted.name, "migrate", "sync"])
        .args([
            "--image",
            MIGRATION_IMAGE,
            "--plan",
            "/etc/migrate/wait.toml",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let line = loop {
        let list = inhibitors();
        if let Some(l) = list.lines().find(|l| l.contains("migrate")) {
            break l.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no inhibitor of migrate appeared: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[0], "migrate", "{line}");
    assert!(columns.contains(&"shutdown:sleep"), "{line}");
    assert_eq!(columns.last(), Some(&"block"), "{line}");
    assert!(line.contains("migrating / to debian:13"), "{line}");

    std::fs::write(root.join("var/tmp/release-me"), "").unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !inhibitors().contains("migrate"),
        "the lock outlived the run: {}",
        inhibitors()
    );
}

#[test]
fn a_finished_migration_reboots_through_logind_and_its_first_boot_is_checked() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = installed_host(f).unwrap();
    // A cutover that changes the system without reaching the package
    // archives (the booted host has no network).
    write(
        &root.path,
        "etc/migrate/cutover.toml",
        r#"description = "marks the cutover"

[[step]]
id = "mark"
kind = "command"
phase = "cutover"
chroot = true
command = ["touch", "/var/lib/cutover-ran"]

[health]
grace_seconds = 3
units = ["systemd-journald.service", "no-such.service"]
commands = [["test", "-e", "/var/lib/cutover-ran"], ["sh", "-c", "echo not serving >&2; exit 1"]]
ports = ["127.0.0.1:9"]
before_reboot = [["sh", "-c", "test -e /etc/app-ok || { echo 'app: /etc/app-ok is missing' >&2; exit 1; }"]]
"#,
    );
    let booted = BootedRoot::boot(f, &root.path).unwrap();
    booted.load_image(MIGRATION_IMAGE).unwrap();
    let out = booted
        .run(&[
            "migrate",
            "run",
            "--image",
            MIGRATION_IMAGE,
            "--plan",
            "/etc/migrate/cutover.toml",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("`migrate run --reboot`"),
        "{}",
        show(&out)
    );
    assert!(root.join("var/lib/cutover-ran").exists());
    let marker: Value = serde_json::from_slice(
        &std::fs::read(root.join("var/lib/migrate/reboot-pending")).unwrap(),
    )
    .unwrap();
    let run_id = marker["run_id"].as_str().unwrap().to_string();
    assert_eq!(marker["live"], true);
    assert_eq!(
        booted
            .exec(&["systemctl", "is-system-running"])
            .unwrap()
            .trim(),
        "running"
    );

    // A root that would not boot holds the reboot: a kernel without its
    // initrd that the bootloader does not name, an fstab entry naming no
    // device of this machine.
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    write(&root.path, "boot/vmlinuz-6.12.99-test", "kernel");
    write(
        &root.path,
        "boot/grub/grub.cfg",
        "menuentry 'old' {\n linux /boot/vmlinuz-6.1.99-old\n initrd /boot/initrd.img-6.1.99-old\n}\n",
    );
    write(
        &root.path,
        "etc/fstab",
        &format!("{fstab}UUID=00000000-no-such-disk / ext4 defaults 0 1\n"),
    );
    // And an sshd configuration sshd itself refuses.
    write(
        &root.path,
        "etc/ssh/sshd_config.d/broken.conf",
        "NoSuchOption yes\n",
    );
    let out = booted.run(&["migrate", "run", "--reboot"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the reboot is held: / would not boot into"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(booted.running(), "the host rebooted");
    let held = fixtures::report(&root.path).unwrap();
    let problems: Vec<&str> = held["bootable"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(held["bootable"]["kernel"], "6.12.99-test");
    assert_eq!(problems.len(), 6, "{problems:?}");
    assert!(problems[0].starts_with("/boot/initrd.img-6.12.99-test is missing"));
    assert!(problems[1].contains("does not name vmlinuz-6.12.99-test"));
    assert!(problems[3].starts_with("/etc/fstab: UUID=00000000-no-such-disk (for /)"));
    assert!(
        problems[4].starts_with("sshd -t: ") && problems[4].contains("NoSuchOption"),
        "{problems:?}"
    );
    // The plan's own check (`[health] before_reboot`), with what it said.
    assert!(
        problems[5].starts_with("sh -c test -e /etc/app-ok")
            && problems[5].ends_with(": app: /etc/app-ok is missing"),
        "{problems:?}"
    );
    assert_eq!(
        fixtures::state_journal(&root.path)["state"],
        "completed",
        "the migration still waits for its reboot"
    );
    // Fixed: the initrd made, the bootloader naming both, fstab as it was.
    write(&root.path, "boot/initrd.img-6.12.99-test", "initrd");
    write(
        &root.path,
        "boot/grub/grub.cfg",
        "menuentry 'new' {\n linux /boot/vmlinuz-6.12.99-test\n initrd /boot/initrd.img-6.12.99-test\n}\n",
    );
    write(&root.path, "etc/fstab", &fstab);
    std::fs::remove_file(root.join("etc/ssh/sshd_config.d/broken.conf")).unwrap();
    write(&root.path, "etc/app-ok", "");

    // The reboot path: nothing left to run, so migrate asks logind.
    let out = booted.run(&["migrate", "run", "--reboot"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rebooting into"),
        "{}",
        show(&out)
    );
    let bootable = &fixtures::report(&root.path).unwrap()["bootable"];
    assert_eq!(bootable["problems"], serde_json::json!([]), "{bootable}");
    assert!(
        bootable["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "sshd -t: the configuration is valid"),
        "{bootable}"
    );
    assert!(
        bootable["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("sh -c test -e /etc/app-ok")
                && n.ends_with(": the configuration is valid"))),
        "{bootable}"
    );
    booted.wait_stopped(Duration::from_secs(120)).unwrap();
    drop(booted);

    let journal = read_journal(&root.path).unwrap();
    let asked = find(&journal, "of migrate asking for the reboot", |e| {
        field(e, "MESSAGE_ID") == REBOOTING
            && field(e, "SYSLOG_IDENTIFIER") == "migrate"
            && field(e, "MIGRATE_RUN_ID") == run_id
    });
    // logind carries it out, with migrate's wall message as the reason.
    let logind = find(&journal, "of logind rebooting for migrate", |e| {
        field(e, "_COMM") == "systemd-logind"
            && field(e, "MESSAGE").starts_with("System is rebooting")
            && field(e, "MESSAGE").contains(&run_id)
    });
    assert_eq!(field(&journal[logind], "SHUTDOWN"), "reboot");
    // An orderly reboot: systemd stops the system down to reboot.target.
    let target = find(&journal, "of systemd reaching reboot.target", |e| {
        field(e, "_PID") == "1" && field(e, "MESSAGE").starts_with("Reached target reboot.target")
    });
    let stopped = find(&journal, "of systemd stopping logind", |e| {
        field(e, "_PID") == "1" && field(e, "MESSAGE").starts_with("Stopped systemd-logind.service")
    });
    assert!(asked < logind && logind < stopped && stopped < target);
    assert!(report(&root.path).unwrap()["reboot_requested_at"].is_string());
    assert!(root.join("var/lib/migrate/reboot-pending").exists());

    // The first boot: the cleanup runs, and says the plan left the release
    // as it was.
    let booted = BootedRoot::boot(f, &root.path).unwrap();
    assert_ended(&booted, "migrate-cleanup.service", "1", "exit-code");
    let after = &report(&root.path).unwrap()["after_reboot"];
    assert_eq!(after["result"], "failed", "{after:#}");
    assert!(
        after["message"]
            .as_str()
            .unwrap()
            .contains("the root runs debian:12 (Debian GNU/Linux 12 (bookworm)), not debian:13"),
        "{after:#}"
    );
    // The plan's health checks, each with what it found; the failing ones
    // in the verdict.
    let health: Vec<(String, bool, String)> = after["health"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["passed"].as_bool().unwrap(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let check = |name: &str| {
        health
            .iter()
            .find(|c| c.0 == name)
            .unwrap_or_else(|| panic!("{name} not checked: {health:?}"))
            .clone()
    };
    assert_eq!(health.len(), 5, "{health:?}");
    assert_eq!(
        check("unit systemd-journald.service"),
        (
            "unit systemd-journald.service".into(),
            true,
            "active".into()
        )
    );
    assert!(!check("unit no-such.service").1);
    assert!(check("command test -e /var/lib/cutover-ran").1);
    let failing = check("command sh -c echo not serving >&2; exit 1");
    assert!(
        !failing.1 && failing.2.contains("not serving"),
        "{failing:?}"
    );
    let port = check("port 127.0.0.1:9");
    assert!(!port.1 && port.2.contains("refused"), "{port:?}");
    let message = after["message"].as_str().unwrap();
    assert!(
        message.contains("health check unit no-such.service: inactive")
            && message.contains("health check port 127.0.0.1:9")
            && !message.contains("systemd-journald"),
        "{message}"
    );
    assert!(!root.join("var/lib/migrate/reboot-pending").exists());
    let journal = booted.journal().unwrap();
    let verdict = find(&journal, "with the cleanup's verdict", |e| {
        field(e, "MESSAGE_ID") == CLEANUP
    });
    assert_eq!(field(&journal[verdict], "MIGRATE_RESULT"), "failed");
    assert_eq!(
        field(&journal[verdict], "_SYSTEMD_UNIT"),
        "migrate-cleanup.service"
    );
}

/// `podman` in the test environment, checked.
fn podman(f: &Fixtures, args: &[&str]) -> String {
    let out = f.podman().args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn cleanup_removes_the_leftover_containers_and_the_pulled_image_and_nothing_else() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let scratch = tempfile::tempdir_in(&f.scratch).unwrap();
    // An image podman does not have, to be pulled from an archive: the
    // migration image with one more label (so another id).
    let archive = scratch.path().join("migration.tar");
    let tag = "localhost/migrate-test/pulled:1";
    let base = podman(f, &["create", MIGRATION_IMAGE]);
    podman(
        f,
        &[
            "commit",
            "-q",
            "--change",
            "LABEL io.migrate.test=pulled",
            &base,
            tag,
        ],
    );
    podman(f, &["rm", &base]);
    podman(
        f,
        &[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            tag,
        ],
    );
    let pulled_id = podman(f, &["image", "inspect", "-f", "{{.Id}}", tag]);
    podman(f, &["rmi", tag]);
    let reference = format!("oci-archive:{}", archive.display());
    let with_image = |verb: &str| {
        f.migrate()
            .arg(verb)
            .arg("--root")
            .arg(&root.path)
            .args(["--image", &reference])
            .output()
            .unwrap()
    };

    // A check pulls it and, changing nothing, removes it again.
    let out = with_image("check");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !f.image_exists(&pulled_id).unwrap(),
        "the check left its image"
    );

    // A migration pulls it and keeps it until the cleanup.
    let out = with_image("run");
    assert!(out.status.success(), "{}", show(&out));
    assert!(f.image_exists(&pulled_id).unwrap());
    assert_eq!(report(&root.path).unwrap()["image"]["pulled"], true);
    // Run again: the migration is finished and waits for its first boot;
    // nothing runs, and migrate says how to start another.
    let report_before = report(&root.path).unwrap();
    let out = with_image("run");
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("waits for the reboot") && stdout.contains("--force-new"),
        "{stdout}"
    );
    assert_eq!(report(&root.path).unwrap(), report_before);

    // What a crash leaves: a migration container of this root. And what
    // must stay: a container of another root, and one that is not migrate's.
    let root_label = format!("io.migrate.root={}", root.path.display());
    let leftover = podman(
        f,
        &[
            "create",
            "--label",
            &root_label,
            "--label",
            "io.migrate.run-id=crashed",
            &pulled_id,
            "true",
        ],
    );
    let other_root = podman(
        f,
        &[
            "create",
            "--label",
            "io.migrate.root=/srv/elsewhere",
            BASE_IMAGE,
            "true",
        ],
    );
    let unrelated = podman(f, &["create", BASE_IMAGE, "true"]);
    let cleanup = || {
        f.migrate()
            .arg("cleanup")
            .arg("--root")
            .arg(&root.path)
            .output()
            .unwrap()
    };

    let out = cleanup();
    let still = |id: &str| {
        f.podman()
            .args(["container", "exists", id])
            .status()
            .unwrap()
            .success()
    };
    let result = (
        out.status.success(),
        !still(&leftover),
        still(&other_root),
        still(&unrelated),
    );
    for id in [&leftover, &other_root, &unrelated] {
        let _ = f.podman().args(["rm", "-f", id]).output();
    }
    assert_eq!(result, (true, true, true, true), "{}", show(&out));
    assert!(
        !f.image_exists(&pulled_id).unwrap(),
        "the pulled image is still there"
    );
    assert!(f.image_exists(MIGRATION_IMAGE).unwrap());
    assert!(f.image_exists(BASE_IMAGE).unwrap());
    let after = &report(&root.path).unwrap()["after_reboot"];
    assert_eq!(after["result"], "confirmed", "{after:#}");
    let removed_list = after["removed"].to_string();
    assert!(
        removed_list.contains("container") && removed_list.contains("pulled by migrate"),
        "{after:#}"
    );
    assert!(!root.join("var/lib/migrate/reboot-pending").exists());

    // Once only.
    let out = cleanup();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to clean up"));
}

/// What the `.deb` gives a host: the binaries, the cleanup unit enabled and
/// the timer not, `man migrate` (and a page per verb, the formats in
/// section 5), completions bash completes a verb and a flag with; and what
/// its removal leaves: the operator's /etc/migrate and /var/lib/migrate.
#[test]
fn the_deb_installs_pages_completions_and_units_and_its_removal_keeps_the_configuration() {
    let f = Fixtures::get();
    let root = installed_host(f).unwrap();
    let r = &root.path;
    fixtures::packages::check_migrate_runs_in(r).unwrap();
    assert!(r.join("usr/bin/migrate-agent").is_file());
    for recipe in ["backend-switch", "charm-to-snap"] {
        let dir = r.join("usr/share/doc/migrate/examples").join(recipe);
        assert!(
            dir.join("plan.toml").is_file() && dir.join("README.md").is_file(),
            "the recipe {recipe} is where its README says"
        );
    }
    assert!(
        r.join("etc/systemd/system/multi-user.target.wants/migrate-cleanup.service")
            .symlink_metadata()
            .is_ok(),
        "the cleanup unit is not enabled"
    );
    assert!(
        !r.join("etc/systemd/system/timers.target.wants/migrate.timer")
            .exists(),
        "the timer is enabled"
    );

    // `man migrate` renders, from the root's manual.
    let man = |page: &str| {
        std::process::Command::new("man")
            .arg(page)
            .env("MANPATH", r.join("usr/share/man"))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .unwrap()
    };
    for (page, says) in [
        ("migrate", "migrate-run(8)"),
        ("migrate-rollback", "--etc-only"),
        ("migrate-plan", "verify-copy"),
        ("migrate-config", "maintenance_window"),
    ] {
        let out = man(page);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(says),
            "man {page}: {}",
            show(&out)
        );
    }

    // bash completes a verb and a verb's flag.
    let complete = |words: &str| {
        let script = format!(
            "source {}; complete -p migrate >/dev/null || exit 9; \
             COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _migrate migrate \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            r.join("usr/share/bash-completion/completions/migrate")
                .display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(complete("migrate rol").trim(), "rollback");
    assert!(
        complete("migrate run --reb")
            .lines()
            .any(|l| l == "--reboot"),
        "{}",
        complete("migrate run --reb")
    );

    // Removal and purge leave what the operator and migrate wrote.
    write(r, "etc/migrate/config.toml", "enabled = false\n");
    write(r, "var/lib/migrate/state.json", "{}\n");
    for action in ["--remove", "--purge"] {
        let out = dpkg(r, &[action, "migrate"], None).unwrap();
        assert!(out.status.success(), "dpkg {action}: {}", show(&out));
    }
    assert!(!r.join("usr/bin/migrate").exists());
    assert_eq!(
        std::fs::read_to_string(r.join("etc/migrate/config.toml")).unwrap(),
        "enabled = false\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("var/lib/migrate/state.json")).unwrap(),
        "{}\n"
    );
    assert!(
        r.join("etc/systemd/system/multi-user.target.wants/migrate-cleanup.service")
            .symlink_metadata()
            .is_err(),
        "the purged package's unit is still enabled"
    );
}

/// A host whose root is a btrfs subvolume (on a loop-mounted file system of
/// the test's own): its migration's safety backup is a snapshot, and
/// `migrate rollback` makes a writable copy of it the default subvolume, so
/// that the next boot starts the system as it was, with the migration's
/// records. The test's "reboot" boots the file system's default subvolume,
/// as a bootloader without an explicit `subvol=` does.
#[test]
fn the_running_host_rolls_back_into_its_snapshot_at_the_next_boot() {
    let _serial = serial();
    let f = Fixtures::get();
    let installed = installed_host(f).unwrap();
    let fs = Btrfs::new(f, "4G").unwrap();
    let root = fs.root_from(&installed.path, "host").unwrap();
    drop(installed);
    write(&root, "etc/motd", "Debian 12 as it was\n");
    write(
        &root,
        "etc/migrate/cutover.toml",
        r#"description = "changes the system"

[[step]]
id = "change"
kind = "command"
phase = "cutover"
chroot = true
command = ["sh", "-c", "touch /var/lib/cutover-ran; echo migrated > /etc/motd"]
"#,
    );
    let booted = BootedRoot::boot(f, &root).unwrap();
    booted.load_image(MIGRATION_IMAGE).unwrap();
    let out = booted
        .run(&[
            "migrate",
            "run",
            "--image",
            MIGRATION_IMAGE,
            "--plan",
            "/etc/migrate/cutover.toml",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let state: Value =
        serde_json::from_slice(&std::fs::read(root.join("var/lib/migrate/state.json")).unwrap())
            .unwrap();
    let id = state["migration_id"].as_str().unwrap().to_string();
    assert_eq!(state["backup"]["method"], "btrfs", "{state:#}");
    assert!(root.join("var/lib/cutover-ran").exists());

    // The rollback makes the copy the default subvolume, and with
    // --reboot logind reboots into it.
    let out = booted.run(&["migrate", "rollback", "--reboot"]).unwrap();
    let copy = format!("/.snapshots/migrate-{id}-restored");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{copy} is a writable copy of the btrfs snapshot"))
            && stdout.contains("rebooting into the restored system"),
        "{}",
        show(&out)
    );
    booted.wait_stopped(Duration::from_secs(120)).unwrap();
    drop(booted);
    let path = fs.default_subvolume().unwrap();
    assert_eq!(path, format!("host{copy}"));

    // The next boot starts the default subvolume: the system as it was.
    let restored = fs.mount.join(&path);
    let booted = BootedRoot::boot(f, &restored).unwrap();
    assert_eq!(
        std::fs::read_to_string(restored.join("etc/motd")).unwrap(),
        "Debian 12 as it was\n"
    );
    assert!(!restored.join("var/lib/cutover-ran").exists());
    // With the records: the journal says rolled back and keeps the
    // migration's run; the report is the rollback's; no cleanup runs.
    let status: Value = serde_json::from_str(
        &booted
            .exec(&["migrate", "status", "--output", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["migration"]["state"], "rolled_back", "{status:#}");
    assert_eq!(status["last_run"]["verb"], "rollback", "{status:#}");
    assert_eq!(status["last_run"]["result"], "succeeded", "{status:#}");
    let journal: Value = serde_json::from_slice(
        &std::fs::read(restored.join("var/lib/migrate/state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        journal["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["verb"] == "run"),
        "{journal:#}"
    );
    assert_eq!(
        props(&booted, "migrate-cleanup.service", &["ConditionResult"])["ConditionResult"],
        "no"
    );
    // The migrated system is kept as it was left, beside.
    assert!(root.join("var/lib/cutover-ran").exists());

    // The restored host migrates again, with a health check its first boot
    // fails and `on_failed_boot = "revert"`: that boot rolls it back to the
    // pre-migration snapshot and reboots into it by itself.
    write(
        &restored,
        "etc/migrate/config.toml",
        "enabled = true\nmode = \"run\"\non_failed_boot = \"revert\"\n",
    );
    write(
        &restored,
        "etc/migrate/plan.d/50-health.toml",
        "[health]\ngrace_seconds = 2\nunits = [\"the-new-service.service\"]\n",
    );
    let out = booted
        .run(&[
            "migrate",
            "run",
            "--reboot",
            "--image",
            MIGRATION_IMAGE,
            "--plan",
            "/etc/migrate/cutover.toml",
        ])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rebooting into"),
        "{}",
        show(&out)
    );
    booted.wait_stopped(Duration::from_secs(120)).unwrap();
    drop(booted);
    let state: Value = serde_json::from_slice(
        &std::fs::read(restored.join("var/lib/migrate/state.json")).unwrap(),
    )
    .unwrap();
    let second = state["migration_id"].as_str().unwrap().to_string();
    assert_ne!(second, id);
    // The first boot of the migrated system: the cleanup's verdict fails,
    // the revert makes the snapshot's copy the default and reboots.
    let booted = BootedRoot::start(f, &restored).unwrap();
    if let Err(e) = booted.wait_stopped(Duration::from_secs(180)) {
        let said: Vec<String> = read_journal(&restored)
            .unwrap_or_default()
            .iter()
            .filter(|e| field(e, "_SYSTEMD_UNIT") == "migrate-cleanup.service")
            .map(|e| field(e, "MESSAGE").to_string())
            .collect();
        panic!("{e:#}; the cleanup said: {said:#?}");
    }
    drop(booted);
    let path = fs.default_subvolume().unwrap();
    assert_eq!(
        path,
        format!("host{copy}/.snapshots/migrate-{second}-restored")
    );
    let reverted = fs.mount.join(&path);
    let booted = BootedRoot::boot(f, &reverted).unwrap();
    assert_eq!(
        std::fs::read_to_string(reverted.join("etc/motd")).unwrap(),
        "Debian 12 as it was\n"
    );
    let status: Value = serde_json::from_str(
        &booted
            .exec(&["migrate", "status", "--output", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["migration"]["migration_id"], second, "{status:#}");
    assert_eq!(status["migration"]["state"], "reverted", "{status:#}");
    // The failed verdict is in the migration's report, with why and what
    // followed.
    let run_report: Value = {
        let run = status["migration"]["runs"][0]["run_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_default();
        let path = reverted.join(format!("var/log/migrate/report-{run}.json"));
        serde_json::from_slice(
            &std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; status: {status:#}", path.display())),
        )
        .unwrap()
    };
    let after = &run_report["after_reboot"];
    assert_eq!(after["result"], "failed", "{after:#}");
    assert!(
        after["message"]
            .as_str()
            .unwrap()
            .contains("health check unit the-new-service.service: inactive"),
        "{after:#}"
    );
    assert!(
        after["notes"]
            .to_string()
            .contains("on_failed_boot = revert"),
        "{after:#}"
    );
    // Its first boot confirmed the revert, once.
    assert_ended(&booted, "migrate-cleanup.service", "0", "success");
    let log = std::fs::read_to_string(reverted.join("var/log/migrate/migrate.log")).unwrap();
    assert!(
        log.contains(&format!(
            "the revert of migration {second} is confirmed: Debian GNU/Linux 12 (bookworm) runs again"
        )),
        "{log}"
    );
    assert!(!reverted.join("var/lib/migrate/reboot-pending").exists());
    // Not retried by itself: the timer's run refuses and changes nothing.
    let out = booted.run(&["migrate", "--unattended"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unattended runs do not start it again by themselves"),
        "{}",
        show(&out)
    );
    assert!(!reverted.join("var/lib/cutover-ran").exists());
}

/// The FleetLock application id of migrate (runner/src/host/fleetlock.rs).
const FLEETLOCK_APP_ID: &str = "9f47acada360ce6c4804121fa904cb59";

/// A host of a fleet: its own machine id, unattended migration with reboot
/// and a FleetLock server in `group`.
fn fleet_host(f: &'static Fixtures, url: &str) -> fixtures::ScratchRoot {
    let root = installed_host(f).unwrap();
    let machine_id: String = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .replace('-', "");
    write(&root.path, "etc/machine-id", &format!("{machine_id}\n"));
    // The fleet test is about the order of cutovers and reboots, not
    // packages; a file the test lays down inhibits.
    write(
        &root.path,
        "etc/migrate/fleet.toml",
        &fake_release_plan(
            "inhibit",
            "test ! -e /etc/migrate/inhibit || { echo inhibited by the test >&2; exit 1; }",
        ),
    );
    write(
        &root.path,
        "etc/migrate/config.toml",
        &format!(
            "enabled = true\nmode = \"run\"\nimage = \"{MIGRATION_IMAGE}\"\nplan = \"/etc/migrate/fleet.toml\"\nreboot = true\nfleetlock_url = \"{url}\"\nfleetlock_group = \"workers\"\nmetrics_dir = \"/var/lib/node-exporter\"\n"
        ),
    );
    root
}

/// The slot as the root's state journal records it.
fn journal_slot(root: &Path) -> Value {
    fixtures::state_journal(root)["fleetlock"].clone()
}

/// Powers a booted host off and waits until its container ended.
fn power_off(booted: BootedRoot) {
    let _ = booted.run(&["systemctl", "poweroff"]);
    booted.wait_stopped(Duration::from_secs(120)).unwrap();
}

/// Two hosts of one reboot group, one FleetLock slot. The hosts are booted
/// one after the other, as each step needs only one of them (the fleet
/// suite runs several side by side).
#[test]
fn two_hosts_with_one_fleetlock_slot_cut_over_and_reboot_one_after_the_other() {
    use fixtures::fleetlock::{FleetLockServer, Netns};
    let _serial = serial();
    let f = Fixtures::get();
    let netns = Netns::start(f).unwrap();
    let server = FleetLockServer::start(&netns, 1).unwrap();
    let net = netns.net_arg();
    let a_root = fleet_host(f, &server.url());
    let b_root = fleet_host(f, &server.url());
    // The id each host gives is systemd's application-specific machine id.
    let id_of = |h: &BootedRoot| {
        h.exec(&[
            "systemd-id128",
            "machine-id",
            &format!("--app-specific={FLEETLOCK_APP_ID}"),
        ])
        .unwrap()
        .trim()
        .to_string()
    };

    // A takes the slot for a run a check inhibits: it changed nothing and
    // gives the slot straight back.
    let a = BootedRoot::boot_in(f, &a_root.path, &net).unwrap();
    a.load_image(MIGRATION_IMAGE).unwrap();
    let a_id = id_of(&a);
    write(&a_root.path, "etc/migrate/inhibit", "");
    let out = a.run(&["migrate", "--unattended"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let r = report(&a_root.path).unwrap();
    assert_eq!(r["fleetlock"]["state"], "released", "{r:#}");
    assert_eq!(
        r["fleetlock"]["answer"],
        "the run was inhibited and changed nothing"
    );
    std::fs::remove_file(a_root.join("etc/migrate/inhibit")).unwrap();

    // A takes the one slot, cuts over and reboots.
    let out = a.run(&["migrate", "--unattended"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rebooting into"),
        "{}",
        show(&out)
    );
    a.wait_stopped(Duration::from_secs(120)).unwrap();
    drop(a);
    assert!(a_root.join("var/lib/cutover-ran").exists());
    assert_eq!(report(&a_root.path).unwrap()["fleetlock"]["state"], "held");
    assert_eq!(journal_slot(&a_root.path)["state"], "held");

    // B, first with a server that cannot be reached: no slot, no cutover.
    let b = BootedRoot::boot_in(f, &b_root.path, &net).unwrap();
    b.load_image(MIGRATION_IMAGE).unwrap();
    let b_id = id_of(&b);
    assert!(a_id.len() == 32 && a_id != b_id, "{a_id} {b_id}");
    write(
        &b_root.path,
        "etc/migrate/config.d/50-down.toml",
        &format!(
            "fleetlock_url = \"http://127.0.0.1:{}\"\n",
            fixtures::free_port().unwrap()
        ),
    );
    let out = b.run(&["migrate", "--unattended"]).unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no reboot slot from the FleetLock server"),
        "{}",
        show(&out)
    );
    let r = report(&b_root.path).unwrap();
    assert_eq!(r["verb"], "sync", "{r:#}");
    assert_eq!(r["fleetlock"]["state"], "waiting", "{r:#}");
    assert!(
        r["fleetlock"]["answer"]
            .as_str()
            .unwrap()
            .starts_with("not reachable"),
        "{r:#}"
    );
    assert!(!b_root.join("var/lib/cutover-ran").exists());
    std::fs::remove_file(b_root.join("etc/migrate/config.d/50-down.toml")).unwrap();

    // Then with the server, while A holds the slot: refused; B only syncs
    // and keeps running.
    let out = b.run(&["migrate", "--unattended"]).unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let r = report(&b_root.path).unwrap();
    assert_eq!(r["verb"], "sync", "{r:#}");
    assert_eq!(r["fleetlock"]["state"], "waiting", "{r:#}");
    assert!(
        r["fleetlock"]["answer"]
            .as_str()
            .unwrap()
            .contains("failed_lock_semaphore_full"),
        "{r:#}"
    );
    assert_eq!(journal_slot(&b_root.path)["state"], "waiting");
    assert!(!b_root.join("var/lib/cutover-ran").exists());
    assert!(!b_root.join("var/lib/migrate/reboot-pending").exists());
    let metrics =
        fixtures::checked_metrics(&b_root.join("var/lib/node-exporter/migrate.prom")).unwrap();
    assert!(
        metrics.contains("migrate_fleetlock_waiting{group=\"workers\"} 1")
            && metrics.contains("migrate_fleetlock_slot_held{group=\"workers\"} 0"),
        "{metrics}"
    );
    let b_status = b.exec(&["migrate", "status"]).unwrap();
    assert!(b_status.contains("FleetLock slot: waiting"), "{b_status}");
    assert_eq!(
        b.exec(&["systemctl", "is-system-running"]).unwrap().trim(),
        "running"
    );
    power_off(b);

    // A's first boot confirms the migration and gives the slot back.
    let a = BootedRoot::boot_in(f, &a_root.path, &net).unwrap();
    assert_ended(&a, "migrate-cleanup.service", "0", "success");
    let after = &report(&a_root.path).unwrap()["after_reboot"];
    assert_eq!(after["result"], "confirmed", "{after:#}");
    assert!(
        after["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("gave the FleetLock slot back")),
        "{after:#}"
    );
    assert_eq!(journal_slot(&a_root.path)["state"], "released");
    let metrics =
        fixtures::checked_metrics(&a_root.join("var/lib/node-exporter/migrate.prom")).unwrap();
    assert!(
        metrics.contains("migrate_fleetlock_slot_held{group=\"workers\"} 0")
            && metrics.contains("migrate_migration_confirmed 1"),
        "{metrics}"
    );
    power_off(a);

    // Now B gets it, cuts over, reboots, and gives it back in turn.
    let b = BootedRoot::boot_in(f, &b_root.path, &net).unwrap();
    let out = b.run(&["migrate", "--unattended"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rebooting into"),
        "{}",
        show(&out)
    );
    b.wait_stopped(Duration::from_secs(120)).unwrap();
    drop(b);
    let b = BootedRoot::boot_in(f, &b_root.path, &net).unwrap();
    assert_ended(&b, "migrate-cleanup.service", "0", "success");
    assert_eq!(
        report(&b_root.path).unwrap()["after_reboot"]["result"],
        "confirmed"
    );
    assert_eq!(journal_slot(&b_root.path)["state"], "released");
    drop(b);

    // The server's view: every request in the protocol's shape, and B's
    // slot granted only after A gave its slot back.
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.protocol_header && r.group == "workers" && (r.id == a_id || r.id == b_id)),
        "{requests:#?}"
    );
    let seen: Vec<(&str, &str, u16)> = requests
        .iter()
        .map(|r| {
            (
                if r.id == a_id { "a" } else { "b" },
                r.endpoint.as_str(),
                r.status,
            )
        })
        .collect();
    let mut expected = vec![
        ("a", "pre-reboot", 200),
        ("a", "steady-state", 200),
        ("a", "pre-reboot", 200),
    ];
    // Refused, then retried with back-off (three more attempts).
    expected.extend([("b", "pre-reboot", 409); 4]);
    expected.extend([
        ("a", "steady-state", 200),
        ("b", "pre-reboot", 200),
        ("b", "steady-state", 200),
    ]);
    assert_eq!(seen, expected);
    let backoff = requests[6].at - requests[3].at;
    assert!(backoff >= Duration::from_secs(7), "{backoff:?}");
}

//! A live server upgraded from inside itself: a Debian 12 server with a
//! kernel, GRUB on a disk of its own (a loop-backed disk image), nginx
//! serving a page and PostgreSQL 15 holding data, booted with real systemd
//! in a container, its packages through the tests' package proxy. As its
//! operator would: `migrate check`, `migrate sync`, `migrate run --reboot`;
//! then its first boot on Debian 13. The one expensive scenario of the
//! issue, run once with everything asserted on it; the machine's own disks
//! are checked untouched.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fixtures::fleetlock::Netns;
use fixtures::network::Uplink;
use fixtures::server::{self, ServerDisk, real_disks_checksum, server_root};
use fixtures::systemd::{BootedRoot, install_migrate, read_journal};
use fixtures::{Fixtures, MIGRATION_IMAGE, report, serial, show};

/// Message id of the cleanup's verdict (runner/src/host/journald.rs).
const CLEANUP: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c06";

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// nginx's page asked for every 100 ms from inside the hosts' network
/// namespace; each answer a line `TIME ok|fail` (UTC, as the run log's).
struct Probe {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

const PROBE: &str = r#"
import datetime, sys, time, urllib.request
while True:
    t = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    try:
        ok = b"migrate server" in urllib.request.urlopen("http://127.0.0.1/", timeout=1).read()
    except Exception:
        ok = False
    print(t, "ok" if ok else "fail", flush=True)
    time.sleep(0.1)
"#;

impl Probe {
    fn start(netns: &Netns) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", netns.pid))
            .args(["--", "python3", "-c", PROBE])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((t, what)) = line.split_once(' ') {
                    sink.lock().unwrap().push((t.to_string(), what == "ok"));
                }
            }
        });
        Self { child, lines }
    }

    /// Waits until nginx answered.
    fn wait_ok(&self, timeout: Duration) {
        let started = Instant::now();
        while !self.lines.lock().unwrap().iter().any(|(_, ok)| *ok) {
            assert!(started.elapsed() < timeout, "nginx never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The answers from `from` to `to` (times as the probe writes them).
    fn between(&self, from: &str, to: &str) -> Vec<(String, bool)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.as_str() >= from && t.as_str() <= to)
            .cloned()
            .collect()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since midnight of a time as the probe writes it.
fn seconds(t: &str) -> f64 {
    let clock = t.split('T').nth(1).unwrap_or("").trim_end_matches('Z');
    clock
        .split(':')
        .map(|p| p.parse::<f64>().unwrap_or(0.0))
        .fold(0.0, |acc, p| acc * 60.0 + p)
}

/// The longest time without an answer: from the last answer before a run
/// of failures to the first answer after it, in seconds (0 without
/// failures), and when it began.
fn longest_gap(answers: &[(String, bool)]) -> (f64, String) {
    let mut best = (0.0, String::new());
    let mut last_ok: Option<&str> = None;
    let mut failing = false;
    for (t, ok) in answers {
        if *ok {
            if failing && let Some(from) = last_ok {
                let gap = seconds(t) - seconds(from);
                if gap > best.0 {
                    best = (gap, from.to_string());
                }
            }
            last_ok = Some(t);
            failing = false;
        } else {
            failing = true;
        }
    }
    best
}

/// Now, as the probe and the run log write times.
fn now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// psql in the booted server as postgres; its rows.
fn psql(booted: &BootedRoot, db: &str, sql: &str) -> String {
    let out = booted
        .run(&[
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ])
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until `unit` is active in the booted host.
fn wait_active(booted: &BootedRoot, unit: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        let state = booted.exec(&["systemctl", "is-active", unit]).unwrap();
        if state.trim() == "active" {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{unit} is {} after {timeout:?}",
            state.trim()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_live_debian_12_server_upgrades_itself_with_its_kernel_nginx_and_postgresql() {
    let _serial = serial();
    let f = Fixtures::get();
    let disks = real_disks_checksum().unwrap();
    eprintln!("the machine's disks: {disks:?}");
    let netns = Netns::start(f).unwrap();
    let uplink = Uplink::start(f, &netns).unwrap();
    let disk = ServerDisk::new(f, &server_root(f, &uplink.proxy).unwrap()).unwrap();
    let root = disk.root.clone();
    install_migrate(f, &root).unwrap();
    disk.install_bootloader().unwrap();
    let boot_code = disk.boot_area().unwrap();
    write(
        &root,
        "etc/apt/apt.conf.d/01proxy",
        &format!("Acquire::http::Proxy \"{}\";\n", uplink.proxy),
    );
    write(&root, "var/www/html/index.html", "migrate server\n");
    // A conffile the operator edited, which Debian 13 changes: kept, the new
    // one beside it, reported as drift.
    let mut issue = std::fs::read_to_string(root.join("etc/issue")).unwrap();
    issue.push_str("edited by the operator\n");
    write(&root, "etc/issue", &issue);
    write(
        &root,
        "etc/migrate/config.toml",
        "metrics_dir = \"/var/lib/node-exporter\"\n",
    );
    // What the first boot must pass, from a drop-in of the operator's.
    write(
        &root,
        "etc/migrate/plan.d/50-health.toml",
        r#"[health]
grace_seconds = 60
units = ["nginx.service", "ssh.service", "postgresql@17-main.service"]
commands = [["test", "-f", "/etc/debian_version"]]
ports = ["127.0.0.1:80", "127.0.0.1:5432"]
"#,
    );
    let metrics =
        || fixtures::checked_metrics(&root.join("var/lib/node-exporter/migrate.prom")).unwrap();

    let booted = BootedRoot::boot_in(f, &root, &netns.net_arg()).unwrap();
    // debconf names the disk by a /dev/disk/by-id link, as on a real server.
    disk.link_by_id(&booted).unwrap();
    wait_active(
        &booted,
        "postgresql@15-main.service",
        Duration::from_secs(60),
    );
    wait_active(&booted, "nginx.service", Duration::from_secs(60));
    psql(&booted, "postgres", "CREATE DATABASE app");
    psql(
        &booted,
        "app",
        "CREATE TABLE items (id serial PRIMARY KEY, name text); \
         INSERT INTO items (name) SELECT 'item ' || n FROM generate_series(1, 1000) n; \
         CREATE SCHEMA shop; \
         CREATE TABLE shop.orders (id serial PRIMARY KEY, item int REFERENCES items); \
         INSERT INTO shop.orders (item) SELECT n FROM generate_series(1, 250) n",
    );
    booted.load_image(MIGRATION_IMAGE).unwrap();
    let probe = Probe::start(&netns);
    probe.wait_ok(Duration::from_secs(30));
    let started = Instant::now();

    // The operator's three commands.
    let check = booted
        .run(&["migrate", "check", "--image", MIGRATION_IMAGE])
        .unwrap();
    let check_text = show(&check);
    assert!(check.status.success(), "{check_text}");
    assert!(
        check_text.contains("cluster 15/main"),
        "the PostgreSQL cluster is checked: {check_text}"
    );
    let sync = booted
        .run(&["migrate", "sync", "--image", MIGRATION_IMAGE])
        .unwrap();
    assert!(sync.status.success(), "{}", show(&sync));
    let run_from = now();
    let run = booted
        .run(&["migrate", "run", "--reboot", "--image", MIGRATION_IMAGE])
        .unwrap();
    booted
        .wait_stopped(Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}: {}", show(&run)));
    let run_to = now();
    let upgrade_s = started.elapsed().as_secs_f64();
    drop(booted);

    // The run, as the log tells it.
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    let r = report(&root).unwrap();
    assert_eq!(r["result"], "succeeded", "{r:#}\n{}", show(&run));
    let steps: Vec<(&str, &str)> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    for id in [
        "prefetch",
        "upgrade-packages",
        "bootloader",
        "postgresql",
        "verify-release",
    ] {
        assert!(
            steps.contains(&(id, "succeeded")),
            "{id} did not succeed: {steps:?}"
        );
    }
    let cutover = &log[log.find("[upgrade-packages] step started").unwrap()..];
    assert!(
        cutover.contains("Need to get 0 B/"),
        "the cutover downloaded packages after the sync: {}",
        cutover
            .lines()
            .find(|l| l.contains("Need to get"))
            .unwrap_or("(no 'Need to get' line)")
    );
    let grub_installed = format!("GRUB's boot code reinstalled on {}", server::BY_ID);
    for said in [
        grub_installed.as_str(),
        "/boot/grub/grub.cfg regenerated",
        "apt-get dist-upgrade goes on as this run's checks resolved it",
        "cluster 15/main ran on the host: postgresql@15-main.service stopped",
        "cluster 15/main: 2 tables, 1250 rows",
        "cluster 17/main on port 5432: the same 2 tables and 1250 rows as 15/main",
        "cluster 17/main started on the host (postgresql@17-main.service)",
    ] {
        assert!(log.contains(said), "{said}: {log}");
    }
    assert_eq!(r["bootable"]["problems"], serde_json::json!([]), "{r:#}");
    let finding = |id: &str| {
        fixtures::finding(&r, id).unwrap_or_else(|| panic!("no finding {id}: {r:#}"))["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        finding("config-drift").contains("/etc/issue"),
        "{}",
        finding("config-drift")
    );
    // Debian 13 has no PostgreSQL 15 and no 6.1 kernel: both stay, listed.
    let obsolete = finding("obsolete-packages");
    assert!(
        obsolete.contains("postgresql-15") && obsolete.contains("linux-image-6.1."),
        "{obsolete}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/issue")).unwrap(),
        issue
    );

    // nginx kept answering while the host was upgraded: every failed answer
    // falls inside its own package's unpack and configure, if any.
    let answers = probe.between(&run_from, &run_to);
    let reboot_at = r["reboot_requested_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no reboot in the report: {r:#}"))
        .to_string();
    let during: Vec<_> = answers
        .iter()
        .filter(|(t, _)| t.as_str() < reboot_at.as_str())
        .cloned()
        .collect();
    let nginx_window = (
        log.lines()
            .find(|l| l.contains("Unpacking nginx"))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("9999")
            .to_string(),
        // Its postinst (which starts it) runs after dpkg's "Setting up"
        // line, until dpkg's next line.
        log.lines()
            .skip_while(|l| !l.contains("Setting up nginx"))
            .skip(1)
            .find(|l| l.contains("Setting up ") || l.contains("Processing triggers"))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("0000")
            .to_string(),
    );
    let outside: Vec<_> = during
        .iter()
        .filter(|(t, ok)| {
            let in_window = nginx_window.0 <= *t && *t <= nginx_window.1;
            !ok && !in_window
        })
        .collect();
    assert!(
        outside.is_empty(),
        "nginx failed to answer outside its package's unpack..configure {nginx_window:?}: {outside:?}"
    );
    let timings: Vec<String> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {:.1} s",
                s["id"].as_str().unwrap(),
                s["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
            )
        })
        .collect();
    eprintln!("figures: steps: {}", timings.join(", "));
    let (gap, at) = longest_gap(&during);
    eprintln!(
        "figures: check, sync and run --reboot {upgrade_s:.1} s; nginx asked {} times during the run, longest without an answer {gap:.1} s (from {at})",
        during.len()
    );

    assert!(root.join("var/lib/migrate/reboot-pending").exists());
    let m = metrics();
    assert!(
        m.contains("migrate_reboot_pending 1") && m.contains("migrate_migration_confirmed 0"),
        "{m}"
    );
    let migration_run = r["run_id"].clone();

    // The first boot: Debian 13, its kernel named by GRUB, the services up.
    let booted = BootedRoot::boot_in(f, &root, &netns.net_arg()).unwrap();
    let ran = Instant::now();
    loop {
        let p = booted
            .unit(
                "migrate-cleanup.service",
                &["ExecMainExitTimestampMonotonic", "ActiveState"],
            )
            .unwrap();
        let p: std::collections::HashMap<_, _> = p.into_iter().collect();
        if p["ExecMainExitTimestampMonotonic"] != "0" && p["ActiveState"] != "activating" {
            break;
        }
        assert!(ran.elapsed() < Duration::from_secs(180), "{p:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let os_release = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
    assert!(
        os_release.lines().any(|l| l == "VERSION_ID=\"13\""),
        "{os_release}"
    );
    let boot: Vec<String> = std::fs::read_dir(root.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let kernel = boot
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .find(|v| v.starts_with("6.12"))
        .unwrap_or_else(|| panic!("no Debian 13 kernel in /boot: {boot:?}"))
        .to_string();
    assert!(boot.contains(&format!("initrd.img-{kernel}")), "{boot:?}");
    let grub = std::fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap();
    assert!(
        grub.contains(&format!("linux\t/boot/vmlinuz-{kernel}"))
            && grub.contains(&format!("initrd\t/boot/initrd.img-{kernel}")),
        "{grub}"
    );
    assert_ne!(
        disk.boot_area().unwrap(),
        boot_code,
        "GRUB 2.12's boot code on the server's disk"
    );
    let r = report(&root).unwrap();
    assert_eq!(
        r["run_id"], migration_run,
        "the migration's report is finalized"
    );
    assert!(!root.join("var/lib/migrate/reboot-pending").exists());
    let after = r["after_reboot"].clone();
    assert_eq!(after["result"], "confirmed", "{after:#}");
    assert_eq!(after["running"]["version_id"], "13");
    assert_eq!(after["failed_units"], serde_json::json!([]), "{after:#}");
    let health = after["health"].as_array().unwrap();
    assert_eq!(health.len(), 6, "{after:#}");
    assert!(
        health.iter().all(|c| c["passed"] == true),
        "every health check passed: {after:#}"
    );
    assert!(
        health.iter().any(|c| c["check"] == "port 127.0.0.1:5432"
            && c["detail"]
                .as_str()
                .unwrap()
                .contains("accepted a connection")),
        "{after:#}"
    );
    for unit in ["nginx.service", "ssh.service", "postgresql@17-main.service"] {
        wait_active(&booted, unit, Duration::from_secs(30));
    }
    assert_eq!(
        psql(
            &booted,
            "app",
            "SELECT 'items', count(*) FROM items UNION ALL SELECT 'shop.orders', count(*) FROM shop.orders"
        ),
        "items|1000\nshop.orders|250"
    );
    assert_eq!(
        psql(&booted, "postgres", "SHOW server_version_num")[..2],
        *"17"
    );
    let m = metrics();
    assert!(
        m.contains("migrate_reboot_pending 0")
            && m.contains("migrate_migration_confirmed 1")
            && m.contains("state=\"confirmed\""),
        "{m}"
    );
    let (down, _) = longest_gap(&probe.between(&run_from, &now()));
    eprintln!(
        "figures: nginx without an answer over the reboot {down:.1} s (the test harness's container restart and systemd's boot included)"
    );
    drop(booted);

    // Later boots: the cleanup does not run again.
    let booted = BootedRoot::boot_in(f, &root, &netns.net_arg()).unwrap();
    let condition = booted
        .unit("migrate-cleanup.service", &["ConditionResult"])
        .unwrap();
    assert_eq!(
        condition,
        [("ConditionResult".to_string(), "no".to_string())]
    );
    let verdicts: Vec<_> = read_journal(&root)
        .unwrap()
        .into_iter()
        .filter(|e| e["MESSAGE_ID"].as_str() == Some(CLEANUP))
        .collect();
    assert_eq!(verdicts.len(), 1, "the cleanup ran more than once");
    assert_eq!(verdicts[0]["MIGRATE_RESULT"], "confirmed");
    assert_eq!(report(&root).unwrap()["after_reboot"], after);
    drop(booted);
    drop(probe);
    drop(disk);
    assert_eq!(
        real_disks_checksum().unwrap(),
        disks,
        "a real disk of the machine changed"
    );
}

//! A Debian 12 root upgraded to Debian 13 through the migration container,
//! and an Ubuntu 22.04 root to 24.04 with the built-in Ubuntu image: real
//! podman, real apt, real packages.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::process::Stdio;
use std::time::{Duration, Instant};

use fixtures::clusters::{cluster_rows, postgresql_15_with_data};
use fixtures::vendors::{self, VendorRepos};
use fixtures::{Fixtures, LiveRun, MIGRATION_IMAGE, report, serial, show};

const EDITED: &str = "edited locally before the migration\n";

#[test]
fn migrate_run_upgrades_debian_12_to_13_and_keeps_edited_config() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    // /etc/issue is a conffile of base-files that changes between 12 and 13.
    let mut issue = std::fs::read_to_string(root.join("etc/issue")).unwrap();
    issue.push_str(EDITED);
    std::fs::write(root.join("etc/issue"), &issue).unwrap();
    // Three vendors' repositories beside Debian's: one without the target
    // release (disabled, its package kept), one with it (switched, its
    // package upgraded), one whose target a vendor map names (mapped).
    let vendors = VendorRepos::start().unwrap();
    let v = &vendors.url;
    let key = format!("signed-by={}", vendors::KEY);
    std::fs::write(
        root.join("etc/apt/sources.list.d/vendors.list"),
        format!(
            "deb [{key}] {v}/a bookworm main
deb [{key}] {v}/b bookworm main
deb [{key}] {v}/c-old bookworm main
"
        ),
    )
    .unwrap();
    vendors
        .install(&root, &["vendor-a", "vendor-b", "vendor-c"])
        .unwrap();
    // A server's PostgreSQL: Debian 12's (15), its cluster holding data.
    postgresql_15_with_data(&root);

    let child = f
        .migrate()
        .args(["run", "--root"])
        .arg(&root.path)
        .args(["--image", MIGRATION_IMAGE])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("13"));
    root.assert_dpkg_consistent();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/issue")).unwrap(),
        issue
    );
    let shipped = std::fs::read_to_string(root.join("etc/issue.dpkg-dist")).unwrap();
    assert!(
        shipped.contains("13"),
        "the new /etc/issue is beside the kept one: {shipped:?}"
    );

    // The vendors' packages as decided, and the sources that say so.
    let versions = root
        .chroot(&["dpkg-query", "-W", "vendor-a", "vendor-b", "vendor-c"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&versions.stdout),
        "vendor-a\t1.0\nvendor-b\t2.0\nvendor-c\t2.0\n"
    );
    let vendor_sources =
        std::fs::read_to_string(root.join("etc/apt/sources.list.d/vendors.list")).unwrap();
    assert!(
        vendor_sources.ends_with(&format!(
            " to trixie: disabled, it has no trixie suite that answers\n# deb [{key}] {v}/a bookworm main\ndeb [{key}] {v}/b trixie main\ndeb [{key}] {v}/c-new trixie main\n"
        )),
        "{vendor_sources}"
    );

    // The cluster followed the release: 17/main on the port 15/main had,
    // with every row; 15/main kept (stopped, on another port); nothing left
    // running.
    let clusters = root.chroot(&["pg_lsclusters", "-h"]).unwrap();
    let clusters = String::from_utf8_lossy(&clusters.stdout).to_string();
    let lines: Vec<Vec<&str>> = clusters
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{clusters}");
    assert_eq!(lines[0][..4], ["15", "main", "5433", "down"], "{clusters}");
    assert_eq!(lines[1][..4], ["17", "main", "5432", "down"], "{clusters}");
    assert_eq!(
        cluster_rows(&root, "17"),
        "items|1000\nshop.orders|250\n",
        "the rows of the new cluster"
    );

    let report = report(&root.path).unwrap();
    assert_eq!(report["result"], "succeeded", "{report:#}");
    let pg_log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    for line in [
        "cluster 15/main: 2 tables, 1250 rows",
        "cluster 17/main on port 5432: the same 2 tables and 1250 rows as 15/main",
        "kept the old cluster 15/main (port 5433, stopped, started manually only)",
    ] {
        assert!(pg_log.contains(line), "{line}\n{pg_log}");
    }
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["source"]["version_id"], "12");
    assert_eq!(report["target"]["version_id"], "13");
    assert_eq!(report["image"]["reference"], MIGRATION_IMAGE);
    assert!(
        report["image"]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let steps = report["steps"].as_array().unwrap();
    let ids: Vec<&str> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "source-release",
            "package-db",
            "repositories",
            "disk-space",
            "held-packages",
            "third-party",
            "postgresql-space",
            "prefetch",
            "safety-backup",
            "switch-sources",
            "upgrade-packages",
            "bootloader",
            "postgresql",
            "verify-release"
        ]
    );
    // Configuration drift: the kept /etc/issue, its new version beside it.
    let drift = fixtures::finding(&report, "config-drift").unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        drift["message"]
            .as_str()
            .unwrap()
            .contains("/etc/issue (new: /etc/issue.dpkg-dist)"),
        "{drift}"
    );
    let packages =
        fixtures::finding(&report, "third-party.packages").unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(
        packages["message"],
        "3 installed packages are not from the distribution: vendor-a (kept at 1.0), vendor-b (upgraded to 2.0 from Vendor B:trixie), vendor-c (upgraded to 2.0 from Vendor C:trixie)"
    );
    for step in steps {
        // A root directory without GRUB: the bootloader is not touched.
        let status = if step["id"] == "bootloader" {
            "skipped"
        } else {
            "succeeded"
        };
        assert_eq!(step["status"], status, "{step:#}");
        assert!(step["duration_ms"].is_u64(), "{step:#}");
    }

    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    assert!(
        log.contains("Setting up base-files"),
        "the log has apt's output"
    );
    assert!(log.contains("apt: the installed packages are consistent"));
    // What Debian 13 no longer has, still installed: as apt lists it, in
    // the log and (if any) as a warning of the report.
    let listed = root.chroot(&["apt", "list", "--installed"]).unwrap();
    let mut local: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.ends_with(",local]"))
        .filter_map(|l| l.split_once('/').map(|(n, _)| n.to_string()))
        .collect();
    local.sort();
    let finding = fixtures::finding(&report, "obsolete-packages");
    if local.is_empty() {
        assert!(
            log.contains("every installed package is in a repository of debian:13"),
            "{log}"
        );
        assert!(finding.is_none(), "{finding:?}");
    } else {
        assert!(
            log.contains(&format!(
                "installed, in no repository of debian:13: {}",
                local.join(" ")
            )),
            "the log lists {local:?}"
        );
        let finding = finding.expect("the report warns of the obsolete packages");
        assert_eq!(finding["severity"], "warning");
        assert!(
            finding["message"]
                .as_str()
                .unwrap()
                .ends_with(&local.join(", ")),
            "{finding}"
        );
    }
    // The packages came in the sync phase: the cutover downloaded none.
    assert!(
        log.contains("/var/cache/apt/archives/ holds"),
        "the prefetch says what it holds"
    );
    let cutover = &log[log.find("[upgrade-packages] step started").unwrap()..];
    // The target's lists the checks fetched were reused: copied into the
    // root, read with apt's cache of them as they were, no index fetched
    // again (no apt-get update at all).
    assert!(
        cutover.lines().any(
            |l| l.contains("lists of the target fetched by this run's checks")
                && l.contains("apt reads them and its cache of them as they are")
        ),
        "the checks' lists were not reused: {}",
        cutover
            .lines()
            .filter(|l| l.contains("lists"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // apt, held at its prompt since the checks, let go for the prefetch's
    // download (the server suite's run, after a sync, goes on with it).
    let prefetch = &log[log.find("[prefetch] step started").unwrap()..];
    assert!(
        prefetch.contains("held at its prompt since the checks, answered no"),
        "the held apt was not let go for the download"
    );
    assert!(!cutover.contains("goes on as this run's checks resolved it"));
    let fetched: Vec<&str> = cutover
        .lines()
        .filter(|l| l.contains("InRelease") || (l.contains("Get:") && l.contains("Packages")))
        .collect();
    assert!(
        fetched.is_empty(),
        "the cutover fetched lists again: {fetched:?}"
    );
    // The old release's lists went, as apt-get update would have removed them.
    let old_lists: Vec<String> = std::fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("_dists_bookworm"))
        .collect();
    assert!(old_lists.is_empty(), "{old_lists:?}");
    assert!(
        cutover.contains("Need to get 0 B/"),
        "the cutover's apt downloaded packages: {}",
        cutover
            .lines()
            .find(|l| l.contains("Need to get"))
            .unwrap_or("(no 'Need to get' line)")
    );

    let run_id = report["run_id"].as_str().unwrap();
    assert!(
        f.containers_with_label("io.migrate.run-id", run_id)
            .unwrap()
            .is_empty(),
        "the migration container was removed"
    );
    assert!(
        f.image_exists(MIGRATION_IMAGE).unwrap(),
        "the image is kept"
    );
    // No podman socket was listening (the tests unset CONTAINER_HOST and
    // start none), so migrate ran a private service; it must be gone.
    let private = std::path::PathBuf::from(format!("/run/migrate/podman-{pid}"));
    assert!(
        !private.exists(),
        "the private podman service was cleaned up: {}",
        private.display()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root.path.display().to_string()),
        "nothing stays mounted in the root"
    );
}

#[test]
fn json_output_is_one_event_per_line() {
    let _serial = serial();
    let f = Fixtures::get();
    // An already-upgraded root is refused before any container starts;
    // use a real run instead on a root whose upgrade fails fast: no apt
    // source for the release at all.
    let root = f.copy_root(&f.bookworm).unwrap();
    std::fs::write(root.join("etc/apt/sources.list"), "# nothing here\n").unwrap();
    let out = f
        .migrate()
        .args(["run", "--output", "json", "--root"])
        .arg(&root.path)
        .args(["--image", MIGRATION_IMAGE])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    assert!(events.iter().all(|e| e["v"] == 1 && e["event"].is_string()));
    let failed = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["status"] == "failed")
        .unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(failed["step"], "switch-sources");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("no apt source")
    );
    assert_eq!(events.last().unwrap()["event"], "run_finished");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(stderr.contains("step switch-sources failed"), "{stderr}");
    assert_eq!(report(&root.path).unwrap()["result"], "failed");
}

/// The lock is about orchestration, not packages: the first run's plan
/// holds it in a cutover step that waits for the test, so the second run
/// meets a run that is certainly under way, and the first finishes only
/// after the refusal.
#[test]
fn a_second_concurrent_run_on_the_same_root_is_refused() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let plan = root.path.parent().unwrap().join("wait.toml");
    std::fs::write(
        &plan,
        r#"[[step]]
id = "release"
kind = "check-release"
phase = "check"

[[step]]
id = "wait"
kind = "command"
phase = "cutover"
chroot = true
command = ["sh", "-c", "touch /var/tmp/waiting; while [ ! -e /var/tmp/go-on ]; do sleep 0.1; done; touch /var/tmp/went-on"]
"#,
    )
    .unwrap();
    let mut first = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--plan"])
        .arg(&plan)
        .arg("--root")
        .arg(&root.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !root.join("var/tmp/waiting").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run never reached its cutover"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--plan"])
        .arg(&plan)
        .arg("--root")
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(4), "{}", show(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another migrate run"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    std::fs::write(root.join("var/tmp/go-on"), "").unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the first run was disturbed: {}",
        show(&out)
    );
    assert!(root.join("var/tmp/went-on").exists());
    let r = report(&root.path).unwrap();
    assert_eq!(r["result"], "succeeded", "{r:#}");
    let state = fixtures::state_journal(&root.path);
    assert_eq!(
        state["runs"].as_array().unwrap().len(),
        1,
        "one run: {state:#}"
    );
}

/// The cutover reads the target's lists the run's checks fetched, and goes
/// on with the upgrade as the checks resolved it (apt held at its prompt).
/// When a repository changed in between (here the vendor replaced vendor-b
/// 2.0 by 2.1 while the run waited after its checks), apt cannot download
/// what those lists name and stops before dpkg changes anything; the lists
/// are fetched again and the upgrade installs what the repository now has.
#[test]
fn lists_that_went_stale_between_the_checks_and_the_cutover_are_fetched_again() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let vendors = VendorRepos::start().unwrap();
    std::fs::write(
        root.join("etc/apt/sources.list.d/vendors.list"),
        format!(
            "deb [signed-by={}] {}/b bookworm main\n",
            vendors::KEY,
            vendors.url
        ),
    )
    .unwrap();
    vendors.install(&root, &["vendor-b"]).unwrap();
    // No prefetch: the cutover downloads, from the lists of the checks.
    // The disk-space check asks for the resolution; the last check waits
    // for the test (reading only).
    let plan = root.path.parent().unwrap().join("stale.toml");
    std::fs::write(
        &plan,
        r#"[[step]]
id = "repositories"
kind = "check-repositories"
phase = "check"

[[step]]
id = "disk-space"
kind = "check-disk-space"
phase = "check"

[[step]]
id = "hold"
kind = "command"
phase = "check"
chroot = true
command = ["sh", "-c", "while [ ! -e /var/tmp/go-on ]; do sleep 0.1; done"]

[[step]]
id = "switch-sources"
kind = "apt-sources"
phase = "cutover"
origins = ["Debian"]
keyrings = ["/usr/share/keyrings/debian-archive-keyring.gpg"]

[[step]]
id = "upgrade-packages"
kind = "apt"
phase = "cutover"
"#,
    )
    .unwrap();
    let plan_arg = plan.to_string_lossy().into_owned();
    let mut run = LiveRun::start(
        f,
        &["run", "--image", MIGRATION_IMAGE, "--plan", &plan_arg],
        &root.path,
    )
    .unwrap();
    run.until(|e| e["event"] == "step_started" && e["step"] == "hold")
        .expect("the run reached its last check");
    vendors.republish("b", "trixie", "2.1").unwrap();
    std::fs::write(root.join("var/tmp/go-on"), "").unwrap();
    let (code, stderr) = run.finish().unwrap();
    assert_eq!(code, Some(0), "{stderr}");

    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("13"));
    let version = root
        .chroot(&["dpkg-query", "-W", "-f", "${Version}", "vendor-b"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), "2.1");
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    assert!(
        log.contains("apt-get dist-upgrade goes on as this run's checks resolved it"),
        "the checks' resolution was not held for the cutover:\n{log}"
    );
    let retry = log
        .lines()
        .find(|l| l.contains("apt-get dist-upgrade stopped before changing anything"))
        .unwrap_or_else(|| panic!("no retry in the log:\n{log}"));
    assert!(
        retry.contains("vendor-b_2.0_all.deb")
            && retry.contains("404")
            && retry.ends_with("the lists are fetched again, then it runs once more"),
        "{retry}"
    );
    let r = report(&root.path).unwrap();
    assert_eq!(r["result"], "succeeded", "{r:#}");
    let state = fixtures::state_journal(&root.path);
    let step = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "upgrade-packages")
        .unwrap();
    assert_eq!(step["attempts"], 1, "retried inside the step: {state:#}");
}

/// The built-in `ubuntu-24.04` definition, built on a noble base: a jammy
/// minbase root becomes Ubuntu 24.04 with its default plan, and a root
/// without `--image` is matched to it.
#[test]
fn ubuntu_22_04_upgrades_to_24_04_with_the_built_in_image() {
    let _serial = serial();
    let f = Fixtures::get();
    fixtures::ubuntu::image(f).unwrap();
    let jammy = fixtures::ubuntu::root(f, "jammy").unwrap();
    let root = f.copy_root(&jammy).unwrap();
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("22.04"));

    // Without --image: the built-in image for Ubuntu 22.04 (not built under
    // its default name here, so named in the refusal).
    let out = f
        .migrate()
        .args(["check", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("localhost/migrate/ubuntu-24.04:latest"),
        "{}",
        show(&out)
    );

    let out = f
        .migrate()
        .args(["run", "--image", fixtures::ubuntu::UBUNTU_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("24.04"));
    assert_eq!(root.os_release("ID").as_deref(), Some("ubuntu"));
    root.assert_dpkg_consistent();
    let sources = std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap();
    assert!(
        sources.contains(" noble ") && !sources.contains("jammy"),
        "{sources}"
    );
    let report = report(&root.path).unwrap();
    assert_eq!(report["result"], "succeeded", "{report:#}");
    assert_eq!(report["source"]["version_id"], "22.04");
    assert_eq!(report["target"]["id"], "ubuntu");
    assert_eq!(report["target"]["version_id"], "24.04");
    for step in report["steps"].as_array().unwrap() {
        let status = if step["id"] == "bootloader" {
            "skipped"
        } else {
            "succeeded"
        };
        assert_eq!(step["status"], status, "{step:#}");
    }
    // Every package came from Ubuntu: the third-party check found nothing.
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("third-party"))),
        "{report:#}"
    );
}

/// A release chain: a Debian 11 root reaches 13 in two migrations, each
/// with the built-in image its release calls for (`debian-12`, then
/// `debian-13`), neither named on the command line. Between them, the one
/// step a root directory needs (a host's first boot does it by itself):
/// `migrate cleanup`, which confirms the first migration.
#[test]
fn a_debian_11_root_reaches_13_in_two_migrations() {
    let _serial = serial();
    let f = Fixtures::get();
    const BOOKWORM_BASE: &str = "localhost/migrate-test/debian:12";
    const DEBIAN_12_IMAGE: &str = "localhost/migrate-test/debian-12:test";
    if !f.image_exists(BOOKWORM_BASE).unwrap() {
        f.import_image(&f.bookworm, BOOKWORM_BASE).unwrap();
    }
    f.build_image("debian-12", BOOKWORM_BASE, DEBIAN_12_IMAGE)
        .unwrap();
    // The built-in definitions' default names, for this test only.
    let _twelve = f
        .named(DEBIAN_12_IMAGE, "localhost/migrate/debian-12:latest")
        .unwrap();
    let _thirteen = f
        .named(MIGRATION_IMAGE, "localhost/migrate/debian-13:latest")
        .unwrap();
    let bullseye = fixtures::debootstrap_with(&f.cache, "bullseye", "bullseye", &[]).unwrap();
    let root = f.copy_root(&bullseye).unwrap();
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("11"));
    let run = |args: &[&str]| {
        let out = f
            .migrate()
            .args(args)
            .arg("--root")
            .arg(&root.path)
            .output()
            .unwrap();
        (out.status.code(), show(&out))
    };

    let (code, text) = run(&["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("12"));
    let first = report(&root.path).unwrap();
    assert_eq!(first["result"], "succeeded", "{first:#}");
    assert_eq!(
        first["image"]["reference"],
        "localhost/migrate/debian-12:latest"
    );
    assert_eq!(first["source"]["version_id"], "11");
    assert_eq!(first["target"]["version_id"], "12");
    let sources = std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap();
    assert!(
        sources.contains(" bookworm ") && !sources.contains("bullseye"),
        "{sources}"
    );

    // Finished, waiting for its first boot: a second run says so and
    // changes nothing.
    let (code, text) = run(&["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("waits for the reboot into Debian"), "{text}");
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("12"));
    // The first boot's work, on a root directory by hand.
    let (code, text) = run(&["cleanup"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        report(&root.path).unwrap()["after_reboot"]["result"],
        "confirmed"
    );

    let (code, text) = run(&["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("13"));
    let second = report(&root.path).unwrap();
    assert_eq!(second["result"], "succeeded", "{second:#}");
    assert_eq!(
        second["image"]["reference"],
        "localhost/migrate/debian-13:latest"
    );
    assert_eq!(second["source"]["version_id"], "12");
    assert_ne!(second["run_id"], first["run_id"]);
    root.assert_dpkg_consistent();
}

//! The check phase: `migrate check`, inhibitors in `migrate run`, and
//! `migrate run --dry-run` all leave the root byte-identical.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use fixtures::fleetlock::Netns;
use fixtures::network::Uplink;
use fixtures::vendors::{self, VendorRepos};
use fixtures::{
    Fixtures, MIGRATION_IMAGE, check_report_schema, dropin, serial, show, tree_checksum,
};

#[test]
fn migrate_check_changes_nothing_and_gives_a_stable_json_report() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let before = tree_checksum(&root.path).unwrap();
    let out = f
        .migrate()
        .args([
            "check",
            "--output",
            "json",
            "--image",
            MIGRATION_IMAGE,
            "--root",
        ])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        before,
        "check changed the root"
    );

    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_report_schema(&report).unwrap();
    for key in [
        "migrate_version",
        "run_id",
        "verb",
        "result",
        "exit_code",
        "root",
        "image",
        "source",
        "target",
        "started_at",
        "finished_at",
        "steps",
        "findings",
    ] {
        assert!(
            report.get(key).is_some(),
            "the report has {key}: {report:#}"
        );
    }
    assert_eq!(report["verb"], "check");
    assert_eq!(report["result"], "succeeded");
    let ids: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "source-release",
            "package-db",
            "repositories",
            "disk-space",
            "held-packages",
            "third-party",
            "postgresql-space"
        ]
    );
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "succeeded")
    );
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "inhibitor"),
        "{report:#}"
    );
}

#[test]
fn an_inhibitor_stops_migrate_run_with_exit_3_and_the_root_unchanged() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    // A held package that the upgrade must change, and a margin no disk has.
    let hold = root.chroot(&["apt-mark", "hold", "libc6"]).unwrap();
    assert!(hold.status.success(), "{}", show(&hold));
    dropin(
        &root.path,
        "50-margin.toml",
        "[[step]]\nid = \"disk-space\"\nmargin_mb = 100000000\n",
    )
    .unwrap();
    let before = tree_checksum(&root.path).unwrap();

    let out = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("2 inhibitors stopped the run"), "{stderr}");
    assert!(
        stderr.contains("libc6 (held at"),
        "the held package is named: {stderr}"
    );
    assert!(stderr.contains("100000000 MB margin"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        before,
        "the root changed"
    );
}

#[test]
fn a_dry_run_shows_the_plan_and_the_simulated_upgrade_and_changes_nothing() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let before = tree_checksum(&root.path).unwrap();
    let out = f
        .migrate()
        .args(["run", "--dry-run", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        before,
        "the dry run changed the root"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The resolved plan, with the safety backup inserted before the cutover.
    assert!(
        stdout.contains("plan: Debian 12 (bookworm) to Debian 13 (trixie) with apt"),
        "{stdout}"
    );
    for line in [
        "check    disk-space",
        "cutover  safety-backup",
        "cutover  upgrade-packages",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    // What apt would do, and what the other steps would do.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("would leave /etc/apt/sources.list:1 ")
                && l.ends_with(" bookworm: the distribution's; switched to trixie")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Inst base-files"),
        "apt-get -s output: {stdout}"
    );
    assert!(stdout.contains("would take a tarball of /etc"), "{stdout}");
}

/// A day of the week that is not today (C locale names, as the
/// maintenance window takes them).
fn another_day() -> &'static str {
    let out = std::process::Command::new("date")
        .arg("+%a")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&out.stdout).trim() == "Mon" {
        "Wed"
    } else {
        "Mon"
    }
}

#[test]
fn an_unattended_run_outside_the_maintenance_window_only_syncs_and_the_cutover_waits_for_it() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let plan = scratch.path().join("plan.toml");
    std::fs::write(
        &plan,
        "description = \"window\"\n\n\
         [[step]]\nid = \"release\"\nkind = \"check-release\"\nphase = \"check\"\n\n\
         [[step]]\nid = \"pre-copy\"\nkind = \"command\"\nphase = \"sync\"\ncommand = [\"touch\", \"/srv/synced\"]\nchroot = true\n\n\
         [[step]]\nid = \"switch\"\nkind = \"command\"\nphase = \"cutover\"\ncommand = [\"touch\", \"/srv/cut\"]\nchroot = true\n",
    )
    .unwrap();
    let config = root.join("etc/migrate/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let unattended = |window: Option<&str>| {
        let window = window
            .map(|w| format!("maintenance_window = \"{w}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "enabled = true\nmode = \"run\"\nmetrics_dir = \"/var/lib/node-exporter\"\n{window}"
            ),
        )
        .unwrap();
        f.migrate()
            .args(["--unattended", "--image", MIGRATION_IMAGE, "--plan"])
            .arg(&plan)
            .arg("--root")
            .arg(&root.path)
            .output()
            .unwrap()
    };

    // Outside the window: the checks and the sync phase, and why.
    let out = unattended(Some(&format!("{} 00:00-23:59", another_day())));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(root.join("srv/synced").exists(), "the sync phase ran");
    assert!(
        !root.join("srv/cut").exists(),
        "the cutover ran outside the window"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("outside the maintenance window"),
        "{}",
        show(&out)
    );
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    assert!(log.contains("outside the maintenance window"), "{log}");
    let r = fixtures::report(&root.path).unwrap();
    assert_eq!(
        (r["verb"].as_str(), r["result"].as_str()),
        (Some("sync"), Some("succeeded"))
    );
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("12"));
    let metrics =
        fixtures::checked_metrics(&root.join("var/lib/node-exporter/migrate.prom")).unwrap();
    assert!(
        metrics.contains("migrate_last_run_success{verb=\"sync\"} 1")
            && metrics.contains("state=\"syncing\"")
            && metrics.contains("target=\"debian:13\"")
            && metrics.contains("migrate_reboot_pending 0"),
        "{metrics}"
    );

    // Without a window, as inside one: the cutover.
    let out = unattended(None);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        root.join("srv/cut").exists(),
        "the cutover did not run inside the window"
    );
    let r = fixtures::report(&root.path).unwrap();
    assert_eq!(
        (r["verb"].as_str(), r["result"].as_str()),
        (Some("run"), Some("succeeded"))
    );
    let metrics =
        fixtures::checked_metrics(&root.join("var/lib/node-exporter/migrate.prom")).unwrap();
    assert!(
        metrics.contains("migrate_last_run_success{verb=\"run\"} 1")
            && metrics.contains("migrate_last_run_exit_code{verb=\"run\"} 0")
            && metrics.contains("state=\"completed\"")
            && metrics.contains("migrate_reboot_pending 1")
            && metrics.contains("migrate_migration_confirmed 0"),
        "{metrics}"
    );
}

#[test]
fn check_runs_on_a_root_without_api_filesystem_directories_and_creates_nothing() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    for dir in ["proc", "sys", "dev", "run"] {
        let _ = std::fs::remove_dir_all(root.join(dir));
        let _ = std::fs::remove_file(root.join(dir));
    }
    let before = tree_checksum(&root.path).unwrap();
    let out = f
        .migrate()
        .args(["check", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    // The checks ran and judged (0: passed, 3: an inhibitor), whatever they
    // found without /run; not an environment failure.
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the read-only root has no mount point; not mounted")
            && stdout.contains("package database healthy"),
        "{}",
        show(&out)
    );
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        before,
        "check changed the root"
    );
    for dir in ["proc", "sys", "dev", "run"] {
        assert!(!root.join(dir).exists(), "check created /{dir}");
    }
}

#[test]
fn an_unattended_run_that_cannot_start_still_writes_its_report() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let config = root.join("etc/migrate/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "enabled = true\nmode = \"run\"\nimage = \"my image\"\n",
    )
    .unwrap();
    let out = f
        .migrate()
        .args(["--unattended", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("key `image`"), "{stderr}");
    let r = fixtures::report(&root.path).unwrap();
    assert_eq!(
        (r["result"].as_str(), r["exit_code"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("key `image`")),
        "{r:#}"
    );
}

/// A filesystem the test mounts inside a scratch root, unmounted however
/// the test ends.
struct Submount(std::path::PathBuf);

impl Submount {
    fn tmpfs(at: std::path::PathBuf) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&at)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        Self(at)
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// What a root's own scripts see of the machine, as a `command` step run in
/// the root reports it.
const PROBE: &str = r#"
echo "devs: $(ls /dev | tr '\n' ' ')"
echo "pid1: $(cat /proc/1/comm)"
echo "processes: $(ls /proc | grep -c '^[0-9]')"
[ -w /proc/sys/kernel/hostname ] && echo "sysctl: writable" || echo "sysctl: read-only"
[ -w /sys/kernel ] && echo "sysfs: writable" || echo "sysfs: read-only"
echo x > /dev/null && echo "null: usable"
touch /srv/sub/probe 2>/dev/null && echo "submount: written" || echo "submount: read-only"
"#;

fn probe(f: &Fixtures, verb: &str, phase: &str, root: &std::path::Path) -> Vec<String> {
    let scratch = tempfile::tempdir().unwrap();
    let plan = scratch.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[[step]]\nid = \"probe\"\nkind = \"command\"\nphase = \"{phase}\"\nchroot = true\ncommand = [\"sh\", \"-c\", '''{PROBE}''']\n"
        ),
    )
    .unwrap();
    let out = f
        .migrate()
        .args([verb, "-v", "--image", MIGRATION_IMAGE, "--plan"])
        .arg(&plan)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("[probe] "))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_root_directory_sees_no_host_device_process_or_kernel_setting_and_check_cannot_write_its_submounts()
 {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let _sub = Submount::tmpfs(root.join("srv/sub"));
    for (verb, phase, submount) in [
        ("check", "check", "submount: read-only"),
        ("run", "cutover", "submount: written"),
    ] {
        let lines = probe(f, verb, phase, &root.path);
        let line = |key: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(key))
                .cloned()
                .unwrap_or_else(|| panic!("{verb}: no {key} in {lines:?}"))
        };
        let devs: Vec<String> = line("devs:")
            .trim_start_matches("devs:")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut expected: Vec<&str> = vec![
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero",
        ];
        expected.sort_unstable();
        assert_eq!(devs, expected, "{verb}: the root's /dev");
        assert_eq!(line("pid1:"), "pid1: migrate-agent", "{verb}: {lines:?}");
        let processes: usize = line("processes:")
            .trim_start_matches("processes:")
            .trim()
            .parse()
            .unwrap();
        assert!(processes < 10, "{verb}: {processes} processes visible");
        assert_eq!(line("sysctl:"), "sysctl: read-only", "{verb}");
        assert_eq!(line("sysfs:"), "sysfs: read-only", "{verb}");
        assert_eq!(line("null:"), "null: usable", "{verb}");
        assert_eq!(line("submount:"), submount, "{verb}");
    }
    assert!(root.join("srv/sub/probe").exists());
}

/// Third-party apt repositories (served on loopback, signed with a vendor's
/// key) beside a local mirror of Debian: each source classified and
/// decided before anything changes, the third-party packages listed with
/// what the upgrade does to them; `third_party = "inhibit"` stops the run
/// naming the undecided ones; a cutover's rewrite of the sources is valid
/// for apt and rolled back exactly.
#[test]
fn third_party_apt_sources_are_classified_and_decided_before_anything_changes() {
    let _serial = serial();
    let f = Fixtures::get();
    // The machine's apt-cacher-ng: a mirror of Debian at a local URL.
    let netns = Netns::start(f).unwrap();
    let uplink = Uplink::start(f, &netns).unwrap();
    let mirror = format!("{}deb.debian.org/debian", uplink.proxy);
    let vendors = VendorRepos::start().unwrap();
    let v = &vendors.url;
    let root = f.copy_root(&f.bookworm).unwrap();
    let key = vendors::KEY;
    let parts = root.join("etc/apt/sources.list.d");
    std::fs::write(
        root.join("etc/apt/sources.list"),
        format!("deb {mirror} bookworm main\n"),
    )
    .unwrap();
    for (name, text) in [
        (
            "vendor-a.list",
            format!("deb [signed-by={key}] {v}/a bookworm main\n"),
        ),
        (
            "vendor-b.sources",
            format!(
                "Types: deb\nURIs: {v}/b\nSuites: bookworm\nComponents: main\nSigned-By: {key}\n"
            ),
        ),
        (
            "vendor-c.list",
            format!("deb [signed-by={key}] {v}/c-old bookworm main\n"),
        ),
        (
            "impostor.list",
            format!("deb [signed-by={key}] {v}/impostor bookworm main\n"),
        ),
    ] {
        std::fs::write(parts.join(name), text).unwrap();
    }
    vendors
        .install(&root, &["vendor-a", "vendor-b", "vendor-c", "vendor-i"])
        .unwrap();
    let decisions = [
        format!(
            "/etc/apt/sources.list:1 {mirror} bookworm: the distribution's; switched to trixie"
        ),
        format!(
            "/etc/apt/sources.list.d/impostor.list:1 {v}/impostor bookworm: third-party (origin \"Debian\", but not signed by the distribution's keys); disabled: it has no trixie suite that answers"
        ),
        format!(
            "/etc/apt/sources.list.d/vendor-a.list:1 {v}/a bookworm: third-party (origin \"Vendor A\"); disabled: it has no trixie suite that answers"
        ),
        format!(
            "/etc/apt/sources.list.d/vendor-b.sources:1 {v}/b bookworm: third-party (origin \"Vendor B\"); switched to trixie"
        ),
        format!(
            "/etc/apt/sources.list.d/vendor-c.list:1 {v}/c-old bookworm: third-party (origin \"Vendor C\"); mapped by the Vendor C vendor map to {v}/c-new trixie"
        ),
    ];
    // A Debian package whose installed version a point release replaced
    // since (no list has it any more): still the distribution's.
    let status_path = root.join("var/lib/dpkg/status");
    let status = std::fs::read_to_string(&status_path).unwrap();
    let at = status.find("Package: hostname\n").unwrap();
    let version = at + status[at..].find("\nVersion: ").unwrap() + "\nVersion: ".len();
    let end = version + status[version..].find('\n').unwrap();
    let older = format!(
        "{}{}~0{}",
        &status[..version],
        &status[version..end],
        &status[end..]
    );
    std::fs::write(&status_path, older).unwrap();
    let before = tree_checksum(&root.path).unwrap();
    let etc_apt = tree_checksum(&root.join("etc/apt")).unwrap();

    // check: every source and its decision; warnings only.
    let out = f
        .migrate()
        .args([
            "check",
            "--output",
            "json",
            "--image",
            MIGRATION_IMAGE,
            "--root",
        ])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = |id: &str| {
        fixtures::finding(&report, id).unwrap_or_else(|| panic!("no finding {id}: {report:#}"))
    };
    let disabled = finding("repositories.third-party");
    assert_eq!(disabled["severity"], "warning");
    assert_eq!(
        disabled["message"],
        format!(
            "2 third-party repositories will be disabled in the cutover: /etc/apt/sources.list.d/impostor.list:1 {v}/impostor (it has no trixie suite that answers), /etc/apt/sources.list.d/vendor-a.list:1 {v}/a (it has no trixie suite that answers)"
        )
    );
    let packages = finding("third-party.packages");
    assert_eq!(
        packages["message"],
        "4 installed packages are not from the distribution: vendor-a (kept at 1.0), vendor-b (upgraded to 2.0 from Vendor B:trixie), vendor-c (upgraded to 2.0 from Vendor C:trixie), vendor-i (kept at 1.0)",
        "{report:#}"
    );
    let repositories = finding("third-party.repositories")["message"]
        .as_str()
        .unwrap()
        .to_string();
    for d in &decisions[1..] {
        assert!(repositories.contains(d.as_str()), "{d} in {repositories}");
    }
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        before,
        "check changed the root"
    );

    // The dry run and the human output say the same, line by line.
    let out = f
        .migrate()
        .args(["run", "--dry-run", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for d in &decisions {
        assert!(stdout.contains(d.as_str()), "check's {d}\n{}", show(&out));
        assert!(
            stdout.contains(&format!("would leave {d}")),
            "the dry run's {d}\n{}",
            show(&out)
        );
    }
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        before,
        "the dry run changed the root"
    );

    // An operator who wants no surprise: the undecided ones inhibit.
    dropin(
        &root.path,
        "strict.toml",
        "[[step]]\nid = \"switch-sources\"\nthird_party = \"inhibit\"\n",
    )
    .unwrap();
    let strict_before = tree_checksum(&root.path).unwrap();
    let listing = |root: &std::path::Path| {
        String::from_utf8_lossy(
            &std::process::Command::new("sh")
                .arg("-c")
                .arg("cd \"$0\" && find . -printf '%p %m %u %g %s %T@ %l %D\\n' && find . -type f -exec md5sum {} +")
                .arg(root)
                .output()
                .unwrap()
                .stdout,
        )
        .lines()
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<String>>()
    };
    let listed_before = listing(&root.path);
    let out = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "third_party = \"inhibit\", and no vendor map or `keep` decides 3 third-party repositories: /etc/apt/sources.list.d/impostor.list:1 {v}/impostor, /etc/apt/sources.list.d/vendor-a.list:1 {v}/a, /etc/apt/sources.list.d/vendor-b.sources:1 {v}/b"
        )),
        "{}",
        show(&out)
    );
    assert_eq!(
        tree_checksum(&root.path).unwrap(),
        strict_before,
        "an inhibited run changed the root: {:?}",
        listing(&root.path)
            .symmetric_difference(&listed_before)
            .collect::<Vec<_>>()
    );
    std::fs::remove_file(root.join("etc/migrate/plan.d/strict.toml")).unwrap();

    // A cutover that rewrites the sources and then fails: the sources are
    // as decided and valid for the root's apt; a rollback restores them.
    let plan = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        plan.path(),
        "description = \"the sources, then a failure\"\n\
         [[step]]\nid = \"repositories\"\nkind = \"check-repositories\"\nphase = \"check\"\n\
         [[step]]\nid = \"switch-sources\"\nkind = \"apt-sources\"\nphase = \"cutover\"\norigins = [\"Debian\"]\nkeyrings = [\"/usr/share/keyrings/debian-archive-keyring.gpg\"]\n\
         [[step]]\nid = \"stop-here\"\nkind = \"command\"\nphase = \"cutover\"\ncommand = [\"false\"]\n",
    )
    .unwrap();
    let out = f
        .migrate()
        .args(["run", "--image", MIGRATION_IMAGE, "--plan"])
        .arg(plan.path())
        .arg("--root")
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("step stop-here failed"),
        "{}",
        show(&out)
    );
    let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
    assert_eq!(
        read("etc/apt/sources.list"),
        format!("deb {mirror} trixie main\n")
    );
    let a = read("etc/apt/sources.list.d/vendor-a.list");
    assert!(
        a.starts_with("# migrate: migration ")
            && a.ends_with(&format!(
                " to trixie: disabled, it has no trixie suite that answers\n# deb [signed-by={key}] {v}/a bookworm main\n"
            )),
        "{a}"
    );
    assert_eq!(
        read("etc/apt/sources.list.d/vendor-b.sources"),
        format!("Types: deb\nURIs: {v}/b\nSuites: trixie\nComponents: main\nSigned-By: {key}\n")
    );
    assert_eq!(
        read("etc/apt/sources.list.d/vendor-c.list"),
        format!("deb [signed-by={key}] {v}/c-new trixie main\n")
    );
    let update = root.chroot(&["apt-get", "update"]).unwrap();
    assert!(update.status.success(), "{}", show(&update));
    let policy = root
        .chroot(&["apt-cache", "policy", "vendor-b", "vendor-c", "vendor-a"])
        .unwrap();
    let policy = String::from_utf8_lossy(&policy.stdout);
    assert!(
        policy.contains("vendor-b:\n  Installed: 1.0\n  Candidate: 2.0")
            && policy.contains("vendor-c:\n  Installed: 1.0\n  Candidate: 2.0")
            && policy.contains("vendor-a:\n  Installed: 1.0\n  Candidate: 1.0"),
        "{policy}"
    );
    let out = f
        .migrate()
        .args(["rollback", "--image", MIGRATION_IMAGE, "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        tree_checksum(&root.join("etc/apt")).unwrap(),
        etc_apt,
        "the rollback brought the sources back exactly"
    );
    drop(uplink);
}

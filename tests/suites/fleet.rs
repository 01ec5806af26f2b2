//! Fleets through Ansible: the collection in `ansible/` (the `migrate`
//! module, the `upgrade` playbook) driven by a real `ansible-core` over ssh
//! against booted Debian 12 hosts (real systemd, sshd, podman, migrate from
//! its `.deb`), in waves, with reboots the harness carries out as a
//! machine's firmware would (a reboot ends a container; the fleet's watcher
//! starts it again).
//!
//! The hosts' upgrades are cheap (a plan whose cutover marks the root and
//! says Debian 13): these tests are about the orchestration; the real
//! 12 -> 13 upgrade is the debian_upgrade and systemd suites'.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use fixtures::fleet::{Ansible, Fleet, ansible, lint};
use fixtures::fleetlock::Netns;
use fixtures::network::Uplink;
use fixtures::systemd::fake_release_plan;
use fixtures::{Fixtures, MIGRATION_IMAGE, serial, show};
use serde_json::Value;

/// A check that finds held packages without the network (the distribution's
/// `check-held-packages` asks the target's archive, which the booted hosts
/// cannot reach).
const HOLDS: &str = "held=$(apt-mark showhold); [ -z \"$held\" ] || { echo \"held packages block the upgrade: $held\" >&2; exit 1; }";

/// A drop-in that makes the cutover fail after the release step.
const FAILING: &str = r#"[[step]]
id = "broken"
kind = "command"
phase = "cutover"
command = ["sh", "-c", "echo the service did not come back >&2; exit 1"]
"#;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Every host gets the cheap plan and `proxy` for apt; `held` gets a held
/// package, `broken` a cutover that fails.
fn prepare(
    held: &'static [&'static str],
    broken: &'static [&'static str],
    proxy: Option<String>,
) -> impl Fn(&str, &Path) {
    move |name, root| {
        write(
            root,
            "etc/migrate/fleet.toml",
            &fake_release_plan("holds", HOLDS),
        );
        if let Some(proxy) = &proxy {
            write(
                root,
                "etc/apt/apt.conf.d/01proxy",
                &format!("Acquire::http::Proxy \"{proxy}\";\n"),
            );
        }
        if held.contains(&name) {
            let out = std::process::Command::new("chroot")
                .arg(root)
                .args(["apt-mark", "hold", "python3"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", show(&out));
        }
        if broken.contains(&name) {
            write(root, "etc/migrate/plan.d/50-broken.toml", FAILING);
        }
    }
}

/// Runs the upgrade playbook against `fleet`, every host with the cheap
/// plan but those in `real` (the image's own plan: the real upgrade);
/// (exit code, output, summary).
fn upgrade(
    a: &Ansible,
    netns: &Netns,
    fleet: &Fleet,
    real: &[&str],
) -> (Option<i32>, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let host_vars: Vec<(&str, &str)> = real.iter().map(|h| (*h, "migrate_plan=''")).collect();
    let inventory = fleet
        .inventory(
            dir.path(),
            &[
                format!("migrate_image={MIGRATION_IMAGE}"),
                "migrate_plan=/etc/migrate/fleet.toml".to_string(),
            ],
            &host_vars,
        )
        .unwrap();
    let summary = dir.path().join("summary.json");
    let out = a
        .command("ansible-playbook", &dir.path().join("home"), Some(netns))
        .arg("-i")
        .arg(&inventory)
        .arg("migrate.fleet.upgrade")
        .args(["-e", "migrate_boot_timeout=180"])
        .args(["-e", &format!("migrate_summary_path={}", summary.display())])
        .output()
        .unwrap();
    let text = show(&out);
    let summary = std::fs::read(&summary)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_else(|e| panic!("no fleet summary ({e}):\n{text}"));
    (out.status.code(), text, summary)
}

fn journal_state(root: &Path) -> String {
    fixtures::state_journal(root)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_collection_passes_ansible_lint_and_ansible_doc_shows_the_module() {
    let f = Fixtures::get();
    let a = ansible(f).unwrap();
    lint(f, a).unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = a
        .command("ansible-doc", home.path(), None)
        .arg("migrate.fleet.migrate")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show(&out));
    for expected in [
        "command",
        "choices: [check, sync, run, status, rollback, cleanup]",
        "inhibitors",
        "failed_step",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}

/// The canary's upgrade is cheap; `web` upgrades for real, through the
/// package proxy on the namespace's uplink, and comes back with Debian 13's
/// Python 3.13, which the controller's ansible-core must manage.
#[test]
fn a_canary_then_a_wave_reach_the_new_release_and_the_inhibited_host_is_left_as_it_was() {
    let _serial = serial();
    let f = Fixtures::get();
    let a = ansible(f).unwrap();
    let netns = Netns::start(f).unwrap();
    let uplink = Uplink::start(f, &netns).unwrap();
    let fleet = Fleet::boot(
        f,
        &netns,
        &["canary", "web", "held"],
        2201,
        MIGRATION_IMAGE,
        prepare(&["held"], &[], Some(uplink.proxy.clone())),
    )
    .unwrap();
    let before = fixtures::tree_checksum(&fleet.host("held").root.join("usr")).unwrap();
    let (code, text, summary) = upgrade(a, &netns, &fleet, &["web"]);
    // The inhibited host fails its check task but does not count: the run
    // ends with the inhibited host reported.
    assert_eq!(code, Some(2), "{text}");
    for name in ["canary", "web"] {
        let h = fleet.host(name);
        assert_eq!(
            h.root.os_release("VERSION_ID").as_deref(),
            Some("13"),
            "{name}"
        );
        assert_eq!(journal_state(&h.root.path), "confirmed", "{name}");
        assert_eq!(
            h.root.join("var/lib/synced").exists(),
            name == "canary",
            "{name}: the cheap plan's sync step"
        );
        let s = &summary[name];
        assert_eq!(s["result"], "confirmed", "{name}: {summary:#}");
        assert_eq!(s["source"], "debian:12", "{summary:#}");
        assert_eq!(s["target"], "debian:13", "{summary:#}");
        assert!(s["duration_s"].as_f64().unwrap() > 0.0, "{summary:#}");
    }
    // web's was the real upgrade: Debian 13's packages and Python.
    let web = fleet.host("web");
    assert!(
        std::fs::read_to_string(web.root.join("etc/debian_version"))
            .unwrap()
            .starts_with("13"),
        "{text}"
    );
    let python = std::process::Command::new("chroot")
        .arg(&web.root.path)
        .args(["python3", "--version"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&python.stdout).starts_with("Python 3.13"),
        "{}",
        show(&python)
    );
    assert!(text.contains("Wait for the first boot's verdict"), "{text}");
    // Rebooted once each, by the playbook, and confirmed by the first boot.
    assert_eq!(fleet.restarts(), vec![1, 1, 0], "{text}");
    let held = fleet.host("held");
    assert_eq!(summary["held"]["result"], "inhibited", "{summary:#}");
    assert!(
        summary["held"]["inhibitors"][0]
            .as_str()
            .unwrap()
            .contains("held packages block the upgrade: python3"),
        "{summary:#}"
    );
    assert_eq!(held.root.os_release("VERSION_ID").as_deref(), Some("12"));
    assert!(!held.root.join("var/lib/migrate/state.json").exists());
    assert_eq!(
        fixtures::tree_checksum(&held.root.join("usr")).unwrap(),
        before
    );
    // The canary's first boot was confirmed before the next wave's
    // cutover began.
    let canary_report: Value = serde_json::from_slice(
        &std::fs::read(
            fleet
                .host("canary")
                .root
                .join("var/log/migrate/report.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let confirmed_at = canary_report["after_reboot"]["checked_at"]
        .as_str()
        .unwrap();
    let web_state: Value = serde_json::from_slice(
        &std::fs::read(fleet.host("web").root.join("var/lib/migrate/state.json")).unwrap(),
    )
    .unwrap();
    let web_cutover = web_state["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["verb"] == "run")
        .unwrap()["started_at"]
        .as_str()
        .unwrap();
    assert!(confirmed_at < web_cutover, "{confirmed_at} {web_cutover}");
}

#[test]
fn a_cutover_that_fails_in_the_canary_wave_stops_the_rollout() {
    let _serial = serial();
    let f = Fixtures::get();
    let a = ansible(f).unwrap();
    let netns = Netns::start(f).unwrap();
    let fleet = Fleet::boot(
        f,
        &netns,
        &["canary", "web", "held"],
        2211,
        MIGRATION_IMAGE,
        prepare(&["held"], &["canary"], None),
    )
    .unwrap();

    // Check mode first, ad hoc: `migrate check` whatever the command says;
    // the held host fails with its inhibitor, nothing changes anywhere.
    let dir = tempfile::tempdir().unwrap();
    let inventory = fleet.inventory(dir.path(), &[], &[]).unwrap();
    let out = a
        .command("ansible", &dir.path().join("home"), Some(&netns))
        .arg("-i")
        .arg(&inventory)
        .args(["fleet", "--check", "-m", "migrate.fleet.migrate", "-a"])
        .arg(format!(
            "command=run image={MIGRATION_IMAGE} plan=/etc/migrate/fleet.toml"
        ))
        // Each host's result as JSON, in a file named after it.
        .env("ANSIBLE_LOAD_CALLBACK_PLUGINS", "1")
        .env("ANSIBLE_CALLBACKS_ENABLED", "ansible.builtin.tree")
        .env("ANSIBLE_CALLBACK_TREE_DIR", dir.path().join("tree"))
        .output()
        .unwrap();
    let mut hosts = serde_json::Map::new();
    for h in &fleet.hosts {
        let result = std::fs::read(dir.path().join("tree").join(&h.name))
            .unwrap_or_else(|e| panic!("{}: {e}: {}", h.name, show(&out)));
        hosts.insert(h.name.clone(), serde_json::from_slice(&result).unwrap());
    }
    let hosts = Value::Object(hosts);
    for name in ["canary", "web"] {
        assert_eq!(hosts[name]["changed"], false, "{hosts:#}");
        assert_eq!(hosts[name]["rc"], 0, "{hosts:#}");
        assert_eq!(hosts[name]["report"]["verb"], "check", "{hosts:#}");
    }
    // The tree callback keeps the module's result (its `failed` aside).
    assert_eq!(hosts["held"]["rc"], 3, "{hosts:#}");
    assert_eq!(hosts["held"]["changed"], false, "{hosts:#}");
    assert!(
        hosts["held"]["msg"]
            .as_str()
            .unwrap()
            .starts_with("inhibited, nothing was changed: "),
        "{hosts:#}"
    );
    assert!(out.status.code() != Some(0), "{}", show(&out));
    assert!(
        hosts["held"]["inhibitors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("held packages block the upgrade: python3"),
        "{hosts:#}"
    );
    for h in &fleet.hosts {
        assert!(
            !h.root.join("var/lib/migrate/state.json").exists(),
            "{}",
            h.name
        );
    }

    let (code, text, summary) = upgrade(a, &netns, &fleet, &[]);
    assert_ne!(code, Some(0), "{text}");
    let canary = &summary["canary"];
    assert_eq!(canary["result"], "cutover failed", "{summary:#}");
    assert_eq!(canary["failing_step"], "broken", "{summary:#}");
    assert!(
        canary["message"]
            .as_str()
            .unwrap()
            .contains("the service did not come back"),
        "{summary:#}"
    );
    // The next wave never started: web was synced, never cut over.
    let web = fleet.host("web");
    assert_eq!(summary["web"]["result"], "checked", "{summary:#}");
    assert!(web.root.join("var/lib/synced").exists());
    assert!(!web.root.join("var/lib/cutover-ran").exists());
    assert_eq!(journal_state(&web.root.path), "syncing");
    // The inhibited host dropped out before the waves and was not counted:
    // the canary's failure alone stopped the rollout.
    assert_eq!(summary["held"]["result"], "inhibited", "{summary:#}");
    assert_eq!(fleet.restarts(), vec![0, 0, 0], "{text}");
}

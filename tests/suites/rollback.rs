//! A failed cutover, then `migrate rollback`: refused while it would put the
//! old release's /etc over the new release's packages, unless asked for
//! with `--etc-only`: then /etc comes back exactly, the rollback says what
//! it could not restore and is partial, and `migrate status` follows.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use fixtures::{Fixtures, LiveRun, MIGRATION_IMAGE, dropin, serial, show, tree_checksum};

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
}

#[test]
fn status_reports_per_step_states_during_and_after_a_run() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
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
    let before = status(&root.path);
    assert!(
        before["migration"].is_null() && before["last_run"].is_null(),
        "{before:#}"
    );

    let mut run = LiveRun::start(f, &["run", "--image", MIGRATION_IMAGE], &root.path).unwrap();
    run.until(|e| e["event"] == "step_started" && e["step"] == "upgrade-packages")
        .expect("the upgrade started");
    let during = status(&root.path);
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
        .arg(&root.path)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("upgrade-packages       cutover  running"),
        "{human}"
    );

    let (code, stderr) = run.finish().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let after = status(&root.path);
    assert_eq!(after["migration"]["status"], "completed");
    for id in ["switch-sources", "upgrade-packages", "verify-release"] {
        assert_eq!(state(&after, id), "succeeded", "{id}: {after:#}");
    }
    assert_eq!(after["last_run"]["result"], "succeeded");
}

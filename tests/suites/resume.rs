//! Crashes: the migration container is killed with SIGKILL mid-run; the next
//! `migrate run` continues at the interrupted step and the root converges to
//! a clean Debian 13.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::time::{Duration, Instant};

use fixtures::clusters::{cluster_rows, postgresql_15_with_data};
use fixtures::{
    Fixtures, LiveRun, MIGRATION_IMAGE, json_lines, kill_container, report, serial, show,
};

/// Runs the migration on a root `prepare` made, kills the container when
/// `trigger` sees its event, leaves the root as `after_kill` makes it, then
/// runs again and checks that the root converged; the root.
fn kill_then_resume(
    prepare: impl Fn(&fixtures::ScratchRoot),
    trigger: impl Fn(&serde_json::Value, &fixtures::ScratchRoot) -> bool,
    killed_step: &str,
    after_kill: impl Fn(&fixtures::ScratchRoot),
) -> fixtures::ScratchRoot {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    prepare(&root);
    let mut run = LiveRun::start(f, &["run", "--image", MIGRATION_IMAGE], &root.path).unwrap();
    let event = run
        .until(|e| trigger(e, &root))
        .expect("the trigger event came");
    kill_container(f, &run.run_id().unwrap()).unwrap();
    let (code, stderr) = run.finish().unwrap();
    assert_eq!(code, Some(1), "the killed run failed: {stderr}");
    assert!(stderr.contains("killed by signal 9"), "{stderr}");

    let state = journal(&root.path);
    assert_eq!(state["status"], "in_progress", "{state:#}");
    let step = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == killed_step)
        .unwrap();
    assert_eq!(
        step["attempts"], 1,
        "killed during {killed_step} ({event}): {state:#}"
    );
    assert_ne!(
        step["status"], "succeeded",
        "killed during {killed_step} ({event}): {state:#}"
    );
    after_kill(&root);

    run_again_to_a_clean_debian_13(f, &root);
    let r = report(&root.path).unwrap();
    assert_eq!(r["result"], "succeeded", "{r:#}");
    assert_eq!(r["resumed"], true);
    let steps = r["steps"].as_array().unwrap();
    let killed_at = steps.iter().position(|s| s["id"] == killed_step).unwrap();
    // Checks and the cutover steps finished before the kill are not
    // repeated; a kill before the cutover began repeats the checks and
    // the sync phase (the root is still the source release).
    let before_cutover = steps[killed_at]["phase"] != "cutover";
    for (i, s) in steps.iter().enumerate() {
        // The bootloader step has nothing to do in a root without GRUB.
        let expected = if (i < killed_at && !before_cutover) || s["id"] == "bootloader" {
            "skipped"
        } else {
            "succeeded"
        };
        assert_eq!(s["status"], expected, "step {}: {r:#}", s["id"]);
    }
    let state = journal(&root.path);
    assert_eq!(state["status"], "completed");
    let resumed = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == killed_step)
        .unwrap();
    assert_eq!(resumed["attempts"], 2, "{state:#}");
    assert_eq!(state["runs"].as_array().unwrap().len(), 2);
    root
}

/// `migrate run` once more on a root a killed run left: it succeeds, and
/// the root is a clean Debian 13.
fn run_again_to_a_clean_debian_13(
    f: &Fixtures,
    root: &fixtures::ScratchRoot,
) -> Vec<serde_json::Value> {
    let out = f
        .migrate()
        .args(["run", "--output", "json", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the next run: {}", show(&out));
    // --output json: every line of a successful run is a JSON event, what
    // migrate says after the agent's run included.
    let events = json_lines(&out.stdout);
    assert!(events.iter().all(|e| e["v"] == 1 && e["event"].is_string()));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run_finished" && e["status"] == "succeeded"),
        "{events:?}"
    );
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("13"));
    root.assert_dpkg_consistent();
    events
}

/// The root's state journal.
fn journal(root: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root.join("var/lib/migrate/state.json")).unwrap())
        .unwrap()
}

fn in_step(e: &serde_json::Value, step: &str) -> bool {
    e["step"] == step
}

/// The packages are downloaded by the sync phase's prefetch: killed
/// there, the next run downloads the rest and upgrades.
#[test]
fn a_run_killed_while_downloading_packages_resumes_to_a_clean_debian_13() {
    kill_then_resume(
        |_| {},
        |e, _| {
            in_step(e, "prefetch")
                && e["event"] == "progress"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Downloading"))
        },
        "prefetch",
        |_| {},
    );
}

#[test]
fn a_run_killed_while_dpkg_unpacks_and_configures_resumes_to_a_clean_debian_13() {
    kill_then_resume(
        |_| {},
        |e, _| {
            in_step(e, "upgrade-packages")
                && e["event"] == "progress"
                && e["percent"].as_f64().is_some_and(|p| p >= 30.0)
                && e["message"]
                    .as_str()
                    .is_some_and(|m| !m.starts_with("Downloading"))
        },
        "upgrade-packages",
        |_| {},
    );
}

#[test]
fn a_run_killed_between_two_steps_resumes_to_a_clean_debian_13() {
    // Killed as upgrade-packages starts, right after switch-sources finished:
    // the sources are switched, nothing is upgraded yet. Then the state a
    // transaction killed later can leave (seen in the kill battery): a
    // library removed before the old package that pre-depends on it was
    // upgraded. dpkg has nothing to finish; apt finds the dependency broken
    // and refuses to upgrade until it is repaired.
    let root = kill_then_resume(
        |_| {},
        |e, _| e["event"] == "step_started" && in_step(e, "upgrade-packages"),
        "upgrade-packages",
        |root| {
            let out = root
                .chroot(&["dpkg", "--force-depends", "--remove", "libdb5.3"])
                .unwrap();
            assert!(out.status.success(), "{}", show(&out));
            let check = root.chroot(&["apt-get", "check"]).unwrap();
            assert!(!check.status.success(), "apt finds nothing broken");
            // And dpkg killed between writing an entry of its journal and
            // applying it to its status: `dpkg --audit` finds nothing
            // wrong, apt says "dpkg was interrupted".
            let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
            let stanza = status
                .split("\n\n")
                .find(|s| s.starts_with("Package: hostname\n"))
                .unwrap();
            std::fs::write(
                root.join("var/lib/dpkg/updates/0000"),
                format!("{stanza}\n\n"),
            )
            .unwrap();
            let audit = root.chroot(&["dpkg", "--audit"]).unwrap();
            assert!(audit.stdout.is_empty(), "{}", show(&audit));
            let apt = root.chroot(&["apt-get", "check"]).unwrap();
            assert!(
                String::from_utf8_lossy(&apt.stderr).contains("dpkg was interrupted"),
                "{}",
                show(&apt)
            );
        },
    );
    // apt refused the upgrade before dpkg changed anything; the rerun
    // repaired the dependencies and upgraded.
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    assert!(
        log.contains("apt-get dist-upgrade stopped before changing anything")
            && log.contains("the broken dependencies are repaired, then it runs once more"),
        "{log}"
    );
}

/// Killed inside `pg_upgradecluster`, once its new cluster exists (made
/// by initdb, pg_upgrade to come): the next run drops the half-made
/// 17/main, puts 15/main back as it was and moves it again; every row is
/// there, the old cluster kept.
#[test]
fn a_run_killed_inside_pg_upgradecluster_moves_the_cluster_again() {
    let root = kill_then_resume(
        postgresql_15_with_data,
        |e, root| {
            let counted = in_step(e, "postgresql")
                && e["line"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("cluster 15/main: 2 tables"));
            if !counted {
                return false;
            }
            // Then pg_upgradecluster runs: its new cluster's data directory.
            let made = root.join("var/lib/postgresql/17/main/PG_VERSION");
            let waited = Instant::now();
            while !made.exists() && waited.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        },
        "postgresql",
        |root| {
            // pg_upgradecluster's new cluster, half made (whether
            // postgresql-common lists it yet depends on the moment).
            assert!(root.join("var/lib/postgresql/17/main/PG_VERSION").exists());
            let clusters = root.chroot(&["pg_lsclusters", "-h"]).unwrap();
            let clusters = String::from_utf8_lossy(&clusters.stdout).to_string();
            assert!(clusters.starts_with("15 main "), "{clusters}");
        },
    );
    let clusters = root.chroot(&["pg_lsclusters", "-h"]).unwrap();
    let clusters = String::from_utf8_lossy(&clusters.stdout).to_string();
    let lines: Vec<Vec<&str>> = clusters
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{clusters}");
    assert_eq!(lines[0][..4], ["15", "main", "5433", "down"], "{clusters}");
    assert_eq!(lines[1][..4], ["17", "main", "5432", "down"], "{clusters}");
    assert_eq!(cluster_rows(&root, "17"), "items|1000\nshop.orders|250\n");
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    for line in [
        "cluster 15/main: a move interrupted inside pg_upgradecluster left 17/main half made: removed it, the old cluster back on port 5432 (auto), moving again",
        "cluster 17/main on port 5432: the same 2 tables and 1250 rows as 15/main",
    ] {
        assert!(log.contains(line), "{line}\n{log}");
    }
    let backup = std::fs::read_dir(root.join("var/lib/migrate/backup")).unwrap();
    for migration in backup {
        let step = migration.unwrap().path().join("postgresql");
        let left: Vec<_> = std::fs::read_dir(&step)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "the record of the move is gone: {left:?}");
    }
}

/// The host's `migrate` killed mid-upgrade (not its container): the next
/// `migrate run` re-attaches to the migration that goes on, follows it to the
/// end and completes its report; no second agent, no container left.
#[test]
fn a_migrate_killed_mid_upgrade_is_re_attached_to_by_the_next_run() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let mut run = LiveRun::start(f, &["run", "--image", MIGRATION_IMAGE], &root.path).unwrap();
    run.until(|e| in_step(e, "upgrade-packages") && e["event"] == "progress")
        .expect("the upgrade started");
    let run_id = run.run_id().unwrap();
    run.kill_host().unwrap();

    let events = run_again_to_a_clean_debian_13(f, &root);
    assert!(
        events.iter().any(|e| e["event"] == "output"
            && e["line"]
                .as_str()
                .is_some_and(|l| l.contains("re-attached to"))),
        "{events:?}"
    );
    // The run that was killed, completed: one run, one agent.
    let r = report(&root.path).unwrap();
    assert_eq!(r["run_id"], run_id.as_str(), "{r:#}");
    assert_eq!(r["result"], "succeeded", "{r:#}");
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("13"));
    let state = journal(&root.path);
    assert_eq!(state["runs"].as_array().unwrap().len(), 1, "{state:#}");
    let upgrade = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "upgrade-packages")
        .unwrap();
    assert_eq!(upgrade["attempts"], 1, "the upgrade ran twice: {state:#}");
    let left = f
        .podman()
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=io.migrate.run-id={run_id}"),
        ])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "a container was left behind");
}

/// `migrate run` resolves the upgrade in its checks with the cutover's own
/// `apt-get dist-upgrade`, which waits at its prompt holding dpkg's locks
/// until the cutover answers. The container killed while it waits: the
/// root is as it was (the checks changed nothing, apt wrote nothing, no
/// lock is left held) and the next run migrates it.
#[test]
fn a_run_killed_while_apt_waits_at_its_prompt_leaves_the_root_as_it_was() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    let packages = |root: &fixtures::ScratchRoot| {
        let out = root
            .chroot(&[
                "dpkg-query",
                "-W",
                "-f",
                "${Package} ${Version} ${db:Status-Abbrev}\n",
            ])
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let before = packages(&root);
    let sources = std::fs::read(root.join("etc/apt/sources.list")).unwrap();
    let archives = || -> Vec<std::ffi::OsString> {
        let mut debs: Vec<_> = std::fs::read_dir(root.join("var/cache/apt/archives"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".deb"))
            .collect();
        debs.sort();
        debs
    };
    let cached = archives();
    let mut run = LiveRun::start(f, &["run", "--image", MIGRATION_IMAGE], &root.path).unwrap();
    run.until(|e| e["event"] == "step_finished" && in_step(e, "disk-space"))
        .expect("the disk-space check finished");
    let run_id = run.run_id().unwrap();
    // apt-get dist-upgrade is there, waiting (it printed its plan for the
    // check and asked).
    let top = f
        .podman()
        .args(["top", &format!("migrate-{run_id}"), "args"])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(
        top.lines()
            .any(|l| l.contains("apt-get") && l.contains("dist-upgrade")),
        "no apt-get dist-upgrade in the container:\n{top}"
    );
    kill_container(f, &run_id).unwrap();
    let (code, stderr) = run.finish().unwrap();
    assert_eq!(code, Some(1), "the killed run failed: {stderr}");
    assert!(stderr.contains("killed by signal 9"), "{stderr}");
    assert_eq!(packages(&root), before, "a package changed");
    assert_eq!(
        std::fs::read(root.join("etc/apt/sources.list")).unwrap(),
        sources,
        "the sources changed"
    );
    assert_eq!(archives(), cached, "packages were downloaded");

    // The next run finds dpkg's locks free and migrates the root.
    run_again_to_a_clean_debian_13(f, &root);
    assert_eq!(report(&root.path).unwrap()["result"], "succeeded");
}

/// Where in dpkg's work an apt progress event is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Download,
    Unpack,
    Configure,
    Any,
}

/// (The downloads are the sync phase's prefetch; dpkg's work is the
/// cutover's upgrade.)
fn stage_of(e: &serde_json::Value) -> Option<Stage> {
    if e["event"] != "progress" {
        return None;
    }
    let m = e["message"].as_str().unwrap_or_default();
    if in_step(e, "prefetch") {
        return m.starts_with("Downloading").then_some(Stage::Download);
    }
    if !in_step(e, "upgrade-packages") {
        return None;
    }
    Some(if m.starts_with("Downloading") {
        Stage::Download
    } else if m.starts_with("Unpacking") || m.starts_with("Preparing to unpack") {
        Stage::Unpack
    } else if m.starts_with("Configuring")
        || m.starts_with("Preparing to configure")
        || m.starts_with("Installed")
    {
        Stage::Configure
    } else {
        Stage::Any
    })
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// `migrate` itself: its container goes on.
    Host,
    /// The migration container: the transaction stops where it is.
    Container,
}

/// Kills `migrate` or its container with SIGKILL at ten seeded points over
/// one upgrade (the prefetch's downloads, dpkg's unpacking and configuring: two container
/// kills in each dpkg stage), each time running plain `migrate run` again;
/// the last run converges to a clean Debian 13 with its report, and nothing
/// is left behind. A point the upgrade never reaches fails the test.
#[test]
fn an_upgrade_killed_ten_times_host_and_container_converges_to_a_clean_debian_13() {
    let _serial = serial();
    let f = Fixtures::get();
    let root = f.copy_root(&f.bookworm).unwrap();
    // (whom, in which stage, the how-manieth such event after the last kill)
    let schedule = [
        (Kill::Host, Stage::Download, 1),
        (Kill::Container, Stage::Unpack, 3),
        (Kill::Host, Stage::Unpack, 3),
        (Kill::Container, Stage::Unpack, 8),
        (Kill::Host, Stage::Unpack, 3),
        (Kill::Container, Stage::Configure, 3),
        (Kill::Host, Stage::Configure, 3),
        (Kill::Container, Stage::Configure, 6),
        (Kill::Host, Stage::Configure, 3),
        (Kill::Container, Stage::Any, 3),
    ];
    let mut after = String::new(); // agent time of the last kill
    for (point, (whom, stage, nth)) in schedule.into_iter().enumerate() {
        let mut run = LiveRun::start(f, &["run", "--image", MIGRATION_IMAGE], &root.path).unwrap();
        let seen = std::cell::Cell::new(0);
        let hit = run.until(|e| {
            let new = e["ts"].as_str().is_some_and(|ts| ts > after.as_str());
            let matches = new && stage_of(e).is_some_and(|s| stage == Stage::Any || s == stage);
            if matches {
                seen.set(seen.get() + 1);
            }
            matches && seen.get() >= nth
        });
        let Some(event) = hit else {
            let (code, stderr) = run.finish().unwrap();
            panic!(
                "kill point {} ({whom:?} in {stage:?}) was never reached: exit {code:?}: {stderr}",
                point + 1
            );
        };
        after = event["ts"].as_str().unwrap().to_string();
        let run_id = run.run_id().unwrap();
        match whom {
            Kill::Host => run.kill_host().unwrap(),
            Kill::Container => {
                kill_container(f, &run_id).unwrap();
                let (code, stderr) = run.finish().unwrap();
                assert_eq!(code, Some(1), "point {}: {stderr}", point + 1);
            }
        }
    }

    let out = f
        .migrate()
        .args(["run", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the last run: {}", show(&out));
    assert_eq!(root.os_release("VERSION_ID").as_deref(), Some("13"));
    root.assert_dpkg_consistent();
    let r = report(&root.path).unwrap();
    assert_eq!(r["result"], "succeeded", "{r:#}");
    let state = journal(&root.path);
    assert_eq!(state["state"], "completed", "{state:#}");
    let left = f
        .podman()
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=io.migrate.root={}", root.path.display()))
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "a container was left behind");
}

//! Service migrations: the charm-to-snap recipe (a server's configuration,
//! PostgreSQL database with a schema upgrade and files moved to its new
//! packaging), application data moved in phases with rsync, and a rollback
//! that steps a running service back. Real PostgreSQL, rsync and
//! systemd; a stand-in only for snapd, which cannot run here.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fixtures::services::{
    self, Etcd, PgCluster, PgContainer, SERVICES_IMAGE, SshServer, StandInSnapd,
};
use fixtures::systemd::{BUS_IN_ROOT, BootedRoot};
use fixtures::{Fixtures, MIGRATION_IMAGE, ScratchRoot, dropin, report, serial, show};

const APP_PASSWORD: &str = "app-Pa55-w0rd-never-shown";

const OLD_CONFIG: &str = r#"application: livepatch
charm: canonical-livepatch-server
settings:
  auth_sso_enabled:
    default: false
    source: user
    type: boolean
    value: true
  contracts_url:
    default: ""
    source: default
    type: string
    value: ""
  db_pool_size:
    default: 10
    source: user
    type: int
    value: "25"
  patch_storage_type:
    source: user
    type: string
    value: Filesystem
  server_url:
    source: user
    type: string
    value: https://livepatch.internal.example
"#;

/// A source database: ordinary tables and "patch" tables with data.
fn fill_source(pg: &PgCluster) {
    pg.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'"),
    )
    .unwrap();
    pg.psql("postgres", "CREATE DATABASE app OWNER app")
        .unwrap();
    for sql in [
        "CREATE TABLE machines (id serial PRIMARY KEY, name text NOT NULL, kernel text)",
        "INSERT INTO machines (name, kernel) SELECT 'host-' || i, '6.1.0-' || (i % 30) FROM generate_series(1, 1000) i",
        "CREATE TABLE users (id serial PRIMARY KEY, login text UNIQUE)",
        "INSERT INTO users (login) SELECT 'user' || i FROM generate_series(1, 50) i",
        "CREATE TABLE patch_store (id serial PRIMARY KEY, blob bytea)",
        "INSERT INTO patch_store (blob) SELECT decode(repeat('ab', 500), 'hex') FROM generate_series(1, 200)",
        "CREATE TABLE patch_meta (id serial PRIMARY KEY, machine int REFERENCES machines(id))",
        "INSERT INTO patch_meta (machine) SELECT i FROM generate_series(1, 10) i",
        "ALTER TABLE machines OWNER TO app",
        "ALTER TABLE users OWNER TO app",
        "ALTER TABLE patch_store OWNER TO app",
        "ALTER TABLE patch_meta OWNER TO app",
    ] {
        pg.psql("app", sql).unwrap();
    }
}

fn write_plan(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What a run shows of itself, sampled until `stop` is set.
#[derive(Default)]
struct Samples {
    /// Every argument list of every process.
    processes: Vec<String>,
    /// `podman inspect` of the migration containers that ran.
    inspected: Vec<String>,
    /// Processes (pid, command name) whose environment held `secret`.
    environments: Vec<(String, String)>,
}

fn sample_processes(
    stop: Arc<AtomicBool>,
    secret: &'static str,
) -> std::thread::JoinHandle<Samples> {
    std::thread::spawn(move || {
        let f = Fixtures::get();
        let mut seen = Samples::default();
        let mut round = 0u32;
        while !stop.load(Ordering::SeqCst) {
            if let Ok(out) = std::process::Command::new("ps")
                .args(["-eo", "args"])
                .output()
            {
                seen.processes
                    .push(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                    continue;
                };
                if env.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    let comm =
                        std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                    seen.environments.push((pid, comm.trim().to_string()));
                }
            }
            round += 1;
            if round.is_multiple_of(5)
                && let Ok(out) = f
                    .podman()
                    .args(["ps", "-q", "--filter", "label=io.migrate.run-id"])
                    .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(i) = f.podman().args(["inspect", id]).output() {
                        seen.inspected
                            .push(String::from_utf8_lossy(&i.stdout).into_owned());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

/// The shipped recipe `examples/charm-to-snap`, end to end, as its README
/// tells an operator to run it.
#[test]
fn the_charm_to_snap_recipe_moves_config_database_and_files_without_showing_the_password() {
    let _serial = serial();
    let f = Fixtures::get();
    services::services_image(f).unwrap();
    let root = f.copy_root(&f.bookworm).unwrap();
    // The old release's server (Debian 12's PostgreSQL 15) and the new one
    // (Debian 13's PostgreSQL 17, in a container, as a re-packaged service).
    let pg = PgCluster::start(f, &root.join("srv/pgsock")).unwrap();
    fill_source(&pg);
    let pg17 = PgContainer::start(f).unwrap();
    pg17.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::write(root.join("etc/app/db.pass"), format!("{APP_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(
        root.join("etc/app/db.pass"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // The shipped recipe (examples/charm-to-snap), set up as its README
    // says: the `juju config` output and the schema upgrade beside it, a
    // drop-in for this host's database servers.
    let recipe = f.workspace.join("examples/charm-to-snap");
    let plan = recipe.join("plan.toml");
    let here = root.join("etc/migrate/charm-to-snap");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::write(here.join("charm-config.yaml"), OLD_CONFIG).unwrap();
    std::fs::copy(
        recipe.join("schema-upgrade.sql"),
        here.join("schema-upgrade.sql"),
    )
    .unwrap();
    dropin(
        &root.path,
        "50-test-servers.toml",
        &format!(
            r#"[[step]]
id = "copy-database"
source = {{ socket = "/srv/pgsock", port = {port}, database = "app", user = "app", password_file = "/etc/app/db.pass" }}
target = {{ url = "postgresql://app@127.0.0.1:{port17}/livepatch", password_env = "APP_DB_PASSWORD" }}
"#,
            port = pg.port,
            port17 = pg17.port
        ),
    )
    .unwrap();
    // The old server: its unit, enabled, and its patch files.
    let unit = "livepatch-server.service";
    std::fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
    std::fs::write(
        root.join("usr/lib/systemd/system").join(unit),
        "[Unit]\nDescription=old server\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(format!("/usr/lib/systemd/system/{unit}"), wants.join(unit))
        .unwrap();
    let patches = root.join("var/lib/livepatch/patches");
    std::fs::create_dir_all(patches.join("kernel-6.1")).unwrap();
    for i in 0..3 {
        std::fs::write(
            patches.join(format!("kernel-6.1/lp-{i}.patch")),
            format!("patch {i}\n").repeat(1000),
        )
        .unwrap();
    }
    let snapd = StandInSnapd::start(&root.join("run/snapd.socket")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_processes(Arc::clone(&stop), APP_PASSWORD);
    let out = f
        .migrate()
        .args(["run", "--image", SERVICES_IMAGE, "--plan"])
        .arg(&plan)
        .arg("--root")
        .arg(&root.path)
        .env("APP_DB_PASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    let processes = &samples.processes;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // The database: ordinary tables complete, patch tables present and
    // empty, the schema upgrade applied.
    for (table, rows) in [
        ("machines", "1000"),
        ("users", "50"),
        ("patch_store", "0"),
        ("patch_meta", "0"),
    ] {
        assert_eq!(
            pg17.psql("livepatch", &format!("SELECT count(*) FROM {table}"))
                .unwrap(),
            rows,
            "{table}"
        );
    }
    assert_eq!(
        pg17.psql("livepatch", "SELECT count(*) FROM machines WHERE upgraded")
            .unwrap(),
        "1000",
        "the schema upgrade added the column"
    );
    assert_eq!(
        pg17.psql(
            "livepatch",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'machines'"
        )
        .unwrap(),
        "app",
        "restored without the source's owners: owned by the restoring user"
    );
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM patch_store").unwrap(),
        "200",
        "the source is untouched"
    );

    // The configuration, as snapd received it: mapped, transformed, the
    // empty value not sent.
    let requests = snapd.requests.lock().unwrap().clone();
    let put: Vec<_> = requests.iter().filter(|(m, _, _)| m == "PUT").collect();
    assert_eq!(put.len(), 1, "{requests:?}");
    assert_eq!(put[0].1, "/v2/snaps/canonical-livepatch-server/conf");
    let conf: serde_json::Value = serde_json::from_str(&put[0].2).unwrap();
    assert_eq!(
        conf,
        serde_json::json!({
            "auth.sso.enabled": true,
            "database.connection-pool-max": 25,
            "patch-storage.type": "filesystem",
            "server.url-template": "https://livepatch.internal.example",
        })
    );
    assert!(
        requests
            .iter()
            .any(|(m, p, _)| m == "GET" && p == "/v2/changes/7"),
        "the change was followed"
    );

    // The password nowhere: not in the log, the report, the output, or any
    // process's command line while it ran.
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    let report_text = std::fs::read_to_string(root.join("var/log/migrate/report.json")).unwrap();
    for (name, text) in [
        ("the log", log.as_str()),
        ("the report", report_text.as_str()),
        ("stdout", &String::from_utf8_lossy(&out.stdout)),
        ("stderr", &String::from_utf8_lossy(&out.stderr)),
    ] {
        assert!(!text.contains(APP_PASSWORD), "the password is in {name}");
    }
    assert!(
        processes.len() > 5,
        "the process list was sampled during the run"
    );
    assert!(
        processes.iter().all(|p| !p.contains(APP_PASSWORD)),
        "the password was on a command line"
    );
    // Not in the container's configuration podman stores and shows, and in
    // no process's environment but migrate's own (where the user put it):
    // not podman's, not the agent's, not the tools'.
    assert!(
        !samples.inspected.is_empty(),
        "the migration container was inspected while it ran"
    );
    assert!(
        samples.inspected.iter().all(|i| !i.contains(APP_PASSWORD)),
        "the password is in podman inspect"
    );
    let others: Vec<_> = samples
        .environments
        .iter()
        .filter(|(_, comm)| comm != "migrate")
        .collect();
    assert!(
        others.is_empty(),
        "the password is in the environment of {others:?}"
    );
    assert!(
        processes.iter().any(|p| p.contains("pg_dump")
            || p.contains("pg_restore")
            || p.contains("migrate-agent"))
    );
    assert!(
        log.contains("machines: 1000 rows"),
        "the verification is in the log"
    );
    // The patch files moved, verified; the old unit disabled; the recipe's
    // consistency check saw them all.
    let moved = root.join("var/snap/canonical-livepatch-server/common/patches");
    for i in 0..3 {
        let name = format!("kernel-6.1/lp-{i}.patch");
        assert_eq!(
            std::fs::read(moved.join(&name)).unwrap(),
            std::fs::read(patches.join(&name)).unwrap(),
            "{name}"
        );
    }
    assert!(
        wants.join(unit).symlink_metadata().is_err(),
        "the old server is still enabled"
    );
    assert!(
        log.contains("patch files: 3 before, 3 after"),
        "the consistency check: {log}"
    );

    let r = report(&root.path).unwrap();
    let dump = root
        .join("var/lib/migrate/backup")
        .join(r["run_id"].as_str().unwrap())
        .join("copy-database/dump.custom");
    assert!(dump.is_file(), "the dump is kept in the backup directory");
    assert!(r["agent_peak_rss_kb"].as_u64().is_some());
}

/// `migrate VERB` on `root` with the stock image and `plan`.
fn migrate_with_plan(f: &Fixtures, verb: &str, plan: &Path, root: &Path) -> std::process::Output {
    f.migrate()
        .args([verb, "--image", SERVICES_IMAGE, "--plan"])
        .arg(plan)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap()
}

/// `files` files of 20-60 kB (5,000: 200 MB), some owned by another user,
/// some with extended attributes, and a hard link.
fn make_app_data(dir: &Path, files: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        let size = 20_000 + (next() % 40_000) as usize;
        let mut data = Vec::with_capacity(size + 8);
        while data.len() < size {
            data.extend_from_slice(&next().to_le_bytes());
        }
        data.truncate(size);
        let path = sub.join(format!("f{i:05}.bin"));
        std::fs::write(&path, &data).unwrap();
        if i % 10 == 0 {
            std::os::unix::fs::chown(&path, Some(1234), Some(4321)).unwrap();
        }
        if i % 7 == 0 {
            xattr::set(&path, "user.app.checksum", format!("{i:08x}").as_bytes()).unwrap();
        }
    }
    // A hard link, which must stay one.
    std::fs::hard_link(dir.join("d00/f00000.bin"), dir.join("d00/linked.bin")).unwrap();
}

/// Content, mode, owner, mtime and extended attributes of every file.
fn data_state(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            let mut attrs: Vec<String> = xattr::list(&p)
                .unwrap()
                .map(|n| format!("{}={:?}", n.to_string_lossy(), xattr::get(&p, &n).unwrap()))
                .collect();
            attrs.sort();
            let digest = if m.is_file() {
                use sha2::Digest;
                format!("{:x}", sha2::Sha256::digest(std::fs::read(&p).unwrap()))
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {} {} links={} {attrs:?}",
                p.strip_prefix(dir).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.mtime() },
                digest,
                if m.is_file() { m.nlink() } else { 0 }
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn application_data_moves_in_phases_while_a_writer_keeps_changing_it() {
    let _serial = serial();
    let f = Fixtures::get();
    services::services_image(f).unwrap();
    let root = f.copy_root(&f.bookworm).unwrap();
    let data = root.join("srv/app/data");
    make_app_data(&data, 5000);
    let unit_dir = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    std::fs::write(
        unit_dir.join("app.service"),
        "[Unit]\nDescription=App\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let plan = write_plan(
        scratch.path(),
        r#"description = "application data move"

[[step]]
id = "pre-copy"
kind = "rsync"
phase = "sync"
source = "/srv/app/data/"
destination = "/srv/newapp/data/"

[[step]]
id = "stop-app"
kind = "service"
phase = "cutover"
action = "stop"
units = ["app.service"]

[[step]]
id = "final-copy"
kind = "rsync"
phase = "cutover"
source = "/srv/app/data/"
destination = "/srv/newapp/data/"

[[step]]
id = "start-app"
kind = "service"
phase = "cutover"
action = "start"
units = ["app.service"]

[[step]]
id = "verify-app-data"
kind = "verify-copy"
phase = "cutover"
of = "final-copy"
"#,
    );
    let migrate = |verb: &str| migrate_with_plan(f, verb, &plan, &root.path);

    // The application keeps writing during the pre-copies: 1% of the files
    // (50) change, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, data) = (Arc::clone(&stop), data.clone());
        std::thread::spawn(move || {
            let mut round = 0u32;
            while !stop.load(Ordering::SeqCst) {
                for i in (0..5000u32).step_by(100) {
                    let path = data.join(format!("d{:02}/f{i:05}.bin", i % 50));
                    let mut bytes = std::fs::read(&path).unwrap();
                    bytes[0] = bytes[0].wrapping_add(1);
                    bytes.extend_from_slice(&round.to_le_bytes());
                    std::fs::write(&path, bytes).unwrap();
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            round
        })
    };
    for pass in 1..=2 {
        let out = migrate("sync");
        assert_eq!(out.status.code(), Some(0), "sync {pass}: {}", show(&out));
    }
    // The service stops (the writer is it), then the cutover.
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.join().unwrap();
    assert!(rounds > 0, "the writer wrote during the pre-copies");
    let expected = data_state(&data);
    let out = migrate("run");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    assert_eq!(
        data_state(&root.join("srv/newapp/data")),
        expected,
        "the destination differs"
    );
    assert_eq!(data_state(&data), expected, "the source changed");
    let moved = root.join("srv/newapp/data/d00/f00000.bin");
    assert_eq!(
        std::fs::metadata(&moved).unwrap().uid(),
        1234,
        "numeric owners kept"
    );
    assert_eq!(
        std::fs::metadata(&moved).unwrap().nlink(),
        2,
        "hard links kept"
    );
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    // Inside the downtime only what moved since the last pre-copy was read
    // (`migrate run` repeats the pre-copy before it stops the service, so
    // that is little); the rest was identical by the manifest.
    let (by_metadata, by_content) = verified_counts(&log);
    assert!(
        by_metadata >= 4000 && by_content <= 500,
        "the final pass read {by_content} files, trusted {by_metadata}: {log}"
    );
    // After the start, everything the service did not touch, by content.
    let after = number_before(&log, " files (", "identical by content: ");
    assert!(
        after >= 4900,
        "{after} files compared after the start: {log}"
    );
    let r = report(&root.path).unwrap();
    assert_eq!(r["result"], "succeeded");
    assert_eq!(
        (
            r["downtime"]["from_step"].as_str(),
            r["downtime"]["to_step"].as_str()
        ),
        (Some("stop-app"), Some("start-app")),
        "{r:#}"
    );
    assert!(r["downtime"]["duration_ms"].as_u64().is_some(), "{r:#}");
    for id in [
        "copy-verified.final-copy",
        "copy-verified-after-start.verify-app-data",
    ] {
        assert!(
            r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == id && f["severity"] == "info"),
            "no finding {id}: {r:#}"
        );
    }
    assert!(
        r["agent_peak_rss_kb"].as_u64().unwrap() < 50 * 1024,
        "{r:#}"
    );
}

/// The number between `prefix` and `suffix` in the first line of `log`
/// that has them.
fn number_before(log: &str, suffix: &str, prefix: &str) -> usize {
    log.lines()
        .find_map(|l| {
            let rest = l.split(prefix).nth(1)?;
            rest.split(suffix).next()?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {prefix:?} ... {suffix:?} in {log}"))
}

/// The final pass's verification: entries trusted by metadata against the
/// manifest, and files read.
fn verified_counts(log: &str) -> (usize, usize) {
    let line = log
        .lines()
        .find(|l| l.contains("[final-copy] verified: "))
        .unwrap_or_else(|| panic!("the final pass was not verified: {log}"));
    // rsync was given only what moved, not the trees to walk.
    assert!(
        line.contains("; rsync copied "),
        "the final pass copied the whole trees: {line}"
    );
    (
        number_before(line, " entries identical by metadata", "verified: "),
        number_before(line, " files compared by content", "against the manifest, "),
    )
}

/// Overwrites `path` with bytes of the same length, its mtime put back: a
/// change rsync's quick check (size and mtime) cannot see.
fn corrupt_keeping_size_and_mtime(path: &Path) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    for b in bytes.iter_mut().take(16) {
        *b = !*b;
    }
    std::fs::write(path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn a_corrupted_copy_is_found_by_the_cutover_or_after_the_start() {
    let _serial = serial();
    let f = Fixtures::get();
    services::services_image(f).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let plan = write_plan(
        scratch.path(),
        r#"description = "verified copy"

[[step]]
id = "pre-copy"
kind = "rsync"
phase = "sync"
source = "/srv/app/data/"
destination = "/srv/newapp/data/"

[[step]]
id = "final-copy"
kind = "rsync"
phase = "cutover"
source = "/srv/app/data/"
destination = "/srv/newapp/data/"

[[step]]
id = "verify-app-data"
kind = "verify-copy"
phase = "cutover"
of = "final-copy"
"#,
    );
    let victim = "d07/f00007.bin";

    // 1. The copy changed after the pre-copy, same size and mtime: rsync's
    //    final pass does not send it again; its verification finds it.
    let root = f.copy_root(&f.bookworm).unwrap();
    make_app_data(&root.join("srv/app/data"), 100);
    let out = migrate_with_plan(f, "sync", &plan, &root.path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    corrupt_keeping_size_and_mtime(&root.join("srv/newapp/data").join(victim));
    let out = migrate_with_plan(f, "run", &plan, &root.path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("final-copy") && stderr.contains(&format!("{victim}: content differs")),
        "{}",
        show(&out)
    );

    // 2. A change the final pass cannot see (below the filesystem: here
    //    the manifest is made to agree with the corrupted file, as bit rot
    //    would leave it): found after the start, by content, path named.
    let root = f.copy_root(&f.bookworm).unwrap();
    make_app_data(&root.join("srv/app/data"), 100);
    let out = migrate_with_plan(f, "sync", &plan, &root.path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let copied = root.join("srv/newapp/data").join(victim);
    corrupt_keeping_size_and_mtime(&copied);
    let manifests: Vec<PathBuf> = std::fs::read_dir(root.join("var/lib/migrate/backup"))
        .unwrap()
        .flat_map(|m| std::fs::read_dir(m.unwrap().path().join("manifests")).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifests[0]).unwrap()).unwrap();
    let meta = std::fs::metadata(&copied).unwrap();
    // The copy's lstat is recorded as [kind, size, mtime, ctime, ...].
    m["entries"][victim]["d"][3] = serde_json::json!([meta.ctime(), meta.ctime_nsec()]);
    std::fs::write(&manifests[0], serde_json::to_vec(&m).unwrap()).unwrap();
    let out = migrate_with_plan(f, "run", &plan, &root.path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    let (_, by_content) = verified_counts(&log);
    assert_eq!(by_content, 0, "the final pass trusted the manifest: {log}");
    let r = report(&root.path).unwrap();
    let step = |id: &str| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(step("final-copy")["status"], "succeeded", "{r:#}");
    assert_eq!(step("verify-app-data")["status"], "failed", "{r:#}");
    assert!(
        step("verify-app-data")["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 files of the copy differ") && m.contains(victim)),
        "{r:#}"
    );
}

#[test]
fn application_data_moves_to_another_host_over_ssh() {
    let _serial = serial();
    let f = Fixtures::get();
    let remote = SshServer::start(f).unwrap();
    let root = f.copy_root(&f.bookworm).unwrap();
    let data = root.join("srv/app/data");
    make_app_data(&data, 500);
    // The host's root user has the key (the image has none of its own).
    remote.authorize(&root.path).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let step = |id: &str, phase: &str| {
        format!(
            "[[step]]\nid = \"{id}\"\nkind = \"rsync\"\nphase = \"{phase}\"\n\
             source = \"/srv/app/data/\"\ndestination = \"root@127.0.0.1:/srv/remote/data/\"\n\
             ssh_port = {}\n\n",
            remote.port
        )
    };
    let plan = write_plan(
        scratch.path(),
        &format!(
            "description = \"data to another host\"\n\n{}{}",
            step("pre-copy", "sync"),
            step("final-copy", "cutover")
        ),
    );
    let migrate = |verb: &str| migrate_with_plan(f, verb, &plan, &root.path);
    let out = migrate("sync");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // After the pre-copy: a file changes, one goes, one comes.
    std::fs::write(data.join("d01/f00001.bin"), b"changed after the pre-copy").unwrap();
    std::fs::remove_file(data.join("d02/f00002.bin")).unwrap();
    std::fs::write(data.join("d03/new.bin"), b"new after the pre-copy").unwrap();
    let expected = data_state(&data);
    let out = migrate("run");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    assert_eq!(
        data_state(&remote.dir.path().join("data")),
        expected,
        "the remote copy differs (content, owners, modes, times, xattrs, links)"
    );
    let log = std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap();
    assert!(
        log.contains("verified: a checksum comparison finds no difference"),
        "the final pass was verified over ssh"
    );
    // ssh hashes the host names (Debian's HashKnownHosts); the key is there.
    let known = std::fs::read_to_string(root.join("root/.ssh/known_hosts")).unwrap();
    let host_key = remote.host_key().unwrap();
    assert!(
        known.lines().any(|l| l.ends_with(&host_key)),
        "the remote's host key {host_key} is not in the root's known hosts: {known}"
    );
}

#[test]
fn rollback_after_a_failed_restore_starts_the_stopped_service_again() {
    let _serial = serial();
    let f = Fixtures::get();
    services::services_image(f).unwrap();
    let base = fixtures::systemd::host_root(f).unwrap();
    let root = f.copy_root(&base).unwrap();
    // The release check of the image wants Debian 12, which this root is.
    std::fs::write(
        root.join("etc/systemd/system/app.service"),
        "[Unit]\nDescription=App\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/app.service",
        root.join("etc/systemd/system/multi-user.target.wants/app.service"),
    )
    .unwrap();
    let pg = PgCluster::start(f, &root.join("srv/pgsock")).unwrap();
    fill_source(&pg);
    // The new server's database already has a conflicting table: the
    // restore fails.
    let pg17 = PgContainer::start(f).unwrap();
    pg17.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'"),
    )
    .unwrap();
    pg17.psql("postgres", "CREATE DATABASE app OWNER app")
        .unwrap();
    pg17.psql("app", "CREATE TABLE machines (conflict int)")
        .unwrap();
    let booted = BootedRoot::boot(f, &root.path).unwrap();
    assert_eq!(
        booted
            .exec(&["systemctl", "is-active", "app.service"])
            .unwrap()
            .trim(),
        "active"
    );

    let scratch = tempfile::tempdir().unwrap();
    let plan = write_plan(
        scratch.path(),
        &format!(
            r#"[[step]]
id = "stop-app"
kind = "service"
phase = "cutover"
action = "stop"
units = ["app.service"]
bus = "{BUS_IN_ROOT}"

[[step]]
id = "copy-database"
kind = "postgres"
phase = "cutover"
source = {{ socket = "/srv/pgsock", port = {port}, database = "app", user = "app", password_env = "APP_DB_PASSWORD" }}
target = {{ host = "127.0.0.1", port = {port17}, database = "app", user = "app", password_env = "APP_DB_PASSWORD" }}
"#,
            port = pg.port,
            port17 = pg17.port
        ),
    );
    let out = f
        .migrate()
        .args(["run", "--image", SERVICES_IMAGE, "--plan"])
        .arg(&plan)
        .arg("--root")
        .arg(&root.path)
        .env("APP_DB_PASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step copy-database failed"), "{stderr}");
    assert!(
        stderr.contains("restoring into the target database"),
        "{stderr}"
    );
    assert_eq!(
        booted
            .exec(&["systemctl", "is-active", "app.service"])
            .unwrap()
            .trim(),
        "inactive",
        "the plan stopped the service through systemd"
    );

    let out = f
        .migrate()
        .args(["rollback", "--image", SERVICES_IMAGE, "--root"])
        .arg(&root.path)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("app.service: start (the migration had stopped it)")
    );
    assert_eq!(
        booted
            .exec(&["systemctl", "is-active", "app.service"])
            .unwrap()
            .trim(),
        "active",
        "the service runs again"
    );
}

const INVENTORY_PASSWORD: &str = "inventory-db-password";

/// A copy of the host root with the inventory service of the backend-switch
/// recipe: its tool, its unit (enabled; `sleep` stands for the controller),
/// its configuration naming etcd (where its items are) and PostgreSQL (a
/// password file with `password`), and a drop-in giving the recipe the bus
/// of the booted root.
fn inventory_host(f: &Fixtures, etcd: &Etcd, pg: &PgCluster, password: &str) -> ScratchRoot {
    let root = f
        .copy_root(&fixtures::systemd::host_root(f).unwrap())
        .unwrap();
    let tool = root.join("usr/bin/inventoryctl");
    std::fs::copy(f.workspace.join("tests/inventory/inventoryctl"), &tool).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/inventory.service"),
        "[Unit]\nDescription=inventory controller\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/inventory.service",
        wants.join("inventory.service"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("etc/inventory")).unwrap();
    std::fs::write(
        root.join("etc/inventory/inventory.conf"),
        format!(
            "# inventory: where its items live\n[storage]\n# etcd or postgresql\nbackend = etcd\netcd_endpoints = {}\npostgres_dsn = postgresql://inventory@127.0.0.1:{port}/inventory\npostgres_passfile = /etc/inventory/pgpass\n\n[log]\nlevel = info\n",
            etcd.endpoint,
            port = pg.port
        ),
    )
    .unwrap();
    let pgpass = root.join("etc/inventory/pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:inventory:inventory:{password}\n", pg.port),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    dropin(
        &root.path,
        "50-this-host.toml",
        &format!(
            "[[step]]\nid = \"stop-controller\"\nbus = \"{BUS_IN_ROOT}\"\n\n[[step]]\nid = \"start-controller\"\nbus = \"{BUS_IN_ROOT}\"\n"
        ),
    )
    .unwrap();
    root
}

/// What the service lists, by its own tool in the root.
fn inventory_listing(root: &Path) -> String {
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["inventoryctl", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_active(booted: &BootedRoot, unit: &str) -> String {
    booted
        .exec(&["systemctl", "is-active", unit])
        .unwrap()
        .trim()
        .to_string()
}

/// The backups a step of the report lists.
fn step_backups(report: &serde_json::Value, step: &str) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .and_then(|s| s["backups"].as_array())
        .map(|b| {
            b.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The shipped recipe `examples/backend-switch` with a real etcd and a real
/// PostgreSQL: a failed import steps back to etcd with the controller
/// running and the export kept; then the switch itself.
#[test]
fn the_backend_switch_recipe_moves_state_from_etcd_to_postgresql_and_steps_back_on_failure() {
    let _serial = serial();
    let f = Fixtures::get();
    let etcd = Etcd::start(f).unwrap();
    for i in 0..40 {
        etcd.ctl(&[
            "put",
            &format!("/inventory/host-{i:02}"),
            &format!("rack {}, 'slot' {i}; owner=ops", i % 4),
        ])
        .unwrap();
    }
    let sockets = tempfile::tempdir_in(&f.scratch).unwrap();
    let pg = PgCluster::start(f, &sockets.path().join("pg")).unwrap();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE inventory LOGIN PASSWORD '{INVENTORY_PASSWORD}'"),
    )
    .unwrap();
    pg.psql("postgres", "CREATE DATABASE inventory OWNER inventory")
        .unwrap();
    let plan = f.workspace.join("examples/backend-switch/plan.toml");
    let run = |root: &Path| {
        f.migrate()
            .args(["run", "--image", MIGRATION_IMAGE, "--plan"])
            .arg(&plan)
            .arg("--root")
            .arg(root)
            .output()
            .unwrap()
    };

    // The import cannot log in: the run stops there, the configuration
    // already switched, the export kept and listed.
    let root = inventory_host(f, &etcd, &pg, "not-the-password");
    let config = std::fs::read_to_string(root.join("etc/inventory/inventory.conf")).unwrap();
    let listing = inventory_listing(&root.path);
    assert_eq!(listing.lines().count(), 40, "{listing}");
    let booted = BootedRoot::boot(f, &root.path).unwrap();
    assert_eq!(is_active(&booted, "inventory.service"), "active");
    let out = run(&root.path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("step import failed"),
        "{}",
        show(&out)
    );
    assert_eq!(is_active(&booted, "inventory.service"), "inactive");
    let failed = report(&root.path).unwrap();
    let exported = step_backups(&failed, "export");
    assert!(
        exported
            .iter()
            .any(|p| p.ends_with("/export/inventory.export"))
            && exported
                .iter()
                .any(|p| p.ends_with("/export/listing-before.txt")),
        "{failed:#}"
    );
    let export = exported
        .iter()
        .find(|p| p.ends_with("inventory.export"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join(export.trim_start_matches('/'))).unwrap(),
        listing,
        "the export holds every item"
    );
    assert!(
        step_backups(&failed, "switch-backend")
            .iter()
            .any(|p| p.ends_with("/switch-backend/inventory.conf")),
        "{failed:#}"
    );
    assert!(
        std::fs::read_to_string(root.join("etc/inventory/inventory.conf"))
            .unwrap()
            .contains("backend = postgresql")
    );
    // Stepping back: the configuration names etcd again, the controller
    // runs, and the service lists what it had.
    let out = f
        .migrate()
        .args(["rollback", "--root"])
        .arg(&root.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("inventory.service: start (the migration had stopped it)"),
        "{}",
        show(&out)
    );
    assert_eq!(is_active(&booted, "inventory.service"), "active");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/inventory/inventory.conf")).unwrap(),
        config
    );
    assert_eq!(inventory_listing(&root.path), listing);
    drop(booted);

    // The switch: every item in PostgreSQL, the configuration changed in
    // that one value, the controller running, etcd emptied last.
    let root = inventory_host(f, &etcd, &pg, INVENTORY_PASSWORD);
    let booted = BootedRoot::boot(f, &root.path).unwrap();
    let out = run(&root.path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/inventory/inventory.conf")).unwrap(),
        config.replace("backend = etcd", "backend = postgresql"),
        "every other byte of the configuration kept"
    );
    assert_eq!(is_active(&booted, "inventory.service"), "active");
    assert_eq!(
        inventory_listing(&root.path),
        listing,
        "now from PostgreSQL"
    );
    assert_eq!(
        pg.psql("inventory", "SELECT count(*) FROM items").unwrap(),
        "40"
    );
    assert_eq!(
        etcd.ctl(&["get", "--prefix", "--keys-only", "/inventory/"])
            .unwrap()
            .trim(),
        "",
        "the old backend emptied"
    );
    let switched = report(&root.path).unwrap();
    assert!(
        step_backups(&switched, "verify")
            .iter()
            .any(|p| p.ends_with("/verify/listing-after.txt")),
        "{switched:#}"
    );
}

/// The app-move recipe's applications, each a unit on the old server that
/// keeps writing into its data directory while it runs.
const MOVED_APPS: [&str; 2] = ["wiki", "shop"];

/// Where rootful podman keeps a volume's data, in the new server's root.
fn volume_data(new: &ScratchRoot, app: &str) -> PathBuf {
    new.join(&format!(
        "var/lib/containers/storage/volumes/{app}-data/_data"
    ))
}

/// `migrate VERB --app APP` with the recipe's plan on the old server's root.
fn migrate_app(f: &Fixtures, args: &[&str], plan: &Path, root: &Path) -> std::process::Output {
    f.migrate()
        .args(args)
        .args(["--image", SERVICES_IMAGE, "--plan"])
        .arg(plan)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap()
}

/// Each application's phase and completed syncs, from `migrate status
/// --output json`.
fn app_phases(f: &Fixtures, root: &Path) -> Vec<(String, String, u64)> {
    let out = f
        .migrate()
        .args(["status", "--output", "json", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let apps = status["migration"]["applications"].as_object().unwrap();
    apps.iter()
        .map(|(name, a)| {
            (
                name.clone(),
                a["phase"].as_str().unwrap().to_string(),
                a["syncs"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn phases(expected: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = expected
        .iter()
        .map(|(n, p, s)| (n.to_string(), p.to_string(), *s))
        .collect();
    v.sort();
    v
}

/// `systemctl is-active` and `is-enabled` of a unit of a booted root.
fn unit_state(booted: &BootedRoot, unit: &str) -> (String, String) {
    let enabled = booted
        .exec(&["systemctl", "is-enabled", unit])
        .unwrap()
        .trim()
        .to_string();
    (is_active(booted, unit), enabled)
}

fn pair(active: &str, enabled: &str) -> (String, String) {
    (active.to_string(), enabled.to_string())
}

#[test]
fn the_app_move_recipe_moves_applications_one_at_a_time_and_steps_one_back() {
    let _serial = serial();
    let f = Fixtures::get();
    services::services_image(f).unwrap();
    let base = fixtures::systemd::host_root(f).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let port = fixtures::free_port().unwrap();

    // The new server: systemd, podman, sshd on a port of 127.0.0.1 (it
    // shares the machine's network, so its containers get none of their
    // own), each application's image.
    let new = f.copy_root(&base).unwrap();
    let write = |root: &ScratchRoot, rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        &new,
        "etc/ssh/sshd_config.d/test.conf",
        &format!("Port {port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"),
    );
    write(
        &new,
        "root/.ssh/authorized_keys",
        &std::fs::read_to_string(key.with_extension("pub")).unwrap(),
    );
    write(
        &new,
        "etc/containers/containers.conf",
        "[containers]\nnetns = \"none\"\n",
    );
    let new_server = BootedRoot::boot_in(f, &new.path, "host").unwrap();
    new_server.load_image(fixtures::BASE_IMAGE).unwrap();
    // Each application's image serves until told to stop, as a service
    // does (a bare `sleep` as the container's first process ignores TERM).
    write(
        &new,
        "srv/serve",
        "trap 'exit 0' TERM\nsleep infinity &\nwait\n",
    );
    for app in MOVED_APPS {
        let made = new_server
            .run(&[
                "sh",
                "-c",
                &format!(
                    "podman create --name {app}-image {} true && podman cp /srv/serve {app}-image:/serve && podman commit -q --change 'CMD [\"/bin/sh\", \"/serve\"]' {app}-image localhost/{app}:latest && podman rm {app}-image",
                    fixtures::BASE_IMAGE
                ),
            ])
            .unwrap();
        assert!(made.status.success(), "{}", show(&made));
    }

    // The old server: each application a unit writing into its data
    // directory (files with owners, extended attributes, a hard link).
    let old = f.copy_root(&base).unwrap();
    for app in MOVED_APPS {
        make_app_data(&old.join(&format!("srv/{app}/data")), 200);
        write(
            &old,
            &format!("etc/systemd/system/{app}.service"),
            &format!(
                "[Unit]\nDescription={app}\n[Service]\nExecStart=/bin/sh -c 'i=0; while :; do i=$((i+1)); echo $i > /srv/{app}/data/counter; head -c 5000 /dev/urandom > /srv/{app}/data/d01/live-$((i %% 20)).bin; sleep 0.05; done'\n[Install]\nWantedBy=multi-user.target\n"
            )
            .replace("%%", "%"),
        );
        let wants = old.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            format!("/etc/systemd/system/{app}.service"),
            wants.join(format!("{app}.service")),
        )
        .unwrap();
    }
    // Root's key and the recipe's `new-server` name for the commands it
    // runs in the old server's root.
    let ssh = old.join("root/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(&key, ssh.join("id_ed25519")).unwrap();
    write(
        &old,
        "root/.ssh/config",
        &format!(
            "Host new-server\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  StrictHostKeyChecking accept-new\n"
        ),
    );
    // The recipe's drop-in: the copies' address, and the old server's
    // systemd reached through its bus (the root is booted beside us, not
    // the host migrate runs on).
    let mut local = String::new();
    for app in MOVED_APPS {
        for copy in ["copy", "final-copy"] {
            local.push_str(&format!(
                "[[step]]\nid = \"{copy}-{app}\"\ndestination = \"root@127.0.0.1:/var/lib/containers/storage/volumes/{app}-data/_data/\"\nssh_port = {port}\n\n"
            ));
        }
        for unit_step in ["stop", "disable"] {
            local.push_str(&format!(
                "[[step]]\nid = \"{unit_step}-{app}\"\nbus = \"{BUS_IN_ROOT}\"\n\n"
            ));
        }
    }
    dropin(&old.path, "50-new-server.toml", &local).unwrap();
    let old_server = BootedRoot::boot(f, &old.path).unwrap();
    for app in MOVED_APPS {
        assert_eq!(
            unit_state(&old_server, &format!("{app}.service")),
            pair("active", "enabled")
        );
    }
    let plan = f.workspace.join("examples/app-move/plan.toml");
    let run = |args: &[&str]| migrate_app(f, args, &plan, &old.path);

    // Without --app, or with one the plan lacks: one line, nothing done.
    for (args, says) in [
        (
            &["run"][..],
            "this plan moves applications one at a time (shop, wiki): name one with --app",
        ),
        (
            &["sync", "--app", "blog"][..],
            "the plan has no application \"blog\" (it has: shop, wiki)",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!old.join("var/lib/migrate/state.json").exists());
    }

    // wiki: start and sync, twice, while it writes; shop: once.
    for _ in 0..2 {
        let out = run(&["sync", "--app", "wiki"]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    }
    assert_eq!(
        app_phases(f, &old.path),
        phases(&[("wiki", "syncing", 2), ("shop", "not_started", 0)])
    );
    assert!(volume_data(&new, "wiki").join("d00/linked.bin").exists());
    assert!(!volume_data(&new, "shop").exists(), "shop was not started");
    let out = run(&["sync", "--app", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        app_phases(f, &old.path),
        phases(&[("wiki", "syncing", 2), ("shop", "syncing", 1)])
    );
    for app in MOVED_APPS {
        assert_eq!(
            unit_state(&old_server, &format!("{app}.service")),
            pair("active", "enabled"),
            "syncs leave {app} serving here"
        );
        let exists = new_server
            .run(&["podman", "container", "exists", app])
            .unwrap();
        assert!(exists.status.success(), "{app}'s container was created");
        assert_eq!(
            unit_state(&new_server, &format!("container-{app}.service")).0,
            "inactive"
        );
    }

    // wiki finishes; shop keeps serving here.
    let out = run(&["run", "--app", "wiki"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("application wiki: finished"),
        "{}",
        show(&out)
    );
    assert_eq!(
        app_phases(f, &old.path),
        phases(&[("wiki", "finished", 2), ("shop", "syncing", 1)])
    );
    assert_eq!(
        data_state(&old.join("srv/wiki/data")),
        data_state(&volume_data(&new, "wiki")),
        "the new server's volume differs (content, owners, modes, times, xattrs, links)"
    );
    assert_eq!(
        unit_state(&old_server, "wiki.service"),
        pair("inactive", "disabled")
    );
    assert_eq!(
        unit_state(&new_server, "container-wiki.service"),
        pair("active", "enabled")
    );
    assert_eq!(
        unit_state(&old_server, "shop.service"),
        pair("active", "enabled")
    );
    let journal = fixtures::state_journal(&old.path);
    assert_eq!(journal["state"], "cutover_started", "shop has not finished");
    let r = report(&old.path).unwrap();
    fixtures::check_report_schema(&r).unwrap();
    let ran: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ran.iter().all(|id| !id.ends_with("-shop")),
        "wiki's run touched shop: {ran:?}"
    );
    // A finished application is not synced again.
    let out = run(&["sync", "--app", "wiki"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("application wiki has finished"));

    // shop finishes: the migration is complete.
    let out = run(&["run", "--app", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        app_phases(f, &old.path),
        phases(&[("wiki", "finished", 2), ("shop", "finished", 1)])
    );
    assert_eq!(
        data_state(&old.join("srv/shop/data")),
        data_state(&volume_data(&new, "shop"))
    );
    assert_eq!(fixtures::state_journal(&old.path)["state"], "completed");
    assert!(
        !old.join("var/lib/migrate/reboot-pending").exists(),
        "an application's move waits for no reboot"
    );

    // shop steps back: served here again, stopped there; wiki untouched.
    let out = run(&["rollback", "--app", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("shop.service: start (the migration had stopped it)")
            && stdout.contains("shop.service: enable (the migration had disabled it)"),
        "{stdout}"
    );
    assert_eq!(
        app_phases(f, &old.path),
        phases(&[("wiki", "finished", 2), ("shop", "stepped_back", 1)])
    );
    assert_eq!(
        unit_state(&old_server, "shop.service"),
        pair("active", "enabled")
    );
    assert_eq!(
        unit_state(&new_server, "container-shop.service"),
        pair("inactive", "disabled")
    );
    assert_eq!(
        unit_state(&old_server, "wiki.service"),
        pair("inactive", "disabled")
    );
    assert_eq!(
        unit_state(&new_server, "container-wiki.service"),
        pair("active", "enabled")
    );
    assert_eq!(
        fixtures::state_journal(&old.path)["state"],
        "cutover_started",
        "a stepped-back application leaves the migration unfinished"
    );
    let r = report(&old.path).unwrap();
    fixtures::check_report_schema(&r).unwrap();
    assert_eq!(r["verb"], "step_back");
    let status = f
        .migrate()
        .args(["status", "--root"])
        .arg(&old.path)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&status.stdout);
    assert!(
        human
            .lines()
            .any(|l| l.trim_start().starts_with("shop") && l.contains("stepped back")),
        "{human}"
    );
    // A second step back finds nothing to do.
    let out = run(&["rollback", "--app", "shop"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    drop(old_server);
    drop(new_server);
}

//! `postgresql-clusters`: Debian's PostgreSQL clusters (postgresql-common)
//! moved to the new major version with `pg_upgradecluster`, once the
//! package upgrade has installed it.
//!
//! - In the check phase: every cluster, its size and the free space its
//!   method needs; an inhibitor when its file system lacks that space or
//!   its data directory is missing.
//! - In the cutover, for each cluster of a major version older than the
//!   target (the option `version`, else the newest server installed in the
//!   root): the empty cluster the new version's package created under the
//!   same name is dropped (refused if it holds anything); every table's
//!   rows are counted in the old cluster; `pg_upgradecluster --method M`
//!   moves it (same name, same port); the rows are counted again in the new
//!   cluster and must match; then the old cluster is dropped (`drop_old`) or
//!   kept (postgresql-common leaves it stopped, on another port, started
//!   manually only).
//! - A move is recorded before pg_upgradecluster runs ([`Moving`]): a rerun
//!   after a crash verifies a move that had finished, or drops the
//!   half-made new cluster and moves again.
//!
//! Clusters are started and stopped by the root's `pg_ctlcluster`, in the
//! root, inside the migration container: the root's /run is the agent's,
//! so postgresql-common does not redirect to systemd. Every cluster the
//! step started is stopped again when it ends, however it ends. On a live
//! host, a cluster the host runs (a `postmaster.pid` naming a process this
//! container does not see) is stopped first through the host's systemd
//! (`postgresql@VERSION-NAME.service`, recorded for rollback), because a
//! second server on the same data from another PID and IPC namespace would
//! corrupt it; if it still runs then, the step refuses. Once moved, the new
//! cluster's unit is started the same way, so that the service is back
//! before the reboot.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{StepContext, StepKind, service};
use crate::core::cmd::CommandExt;
use crate::core::event::{Finding, Severity, StepStatus};
use crate::core::kinds::postgres::{ClusterMethod, ClustersOptions};
use crate::core::kinds::service::Action;
use crate::core::phase::Phase;

/// One cluster, as `pg_lsclusters -h` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cluster {
    pub(crate) version: u32,
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) owner: String,
    /// The data directory, a path in the root.
    pub(crate) data: String,
}

impl Cluster {
    /// The systemd unit of postgresql-common that runs the cluster.
    fn unit(&self) -> String {
        unit_of(self.version, &self.name)
    }

    fn id(&self) -> String {
        format!("{}/{}", self.version, self.name)
    }
}

/// The systemd unit of postgresql-common that runs cluster `version`/`name`.
fn unit_of(version: u32, name: &str) -> String {
    format!("postgresql@{version}-{name}.service")
}

/// `pg_lsclusters -h`: `VERSION NAME PORT STATUS OWNER DATADIR LOGFILE`.
fn parse_clusters(text: &str) -> Vec<Cluster> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [version, name, port, _status, owner, data, ..] = w[..] else {
                return None;
            };
            Some(Cluster {
                version: version.parse().ok()?,
                name: name.to_string(),
                port: port.parse().ok()?,
                owner: owner.to_string(),
                data: data.to_string(),
            })
        })
        .collect()
}

/// The major versions whose server is installed in `root`
/// (`/usr/lib/postgresql/N/bin/postgres`), sorted.
fn installed_versions(root: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(root.join("usr/lib/postgresql"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("bin/postgres").is_file())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// Bytes allocated under `dir` (not following symbolic links).
fn allocated(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()) + m.blocks() * 512,
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The `postgresql-clusters` step.
pub(crate) struct ClustersStep {
    opts: ClustersOptions,
}

impl ClustersStep {
    pub(crate) fn new(opts: ClustersOptions) -> Self {
        Self { opts }
    }

    /// The root's clusters; none when postgresql-common is not installed.
    fn clusters(ctx: &StepContext<'_>) -> Result<Vec<Cluster>> {
        if !ctx.root().join("usr/bin/pg_lsclusters").is_file() {
            return Ok(Vec::new());
        }
        let text = ctx
            .chroot("pg_lsclusters")
            .arg("-h")
            .run_get_string()
            .context("listing the PostgreSQL clusters (pg_lsclusters)")?;
        Ok(parse_clusters(&text))
    }

    /// Space the method needs beside a cluster of `size` bytes.
    fn needs(&self, size: u64) -> u64 {
        match self.opts.method {
            ClusterMethod::Link => 0,
            // A copy of the data, and a tenth more for what the new
            // version writes itself.
            ClusterMethod::Upgrade | ClusterMethod::Dump => size + size / 10,
        }
    }

    /// Why `cluster` cannot be moved as planned, if it cannot (its data
    /// directory missing, too little free space for the method); a line
    /// saying what it holds otherwise.
    fn assess(&self, ctx: &StepContext<'_>, cluster: &Cluster) -> Result<Result<String, String>> {
        let data = ctx.path(&cluster.data)?;
        if !data.is_dir() {
            return Ok(Err(format!(
                "cluster {}: its data directory {} is missing",
                cluster.id(),
                cluster.data
            )));
        }
        let size = allocated(&data);
        let st = nix::sys::statvfs::statvfs(&data)
            .with_context(|| format!("statvfs {}", data.display()))?;
        let free = st.blocks_available() * st.fragment_size();
        let need = self.needs(size);
        let mb = |b: u64| b as f64 / 1e6;
        if free < need {
            return Ok(Err(format!(
                "cluster {} holds {:.0} MB in {}; its file system has {:.0} MB free and method \"{}\" needs {:.0} MB",
                cluster.id(),
                mb(size),
                cluster.data,
                mb(free),
                self.opts.method.name(),
                mb(need)
            )));
        }
        Ok(Ok(format!(
            "cluster {} (port {}): {:.1} MB in {}, {:.0} MB free; method \"{}\"",
            cluster.id(),
            cluster.port,
            mb(size),
            cluster.data,
            mb(free),
            self.opts.method.name()
        )))
    }

    /// The clusters to move: older than the target version, which is the
    /// plan's, else the newest installed (`None` when nothing is).
    fn to_move(&self, ctx: &StepContext<'_>, clusters: &[Cluster]) -> (Option<u32>, Vec<Cluster>) {
        let target = self
            .opts
            .version
            .or_else(|| installed_versions(ctx.root()).last().copied());
        let old = clusters
            .iter()
            .filter(|c| target.is_some_and(|t| c.version < t))
            .cloned()
            .collect();
        (target, old)
    }

    fn check(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let clusters = Self::clusters(ctx)?;
        if clusters.is_empty() {
            ctx.say("no PostgreSQL cluster in the root");
            return Ok(StepStatus::Succeeded);
        }
        // Before the package upgrade the target's server is not installed
        // yet: every cluster not of the plan's version will move.
        let moving = clusters
            .iter()
            .filter(|c| self.opts.version != Some(c.version));
        let mut problems = Vec::new();
        for cluster in moving {
            match self.assess(ctx, cluster)? {
                Ok(line) => ctx.say(line),
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            ctx.finding(Finding {
                id: "postgresql-clusters".into(),
                severity: Severity::Inhibitor,
                message: problems.join("; "),
                hint: "free space where the cluster is, or set method = \"link\" on the postgresql-clusters step".into(),
            });
        }
        Ok(StepStatus::Succeeded)
    }
}

/// The clusters a step started, stopped again when it is dropped.
struct Started<'a> {
    ctx: &'a StepContext<'a>,
    clusters: Vec<Cluster>,
}

impl Started<'_> {
    fn start(&mut self, cluster: &Cluster) -> Result<()> {
        pg_ctl(self.ctx, cluster, "start")?;
        self.clusters.push(cluster.clone());
        Ok(())
    }

    /// `pg_dropcluster --stop`: the cluster stopped and gone, no longer
    /// this step's to stop.
    fn drop_cluster(&mut self, cluster: &Cluster) -> Result<()> {
        self.ctx
            .run(self.ctx.chroot("pg_dropcluster").args([
                "--stop",
                &cluster.version.to_string(),
                &cluster.name,
            ]))
            .with_context(|| format!("dropping cluster {}", cluster.id()))?;
        self.clusters.retain(|c| c != cluster);
        Ok(())
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        for c in self.clusters.iter().rev() {
            let pid = self
                .ctx
                .path(&c.data)
                .map(|d| d.join("postmaster.pid").exists());
            if pid.unwrap_or(false) {
                match pg_ctl(self.ctx, c, "stop") {
                    Ok(()) => self.ctx.say(format!("cluster {} stopped", c.id())),
                    Err(e) => self.ctx.say(format!("stopping cluster {}: {e:#}", c.id())),
                }
            }
        }
    }
}

/// Whose server a cluster's `postmaster.pid` names.
enum Postmaster {
    /// No `postmaster.pid`: the cluster is down.
    None,
    /// A process of this container (the agent's PID namespace).
    Here,
    /// A process this container does not see (the host's, on a live
    /// host), or a stale file.
    Elsewhere(String),
}

fn postmaster(ctx: &StepContext<'_>, cluster: &Cluster) -> Result<Postmaster> {
    read_postmaster(
        &ctx.path(&cluster.data)?,
        &ctx.root().join(cluster.data.trim_start_matches('/')),
    )
}

/// Whose server the `postmaster.pid` of `data` names: ours when that process
/// works in `seen_as` (the data directory as this container sees it). The
/// file is read bounded: a FIFO, or anything but a small regular file, is
/// refused naming it.
fn read_postmaster(data: &Path, seen_as: &Path) -> Result<Postmaster> {
    let file = data.join("postmaster.pid");
    let Some(text) = crate::core::fsutil::read_text_limited(&file, 64 << 10)? else {
        return Ok(Postmaster::None);
    };
    let pid = text.lines().next().unwrap_or_default().trim().to_string();
    let ours = !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && std::fs::read_link(Path::new("/proc").join(&pid).join("cwd"))
            .is_ok_and(|cwd| cwd == seen_as);
    Ok(if ours {
        Postmaster::Here
    } else {
        Postmaster::Elsewhere(pid)
    })
}

/// Removes the `postmaster.pid` a server killed with an earlier migration
/// container left in a root directory (on a live host, a server this
/// container does not see is the host's, never stale to this step).
fn clear_stale(ctx: &StepContext<'_>, cluster: &Cluster) -> Result<()> {
    if ctx.run.live {
        return Ok(());
    }
    if let Postmaster::Elsewhere(pid) = postmaster(ctx, cluster)? {
        let file = ctx.path(&cluster.data)?.join("postmaster.pid");
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        ctx.say(format!(
            "cluster {}: removed the postmaster.pid of a server the interrupted attempt ran (pid {pid})",
            cluster.id()
        ));
    }
    Ok(())
}

/// `pg_ctlcluster VERSION NAME ACTION` in the root, never through systemd.
fn pg_ctl(ctx: &StepContext<'_>, cluster: &Cluster, action: &str) -> Result<()> {
    ctx.run(ctx.chroot("pg_ctlcluster").args([
        "--skip-systemctl-redirect",
        &cluster.version.to_string(),
        &cluster.name,
        action,
    ]))
    .with_context(|| format!("pg_ctlcluster {} {action}", cluster.id()))
}

/// Rows of `sql` run by the cluster's owner with the root's psql.
fn psql(ctx: &StepContext<'_>, cluster: &Cluster, db: &str, sql: &str) -> Result<Vec<String>> {
    let text = ctx
        .chroot("runuser")
        .args(["-u", &cluster.owner, "--", "psql", "-X", "-A", "-t", "-q"])
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-p",
            &cluster.port.to_string(),
            "-d",
            db,
            "-c",
            sql,
        ])
        .run_get_string()
        .with_context(|| format!("querying cluster {} (database {db})", cluster.id()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The databases a cluster serves (template0, which takes no connection,
/// and template1 left out).
const DATABASES_SQL: &str =
    "SELECT datname FROM pg_database WHERE datallowconn AND datname <> 'template1' ORDER BY 1";

/// The row count of every table of every database, by `database:table`.
fn row_counts(ctx: &StepContext<'_>, cluster: &Cluster) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for db in psql(ctx, cluster, "postgres", DATABASES_SQL)? {
        let tables = psql(ctx, cluster, &db, super::postgres::TABLES_SQL)?;
        // One query per database, in chunks: `SELECT i, count(*) FROM t`.
        for (chunk_no, chunk) in tables.chunks(200).enumerate() {
            let sql = chunk
                .iter()
                .enumerate()
                .map(|(i, t)| format!("SELECT {}, count(*) FROM {t}", chunk_no * 200 + i))
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            for row in psql(ctx, cluster, &db, &sql)? {
                let (i, n) = row
                    .split_once('|')
                    .with_context(|| format!("unexpected psql row {row:?}"))?;
                let table = i
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| tables.get(i))
                    .with_context(|| format!("unexpected psql row {row:?}"))?;
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("unexpected psql row {row:?}"))?;
                out.insert(format!("{db}:{}", table.replace('"', "")), n);
            }
        }
    }
    Ok(out)
}

/// A move begun, recorded in the step's backup directory before
/// pg_upgradecluster runs and removed once the new cluster is verified: a
/// rerun after a crash tells from it whether pg_upgradecluster finished.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Moving {
    /// The old cluster's port before the move (the new one's after).
    port: u16,
    /// The old cluster's start mode before the move (`start.conf`).
    start: String,
    /// Rows per table in the old cluster before the move.
    rows: BTreeMap<String, u64>,
}

/// The cluster's `start.conf`, a path in the root.
fn start_conf(cluster: &Cluster) -> String {
    format!(
        "/etc/postgresql/{}/{}/start.conf",
        cluster.version, cluster.name
    )
}

/// The cluster's start mode (`auto`, `manual`, `disabled`); `auto` when its
/// `start.conf` says nothing, as postgresql-common reads it.
fn start_mode(ctx: &StepContext<'_>, cluster: &Cluster) -> Result<String> {
    let text = crate::core::fsutil::read_text_limited(&ctx.path(&start_conf(cluster))?, 64 << 10)?
        .unwrap_or_default();
    Ok(parse_start_mode(&text))
}

/// The first word of a `start.conf` that is not a comment.
fn parse_start_mode(text: &str) -> String {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find(|l| !l.is_empty())
        .unwrap_or("auto")
        .to_string()
}

/// What differs between the row counts before and after.
fn differences(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    let mut out = Vec::new();
    for (table, n) in before {
        match after.get(table) {
            None => out.push(format!("{table} is missing")),
            Some(m) if m != n => out.push(format!("{table} has {m} rows, {n} before")),
            Some(_) => {}
        }
    }
    out
}

/// The record of the clusters the step stopped on the running host, in
/// its backup directory: `[[VERSION, "NAME"], ...]`.
const STOPPED_ON_HOST: &str = "stopped-on-host.json";

/// The clusters an earlier attempt stopped on the host, if it recorded any.
fn stopped_on_host(record: &Path) -> Result<Vec<(u32, String)>> {
    match crate::core::fsutil::read_limited(record, 1 << 20)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a record of stopped clusters", record.display())),
        None => Ok(Vec::new()),
    }
}

/// The name of the record of `cluster`'s move, in the step's backup
/// directory.
fn move_record(cluster: &Cluster) -> String {
    format!("moving-{}-{}.json", cluster.version, cluster.name)
}

/// The cluster (version, name) a record of a move is named after
/// ([`move_record`]).
fn moved_cluster(file_name: &str) -> Option<(u32, &str)> {
    let rest = file_name.strip_prefix("moving-")?.strip_suffix(".json")?;
    let (version, name) = rest.split_once('-')?;
    Some((version.parse().ok()?, name)).filter(|(_, n)| !n.is_empty())
}

/// Removes the records of moves whose old cluster is gone: an attempt
/// interrupted after it dropped the old cluster (only ever dropped once
/// its successor was verified) left its record behind.
fn forget_finished_moves(ctx: &StepContext<'_>, clusters: &[Cluster]) -> Result<()> {
    let dir = ctx.backup_dir()?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.filter_map(std::result::Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((version, cluster)) = moved_cluster(&name) else {
            continue;
        };
        if clusters
            .iter()
            .any(|c| c.version == version && c.name == cluster)
        {
            continue;
        }
        remove_record(&e.path())?;
        ctx.say(format!(
            "cluster {version}/{cluster}: an interrupted attempt had moved and dropped it; its record of the move removed"
        ));
    }
    Ok(())
}

fn remove_record(record: &Path) -> Result<()> {
    match std::fs::remove_file(record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", record.display()))
        }
        _ => Ok(()),
    }
}

/// Which version of a cluster stopped on the host to start again: the
/// target's once the cluster moved there (which also stands for an empty
/// default cluster of that version dropped to make room), else its own.
fn version_to_start(stopped: u32, target: u32, moved: bool) -> u32 {
    if stopped < target && moved {
        target
    } else {
        stopped
    }
}

/// Starts every cluster in `stopped` on the running host again, each once;
/// one that does not start is a warning (it starts at the next boot).
fn start_on_host(ctx: &StepContext<'_>, target: u32, stopped: &[(u32, String)]) -> Result<()> {
    let mut again: Vec<(u32, &str)> = Vec::new();
    for (version, name) in stopped {
        let moved = ctx
            .path(&format!("etc/postgresql/{target}/{name}"))?
            .is_dir();
        let now = (version_to_start(*version, target, moved), name.as_str());
        if !again.contains(&now) {
            again.push(now);
        }
    }
    for (version, name) in again {
        let id = format!("{version}/{name}");
        let unit = unit_of(version, name);
        match service::act_live(ctx, Action::Start, &unit, Duration::from_secs(120)) {
            Ok(_) => ctx.say(format!("cluster {id} started on the host ({unit})")),
            Err(e) => ctx.finding(Finding {
                id: format!("postgresql.{id}"),
                severity: Severity::Warning,
                message: format!("cluster {id} did not start again on the host ({unit}): {e:#}"),
                hint: format!("it starts at the next boot; journalctl -u {unit} tells why"),
            }),
        }
    }
    Ok(())
}

impl ClustersStep {
    fn upgrade(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let clusters = Self::clusters(ctx)?;
        let (target, old) = self.to_move(ctx, &clusters);
        let Some(target) = target else {
            ctx.say("no PostgreSQL server is installed in the root");
            return Ok(StepStatus::Succeeded);
        };
        let stopped_record = ctx.backup_dir()?.join(STOPPED_ON_HOST);
        let mut restart = stopped_on_host(&stopped_record)?;
        forget_finished_moves(ctx, &clusters)?;
        if old.is_empty() {
            ctx.say(format!("no PostgreSQL cluster older than {target}"));
            // An earlier attempt moved them and was interrupted before it
            // started again what it had stopped on the host.
            start_on_host(ctx, target, &restart)?;
            remove_record(&stopped_record)?;
            return Ok(StepStatus::Succeeded);
        }
        if !installed_versions(ctx.root()).contains(&target) {
            bail!(
                "PostgreSQL {target} is not installed in the root; the package upgrade should have installed it"
            );
        }
        // Validate every cluster first: nothing changes unless all can move.
        let mut ours = Vec::new();
        let mut on_host = Vec::new();
        for cluster in &clusters {
            match postmaster(ctx, cluster)? {
                Postmaster::Here => ours.push(cluster),
                Postmaster::Elsewhere(pid) if ctx.run.live => on_host.push((cluster, pid)),
                Postmaster::Elsewhere(_) | Postmaster::None => {}
            }
        }
        for cluster in &old {
            if let Err(problem) = self.assess(ctx, cluster)? {
                bail!("{problem}");
            }
        }
        // Served by the running host: stopped through its systemd (recorded
        // for rollback), and the moved cluster started the same way after;
        // recorded in the backup directory too, so that a rerun after a
        // crash starts them as well (it finds them stopped).
        for (cluster, pid) in on_host {
            let unit = cluster.unit();
            let before = service::act_live(ctx, Action::Stop, &unit, Duration::from_secs(120))
                .with_context(|| {
                    format!(
                        "cluster {} runs on the host (postmaster pid {pid}): stopping {unit}",
                        cluster.id()
                    )
                })?;
            if !matches!(postmaster(ctx, cluster)?, Postmaster::None) {
                bail!(
                    "cluster {} still runs after {unit} stopped (postmaster pid {pid}): stop PostgreSQL on the host first (a `service` step before this one)",
                    cluster.id()
                );
            }
            ctx.say(format!(
                "cluster {} ran on the host: {unit} stopped",
                cluster.id()
            ));
            let id = (cluster.version, cluster.name.clone());
            if before.active == "active" && !restart.contains(&id) {
                restart.push(id);
                crate::core::fsutil::write_atomic(
                    &stopped_record,
                    &serde_json::to_vec(&restart).context("recording the stopped clusters")?,
                )?;
            }
        }
        // Started in this container by a package's maintainer scripts
        // during the upgrade: stopped before the clusters move.
        for cluster in ours {
            pg_ctl(ctx, cluster, "stop")?;
            ctx.say(format!(
                "cluster {} ran in the migration container (started by its package's scripts): stopped",
                cluster.id()
            ));
        }
        // The socket directory, on the agent's /run of the root.
        ctx.run(ctx.chroot("install").args([
            "-d",
            "-o",
            "postgres",
            "-g",
            "postgres",
            "-m",
            "2775",
            "/run/postgresql",
        ]))
        .context("creating /run/postgresql")?;
        {
            let mut started = Started {
                ctx,
                clusters: Vec::new(),
            };
            for cluster in &old {
                self.move_one(ctx, &mut started, &clusters, cluster, target)?;
            }
        }
        start_on_host(ctx, target, &restart)?;
        remove_record(&stopped_record)?;
        Ok(StepStatus::Succeeded)
    }

    fn move_one(
        &self,
        ctx: &StepContext<'_>,
        started: &mut Started<'_>,
        clusters: &[Cluster],
        cluster: &Cluster,
        target: u32,
    ) -> Result<()> {
        let marker = ctx.backup_dir()?.join(move_record(cluster));
        let begun: Option<Moving> = match crate::core::fsutil::read_limited(&marker, 1 << 20)? {
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a record of a move", marker.display()))?,
            ),
            None => None,
        };
        let existing = clusters
            .iter()
            .find(|c| c.version == target && c.name == cluster.name);
        let (before, new) = match (begun, existing) {
            // pg_upgradecluster had finished (the new cluster took the old
            // one's port last) when an earlier attempt was interrupted.
            (Some(moving), Some(new)) if new.port == moving.port => {
                clear_stale(ctx, cluster)?;
                clear_stale(ctx, new)?;
                ctx.say(format!(
                    "cluster {}: an interrupted attempt had moved it to {} already; verifying that",
                    cluster.id(),
                    new.id()
                ));
                if !matches!(postmaster(ctx, new)?, Postmaster::Here) {
                    started.start(new)?;
                }
                (moving.rows, new.clone())
            }
            // Interrupted inside pg_upgradecluster: its new cluster is half
            // made; the old one is as it was (but for the port and the
            // start mode pg_upgradecluster may have changed last).
            (Some(moving), half) => {
                clear_stale(ctx, cluster)?;
                if let Some(half) = half {
                    clear_stale(ctx, half)?;
                }
                self.undo(ctx, started, cluster, half, target, &moving)?;
                let restored = Cluster {
                    port: moving.port,
                    ..cluster.clone()
                };
                self.begin(ctx, started, &restored, target, &marker)?
            }
            (None, Some(fresh)) => {
                // The package of the new version made a default cluster of
                // the same name: pg_upgradecluster needs the name free.
                self.drop_if_empty(ctx, started, fresh, cluster, target)?;
                self.begin(ctx, started, cluster, target, &marker)?
            }
            (None, None) => self.begin(ctx, started, cluster, target, &marker)?,
        };
        let after = row_counts(ctx, &new)?;
        let problems = differences(&before, &after);
        if !problems.is_empty() {
            bail!(
                "cluster {} differs from {} after the upgrade: {}; the old cluster is kept",
                new.id(),
                cluster.id(),
                problems.join("; ")
            );
        }
        ctx.say(format!(
            "cluster {} on port {}: the same {} tables and {} rows as {}",
            new.id(),
            new.port,
            after.len(),
            after.values().sum::<u64>(),
            cluster.id()
        ));
        if self.opts.drop_old {
            started.drop_cluster(cluster)?;
            ctx.say(format!("dropped the old cluster {}", cluster.id()));
        } else if let Some(kept) = Self::clusters(ctx)?
            .iter()
            .find(|c| c.version == cluster.version && c.name == cluster.name)
        {
            ctx.say(format!(
                "kept the old cluster {} (port {}, stopped, started manually only)",
                kept.id(),
                kept.port
            ));
        }
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        Ok(())
    }

    /// Drops `fresh`, the cluster the new version's package created under
    /// the name `cluster` needs, refusing if it holds anything.
    fn drop_if_empty(
        &self,
        ctx: &StepContext<'_>,
        started: &mut Started<'_>,
        fresh: &Cluster,
        cluster: &Cluster,
        target: u32,
    ) -> Result<()> {
        started.start(fresh)?;
        let databases: Vec<String> = psql(ctx, fresh, "postgres", DATABASES_SQL)?
            .into_iter()
            .filter(|d| d != "postgres")
            .collect();
        let tables = psql(ctx, fresh, "postgres", super::postgres::TABLES_SQL)?;
        if !databases.is_empty() || !tables.is_empty() {
            bail!(
                "cluster {} already holds data ({}); pg_upgradecluster needs the name {} free: move or drop that cluster first",
                fresh.id(),
                databases
                    .into_iter()
                    .chain(tables)
                    .collect::<Vec<_>>()
                    .join(", "),
                cluster.name
            );
        }
        started.drop_cluster(fresh)?;
        ctx.say(format!(
            "dropped the empty cluster {} that the PostgreSQL {target} package created",
            fresh.id()
        ));
        Ok(())
    }

    /// Counts the rows of `cluster`, records the move as begun (`marker`)
    /// and moves it with pg_upgradecluster: the rows before, the new
    /// cluster (running, this step's to stop).
    fn begin(
        &self,
        ctx: &StepContext<'_>,
        started: &mut Started<'_>,
        cluster: &Cluster,
        target: u32,
        marker: &Path,
    ) -> Result<(BTreeMap<String, u64>, Cluster)> {
        started.start(cluster)?;
        let before = row_counts(ctx, cluster)?;
        ctx.say(format!(
            "cluster {}: {} tables, {} rows",
            cluster.id(),
            before.len(),
            before.values().sum::<u64>()
        ));
        let moving = Moving {
            port: cluster.port,
            start: start_mode(ctx, cluster)?,
            rows: before.clone(),
        };
        crate::core::fsutil::write_atomic(marker, &serde_json::to_vec_pretty(&moving)?)?;
        ctx.run(ctx.chroot("pg_upgradecluster").args([
            "--method",
            self.opts.method.name(),
            "-v",
            &target.to_string(),
            &cluster.version.to_string(),
            &cluster.name,
        ]))
        .with_context(|| format!("pg_upgradecluster {}", cluster.id()))?;
        let new = Self::clusters(ctx)?
            .into_iter()
            .find(|c| c.version == target && c.name == cluster.name)
            .with_context(|| {
                format!(
                    "pg_upgradecluster made no cluster {target}/{}",
                    cluster.name
                )
            })?;
        // pg_upgradecluster starts the new cluster as the old one ran; it
        // is this step's to stop either way.
        if ctx.path(&new.data)?.join("postmaster.pid").exists() {
            started.clusters.push(new.clone());
        } else {
            started.start(&new)?;
        }
        Ok((before, new))
    }

    /// Puts back what an interrupted pg_upgradecluster left: its half-made
    /// cluster removed (`half` if postgresql-common lists it, else what
    /// pg_createcluster had made of it: the data directory initdb filled,
    /// its configuration directory), the old cluster's port and start mode
    /// as `moving` recorded them. Refused when the old cluster's files were
    /// already linked into the new one (method `link`): it cannot run again.
    fn undo(
        &self,
        ctx: &StepContext<'_>,
        started: &mut Started<'_>,
        cluster: &Cluster,
        half: Option<&Cluster>,
        target: u32,
        moving: &Moving,
    ) -> Result<()> {
        let new_id = format!("{target}/{}", cluster.name);
        if ctx
            .path(&cluster.data)?
            .join("global/pg_control.old")
            .exists()
        {
            bail!(
                "cluster {}: an interrupted pg_upgrade --link had begun linking its files into {}; the old cluster cannot run again: restore it from the safety backup (migrate rollback)",
                cluster.id(),
                new_id
            );
        }
        let mut removed = false;
        if let Some(half) = half {
            started.drop_cluster(half)?;
            removed = true;
        } else {
            for dir in [
                format!("/var/lib/postgresql/{new_id}"),
                format!("/etc/postgresql/{new_id}"),
            ] {
                let path = ctx.path(&dir)?;
                if std::fs::symlink_metadata(&path).is_ok() {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    removed = true;
                }
            }
        }
        if cluster.port != moving.port {
            ctx.run(ctx.chroot("pg_conftool").args([
                &cluster.version.to_string(),
                &cluster.name,
                "set",
                "port",
                &moving.port.to_string(),
            ]))
            .with_context(|| format!("setting the port of {} back", cluster.id()))?;
        }
        if start_mode(ctx, cluster)? != moving.start {
            crate::core::fsutil::write_atomic(
                &ctx.path(&start_conf(cluster))?,
                format!("{}\n", moving.start).as_bytes(),
            )?;
        }
        ctx.say(format!(
            "cluster {}: a move interrupted inside pg_upgradecluster {}, the old cluster back on port {} ({}), moving again",
            cluster.id(),
            if removed {
                format!("left {new_id} half made: removed it")
            } else {
                format!("had not made {new_id} yet")
            },
            moving.port,
            moving.start
        ));
        Ok(())
    }
}

impl StepKind for ClustersStep {
    fn describe(&self) -> String {
        format!(
            "Move the PostgreSQL clusters to the new major version (pg_upgradecluster, method {})",
            self.opts.method.name()
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        match ctx.step.phase {
            Phase::Check => self.check(ctx),
            _ => self.upgrade(ctx),
        }
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        let clusters = Self::clusters(ctx)?;
        if clusters.is_empty() {
            ctx.say("would do nothing: no PostgreSQL cluster in the root");
            return Ok(());
        }
        let drop = if self.opts.drop_old { "drop" } else { "keep" };
        for c in clusters
            .iter()
            .filter(|c| self.opts.version != Some(c.version))
        {
            ctx.say(format!(
                "would move cluster {} (port {}) to the new major version with method \"{}\" once it is installed, compare every table's rows, then {drop} the old cluster",
                c.id(),
                c.port,
                self.opts.method.name()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_read_from_pg_lsclusters() {
        let text = "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log\n\
                    17 main 5433 online,recovery postgres /var/lib/postgresql/17/main /var/log/postgresql/postgresql-17-main.log\n\
                    garbage\n";
        let c = parse_clusters(text);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[0].version,
                c[0].name.as_str(),
                c[0].port,
                c[0].data.as_str()
            ),
            (15, "main", 5432, "/var/lib/postgresql/15/main")
        );
        assert_eq!(c[1].id(), "17/main");
    }

    #[test]
    fn postmaster_pid_files_are_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let here = std::env::current_dir().unwrap();
        assert!(matches!(
            read_postmaster(data, &here).unwrap(),
            Postmaster::None
        ));
        let pid = data.join("postmaster.pid");
        std::fs::write(&pid, format!("{}\n/var/lib/x\n", std::process::id())).unwrap();
        assert!(matches!(
            read_postmaster(data, &here).unwrap(),
            Postmaster::Here
        ));
        std::fs::write(&pid, "999999999\n").unwrap();
        assert!(matches!(
            read_postmaster(data, &here).unwrap(),
            Postmaster::Elsewhere(p) if p == "999999999"
        ));
        // A hostile root's FIFO in its place: refused, not waited on.
        std::fs::remove_file(&pid).unwrap();
        nix::unistd::mkfifo(&pid, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_postmaster(data, &here).err().unwrap();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }

    #[test]
    fn a_cluster_stopped_on_the_host_starts_again_as_its_new_version_once_moved() {
        assert_eq!(version_to_start(15, 17, true), 17);
        assert_eq!(version_to_start(15, 17, false), 15);
        // A cluster of the target version (e.g. the empty default one
        // dropped to make room) stands for the moved one.
        assert_eq!(version_to_start(17, 17, true), 17);
        assert_eq!(version_to_start(17, 17, false), 17);
    }

    #[test]
    fn records_of_moves_name_their_cluster() {
        assert_eq!(moved_cluster("moving-15-main.json"), Some((15, "main")));
        assert_eq!(moved_cluster("moving-15-my-db.json"), Some((15, "my-db")));
        assert_eq!(moved_cluster("moving-15-.json"), None);
        assert_eq!(moved_cluster("moving-x-main.json"), None);
        assert_eq!(moved_cluster("stopped-on-host.json"), None);
    }

    #[test]
    fn the_start_mode_is_the_first_word_that_is_no_comment() {
        let shipped = "# Automatic startup configuration\n#   auto: automatically start the cluster\n# Default: auto\n\nmanual\n";
        assert_eq!(parse_start_mode(shipped), "manual");
        assert_eq!(parse_start_mode("auto # as installed\n"), "auto");
        assert_eq!(parse_start_mode("# nothing but comments\n"), "auto");
        assert_eq!(parse_start_mode(""), "auto");
    }

    #[test]
    fn row_counts_must_match() {
        let before: BTreeMap<String, u64> = [("app:public.items", 3), ("app:public.users", 2)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let mut after = before.clone();
        assert!(differences(&before, &after).is_empty());
        after.insert("app:public.items".into(), 2);
        after.remove("app:public.users");
        assert_eq!(
            differences(&before, &after),
            [
                "app:public.items has 2 rows, 3 before",
                "app:public.users is missing"
            ]
        );
    }

    #[test]
    fn the_method_decides_the_space_needed() {
        let step = |method| {
            ClustersStep::new(ClustersOptions {
                method,
                ..Default::default()
            })
        };
        assert_eq!(step(ClusterMethod::Link).needs(1000), 0);
        assert_eq!(step(ClusterMethod::Upgrade).needs(1000), 1100);
        assert_eq!(step(ClusterMethod::Dump).needs(1000), 1100);
    }
}

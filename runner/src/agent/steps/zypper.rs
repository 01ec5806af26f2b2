//! SUSE-family upgrades with zypper, run from the migration image against the
//! root (`zypper --root /system-root`), as SUSE's own container migration does.
//!
//! Two modes, chosen in the plan:
//! - `dup`: the plan switches the repositories (or sets `releasever` for
//!   repository URLs that use `$releasever`); everything is downloaded against
//!   the switched configuration before the root changes, then `zypper dup`
//!   installs from the cache.
//! - `migration`: `zypper migration` (SUSE's product migration, through
//!   the registration server) to `product`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::packages::{Fate, Foreign, PackageManager, Refreshed, SpaceEstimate, parse_size};
use super::rpm::{self, RepoDir, run_pm};
use super::rpm_keys;
use super::rpm_repos;
use super::{RunContext, StepContext, StepKind};
use crate::agent::exec::ToolFailed;
use crate::core::cmd::{CommandExt, ToolOutput, failure_detail};
use crate::core::event::StepStatus;
use crate::core::kinds::packages::{RepoChange, ZypperMode, ZypperOptions};

/// Repository files in the root.
pub(crate) const REPOS: RepoDir = RepoDir {
    in_root: "etc/zypp/repos.d",
};
/// Scratch area in the container (metadata, solver cache, switched repos).
const SCRATCH: &str = "/run/migrate/zypp";

/// The `zypper` step.
pub(crate) struct ZypperStep {
    opts: ZypperOptions,
}

impl ZypperStep {
    /// From the step's options.
    pub(crate) fn new(opts: ZypperOptions) -> Self {
        Self { opts }
    }
}

/// zypper's record of the packages its solver installed automatically.
const AUTO_INSTALLED: &str = "var/lib/zypp/AutoInstalled";

/// A file as it was: its bytes and times, or that there was none.
struct Recorded(Option<(Vec<u8>, std::fs::Metadata)>);

impl Recorded {
    fn take(path: &Path) -> Self {
        Recorded(
            std::fs::read(path)
                .ok()
                .zip(std::fs::symlink_metadata(path).ok()),
        )
    }

    /// Makes `path` what it was, if it changed (its times included).
    fn put_back(&self, path: &Path) -> Result<()> {
        match &self.0 {
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Some((bytes, _)) if std::fs::read(path).ok().as_ref() == Some(bytes) => Ok(()),
            Some((bytes, meta)) => {
                std::fs::write(path, bytes)?;
                let at = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
                use std::os::unix::fs::MetadataExt;
                nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    path,
                    &at(meta.atime(), meta.atime_nsec()),
                    &at(meta.mtime(), meta.mtime_nsec()),
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )?;
                Ok(())
            }
        }
    }
}

/// The flags of a distribution upgrade (after `dup`).
const DUP_FLAGS: [&str; 4] = [
    "--auto-agree-with-licenses",
    "--allow-vendor-change",
    "--replacefiles",
    "--allow-downgrade",
];

/// zypper's exit codes (zypper(8)): 0 and the informational 100-series
/// codes 100-103 and 107 are success; 1-8, 104, 105 and 106 are failures.
pub(crate) fn exit_meaning(code: i32) -> (bool, &'static str) {
    match code {
        0 => (true, "success"),
        1 => (false, "internal error"),
        2 => (false, "syntax error"),
        3 => (false, "invalid arguments"),
        4 => (
            false,
            "a problem reported by libzypp, such as an unsolvable dependency",
        ),
        5 => (false, "insufficient privileges"),
        6 => (false, "no repositories are defined"),
        7 => (false, "the package manager is locked by another process"),
        8 => (false, "the installation of packages failed"),
        100 => (true, "patches are available"),
        101 => (true, "security patches are available"),
        102 => (true, "a reboot is needed"),
        103 => (true, "the package manager itself was updated"),
        104 => (false, "a requested capability was not found"),
        105 => (false, "cancelled by a signal"),
        106 => (
            false,
            "repositories were skipped because they could not be refreshed",
        ),
        107 => (true, "an RPM scriptlet failed"),
        _ => (false, "an unknown exit code"),
    }
}

/// zypper's exit codes that count as success.
const OK_CODES: [i32; 6] = [0, 100, 101, 102, 103, 107];

/// Lines that say why zypper failed.
fn notable(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("Problem:")
        || l.contains("(curl) error")
        || l.contains("Signature verification failed")
        || l.contains("temporarily unaccessible")
        || l.contains("not found on medium")
        || l.starts_with("Error")
        || l.starts_with("ABORT")
        || l.contains("No migration available")
}

/// Adds the meaning of zypper's exit code to its failure.
fn explain(what: &str, e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<ToolFailed>() {
        Some(f) => {
            let code = f.code.unwrap_or(-1);
            let hint = rpm_keys::hint(&f.detail);
            anyhow::anyhow!(
                "zypper {what} failed with exit code {code} ({}){}{hint}",
                exit_meaning(code).1,
                f.detail
            )
        }
        None => e,
    }
}

/// Where zypper keeps downloaded packages.
#[derive(Clone, Copy)]
enum PackageCache {
    /// The root's own cache (`/var/cache/zypp/packages`): the upgrade.
    Root,
    /// The scratch area: questions that download nothing must not create
    /// anything in the root.
    Scratch,
}

/// zypper pointed at the root, with metadata and solver caches in the scratch
/// area.
fn zypper(root: &Path, reposd: &Path, releasever: Option<&str>, cache: PackageCache) -> Command {
    zypper_cached_in(root, reposd, releasever, cache, SCRATCH)
}

/// [`zypper`] with its metadata and solver caches in `cache_dir`.
fn zypper_cached_in(
    root: &Path,
    reposd: &Path,
    releasever: Option<&str>,
    cache: PackageCache,
    cache_dir: &str,
) -> Command {
    let mut cmd = Command::new("zypper");
    // No --gpg-auto-import-keys: only keys in the root's rpm database and
    // the plan's trusted keys (see rpm_keys) are trusted.
    cmd.args(["--non-interactive", "--no-color"])
        .arg("--root")
        .arg(root)
        .arg("--reposd-dir")
        .arg(reposd)
        // All caches in the scratch area: with only the raw, solv and package
        // cache directories moved, zypper still creates its default cache
        // directory under the root.
        .args(["--cache-dir", cache_dir]);
    if let PackageCache::Root = cache {
        cmd.arg("--pkg-cache-dir")
            .arg(root.join("var/cache/zypp/packages"));
    }
    if let Some(v) = releasever {
        cmd.args(["--releasever", v]);
    }
    cmd
}

/// The download pass: every package the upgrade installs, from the
/// switched repositories into the root's package cache. zypper records its
/// solver's auto-installed set in the root even then: it is put back when
/// the pass fails, and after it when `keep_package_state` (a prefetch in the
/// sync phase leaves the packages' state as it was). The switched
/// repository files.
fn download_pass(
    ctx: &StepContext<'_>,
    opts: &ZypperOptions,
    changes: &[RepoChange],
    releasever: Option<&str>,
    keep_package_state: bool,
) -> Result<super::repofile::RepoFiles> {
    let root = ctx.root();
    rpm_keys::trust_for_questions(root, &opts.trusted_keys)?;
    let scratch = prepare_scratch(root)?;
    let (files, changes) = REPOS.switched(root, changes)?;
    for c in &changes {
        ctx.say(c.clone());
    }
    RepoDir::write_scratch(&files, &scratch)?;
    let auto_installed = crate::core::rootfs::resolve(root, AUTO_INSTALLED)?;
    let before = Recorded::take(&auto_installed);
    let downloaded = run_pm(
        ctx,
        zypper(root, &scratch, releasever, PackageCache::Root)
            .arg("dup")
            .args(DUP_FLAGS)
            .arg("--download-only"),
        &notable,
        &OK_CODES,
    );
    if downloaded.is_err() || keep_package_state {
        if let Err(r) = before.put_back(&auto_installed) {
            tracing::warn!("restoring /{AUTO_INSTALLED}: {r:#}");
        }
    }
    downloaded.map_err(|e| explain("dup (download)", e))?;
    Ok(files)
}

/// Creates the scratch directories zypper needs: in the container, and the
/// solver cache of the installed system under the root (zypper puts that one
/// below `--root`; the root's /run is the agent's tmpfs).
fn prepare_scratch(root: &Path) -> Result<PathBuf> {
    prepare_cache(root, SCRATCH)?;
    Ok(PathBuf::from(SCRATCH).join("repos.d"))
}

/// The directories of a zypper cache (`--cache-dir`) for `root`.
fn prepare_cache(root: &Path, cache_dir: &str) -> Result<()> {
    for dir in [
        PathBuf::from(cache_dir).join("raw"),
        PathBuf::from(cache_dir).join("solv"),
        root.join(cache_dir.trim_start_matches('/')).join("solv"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

impl StepKind for ZypperStep {
    fn tools(&self) -> Vec<String> {
        vec!["zypper".into(), "rpm".into()]
    }

    fn describe(&self) -> String {
        match self.opts.mode {
            ZypperMode::Migration => format!(
                "Migrate the product with zypper migration to {}",
                self.opts.product.as_deref().unwrap_or("?")
            ),
            _ => "Upgrade the distribution with zypper dup".to_string(),
        }
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let root = ctx.root();
        rpm::back_up_dirs(ctx, &[REPOS.in_root, "etc/products.d"])?;
        if self.opts.mode == ZypperMode::Migration {
            self.trust_in_root(ctx)?;
            return self.migration(ctx);
        }
        // 1. Everything downloaded against the switched repositories (what
        //    a prefetch step downloaded earlier is found in the cache); the
        //    root is not changed if this fails.
        let pm = ctx
            .run
            .packages()?
            .zypper()
            .context("the zypper step needs zypper as the plan's package manager")?;
        let releasever = pm.releasever()?;
        let files = download_pass(ctx, &self.opts, &pm.changes()?, releasever, false)?;
        // 2. The plan's keys and the switched repositories go into the
        //    root; install from the cache.
        self.trust_in_root(ctx)?;
        let note = format!(
            "migration {} to release {}",
            ctx.migration_id(),
            pm.target()
        );
        let files = rpm_repos::with_notes(files, pm.sources()?, &note);
        let written = REPOS.write_root(root, &files)?;
        ctx.say(format!(
            "{written} repository files switched in /{}",
            REPOS.in_root
        ));
        let code = run_pm(
            ctx,
            zypper(root, &REPOS.path(root)?, releasever, PackageCache::Root)
                .arg("--no-refresh")
                .arg("dup")
                .args(DUP_FLAGS)
                .args(["--download", "in-advance"]),
            &notable,
            &OK_CODES,
        )
        .map_err(|e| explain("dup", e))?;
        if code != 0 {
            ctx.say(format!("zypper: {}", exit_meaning(code).1));
        }
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.run.packages()?.simulate(ctx)
    }
}

impl ZypperStep {
    fn trust_in_root(&self, ctx: &StepContext<'_>) -> Result<()> {
        for fpr in rpm_keys::trust_in_root(ctx.root(), &self.opts.trusted_keys)? {
            ctx.say(format!("trusted key {fpr} imported into the rpm database"));
        }
        Ok(())
    }

    fn migration(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let product = self.opts.product.as_deref().unwrap_or_default();
        let mut cmd = Command::new("zypper");
        cmd.args(migration_args(product))
            .arg("--root")
            .arg(ctx.root());
        let no_migration = std::sync::atomic::AtomicBool::new(false);
        let watch = |l: &str| {
            if l.contains("No migration available") {
                no_migration.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            notable(l)
        };
        run_pm(ctx, &mut cmd, &watch, &OK_CODES).map_err(|e| explain("migration", e))?;
        if no_migration.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("zypper migration: no migration to {product} is available for this system");
        }
        Ok(StepStatus::Succeeded)
    }
}

/// The arguments of `zypper migration` to `product`.
pub(crate) fn migration_args(product: &str) -> Vec<String> {
    [
        "migration",
        "--non-interactive",
        "--no-selfupdate",
        "--auto-agree-with-licenses",
        "--allow-vendor-change",
        "--download",
        "in-advance",
        "--strict-errors-dist-migration",
        "--replacefiles",
        "--product",
        product,
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

impl rpm_repos::RpmProbe for Zypper {
    fn fingerprints(&self, key_file: &str) -> Vec<String> {
        rpm_repos::key_fingerprints(&self.root, key_file)
    }

    fn answers(&self, source: &rpm_repos::RpmSource, url: Option<&str>) -> bool {
        let n = self.probes.get() + 1;
        self.probes.set(n);
        let dir = PathBuf::from(SCRATCH).join(format!("probe-{n}"));
        prepare_scratch(&self.root).is_ok()
            && rpm_repos::write_probe(&self.root, source, url, &dir).is_ok()
            && zypper(&self.root, &dir, Some(&self.to), PackageCache::Scratch)
                .args(["refresh", "--force"])
                .run_unchecked()
                .is_ok_and(|out| out.status.success())
    }
}

/// zypper as a [`PackageManager`]: questions about the target are asked
/// against the scratch copy of the switched repositories.
pub(crate) struct Zypper {
    root: PathBuf,
    opts: ZypperOptions,
    refreshed: Refreshed,
    /// The source and target release versions.
    from: String,
    to: String,
    /// The root's repositories, decided once.
    decided: rpm_repos::Decided,
    /// Probes made so far.
    probes: std::cell::Cell<usize>,
}

impl Zypper {
    /// zypper for the run's root, configured by the plan's zypper step.
    pub(crate) fn new(run: &RunContext, opts: ZypperOptions) -> Self {
        Self {
            root: run.root.clone(),
            to: opts
                .releasever
                .clone()
                .unwrap_or_else(|| run.target.version_id.clone()),
            opts,
            refreshed: Refreshed::default(),
            from: run.source.release().version_id,
            decided: rpm_repos::Decided::default(),
            probes: std::cell::Cell::new(0),
        }
    }

    /// The root's repositories, classified and decided.
    pub(crate) fn sources(&self) -> Result<&[rpm_repos::RpmSource]> {
        self.decided.get(|| {
            let policy = rpm_repos::RpmPolicy {
                changes: &self.opts.repositories,
                distribution_keys: &self.opts.distribution_keys,
                third_party: self.opts.third_party,
                keep: &self.opts.keep,
                vendors: &self.opts.vendors,
                from: &self.from,
                to: &self.to,
            };
            rpm_repos::decide_all(&self.root, REPOS.in_root, &policy, self)
        })
    }

    /// The target release's version.
    pub(crate) fn target(&self) -> &str {
        &self.to
    }

    /// zypper's `--releasever`: the plan's, else the target release's when
    /// a third-party repository was switched through `$releasever` (it was
    /// probed with that), else none (the root's own).
    pub(crate) fn releasever(&self) -> Result<Option<&str>> {
        if let Some(v) = self.opts.releasever.as_deref() {
            return Ok(Some(v));
        }
        let switched = self
            .sources()?
            .iter()
            .any(|s| s.decision == rpm_repos::RpmDecision::Switch);
        Ok(switched.then_some(self.to.as_str()))
    }

    /// The plan's repository changes and those the decisions add; fails
    /// when `third_party = "inhibit"` leaves a repository undecided.
    pub(crate) fn changes(&self) -> Result<Vec<RepoChange>> {
        rpm_repos::after_plan(&self.opts.repositories, self.sources()?)
    }

    fn scratch_zypper(&self) -> Result<Command> {
        rpm_keys::trust_for_questions(&self.root, &self.opts.trusted_keys)?;
        let scratch = prepare_scratch(&self.root)?;
        let (files, _) = REPOS.switched(&self.root, &self.changes()?)?;
        RepoDir::write_scratch(&files, &scratch)?;
        Ok(zypper(
            &self.root,
            &scratch,
            self.releasever()?,
            PackageCache::Scratch,
        ))
    }

    /// Refreshes the target repositories into the scratch cache.
    fn fetch_target(&self) -> Result<()> {
        let out = self
            .scratch_zypper()?
            .args(["refresh", "--force"])
            .run_unchecked()?;
        if out.status.success() {
            return Ok(());
        }
        let text = out.text();
        let hint = rpm_keys::hint(&text);
        bail!(
            "zypper refresh of the target repositories failed with exit code {}{}{hint}",
            out.status.code().unwrap_or(-1),
            failure_detail(text.lines().filter(|l| notable(l)), &text)
        )
    }

    fn ensure_refreshed(&self) -> Result<()> {
        self.refreshed.ensure(|| self.fetch_target())
    }

    /// What the third-party repositories offer for the source release, as
    /// the root is configured now (their metadata in a cache of its own,
    /// beside the target's; a repository that does not answer offers
    /// nothing).
    fn offered_now(&self) -> Result<Vec<rpm_repos::Offer>> {
        let ids = rpm_repos::third_party_ids(self.sources());
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let cache = format!("{SCRATCH}/current");
        prepare_cache(&self.root, &cache)?;
        let repos = REPOS.path(&self.root)?;
        let current = || zypper_cached_in(&self.root, &repos, None, PackageCache::Scratch, &cache);
        // Those that do not answer are left out of the search below.
        current().arg("refresh").args(&ids).run_unchecked()?;
        let out = current()
            .args(["--no-refresh", "-x", "search", "-s", "-t", "package"])
            .args(ids.iter().flat_map(|id| ["-r", id]))
            .run_unchecked()?;
        parse_search(&String::from_utf8_lossy(&out.stdout))
    }

    /// What the upgrade does to installed packages: the install summary of
    /// `zypper -x dup --dry-run`.
    fn fates(&self) -> Result<std::collections::BTreeMap<String, Fate>> {
        self.ensure_refreshed()?;
        let out = self
            .scratch_zypper()?
            .args(["--no-refresh", "-x", "dup", "--dry-run"])
            .args(DUP_FLAGS)
            .run_unchecked()?;
        if !exit_meaning(out.status.code().unwrap_or(-1)).0 {
            bail!("zypper dup --dry-run failed");
        }
        parse_summary(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The `<solvable>` elements of zypper's XML output (`-x`), with the name
/// of the element holding each.
fn solvables(xml: &str) -> Result<Vec<(String, Attributes)>> {
    let doc = roxmltree::Document::parse(xml).context("reading zypper's XML output")?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("solvable"))
        .map(|n| {
            let parent = n
                .parent_element()
                .map(|p| p.tag_name().name().to_string())
                .unwrap_or_default();
            let attrs = n
                .attributes()
                .map(|a| (a.name().to_string(), a.value().to_string()))
                .collect();
            (parent, attrs)
        })
        .collect())
}

/// An element's attributes, by name.
type Attributes = std::collections::BTreeMap<String, String>;

/// `zypper -x search -s`: each package version the searched repositories
/// offer (`name`, `edition`, `repository`).
fn parse_search(xml: &str) -> Result<Vec<rpm_repos::Offer>> {
    Ok(solvables(xml)?
        .into_iter()
        .filter_map(|(_, a)| {
            Some(rpm_repos::Offer {
                name: a.get("name")?.clone(),
                // rpm's `version-release`, without an epoch (`1:`).
                version: a
                    .get("edition")
                    .map(|e| e.split_once(':').map_or(e.as_str(), |(_, vr)| vr))?
                    .to_string(),
                repo: a.get("repository")?.clone(),
            })
        })
        .filter(|o| o.repo != "(System Packages)" && o.repo != "@System")
        .collect())
}

/// `zypper -x dup --dry-run`'s `<install-summary>`: the packages it
/// upgrades or downgrades (to what, from which repository) and removes.
fn parse_summary(xml: &str) -> Result<std::collections::BTreeMap<String, Fate>> {
    let mut out = std::collections::BTreeMap::new();
    for (parent, a) in solvables(xml)? {
        let Some(name) = a.get("name") else { continue };
        let fate = match parent.as_str() {
            "to-upgrade" | "to-downgrade" => Fate::Upgraded(
                a.get("edition").cloned().unwrap_or_default(),
                a.get("repository").cloned().unwrap_or_default(),
            ),
            "to-remove" => Fate::Removed,
            _ => continue,
        };
        out.insert(name.clone(), fate);
    }
    Ok(out)
}

impl PackageManager for Zypper {
    fn name(&self) -> &'static str {
        "zypper"
    }

    fn database_problems(&self) -> Result<Vec<String>> {
        let mut problems = rpm::database_problems(&self.root)?;
        let pidfile = self.root.join("run/zypp.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let pid = pid.trim();
            if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
                problems.push(format!("zypper is locked by pid {pid} (/run/zypp.pid)"));
            }
        }
        Ok(problems)
    }

    fn refresh_target(&self) -> Result<()> {
        self.refreshed.record(self.fetch_target())
    }

    fn estimate(&self) -> Result<SpaceEstimate> {
        self.ensure_refreshed()?;
        let out = self
            .scratch_zypper()?
            .args(["--no-refresh", "dup", "--dry-run"])
            .args(DUP_FLAGS)
            .run_unchecked()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !exit_meaning(out.status.code().unwrap_or(-1)).0 {
            bail!(
                "zypper dup --dry-run failed: {}",
                text.lines()
                    .filter(|l| notable(l))
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        Ok(parse_estimate(&text))
    }

    fn installed_size(&self, packages: &[String]) -> Result<u64> {
        rpm::installed_size(&self.root, packages)
    }

    fn blocking_holds(&self) -> Result<Vec<String>> {
        let out = zypper(
            &self.root,
            &REPOS.path(&self.root)?,
            None,
            PackageCache::Scratch,
        )
        .args(["--no-refresh", "locks"])
        .run_get_string()?;
        Ok(parse_locks(&out))
    }

    fn foreign(&self, _origins: &[String]) -> Result<Foreign> {
        let resolution = match self.fates() {
            Ok(fates) => {
                let orphans = self
                    .scratch_zypper()?
                    .args(["--no-refresh", "packages", "--orphaned"])
                    .run_get_string()?;
                Some((fates, parse_orphaned(&orphans)))
            }
            Err(_) => None,
        };
        rpm_repos::foreign(
            &self.root,
            self.sources(),
            &self.to,
            &self.offered_now()?,
            resolution,
        )
    }

    fn simulate(&self, ctx: &StepContext<'_>) -> Result<()> {
        self.ensure_refreshed()?;
        run_pm(
            ctx,
            self.scratch_zypper()?
                .args(["--no-refresh", "dup", "--dry-run"])
                .args(DUP_FLAGS),
            &notable,
            &OK_CODES,
        )
        .map_err(|e| explain("dup --dry-run", e))?;
        Ok(())
    }

    fn prefetch(&self, ctx: &StepContext<'_>) -> Result<String> {
        download_pass(ctx, &self.opts, &self.changes()?, self.releasever()?, true)?;
        let (count, bytes) = rpm::cached_packages(&self.root, "var/cache/zypp/packages")?;
        Ok(format!(
            "/var/cache/zypp/packages holds {count} packages ({:.1} MB): the cutover installs them without downloading",
            bytes as f64 / 1e6
        ))
    }

    fn obsolete(&self) -> Result<Vec<String>> {
        prepare_scratch(&self.root)?;
        let out = zypper(
            &self.root,
            &REPOS.path(&self.root)?,
            self.opts.releasever.as_deref(),
            PackageCache::Scratch,
        )
        .args(["packages", "--orphaned"])
        .run_get_string()?;
        Ok(parse_orphaned(&out))
    }

    fn remove_exactly(&self, ctx: &StepContext<'_>, names: &[String]) -> Result<Option<String>> {
        rpm::remove_exactly(ctx, names)
    }

    fn zypper(&self) -> Option<&Zypper> {
        Some(self)
    }

    fn repositories(&self) -> Result<Vec<super::packages::RepoLine>> {
        Ok(rpm_repos::lines(self.sources()?, &self.to))
    }

    fn verify(&self) -> Result<Vec<String>> {
        rpm::verify(&self.root)
    }
}

/// The names in `zypper packages --orphaned`' table (`S | Repository |
/// Name | Version | Arch`), installed packages no repository has.
fn parse_orphaned(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.len() >= 5 && cols[0].starts_with('i') && cols[2] != "Name")
                .then(|| cols[2].to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// "Overall download size: 18.4 KiB. Already cached: 0 B. After the
/// operation, additional 12.0 B will be used." (or "... will be freed.")
fn parse_estimate(text: &str) -> SpaceEstimate {
    let mut e = SpaceEstimate::default();
    // Inside "The following N packages are going to be upgraded:" (or
    // REMOVED, downgraded): its indented lines name installed packages.
    let mut replacing = false;
    for line in text.lines() {
        if line.starts_with("The following ") {
            replacing = ["to be upgraded:", "to be REMOVED:", "to be downgraded:"]
                .iter()
                .any(|h| line.ends_with(h));
            continue;
        }
        if line.starts_with(' ') {
            if replacing {
                e.replaced
                    .extend(line.split_whitespace().map(str::to_string));
            }
        } else {
            replacing = false;
        }
        if let Some(rest) = line.strip_prefix("Overall download size: ") {
            let total = rest.split(". ").next().unwrap_or("");
            e.download = parse_size(total.trim_end_matches('.')).unwrap_or(0);
            if let Some(cached) = rest.split("Already cached: ").nth(1) {
                let cached = cached.split(". ").next().unwrap_or("");
                e.download = e.download.saturating_sub(parse_size(cached).unwrap_or(0));
            }
            if let Some(after) = rest.split("additional ").nth(1) {
                let size = after.split(" will").next().unwrap_or("");
                e.installed_delta = i64::try_from(parse_size(size).unwrap_or(0)).unwrap_or(0);
            } else if let Some(after) = rest.split("After the operation, ").nth(1) {
                let size = after.split(" will").next().unwrap_or("");
                e.installed_delta = -i64::try_from(parse_size(size).unwrap_or(0)).unwrap_or(0);
            }
        }
        if line.split_whitespace().any(|w| w.starts_with("kernel-")) {
            e.kernel = true;
        }
    }
    e
}

/// The names column of zypper's `locks` table.
fn parse_locks(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains('|') && !l.contains("Name"))
        .filter_map(|l| l.split('|').nth(1).map(|n| n.trim().to_string()))
        .filter(|n| !n.is_empty() && !n.starts_with('-'))
        .map(|n| format!("{n} (locked with zypper addlock)"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_packages_are_read_from_zypper_s_table() {
        let text = "Loading repository data...\nReading installed packages...\n\
            S | Repository | Name    | Version | Arch\n\
            --+------------+---------+---------+-------\n\
            i | @System    | oldtool | 1.0-1   | x86_64\n\
            i+| @System    | extra   | 2.0-1   | noarch\n";
        assert_eq!(parse_orphaned(text), ["extra", "oldtool"]);
        assert!(parse_orphaned("No packages found.\n").is_empty());
    }

    #[test]
    fn a_file_is_put_back_as_it_was_and_left_alone_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("AutoInstalled");
        std::fs::write(&path, "a\n").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let before = Recorded::take(&path);
        before.put_back(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), old);
        std::fs::write(&path, "a\nb\n").unwrap();
        before.put_back(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n");
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), old);
        let none = Recorded::take(&dir.path().join("missing"));
        std::fs::write(dir.path().join("missing"), "x").unwrap();
        none.put_back(&dir.path().join("missing")).unwrap();
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn a_failed_download_names_the_file_and_the_repository() {
        let out = "Retrieving: libfoo-2.0-1.noarch.rpm [.not found]\n\
            File './libfoo-2.0-1.noarch.rpm' not found on medium 'http://127.0.0.1:8080/2/'\n\
            Abort, retry, ignore? [a/r/i/...? shows all options] (a): a\n\
            Location 'http://127.0.0.1:8080/2/x.rpm' is temporarily unaccessible.\n\
            Retrying in 30 seconds...\n";
        let picked: Vec<&str> = out.lines().filter(|l| notable(l)).collect();
        assert_eq!(
            picked,
            [
                "File './libfoo-2.0-1.noarch.rpm' not found on medium 'http://127.0.0.1:8080/2/'",
                "Location 'http://127.0.0.1:8080/2/x.rpm' is temporarily unaccessible."
            ]
        );
    }

    #[test]
    fn exit_codes_follow_zyppers_manual() {
        for ok in [0, 100, 101, 102, 103, 107] {
            assert!(exit_meaning(ok).0, "{ok}");
        }
        for bad in [1, 2, 3, 4, 5, 6, 7, 8, 104, 105, 106, 42] {
            assert!(!exit_meaning(bad).0, "{bad}");
        }
    }

    #[test]
    fn migration_mode_runs_the_documented_command_line() {
        assert_eq!(
            migration_args("SLES/15.6/x86_64").join(" "),
            "migration --non-interactive --no-selfupdate --auto-agree-with-licenses --allow-vendor-change --download in-advance --strict-errors-dist-migration --replacefiles --product SLES/15.6/x86_64"
        );
        let opts = |mode: &str, product: Option<&str>| {
            crate::core::kinds::check::<ZypperOptions>(
                serde_json::json!({"mode": mode, "product": product}),
            )
        };
        assert!(opts("migration", None).is_err());
        assert!(opts("migration", Some("SLES/15.6/x86_64")).is_ok());
        assert!(opts("upgrade", None).is_err());
    }

    #[test]
    fn dup_dry_run_sizes_are_read() {
        let e = parse_estimate(
            "The following 2 packages are going to be upgraded:\n  testos-release base\n\nThe following package is going to be REMOVED:\n  legacy\n\n3 packages to upgrade.\nOverall download size: 18.4 KiB. Already cached: 0 B. After the operation, additional 12.0 KiB will be used.\n",
        );
        assert_eq!(e.download, 18841);
        assert_eq!(e.installed_delta, 12288);
        assert_eq!(e.replaced, ["testos-release", "base", "legacy"]);
        let e = parse_estimate(
            "Overall download size: 1.0 MiB. Already cached: 1.0 MiB. After the operation, 2.0 KiB will be freed.\n",
        );
        assert_eq!((e.download, e.installed_delta), (0, -2048));
        let e = parse_estimate(
            "Overall download size: 18 KiB. Already cached: 0 B. No additional space will be used or freed after the operation.\n",
        );
        assert_eq!((e.download, e.installed_delta), (18432, 0));
    }

    #[test]
    fn tables_are_read() {
        let locks = "\n# | Name | Type    | Repository\n--+------+---------+-----------\n1 | foo  | package | (any)\n";
        assert_eq!(parse_locks(locks), ["foo (locked with zypper addlock)"]);
        let pkgs = "S | Repository | Name    | Version | Arch\n--+------------+---------+---------+-------\ni | @System    | dropped | 1.0-1   | noarch\n";
        assert_eq!(parse_orphaned(pkgs), ["dropped"]);
    }

    #[test]
    fn search_results_and_the_install_summary_are_read() {
        let search = r#"<?xml version='1.0'?>
<stream>
<message type="info">Loading repository data...</message>
<search-result version="0.0">
<solvable-list>
<solvable status="installed" name="vendor-b" kind="package" edition="1.0-1" arch="noarch" repository="Vendor B"/>
<solvable status="not-installed" name="vendor-extra" kind="package" edition="1:0.9-1" arch="noarch" repository="Vendor B"/>
<solvable status="installed" name="base" kind="package" edition="1.0-1" arch="noarch" repository="(System Packages)"/>
</solvable-list>
</search-result>
</stream>"#;
        let offers = parse_search(search).unwrap();
        assert_eq!(
            offers,
            [
                rpm_repos::Offer {
                    name: "vendor-b".into(),
                    version: "1.0-1".into(),
                    repo: "Vendor B".into()
                },
                rpm_repos::Offer {
                    name: "vendor-extra".into(),
                    version: "0.9-1".into(),
                    repo: "Vendor B".into()
                }
            ]
        );
        let summary = r#"<?xml version='1.0'?>
<stream>
<install-summary download-size="5513" space-usage-diff="0" packages-to-change="2">
<to-upgrade>
<solvable type="package" name="vendor-b" edition="2.0-1" arch="noarch" edition-old="1.0-1" arch-old="noarch" summary="t">
<description>t</description></solvable>
</to-upgrade>
<to-remove>
<solvable type="package" name="oldtool" edition="1.0-1" arch="noarch" summary="t"/>
</to-remove>
</install-summary>
<prompt id="0"><text>Continue?</text></prompt>
</stream>"#;
        let fates = parse_summary(summary).unwrap();
        assert_eq!(
            fates.get("vendor-b"),
            Some(&Fate::Upgraded("2.0-1".into(), String::new()))
        );
        assert_eq!(fates.get("oldtool"), Some(&Fate::Removed));
        assert_eq!(fates.len(), 2);
        assert!(parse_summary("not xml").is_err());
    }
}

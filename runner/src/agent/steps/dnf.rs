//! Fedora/RHEL-family upgrades with dnf, run from the migration image against
//! the root: `dnf --installroot=/system-root --releasever=N distro-sync
//! --allowerasing`, with the repositories the plan names.
//!
//! As with zypper, everything is downloaded against the switched repository
//! configuration (a scratch copy) before the root changes; then the
//! repository files are switched in the root and the upgrade installs from the
//! cache (`-C`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::packages::{Fate, Foreign, PackageManager, Refreshed, SpaceEstimate, parse_size};
use super::rpm::{self, RepoDir, run_pm};
use super::rpm_repos;
use super::{RunContext, StepContext, StepKind};
use crate::core::cmd::{CommandExt, ToolOutput, failure_detail};
use crate::core::event::StepStatus;
use crate::core::kinds::packages::DnfOptions;
use crate::core::kinds::packages::RepoChange;

/// Repository files in the root.
pub(crate) const REPOS: RepoDir = RepoDir {
    in_root: "etc/yum.repos.d",
};
/// Scratch area: the switched repositories (a path in the container), and
/// dnf's log and state directories, which dnf puts below the installroot
/// (the root's /run is the agent's tmpfs). hawkey opens its log at the same
/// path without the installroot, so both exist.
const SCRATCH: &str = "/run/migrate/dnf";

/// The `dnf` step.
pub(crate) struct DnfStep {
    opts: DnfOptions,
}

impl DnfStep {
    /// From the step's options.
    pub(crate) fn new(opts: DnfOptions) -> Self {
        Self { opts }
    }
}

/// Lines that say why dnf failed.
fn notable(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("Problem")
        || l.starts_with("Error")
        || l.contains("Status code:")
        || l.contains("Curl error")
        || l.contains("Failed to download")
        || l.contains("Cannot download")
}

/// Where dnf keeps metadata and packages.
#[derive(Clone, Copy)]
enum Cache {
    /// The root's own cache (`/var/cache/dnf`): the upgrade.
    Root,
    /// The scratch area (the root's /run): questions that must not create
    /// anything in the root.
    Scratch,
}

/// dnf pointed at the root, with the repositories of `reposdir`.
fn dnf(root: &Path, reposdir: &Path, releasever: &str, cache: Cache) -> Result<Command> {
    for dir in [
        PathBuf::from(SCRATCH).join("log"),
        root.join(SCRATCH.trim_start_matches('/')).join("log"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(dnf_command(root, reposdir, releasever, cache))
}

fn dnf_command(root: &Path, reposdir: &Path, releasever: &str, cache: Cache) -> Command {
    let mut cmd = Command::new("dnf");
    cmd.args(["-y", "--color=never"])
        .arg(format!("--installroot={}", root.display()))
        .arg(format!("--releasever={releasever}"))
        .arg(format!("--setopt=reposdir={}", reposdir.display()))
        .arg(format!("--setopt=logdir={SCRATCH}/log"))
        .arg(format!("--setopt=persistdir={SCRATCH}/persist"))
        // Debian's dnf defaults to best=False, which quietly keeps packages
        // whose new version cannot be installed; an upgrade must not.
        .arg("--best")
        .arg("--setopt=skip_if_unavailable=False");
    if let Cache::Scratch = cache {
        // dnf puts cachedir below the installroot: the root's /run tmpfs.
        cmd.arg(format!("--setopt=cachedir={SCRATCH}/cache"));
    }
    cmd
}

/// The download pass: every package the transaction installs, from the
/// switched repositories (`scratch`) into the root's dnf cache.
fn download_pass(ctx: &StepContext<'_>, scratch: &Path, opts: &DnfOptions) -> Result<()> {
    run_pm(
        ctx,
        dnf(ctx.root(), scratch, &opts.releasever, Cache::Root)?
            .args(distro_sync_args(opts))
            .arg("--downloadonly"),
        &notable,
        &[],
    )
    .context("dnf distro-sync (download)")?;
    Ok(())
}

/// The names in `dnf list --extras` (`name.arch  version  @System`, after
/// an `Extra Packages` heading): installed packages no repository has.
fn parse_extras(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Extra Packages"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.rsplit_once('.').map(|(name, _)| name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `dnf repoquery --qf '%{name} %{version}-%{release} %{repoid}'`.
fn parse_offers(text: &str) -> Vec<rpm_repos::Offer> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let offer = rpm_repos::Offer {
                name: w.next()?.to_string(),
                version: w.next()?.to_string(),
                repo: w.next()?.to_string(),
            };
            w.next().is_none().then_some(offer)
        })
        .collect()
}

/// What a dnf transaction does to installed packages: the rows of its
/// "Upgrading:" and "Downgrading:" sections (` NAME ARCH VERSION REPO
/// SIZE`), of its removing sections, and the packages a new one is
/// "replacing" (obsoletes). A name too long for its column sits alone on
/// its row, the rest on the next.
fn parse_fates(text: &str) -> BTreeMap<String, Fate> {
    let mut out = BTreeMap::new();
    let mut section = "";
    let mut last_installed = String::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line.trim_end();
            pending = None;
            continue;
        }
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"replacing") {
            if let Some(old) = words.get(1).and_then(|n| n.rsplit_once('.')) {
                out.insert(old.0.to_string(), Fate::Replaced(last_installed.clone()));
            }
            continue;
        }
        if words.len() == 1 {
            pending = words.first().map(|w| (*w).to_string());
            continue;
        }
        let joined;
        if let Some(name) = pending.take() {
            joined = name;
            words.insert(0, &joined);
        }
        let [name, _arch, version, repo, ..] = words[..] else {
            continue;
        };
        match section {
            "Upgrading:" | "Downgrading:" => {
                out.insert(
                    name.to_string(),
                    Fate::Upgraded(version.to_string(), repo.to_string()),
                );
            }
            s if s.starts_with("Removing") => {
                out.insert(name.to_string(), Fate::Removed);
            }
            s if s.starts_with("Installing") => last_installed = name.to_string(),
            _ => {}
        }
    }
    out
}

fn distro_sync_args(opts: &DnfOptions) -> Vec<&'static str> {
    let mut args = vec!["distro-sync"];
    if opts.allow_erasing {
        args.push("--allowerasing");
    }
    args
}

fn scratch_repos(root: &Path, changes: &[RepoChange]) -> Result<(PathBuf, Vec<String>)> {
    let (files, said) = REPOS.switched(root, changes)?;
    let dir = PathBuf::from(SCRATCH).join("repos.d");
    RepoDir::write_scratch(&files, &dir)?;
    Ok((dir, said))
}

impl StepKind for DnfStep {
    fn tools(&self) -> Vec<String> {
        vec!["dnf".into(), "rpm".into()]
    }

    fn describe(&self) -> String {
        format!(
            "Upgrade the distribution to release {} with dnf distro-sync",
            self.opts.releasever
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let root = ctx.root();
        let pm = ctx
            .run
            .packages()?
            .dnf()
            .context("the dnf step needs dnf as the plan's package manager")?;
        rpm::back_up_dirs(ctx, &[REPOS.in_root])?;
        let changes = pm.changes()?;
        let (scratch, said) = scratch_repos(root, &changes)?;
        for line in said {
            ctx.say(line);
        }
        let sync = distro_sync_args(&self.opts);
        // 0. The transaction must not lose installed packages the plan did
        //    not give up.
        pm.transaction()?;
        // 1. Everything downloaded (what a prefetch step downloaded earlier
        //    is found in the cache); the root is not changed if this fails.
        download_pass(ctx, &scratch, &self.opts)?;
        // 2. The switched repositories go into the root; install from the cache.
        let (files, _) = REPOS.switched(root, &changes)?;
        let note = format!(
            "migration {} to release {}",
            ctx.migration_id(),
            self.opts.releasever
        );
        let files = rpm_repos::with_notes(files, pm.sources()?, &note);
        let written = REPOS.write_root(root, &files)?;
        ctx.say(format!(
            "{written} repository files switched in /{}",
            REPOS.in_root
        ));
        run_pm(
            ctx,
            dnf(root, &REPOS.path(root)?, &self.opts.releasever, Cache::Root)?
                .arg("-C")
                .args(&sync),
            &notable,
            &[],
        )
        .context("dnf distro-sync")?;
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.run.packages()?.simulate(ctx)
    }
}

impl rpm_repos::RpmProbe for Dnf {
    fn fingerprints(&self, key_file: &str) -> Vec<String> {
        rpm_repos::key_fingerprints(&self.root, key_file)
    }

    fn answers(&self, source: &rpm_repos::RpmSource, url: Option<&str>) -> bool {
        let n = self.probes.get() + 1;
        self.probes.set(n);
        let dir = PathBuf::from(SCRATCH).join(format!("probe-{n}"));
        rpm_repos::write_probe(&self.root, source, url, &dir).is_ok()
            && dnf(&self.root, &dir, &self.opts.releasever, Cache::Scratch)
                .and_then(|mut c| c.args(["makecache", "--refresh"]).run_unchecked())
                .is_ok_and(|out| out.status.success())
    }
}

/// dnf as a [`PackageManager`].
pub(crate) struct Dnf {
    root: PathBuf,
    opts: DnfOptions,
    refreshed: Refreshed,
    /// The source release's version (`$releasever` before the upgrade).
    from: String,
    /// The root's repositories, decided once.
    decided: rpm_repos::Decided,
    /// Probes made so far.
    probes: std::cell::Cell<usize>,
}

impl Dnf {
    /// dnf for the run's root, configured by the plan's dnf step.
    pub(crate) fn new(run: &RunContext, opts: DnfOptions) -> Self {
        Self {
            root: run.root.clone(),
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
                to: &self.opts.releasever,
            };
            rpm_repos::decide_all(&self.root, REPOS.in_root, &policy, self)
        })
    }

    /// The plan's repository changes and those the decisions add; fails
    /// when `third_party = "inhibit"` leaves a repository undecided.
    pub(crate) fn changes(&self) -> Result<Vec<RepoChange>> {
        rpm_repos::after_plan(&self.opts.repositories, self.sources()?)
    }

    fn scratch_dnf(&self) -> Result<Command> {
        let (dir, _) = scratch_repos(&self.root, &self.changes()?)?;
        dnf(&self.root, &dir, &self.opts.releasever, Cache::Scratch)
    }

    /// Fetches the target repositories' metadata into the scratch cache.
    fn fetch_target(&self) -> Result<()> {
        let out = self
            .scratch_dnf()?
            .args(["makecache", "--refresh"])
            .run_unchecked()?;
        if out.status.success() {
            return Ok(());
        }
        let text = out.text();
        bail!(
            "dnf makecache of the target repositories failed{}",
            failure_detail(text.lines().filter(|l| notable(l)), &text)
        )
    }

    fn ensure_refreshed(&self) -> Result<()> {
        self.refreshed.ensure(|| self.fetch_target())
    }

    /// What the third-party repositories offer for the source release, as
    /// the root is configured now (their metadata in a cache of its own; a
    /// repository that does not answer offers nothing).
    fn offered_now(&self) -> Result<Vec<rpm_repos::Offer>> {
        let ids = rpm_repos::third_party_ids(self.sources());
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = dnf(
            &self.root,
            &REPOS.path(&self.root)?,
            &self.from,
            Cache::Scratch,
        )?;
        cmd.arg(format!("--setopt=cachedir={SCRATCH}/current"))
            .arg("--setopt=skip_if_unavailable=True")
            .args(ids.iter().map(|id| format!("--repo={id}")))
            .args([
                "-q",
                "repoquery",
                "--qf",
                "%{name} %{version}-%{release} %{repoid}",
            ]);
        Ok(parse_offers(&cmd.run_get_string()?))
    }

    /// The output of a simulated distro-sync (`--assumeno` answers no: dnf
    /// exits with 1 after printing the transaction).
    fn transaction(&self) -> Result<String> {
        self.ensure_refreshed()?;
        let out = self
            .scratch_dnf()?
            .args(distro_sync_args(&self.opts))
            .arg("--assumeno")
            .run_unchecked()?;
        let text = out.text();
        if text.lines().any(|l| l.trim_start().starts_with("Problem")) {
            bail!("dnf distro-sync would fail: {}", problems(&text));
        }
        let removed: Vec<String> = parse_removals(&text)
            .into_iter()
            .filter(|p| !allowed(p, &self.opts.allow_removal))
            .collect();
        if !removed.is_empty() {
            // Why: the same resolution without --allowerasing names the problem.
            let strict = self
                .scratch_dnf()?
                .arg("distro-sync")
                .arg("--assumeno")
                .run_unchecked()?;
            let why = problems(&String::from_utf8_lossy(&strict.stderr));
            bail!(
                "dnf distro-sync would remove installed packages: {} ({why}); list them in allow_removal if that is intended",
                removed.join(", ")
            );
        }
        Ok(text)
    }
}

impl PackageManager for Dnf {
    fn name(&self) -> &'static str {
        "dnf"
    }

    fn database_problems(&self) -> Result<Vec<String>> {
        rpm::database_problems(&self.root)
    }

    fn refresh_target(&self) -> Result<()> {
        self.refreshed.record(self.fetch_target())
    }

    fn estimate(&self) -> Result<SpaceEstimate> {
        Ok(parse_estimate(&self.transaction()?))
    }

    fn installed_size(&self, packages: &[String]) -> Result<u64> {
        rpm::installed_size(&self.root, packages)
    }

    fn blocking_holds(&self) -> Result<Vec<String>> {
        // dnf has no holds of its own; the versionlock plugin's list lives in
        // /etc/dnf/plugins/versionlock.list.
        let list = self.root.join("etc/dnf/plugins/versionlock.list");
        Ok(std::fs::read_to_string(list)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| format!("{l} (versionlock)"))
            .collect())
    }

    fn foreign(&self, _origins: &[String]) -> Result<Foreign> {
        let resolution = match self.transaction() {
            Ok(text) => {
                let extras = self
                    .scratch_dnf()?
                    .args(["-q", "list", "--extras"])
                    .run_get_string()?;
                Some((parse_fates(&text), parse_extras(&extras)))
            }
            Err(_) => None,
        };
        rpm_repos::foreign(
            &self.root,
            self.sources(),
            &self.opts.releasever,
            &self.offered_now()?,
            resolution,
        )
    }

    fn simulate(&self, ctx: &StepContext<'_>) -> Result<()> {
        for line in self.transaction()?.lines() {
            ctx.say(line.to_string());
        }
        Ok(())
    }

    fn prefetch(&self, ctx: &StepContext<'_>) -> Result<String> {
        let (scratch, said) = scratch_repos(&self.root, &self.changes()?)?;
        for line in said {
            ctx.say(line);
        }
        self.transaction()?;
        download_pass(ctx, &scratch, &self.opts)?;
        let (count, bytes) = rpm::cached_packages(&self.root, "var/cache/dnf")?;
        Ok(format!(
            "/var/cache/dnf holds {count} packages ({:.1} MB): the cutover installs them without downloading",
            bytes as f64 / 1e6
        ))
    }

    fn obsolete(&self) -> Result<Vec<String>> {
        let out = dnf(
            &self.root,
            &REPOS.path(&self.root)?,
            &self.opts.releasever,
            Cache::Scratch,
        )?
        .args(["-q", "list", "--extras"])
        .run_get_string()?;
        Ok(parse_extras(&out))
    }

    fn remove_exactly(&self, ctx: &StepContext<'_>, names: &[String]) -> Result<Option<String>> {
        rpm::remove_exactly(ctx, names)
    }

    fn dnf(&self) -> Option<&Dnf> {
        Some(self)
    }

    fn repositories(&self) -> Result<Vec<super::packages::RepoLine>> {
        Ok(rpm_repos::lines(self.sources()?, &self.opts.releasever))
    }

    fn verify(&self) -> Result<Vec<String>> {
        rpm::verify(&self.root)
    }
}

/// The lines of dnf's problem report that say what is wrong.
fn problems(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- "))
        .map(|l| l.trim_start_matches("- "))
        .collect();
    let mut unique: Vec<&str> = Vec::new();
    for l in lines {
        if !unique.contains(&l) {
            unique.push(l);
        }
    }
    if unique.is_empty() {
        "dnf did not say why".to_string()
    } else {
        unique.join("; ")
    }
}

/// Whether `package` matches one of `patterns` (a trailing `*` matches a prefix).
fn allowed(package: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => package.starts_with(prefix),
        None => package == p,
    })
}

/// Installed packages a dnf transaction removes: the rows of its removing
/// sections (not packages "replacing"d by obsoletes), by name.
fn parse_removals(text: &str) -> Vec<String> {
    parse_fates(text)
        .into_iter()
        .filter(|(_, fate)| *fate == Fate::Removed)
        .map(|(name, _)| name)
        .collect()
}

/// "Total download size: 19 k" and "Installed size: 33 k" (dnf 4).
fn parse_estimate(text: &str) -> SpaceEstimate {
    let mut e = SpaceEstimate::default();
    let size = |v: &str| {
        let v = v.trim();
        let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let unit = match unit.trim() {
            "k" => "kB",
            "M" => "MB",
            "G" => "GB",
            other => other,
        };
        parse_size(&format!("{} {unit}", n.trim()))
    };
    // Inside the transaction table's "Upgrading:" (or "Removing:",
    // "Downgrading:") section: each indented row starts with an installed
    // package's name.
    let mut replacing = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            replacing = ["Upgrading:", "Removing:", "Downgrading:"].contains(&line.trim_end());
        } else if replacing && let Some(name) = line.split_whitespace().next() {
            e.replaced.push(name.to_string());
        }
        if let Some(v) = line.strip_prefix("Total download size:") {
            e.download = size(v).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Installed size:") {
            e.installed_delta = i64::try_from(size(v).unwrap_or(0)).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Freed space:") {
            e.installed_delta = -i64::try_from(size(v).unwrap_or(0)).unwrap_or(0);
        }
        if line
            .split_whitespace()
            .any(|w| w.starts_with("kernel-core"))
        {
            e.kernel = true;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_are_read_from_dnf_list() {
        let text = "Extra Packages\noldtool.x86_64     1.0-1     @System\nlib-extra.noarch   2.0-1     @System\n";
        assert_eq!(parse_extras(text), ["lib-extra", "oldtool"]);
        assert!(parse_extras("").is_empty());
    }

    #[test]
    fn removals_are_found_and_explained() {
        let text = "\
Installing:
 newtool                   noarch         2.0-1           testos          6.0 k
     replacing  oldtool.noarch 1.0-1
Upgrading:
 libfoo                    noarch         2.0-1           testos          5.9 k
Removing dependent packages:
 base-tools                noarch         1.0-1           @System          22
Removing:
 old-kernel-extra          noarch         1.0-1           @System          22

Transaction Summary
";
        assert_eq!(parse_removals(text), ["base-tools", "old-kernel-extra"]);
        assert!(allowed("old-kernel-extra", &["old-kernel*".to_string()]));
        assert!(!allowed("base-tools", &["old-kernel*".to_string()]));
        let report = "Error: \n Problem 1: cannot install the best update candidate for package base-tools-1.0-1.noarch\n  - nothing provides libfoo >= 3.0 needed by base-tools-2.0-1.noarch\n Problem 2: x\n  - nothing provides libfoo >= 3.0 needed by base-tools-2.0-1.noarch\n";
        assert_eq!(
            problems(report),
            "nothing provides libfoo >= 3.0 needed by base-tools-2.0-1.noarch"
        );
    }

    #[test]
    fn fates_and_offers_are_read() {
        let text = "\
Installing:
 newtool                   noarch         2.0-1           testos          6.0 k
     replacing  oldtool.noarch 1.0-1
Upgrading:
 vendor-b                  noarch         2.0-1           vendor-b        5.9 k
 a-package-name-too-long-for-its-column
                           noarch         3.1-2           testos          1 k
Removing:
 legacy                    noarch         1.0-1           @System          22

Transaction Summary
Upgrade  1 Package
";
        let fates = parse_fates(text);
        assert_eq!(
            fates.get("vendor-b"),
            Some(&Fate::Upgraded("2.0-1".into(), "vendor-b".into()))
        );
        assert_eq!(
            fates.get("a-package-name-too-long-for-its-column"),
            Some(&Fate::Upgraded("3.1-2".into(), "testos".into()))
        );
        assert_eq!(
            fates.get("oldtool"),
            Some(&Fate::Replaced("newtool".into()))
        );
        assert_eq!(fates.get("legacy"), Some(&Fate::Removed));
        assert_eq!(fates.len(), 4, "{fates:?}");
        let offers = parse_offers("vendor-a 1.0-1 vendor-a\nnoise\nvendor-b 1.0-1 vendor-b\n");
        assert_eq!(
            offers.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["vendor-a", "vendor-b"]
        );
    }

    #[test]
    fn transaction_sizes_are_read() {
        let e =
            parse_estimate("Total download size: 19 k\nInstalled size: 33 k\nOperation aborted.\n");
        assert_eq!((e.download, e.installed_delta), (19_000, 33_000));
        let e = parse_estimate(
            "Upgrading:\n testos-release   noarch 2-1 testos-2 1 k\n base x86_64 2-1 testos-2 9 k\nInstalling:\n newdep x86_64 1-1 testos-2 2 k\nRemoving:\n legacy x86_64 1-1 @System 0\n\nTransaction Summary\n",
        );
        assert_eq!(e.replaced, ["testos-release", "base", "legacy"]);
        let e = parse_estimate("Total download size: 1.5 M\nFreed space: 2 M\n");
        assert_eq!((e.download, e.installed_delta), (1_500_000, -2_000_000));
    }

    #[test]
    fn dnf_runs_against_the_root_with_the_plans_release() {
        let opts: DnfOptions =
            serde_json::from_value(serde_json::json!({"releasever": "43"})).unwrap();
        let cmd = dnf_command(
            Path::new("/tmp"),
            Path::new("/run/migrate/dnf/repos.d"),
            &opts.releasever,
            Cache::Scratch,
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--installroot=/tmp".to_string()));
        assert!(args.contains(&"--releasever=43".to_string()));
        assert!(args.contains(&"--best".to_string()));
        assert!(args.contains(&"--setopt=cachedir=/run/migrate/dnf/cache".to_string()));
        assert_eq!(distro_sync_args(&opts), ["distro-sync", "--allowerasing"]);
        let blank = DnfOptions {
            releasever: " ".into(),
            ..opts
        };
        assert!(crate::core::kinds::KindOptions::check(&blank).is_err());
    }
}

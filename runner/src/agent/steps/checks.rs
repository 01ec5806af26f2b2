//! Check steps: read-only questions asked before anything changes. Each
//! reports findings (id, severity, message, remediation hint); an inhibitor
//! stops the run with exit code 3 after all checks have run.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};

use super::{StepContext, StepKind};
use crate::core::event::{Finding, Severity, StepStatus};
use crate::core::kinds::checks::{DiskSpaceOptions, ThirdPartyOptions};
use crate::core::release::ReleasePattern;

/// Runs a check that needs the target release's metadata: if the
/// repositories did not answer, it reports "not checked" as a warning (the
/// repositories check reports the cause as an inhibitor).
fn needs_target(
    ctx: &StepContext<'_>,
    id: &str,
    check: impl FnOnce() -> Result<()>,
) -> Result<StepStatus> {
    match check() {
        Ok(()) => Ok(StepStatus::Succeeded),
        Err(e)
            if e.downcast_ref::<super::packages::TargetUnavailable>()
                .is_some() =>
        {
            ctx.finding(finding(
                id,
                Severity::Warning,
                "not checked: the target release's repositories did not answer".to_string(),
                "see the repositories finding",
            ));
            Ok(StepStatus::Skipped)
        }
        Err(e) => Err(e),
    }
}

fn finding(id: &str, severity: Severity, message: String, hint: &str) -> Finding {
    Finding {
        id: id.to_string(),
        severity,
        message,
        hint: hint.to_string(),
    }
}

/// The root's release is one the image accepts.
pub(crate) struct Release;

impl StepKind for Release {
    fn describe(&self) -> String {
        "Check the root's release is one the image upgrades".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let release = ctx.run.source.release();
        let accepted = ctx
            .run
            .accepts
            .iter()
            .map(|a| a.parse::<ReleasePattern>())
            .collect::<Result<Vec<_>>>()?;
        if accepted.iter().any(|p| p.matches_os(&ctx.run.source)) {
            ctx.say(format!(
                "{} ({}) is accepted",
                release,
                ctx.run.source.pretty_name()
            ));
        } else {
            ctx.finding(finding(
                "source-release",
                Severity::Inhibitor,
                format!(
                    "the root is {} ({}); the image upgrades only {}",
                    release,
                    ctx.run.source.pretty_name(),
                    ctx.run.accepts.join(", ")
                ),
                "use the migration image built for this release",
            ));
        }
        Ok(StepStatus::Succeeded)
    }
}

/// The package database is healthy and not locked.
pub(crate) struct PackageDb;

impl StepKind for PackageDb {
    fn describe(&self) -> String {
        "Check the package database is consistent and not locked".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let pm = ctx.run.packages()?;
        let problems = pm.database_problems()?;
        if problems.is_empty() {
            ctx.say(format!(
                "{}: package database healthy, no lock held",
                pm.name()
            ));
        }
        for p in problems {
            let locked = p.contains("locked by");
            ctx.finding(finding(
                if locked {
                    "package-db.lock"
                } else {
                    "package-db.audit"
                },
                Severity::Inhibitor,
                p,
                if locked {
                    "wait for the other package manager run to finish, then try again"
                } else {
                    "repair the package database first (dpkg --configure -a; apt-get -f install)"
                },
            ));
        }
        Ok(StepStatus::Succeeded)
    }
}

/// The target release's repositories answer.
pub(crate) struct Repositories;

impl StepKind for Repositories {
    fn describe(&self) -> String {
        "Check the target release's repositories are reachable".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let pm = ctx.run.packages()?;
        decided_repositories(ctx, pm);
        match pm.refresh_target() {
            Ok(()) => ctx.say("the target repositories answer"),
            Err(e) => ctx.finding(finding(
                "repositories",
                Severity::Inhibitor,
                format!("{e:#}"),
                "check the network, proxy and mirror configuration of the root's package sources",
            )),
        }
        Ok(StepStatus::Succeeded)
    }
}

/// What becomes of each repository, one line each; third-party ones the
/// cutover disables are a warning, those the plan makes inhibitors an
/// inhibitor.
fn decided_repositories(ctx: &StepContext<'_>, pm: &dyn super::packages::PackageManager) {
    let repos = match pm.repositories() {
        Ok(r) => r,
        Err(e) => {
            ctx.finding(finding(
                "repositories.sources",
                Severity::Inhibitor,
                format!("{e:#}"),
                "repair the root's repository configuration (its package manager shows what it objects to)",
            ));
            return;
        }
    };
    for r in &repos {
        ctx.say(r.line.clone());
    }
    let disabled: Vec<String> = repos
        .iter()
        .filter(|r| r.third_party && !r.inhibits)
        .filter_map(|r| {
            r.disabled
                .as_ref()
                .map(|why| format!("{} ({why})", r.place))
        })
        .collect();
    if !disabled.is_empty() {
        ctx.finding(finding(
            "repositories.third-party",
            Severity::Warning,
            format!(
                "{} third-party repositories will be disabled in the cutover: {}",
                disabled.len(),
                listed(&disabled)
            ),
            "give each a vendor map (`vendors`), or keep it as it is (`keep`) if it already serves the target release",
        ));
    }
    let inhibiting: Vec<String> = repos
        .iter()
        .filter(|r| r.inhibits)
        .map(|r| r.place.clone())
        .collect();
    if !inhibiting.is_empty() {
        ctx.finding(finding(
            "repositories.third-party",
            Severity::Inhibitor,
            format!(
                "third_party = \"inhibit\", and no vendor map or `keep` decides {} third-party repositories: {}",
                inhibiting.len(),
                listed(&inhibiting)
            ),
            "add a vendor map or a `keep` of the package step for each (apt: also `disable`)",
        ));
    }
}

/// Enough free space where the upgrade writes.
pub(crate) struct DiskSpace {
    margin: u64,
}

impl DiskSpace {
    /// From the step's options.
    pub(crate) fn new(o: DiskSpaceOptions) -> Self {
        Self {
            margin: o.margin_mb.saturating_mul(1_000_000),
        }
    }
}

impl StepKind for DiskSpace {
    fn describe(&self) -> String {
        "Check /usr, /var and /boot have the space the upgrade needs".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        needs_target(ctx, "disk-space", || self.check(ctx))
    }
}

impl DiskSpace {
    fn check(&self, ctx: &StepContext<'_>) -> Result<()> {
        let estimate = ctx.run.packages()?.estimate()?;
        let boot_need = if estimate.kernel {
            largest_kernel_set(ctx)?
        } else {
            0
        };
        // With a snapshot of the root held through the upgrade, the files
        // of every package it replaces stay beside the new ones.
        let snapshot_need = if super::backup::will_snapshot(ctx.run) {
            let pm = ctx.run.packages()?;
            let kept = pm.installed_size(&estimate.replaced)?;
            ctx.say(format!(
                "the safety backup is a snapshot: the {} packages the upgrade replaces keep {:.0} MB in it",
                estimate.replaced.len(),
                kept as f64 / 1e6
            ));
            kept
        } else {
            0
        };
        let needs = [
            (
                "/usr",
                u64::try_from(estimate.installed_delta.max(0))
                    .unwrap_or(0)
                    .saturating_add(snapshot_need),
            ),
            ("/var", estimate.download),
            ("/boot", boot_need),
        ];
        // Sum the needs per filesystem: /usr, /var and /boot may be one.
        let mut per_fs: BTreeMap<u64, (Vec<&str>, u64, u64)> = BTreeMap::new();
        for (dir, need) in needs {
            let path = ctx.path(dir.trim_start_matches('/'))?;
            let path = if path.exists() {
                path
            } else {
                ctx.root().to_path_buf()
            };
            let dev = std::fs::metadata(&path)
                .with_context(|| format!("stat {}", path.display()))?
                .dev();
            let st = nix::sys::statvfs::statvfs(&path)
                .with_context(|| format!("statvfs {}", path.display()))?;
            let free = st.blocks_available() * st.fragment_size();
            let entry = per_fs.entry(dev).or_insert((Vec::new(), 0, free));
            entry.0.push(dir);
            entry.1 += need;
        }
        for (dirs, need, free) in per_fs.values() {
            let want = need + self.margin;
            let name = dirs.join(", ");
            let line = format!(
                "{name}: {:.0} MB free, the upgrade needs {:.0} MB plus a {:.0} MB margin",
                *free as f64 / 1e6,
                *need as f64 / 1e6,
                self.margin as f64 / 1e6
            );
            if *free < want {
                ctx.finding(finding(
                    &format!("disk-space.{}", dirs[0]),
                    Severity::Inhibitor,
                    line,
                    "free space on that filesystem (apt-get clean, remove old kernels, logs or snapshots), or lower margin_mb",
                ));
            } else {
                ctx.say(line);
            }
        }
        Ok(())
    }
}

/// Size of the largest installed kernel image plus initrd in /boot: about
/// what a new kernel takes there.
fn largest_kernel_set(ctx: &StepContext<'_>) -> Result<u64> {
    let boot = ctx.path("boot")?;
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(&boot) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            for prefix in ["vmlinuz-", "initrd.img-"] {
                if let Some(version) = name.strip_prefix(prefix) {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    *by_version.entry(version.to_string()).or_default() += size;
                }
            }
        }
    }
    Ok(by_version.values().copied().max().unwrap_or(64_000_000))
}

/// Held packages the upgrade would have to change.
pub(crate) struct HeldPackages;

impl StepKind for HeldPackages {
    fn describe(&self) -> String {
        "Check no held package blocks the upgrade".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        needs_target(ctx, "held-packages", || {
            let blocking = ctx.run.packages()?.blocking_holds()?;
            if blocking.is_empty() {
                ctx.say("no held package blocks the upgrade");
            } else {
                ctx.finding(finding(
                    "held-packages",
                    Severity::Inhibitor,
                    format!("held packages block the upgrade: {}", blocking.join(", ")),
                    "release the holds (apt-mark unhold PACKAGE) or remove the packages",
                ));
            }
            Ok(())
        })
    }
}

/// Third-party repositories and packages not from the distribution.
pub(crate) struct ThirdParty {
    origins: Vec<String>,
}

impl ThirdParty {
    /// From the step's options.
    pub(crate) fn new(o: ThirdPartyOptions) -> Self {
        Self { origins: o.origins }
    }
}

/// At most this many names are listed in a finding's message.
const LIST_MAX: usize = 20;

fn listed(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LIST_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_MAX {
        s.push_str(&format!(" and {} more", items.len() - LIST_MAX));
    }
    s
}

impl StepKind for ThirdParty {
    fn describe(&self) -> String {
        "List third-party repositories and packages not from the distribution".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let foreign = match ctx.run.packages()?.foreign(&self.origins) {
            Ok(f) => f,
            Err(e) => {
                ctx.finding(finding(
                    "third-party",
                    Severity::Warning,
                    format!("{e:#}"),
                    "refresh the package lists so that the origin of packages can be told",
                ));
                return Ok(StepStatus::Succeeded);
            }
        };
        if !foreign.repositories.is_empty() {
            ctx.finding(finding(
                "third-party.repositories",
                Severity::Warning,
                format!(
                    "{} third-party repositories: {}",
                    foreign.repositories.len(),
                    listed(&foreign.repositories)
                ),
                "make sure each has packages for the target release, or disable it before the upgrade",
            ));
        }
        if !foreign.packages.is_empty() {
            ctx.finding(finding(
                "third-party.packages",
                Severity::Warning,
                format!(
                    "{} installed packages are not from the distribution: {}",
                    foreign.packages.len(),
                    listed(&foreign.packages)
                ),
                "check that they work on the target release; they will not be upgraded by the distribution",
            ));
        }
        if foreign.repositories.is_empty() && foreign.packages.is_empty() {
            ctx.say("every repository and installed package is from the distribution");
        }
        Ok(StepStatus::Succeeded)
    }
}

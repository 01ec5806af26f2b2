//! What the checks, the dry run and the safety backup need from a package
//! manager, whichever the plan uses (apt now; zypper and dnf alike).
//!
//! Everything here is read-only with respect to the root: questions about the
//! *target* release are answered from a scratch area (package lists, caches,
//! switched repository configuration) on a tmpfs the agent mounts in its own
//! mount namespace. The one exception is [`Prefetch`], a sync step: it fills
//! the root's package cache (and nothing else) with what the upgrade installs.

use anyhow::{Result, bail};

use super::{RunContext, StepContext, StepKind};
use crate::core::event::StepStatus;
use crate::core::kinds::Kind;

/// `prefetch`: every package the cutover's upgrade installs, downloaded in
/// the sync phase (while services run) into the root's own package cache,
/// where the cutover finds them: the download leaves the downtime window.
pub(crate) struct Prefetch;

impl StepKind for Prefetch {
    fn describe(&self) -> String {
        "Download the packages of the upgrade before the cutover".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let held = ctx.run.packages()?.prefetch(ctx)?;
        ctx.say(held);
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        let e = ctx.run.packages()?.estimate()?;
        ctx.say(format!(
            "would download {:.1} MB into the root's package cache",
            e.download as f64 / 1e6
        ));
        Ok(())
    }
}

/// The target release's repository metadata could not be fetched; checks that
/// need it report "not checked" (the repositories check reports the cause).
#[derive(Debug, thiserror::Error)]
#[error("the target release's repositories did not answer: {0}")]
pub(crate) struct TargetUnavailable(pub String);

/// The outcome of fetching the target's metadata, once tried: the checks ask
/// several questions of one fetch, and a failed fetch is not repeated.
#[derive(Debug, Default)]
pub(crate) struct Refreshed(std::cell::RefCell<Option<std::result::Result<(), String>>>);

impl Refreshed {
    /// Records the outcome of a fetch and passes it on.
    pub(crate) fn record(&self, result: Result<()>) -> Result<()> {
        *self.0.borrow_mut() = Some(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("{e:#}")),
        });
        result
    }

    /// Whether a fetch was tried and succeeded.
    pub(crate) fn succeeded(&self) -> bool {
        matches!(*self.0.borrow(), Some(Ok(())))
    }

    /// Fetches with `fetch` the first time; later calls repeat the outcome
    /// (a failure as [`TargetUnavailable`]).
    pub(crate) fn ensure(&self, fetch: impl FnOnce() -> Result<()>) -> Result<()> {
        let known = self.0.borrow().clone();
        match known {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(TargetUnavailable(e).into()),
            None => self.record(fetch()),
        }
    }
}

/// Space an upgrade needs, as the package manager estimates it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SpaceEstimate {
    /// Bytes to download (into the package cache, under /var).
    pub(crate) download: u64,
    /// Change of the installed size in bytes (mostly under /usr); negative
    /// when the upgrade frees space.
    pub(crate) installed_delta: i64,
    /// Whether a kernel is installed or upgraded (space needed in /boot).
    pub(crate) kernel: bool,
    /// Installed packages the upgrade replaces or removes: with a snapshot
    /// of the root held, their files keep taking space beside the new ones.
    pub(crate) replaced: Vec<String>,
}

/// A repository as the checks show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RepoLine {
    /// Where it is, what it is, what happens to it.
    pub(crate) line: String,
    /// Where it is, shortly (`FILE:N URI`, `FILE [ID] URL`).
    pub(crate) place: String,
    /// Whether it is not the distribution's.
    pub(crate) third_party: bool,
    /// Why the cutover disables it, if it does.
    pub(crate) disabled: Option<String>,
    /// Whether it stops the run (`third_party = "inhibit"`).
    pub(crate) inhibits: bool,
}

/// Packages and repositories not from the distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Foreign {
    /// Repositories whose origin is not the distribution's.
    pub(crate) repositories: Vec<String>,
    /// Installed packages whose installed version no distribution repository
    /// has (installed by hand, or from a third-party repository).
    pub(crate) packages: Vec<String>,
}

/// What a simulated upgrade does to an installed package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Installed anew at this version, from there (apt's archives, dnf's
    /// repository; empty when the package manager does not say).
    Upgraded(String, String),
    /// Removed.
    Removed,
    /// Removed, another package (named) obsoleting it.
    Replaced(String),
}

/// How a third-party package is listed: `NAME (upgraded to V from R)`,
/// `NAME (kept at V)`, `NAME (V, removed by the upgrade)`; only its
/// version when the target could not be resolved (`resolved` false).
pub(crate) fn fate_line(
    name: &str,
    installed: &str,
    fate: Option<&Fate>,
    resolved: bool,
) -> String {
    let fate = match fate {
        Some(Fate::Upgraded(v, from)) if from.is_empty() => format!("upgraded to {v}"),
        Some(Fate::Upgraded(v, from)) => format!("upgraded to {v} from {from}"),
        Some(Fate::Removed) => format!("{installed}, removed by the upgrade"),
        Some(Fate::Replaced(by)) => format!("{installed}, replaced by {by}"),
        None if resolved => format!("kept at {installed}"),
        None => installed.to_string(),
    };
    format!("{name} ({fate})")
}

/// A package manager, as seen by checks, dry runs and backups.
pub(crate) trait PackageManager {
    /// Its name (`apt`).
    fn name(&self) -> &'static str;
    /// apt itself, whose sources the `apt-sources` step decides.
    fn apt(&self) -> Option<&super::apt::Apt> {
        None
    }
    /// dnf itself, for its step.
    fn dnf(&self) -> Option<&super::dnf::Dnf> {
        None
    }
    /// zypper itself, for its step.
    fn zypper(&self) -> Option<&super::zypper::Zypper> {
        None
    }
    /// The root's repositories, each classified and decided (none when
    /// the package manager decides none).
    fn repositories(&self) -> Result<Vec<RepoLine>> {
        Ok(Vec::new())
    }
    /// Problems of the package database: half-installed packages, or a
    /// lock held by another process. Empty when healthy.
    fn database_problems(&self) -> Result<Vec<String>>;
    /// Fetches the target release's repository metadata into the scratch
    /// area; fails naming the repository that does not answer.
    fn refresh_target(&self) -> Result<()>;
    /// What the upgrade to the target release would need.
    fn estimate(&self) -> Result<SpaceEstimate>;
    /// The installed size in bytes of the named packages (those not
    /// installed count nothing).
    fn installed_size(&self, packages: &[String]) -> Result<u64>;
    /// Held (locked) packages that the upgrade would have to change.
    fn blocking_holds(&self) -> Result<Vec<String>>;
    /// Third-party repositories and packages, given the distribution's origins.
    fn foreign(&self, origins: &[String]) -> Result<Foreign>;
    /// Streams what the upgrade would do (a simulation) as output of the step.
    fn simulate(&self, ctx: &super::StepContext<'_>) -> Result<()>;
    /// Downloads every package the upgrade will install into the root's
    /// own package cache, where the cutover's transaction finds them; one
    /// line saying what it holds now.
    fn prefetch(&self, ctx: &super::StepContext<'_>) -> Result<String>;
    /// Problems of the installed system after the upgrade (half-installed
    /// packages, unsatisfied dependencies). Empty when consistent.
    fn verify(&self) -> Result<Vec<String>>;
    /// After the upgrade: installed packages that no repository of the
    /// root (now the target release's) has, by name, sorted.
    fn obsolete(&self) -> Result<Vec<String>>;
    /// Removes exactly `names` (nothing else along with them): `Ok(None)`
    /// once removed, `Ok(Some(why))` when the removal would take other
    /// packages along or break a dependency, nothing removed.
    fn remove_exactly(&self, ctx: &StepContext<'_>, names: &[String]) -> Result<Option<String>>;
}

/// The package manager of the plan: the kind of its package upgrade step.
pub(crate) fn for_plan(run: &RunContext) -> Result<Box<dyn PackageManager>> {
    let Some(step) =
        run.plan
            .first_of_kind(&[Kind::Apt, Kind::AptSources, Kind::Zypper, Kind::Dnf])
    else {
        bail!("the plan has no package upgrade step (apt, zypper or dnf), which this step needs");
    };
    Ok(match step.kind {
        Kind::Zypper => Box::new(super::zypper::Zypper::new(run, step.options()?)),
        Kind::Dnf => Box::new(super::dnf::Dnf::new(run, step.options()?)),
        _ => Box::new(super::apt::Apt::new(run)?),
    })
}

/// Where an rpm database may be in a root, newest layout first.
pub(crate) const RPM_DB_DIRS: [&str; 2] = ["usr/lib/sysimage/rpm", "var/lib/rpm"];

/// The package manager a root uses, for plans without a package step:
/// `apt` if it has a dpkg database, `rpm` if it has an rpm one.
pub(crate) fn detect(root: &std::path::Path) -> Option<&'static str> {
    if root.join("var/lib/dpkg/status").is_file() {
        return Some("apt");
    }
    RPM_DB_DIRS
        .iter()
        .any(|d| root.join(d).is_dir())
        .then_some("dnf")
}

/// The command that lists the installed packages of `root` as
/// [`PackageManager::package_selection`] does, for the package manager named
/// `name` (rollback compares the backup with it).
pub(crate) fn selection_command(name: &str, root: &std::path::Path) -> std::process::Command {
    match name {
        "zypper" | "dnf" => super::rpm::rpm(
            root,
            &[
                "-qa",
                "--qf",
                "%{NAME}.%{ARCH}\\t%{VERSION}-%{RELEASE}\\tinstalled\\n",
            ],
        ),
        _ => {
            let mut cmd = super::chroot(root, "dpkg-query");
            cmd.args([
                "-W",
                "-f",
                "${binary:Package}\\t${Version}\\t${db:Status-Abbrev}\\n",
            ]);
            cmd
        }
    }
}

/// Parses a size as package managers print it: `36.4 MB`, `812 kB`, `1,024 B`.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let number: f64 = parts.next()?.replace(',', "").parse().ok()?;
    let unit = parts.next().unwrap_or("B");
    let factor = match unit.trim_end_matches('.') {
        "B" => 1.0,
        "kB" | "KB" | "k" => 1e3,
        "KiB" => 1024.0,
        "MB" | "M" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "GB" | "G" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// Sums one size per line (what `dpkg-query` and `rpm -q --qf` print),
/// times `unit`; lines that are not numbers (packages not installed) count
/// nothing.
pub(crate) fn sum_sizes(text: &str, unit: u64) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .fold(0u64, |sum, n| sum.saturating_add(n.saturating_mul(unit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_package_manager_units() {
        assert_eq!(parse_size("36.4 MB"), Some(36_400_000));
        assert_eq!(parse_size("812 kB"), Some(812_000));
        assert_eq!(parse_size("1,024 B"), Some(1024));
        assert_eq!(parse_size("2 GiB"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("3 parsecs"), None);
    }
}

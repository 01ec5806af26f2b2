//! Step kinds: one module per kind (checks share one). A step is one unit of
//! the plan that the agent runs, reports on and, once it has succeeded in a
//! migration, never repeats.
//!
//! The registry of kinds (names, phases, typed options) is
//! `crate::core::kinds`, shared with the host, which validates plans before
//! any container starts; [`instantiate`] maps each kind to its
//! implementation here.

pub(crate) mod apt;
pub(crate) mod apt_sources;
pub(crate) mod backup;
pub(crate) mod bootloader;
pub(crate) mod checks;
pub(crate) mod command;
pub(crate) mod config;
pub(crate) mod delta;
pub(crate) mod dnf;
pub(crate) mod manifest;
pub(crate) mod packages;
pub(crate) mod pg_clusters;
pub(crate) mod postgres;
pub(crate) mod repofile;
pub(crate) mod rpm;
pub(crate) mod rpm_keys;
pub(crate) mod rpm_repos;
pub(crate) mod rsync;
pub(crate) mod service;
pub(crate) mod snapd;
pub(crate) mod verify;
pub(crate) mod zypper;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};

use crate::agent::exec::{ProgressParser, run_streaming};
use crate::agent::sink::EventSink;
use crate::core::event::{Event, Finding, OutputStream, StepStatus};
use crate::core::image::TargetRelease;
use crate::core::journal::Journal;
use crate::core::kinds::Kind;
use crate::core::plan::{Plan, PlanStep};
use crate::core::release::OsRelease;
use packages::PackageManager;

/// PATH inside the migrated root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The work of one step.
pub(crate) trait StepKind {
    /// One line saying what the step does.
    fn describe(&self) -> String;
    /// Does the work. Returns `Skipped` when there was nothing to do.
    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus>;
    /// Says what `run` would do, changing nothing.
    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.say(format!("would: {}", self.describe()));
        Ok(())
    }
    /// Programs of the migration image the step runs (not the root's):
    /// a plan is refused before anything runs when the image lacks one.
    fn tools(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The first of `tools` that is not a program of this image (an absolute
/// path that is no file, or a name found in no directory of `PATH`).
pub(crate) fn missing_tool(tools: &[String]) -> Option<&String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    tools.iter().find(|tool| {
        if tool.contains('/') {
            return !Path::new(tool.as_str()).is_file();
        }
        !std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool.as_str()))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Builds the step of a plan entry: the one place that maps each kind of
/// the registry ([`Kind`]) to its implementation; the compiler sees that
/// none is missing.
pub(crate) fn instantiate(step: &PlanStep) -> Result<Box<dyn StepKind>> {
    Ok(match step.kind {
        Kind::CheckRelease => Box::new(checks::Release),
        Kind::CheckPackageDb => Box::new(checks::PackageDb),
        Kind::CheckRepositories => Box::new(checks::Repositories),
        Kind::CheckDiskSpace => Box::new(checks::DiskSpace::new(step.options()?)),
        Kind::CheckHeldPackages => Box::new(checks::HeldPackages),
        Kind::CheckThirdParty => Box::new(checks::ThirdParty::new(step.options()?)),
        Kind::AptSources => Box::new(apt_sources::SwitchSources),
        Kind::Apt => Box::new(apt::DistUpgrade),
        Kind::Prefetch => Box::new(packages::Prefetch),
        Kind::Zypper => Box::new(zypper::ZypperStep::new(step.options()?)),
        Kind::Dnf => Box::new(dnf::DnfStep::new(step.options()?)),
        Kind::Bootloader => Box::new(bootloader::Bootloader),
        Kind::VerifyRelease => Box::new(verify::VerifyRelease::new(step.options()?)),
        Kind::SafetyBackup => Box::new(backup::SafetyBackup::new(step.options()?)),
        Kind::Command => Box::new(command::CommandStep::new(step.options()?)),
        Kind::Postgres => Box::new(postgres::PostgresStep::new(step.options()?)),
        Kind::PostgresqlClusters => Box::new(pg_clusters::ClustersStep::new(step.options()?)),
        Kind::Rsync => Box::new(rsync::RsyncStep::new(step.options()?, step.phase)),
        Kind::VerifyCopy => Box::new(rsync::VerifyCopyStep::new(step.options()?)),
        Kind::Config => Box::new(config::ConfigStep::new(step.options()?)),
        Kind::Service => Box::new(service::ServiceStep::new(step.options()?)),
    })
}

/// What the whole run shares.
pub(crate) struct RunContext {
    /// The migrated root (`/system-root` in the container).
    pub(crate) root: PathBuf,
    /// The same root without the agent's own mounts (/proc, /run,
    /// resolv.conf): what backups read and restores write.
    pub(crate) pristine: PathBuf,
    /// Run id.
    pub(crate) run_id: String,
    /// The root's release before the migration.
    pub(crate) source: OsRelease,
    /// The release the image upgrades to.
    pub(crate) target: TargetRelease,
    /// Source release patterns the image accepts.
    pub(crate) accepts: Vec<String>,
    /// The plan.
    pub(crate) plan: Plan,
    /// Event output.
    pub(crate) sink: EventSink,
    /// The package manager of the plan, created on first use.
    pub(crate) packages: std::cell::OnceCell<Box<dyn PackageManager>>,
    /// Findings of the check steps so far.
    pub(crate) findings: RefCell<Vec<Finding>>,
    /// The state journal (absent for runs that change nothing).
    pub(crate) journal: RefCell<Option<Journal>>,
    /// Whether the root is the running host (`--root /`).
    pub(crate) live: bool,
    /// Whether the run goes on from its checks to the cutover (`migrate
    /// run`): then the checks' resolution of the upgrade may be the
    /// cutover's own, held at apt's prompt.
    pub(crate) holds_upgrade: bool,
    /// The manifests of the copies (`rsync` steps) taken in this run.
    pub(crate) manifests: manifest::Manifests,
}

impl RunContext {
    /// The plan's package manager (apt, zypper or dnf, from the plan's
    /// package upgrade step).
    pub(crate) fn packages(&self) -> Result<&dyn PackageManager> {
        if let Some(p) = self.packages.get() {
            return Ok(p.as_ref());
        }
        let made = packages::for_plan(self)?;
        Ok(self.packages.get_or_init(|| made).as_ref())
    }
}

/// What a running step can use.
pub(crate) struct StepContext<'a> {
    /// The run.
    pub(crate) run: &'a RunContext,
    /// The step.
    pub(crate) step: &'a PlanStep,
}

impl StepContext<'_> {
    /// The migrated root.
    pub(crate) fn root(&self) -> &Path {
        &self.run.root
    }

    /// Runs a command, streaming its output as events of this step.
    pub(crate) fn run(&self, cmd: &mut Command) -> Result<()> {
        run_streaming(cmd, &self.run.sink, &self.step.id, None)
    }

    /// Runs a command whose stdout carries progress lines.
    pub(crate) fn run_with_progress(
        &self,
        cmd: &mut Command,
        progress: &ProgressParser,
    ) -> Result<()> {
        run_streaming(cmd, &self.run.sink, &self.step.id, Some(progress))
    }

    /// A command that runs `program` chrooted into the root, with a clean,
    /// non-interactive environment.
    pub(crate) fn chroot(&self, program: &str) -> Command {
        chroot(&self.run.root, program)
    }

    /// A path inside the root, symlinks resolved inside it.
    pub(crate) fn path(&self, inside: &str) -> Result<PathBuf> {
        crate::core::rootfs::resolve(&self.run.root, inside)
    }

    /// This step's directory under the migration's backup directory
    /// (`var/lib/migrate/backup/<migration>/<step>` of the pristine root),
    /// kept until cleanup, created readable by root only (mode 0700, and
    /// the migration's directory too): it holds copies of configuration and
    /// databases.
    pub(crate) fn backup_dir(&self) -> Result<PathBuf> {
        let dir = self.backup_path();
        let migration = dir.parent().unwrap_or(&dir);
        for d in [migration, dir.as_path()] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", d.display()))?;
        }
        Ok(dir)
    }

    /// The migration's id (the run's, for runs without a journal).
    pub(crate) fn migration_id(&self) -> String {
        self.run
            .journal
            .borrow()
            .as_ref()
            .map(|j| j.migration_id.clone())
            .unwrap_or_else(|| self.run.run_id.clone())
    }

    /// Where [`Self::backup_dir`] is, not created.
    pub(crate) fn backup_path(&self) -> PathBuf {
        let migration = self.migration_id();
        self.run
            .pristine
            .join(backup::BACKUP_DIR)
            .join(migration)
            .join(&self.step.id)
    }

    /// The files in [`Self::backup_dir`] (walked without following
    /// symlinks), as paths in the root, sorted.
    pub(crate) fn backups(&self) -> Vec<String> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                match entry.file_type() {
                    Ok(t) if t.is_dir() => walk(&entry.path(), out),
                    Ok(t) if t.is_file() => out.push(entry.path()),
                    _ => {}
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.backup_path(), &mut files);
        let mut out: Vec<String> = files
            .iter()
            .filter_map(|f| f.strip_prefix(&self.run.pristine).ok())
            .map(|f| format!("/{}", f.display()))
            .collect();
        out.sort();
        out
    }

    /// Tells the host something about the step's progress.
    pub(crate) fn say(&self, line: impl Into<String>) {
        self.run
            .sink
            .output(&self.step.id, OutputStream::Stdout, line);
    }

    /// Reports a finding of a check.
    pub(crate) fn finding(&self, finding: Finding) {
        self.run.sink.emit(Event::Finding {
            step: self.step.id.clone(),
            finding: finding.clone(),
        });
        self.run.findings.borrow_mut().push(finding);
    }
}

/// A command that runs `program` chrooted into `root`, with a clean,
/// non-interactive environment.
pub(crate) fn chroot(root: &Path, program: &str) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .arg(program)
        .env_clear()
        .env("PATH", ROOT_PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", "/root")
        .env("TMPDIR", crate::agent::mounts::ROOT_TMP);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal valid options of the kinds that require some.
    fn sample_options(kind: Kind) -> serde_json::Value {
        match kind {
            Kind::Dnf => serde_json::json!({"releasever": "2"}),
            Kind::Command => serde_json::json!({"command": ["true"]}),
            Kind::Postgres => serde_json::json!({
                "source": {"socket": "/run/postgresql", "database": "app"},
                "target": {"url": "postgresql://app@db/app_new"},
            }),
            Kind::Rsync => serde_json::json!({"source": "/srv/a/", "destination": "/srv/b/"}),
            Kind::VerifyCopy => serde_json::json!({"of": "final-copy"}),
            Kind::Config => {
                serde_json::json!({"source": "/a.yaml", "mapping": {"a": "b"}, "output": "/b.yaml"})
            }
            Kind::Service => serde_json::json!({"action": "stop", "units": ["app.service"]}),
            _ => serde_json::json!({}),
        }
    }

    #[test]
    fn every_registered_kind_can_be_instantiated() {
        for kind in Kind::ALL.iter().copied() {
            let serde_json::Value::Object(options) = sample_options(kind) else {
                unreachable!()
            };
            kind.check_options(serde_json::Value::Object(options.clone()))
                .unwrap_or_else(|e| panic!("{kind}: {e:?}"));
            let step = PlanStep {
                id: "s".into(),
                kind,
                phase: kind.phases()[0],
                description: None,
                app: None,
                options,
                defined_at: "test".into(),
            };
            let built = instantiate(&step).unwrap_or_else(|e| panic!("{kind}: {e:#}"));
            assert!(!built.describe().is_empty());
        }
    }
}

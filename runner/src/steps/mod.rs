//! Step kinds: one module per kind (checks share one). A step is one unit of
//! the plan that the agent runs, reports on and, once it has succeeded in a
//! migration, never repeats.
//!
//! [`KINDS`] is the registry: each kind's phases and options, used by
//! [`crate::plan`] to validate plans before anything runs, and by
//! [`instantiate`] to build the step.

pub mod apt;
pub mod backup;
pub mod checks;
pub mod command;
pub mod config;
pub mod dnf;
pub mod packages;
pub mod postgres;
pub mod repofile;
pub mod rpm;
pub mod rsync;
pub mod service;
pub mod snapd;
pub mod verify;
pub mod zypper;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::agent::exec::{ProgressParser, run_streaming};
use crate::agent::journal::Journal;
use crate::agent::sink::EventSink;
use crate::event::{Event, Finding, OutputStream, StepStatus};
use crate::image::TargetRelease;
use crate::plan::{Phase, Plan, PlanStep};
use crate::release::OsRelease;
use packages::PackageManager;

/// PATH inside the migrated root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Type of a step option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionType {
    /// A string.
    String,
    /// An integer.
    Integer,
    /// An integer or a float.
    Number,
    /// true or false.
    Bool,
    /// An array of strings.
    StringList,
    /// An array of integers.
    IntegerList,
    /// A table.
    Table,
    /// An array of tables.
    TableList,
}

/// One option of a step kind.
#[derive(Debug)]
pub struct OptionSpec {
    /// Key in the plan.
    pub key: &'static str,
    /// Its type.
    pub ty: OptionType,
    /// Whether a step of the kind must set it.
    pub required: bool,
    /// What it means.
    pub doc: &'static str,
}

/// A step kind: where it may run and what options it takes.
#[derive(Debug)]
pub struct KindSpec {
    /// Name in plans.
    pub kind: &'static str,
    /// Phases a step of this kind may be in.
    pub phases: &'static [Phase],
    /// Its options (besides id, kind, phase, enabled, description).
    pub options: &'static [OptionSpec],
    /// What it does.
    pub doc: &'static str,
}

const fn opt(key: &'static str, ty: OptionType, doc: &'static str) -> OptionSpec {
    OptionSpec {
        key,
        ty,
        required: false,
        doc,
    }
}

const fn required(key: &'static str, ty: OptionType, doc: &'static str) -> OptionSpec {
    OptionSpec {
        key,
        ty,
        required: true,
        doc,
    }
}

use OptionType as T;
use Phase::{Check, Cutover, Post, Sync};

/// Every step kind.
pub static KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "check-release",
        phases: &[Check],
        options: &[],
        doc: "inhibitor unless the root's release is one the image accepts",
    },
    KindSpec {
        kind: "check-package-db",
        phases: &[Check],
        options: &[],
        doc: "inhibitor if packages are half-installed or the package manager's lock is held",
    },
    KindSpec {
        kind: "check-repositories",
        phases: &[Check],
        options: &[],
        doc: "inhibitor unless the target release's repositories answer (fetched into a scratch area)",
    },
    KindSpec {
        kind: "check-disk-space",
        phases: &[Check],
        options: &[opt(
            "margin_mb",
            T::Integer,
            "free space to keep beyond the estimate, per filesystem (default 100)",
        )],
        doc: "inhibitor if /usr, /var or /boot lack the space the package manager estimates",
    },
    KindSpec {
        kind: "check-held-packages",
        phases: &[Check],
        options: &[],
        doc: "inhibitor naming held packages that the upgrade would have to change",
    },
    KindSpec {
        kind: "check-third-party",
        phases: &[Check],
        options: &[opt(
            "origins",
            T::StringList,
            "release origins that belong to the distribution (apt: the Origin field)",
        )],
        doc: "warning listing third-party repositories and packages not from the distribution",
    },
    KindSpec {
        kind: "apt-sources",
        phases: &[Cutover],
        options: &[],
        doc: "switch apt sources (one-line and deb822) from the source suite to the target's",
    },
    KindSpec {
        kind: "apt",
        phases: &[Cutover],
        options: &[],
        doc: "apt-get update and dist-upgrade in the root, keeping locally edited configuration",
    },
    KindSpec {
        kind: "zypper",
        phases: &[Cutover],
        options: &[
            opt("mode", T::String, "dup (default) or migration"),
            opt(
                "product",
                T::String,
                "target product of migration mode, e.g. SLES/15.6/x86_64",
            ),
            opt(
                "releasever",
                T::String,
                "zypper --releasever, for repository URLs using $releasever",
            ),
            opt(
                "repositories",
                T::TableList,
                "repository changes: id, action (add, replace, disable), url, name, gpgcheck",
            ),
        ],
        doc: "zypper dup (or zypper migration) against the root, everything downloaded before anything changes",
    },
    KindSpec {
        kind: "dnf",
        phases: &[Cutover],
        options: &[
            required(
                "releasever",
                T::String,
                "the target release (dnf --releasever)",
            ),
            opt(
                "repositories",
                T::TableList,
                "repository changes: id, action (add, replace, disable), url, name, gpgcheck",
            ),
            opt(
                "allow_erasing",
                T::Bool,
                "let the solver remove packages that block the upgrade (default true)",
            ),
        ],
        doc: "dnf distro-sync against the root, everything downloaded before anything changes",
    },
    KindSpec {
        kind: "verify-release",
        phases: &[Cutover, Post],
        options: &[],
        doc: "the root's os-release is the target release and the package database is consistent",
    },
    KindSpec {
        kind: "safety-backup",
        phases: &[Cutover],
        options: &[opt(
            "method",
            T::String,
            "auto (default: snapshot where the filesystem can, else tar), snapper, btrfs or tar",
        )],
        doc: "snapshot of the root, or a tarball of /etc plus the package selection",
    },
    KindSpec {
        kind: "postgres",
        phases: &[Sync, Cutover],
        options: &[
            required(
                "source",
                T::Table,
                "where to dump from: url, or socket/host, port, database, user; password_file or password_env",
            ),
            required(
                "target",
                T::Table,
                "where to restore into (same keys as source)",
            ),
            opt("format", T::String, "custom (default) or directory"),
            opt(
                "jobs",
                T::Integer,
                "parallel jobs for dump and restore (directory format)",
            ),
            opt(
                "exclude_table_data",
                T::StringList,
                "tables whose data is not copied (pg_dump patterns)",
            ),
            opt(
                "schema_upgrade",
                T::StringList,
                "command run after the restore, with the target in PG* variables",
            ),
            opt(
                "verify",
                T::Bool,
                "compare the row counts of every table afterwards (default true)",
            ),
        ],
        doc: "pg_dump from the source, pg_restore --no-owner --no-privileges into the target, schema upgrade, row-count check",
    },
    KindSpec {
        kind: "rsync",
        phases: &[Sync, Cutover],
        options: &[
            required("source", T::String, "a path in the root, or host:path"),
            required("destination", T::String, "a path in the root, or host:path"),
            opt(
                "delete",
                T::Bool,
                "delete what the source does not have (default: in cutover)",
            ),
            opt(
                "verify",
                T::Bool,
                "checksum comparison afterwards (default: in cutover)",
            ),
            opt("exclude", T::StringList, "rsync --exclude patterns"),
            opt(
                "ssh_key",
                T::String,
                "ssh identity for remotes, a path in the root (default: root's id_ed25519, id_ecdsa, id_rsa)",
            ),
            opt(
                "ssh_port",
                T::Integer,
                "ssh port of the remote (default: 22)",
            ),
        ],
        doc: "rsync -aHAX --numeric-ids; a repeatable pre-copy in sync, the final pass with --delete in cutover",
    },
    KindSpec {
        kind: "config",
        phases: &[Sync, Cutover, Post],
        options: &[
            required(
                "source",
                T::String,
                "the old configuration, a YAML file in the root",
            ),
            required(
                "mapping",
                T::Table,
                "old key = new key, or old key = { to, transform, values }",
            ),
            opt(
                "output",
                T::String,
                "write the new configuration to this file in the root",
            ),
            opt("snap", T::String, "or apply it to this snap through snapd"),
            opt(
                "snapd_socket",
                T::String,
                "snapd's socket, a path in the root (default /run/snapd.socket)",
            ),
        ],
        doc: "migrate configuration keys through a mapping table; empty values are skipped",
    },
    KindSpec {
        kind: "service",
        phases: &[Sync, Cutover, Post],
        options: &[
            required(
                "action",
                T::String,
                "stop, start, restart, enable, disable, mask or unmask",
            ),
            required("units", T::StringList, "unit names"),
            opt(
                "bus",
                T::String,
                "the root's system bus socket (a path in the root): talk to its running systemd",
            ),
            opt(
                "timeout_s",
                T::Integer,
                "how long start and stop may take per unit (default 90)",
            ),
        ],
        doc: "systemd units: over D-Bus on a running root, by their symlinks on an offline one",
    },
    KindSpec {
        kind: "command",
        phases: &[Check, Sync, Cutover, Post],
        options: &[
            required("command", T::StringList, "program and arguments"),
            opt(
                "chroot",
                T::Bool,
                "run chrooted in the root instead of in the image (default false)",
            ),
            opt("env", T::Table, "environment variables"),
            opt(
                "timeout_s",
                T::Integer,
                "kill the command after this many seconds",
            ),
            opt(
                "ok_exit_codes",
                T::IntegerList,
                "exit codes that count as success (default [0])",
            ),
        ],
        doc: "run a command in the image or chrooted in the root: the extension point for custom images",
    },
];

/// The work of one step.
pub trait StepKind {
    /// One line saying what the step does.
    fn describe(&self) -> String;
    /// Does the work. Returns `Skipped` when there was nothing to do.
    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus>;
    /// Says what `run` would do, changing nothing.
    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.say(format!("would: {}", self.describe()));
        Ok(())
    }
}

/// Builds the step of a plan entry.
pub fn instantiate(step: &PlanStep) -> Result<Box<dyn StepKind>> {
    Ok(match step.kind.as_str() {
        "check-release" => Box::new(checks::Release),
        "check-package-db" => Box::new(checks::PackageDb),
        "check-repositories" => Box::new(checks::Repositories),
        "check-disk-space" => Box::new(checks::DiskSpace::from_options(options(step)?)),
        "check-held-packages" => Box::new(checks::HeldPackages),
        "check-third-party" => Box::new(checks::ThirdParty::from_options(options(step)?)),
        "apt-sources" => Box::new(apt::SwitchSources),
        "apt" => Box::new(apt::DistUpgrade),
        "zypper" => Box::new(zypper::ZypperStep::from_options(options(step)?)?),
        "dnf" => Box::new(dnf::DnfStep::from_options(options(step)?)?),
        "verify-release" => Box::new(verify::VerifyRelease),
        "safety-backup" => Box::new(backup::SafetyBackup::from_options(options(step)?)?),
        "command" => Box::new(command::CommandStep::from_options(options(step)?)?),
        "postgres" => Box::new(postgres::PostgresStep::from_options(options(step)?)?),
        "rsync" => Box::new(rsync::RsyncStep::from_options(options(step)?, step.phase)?),
        "config" => Box::new(config::ConfigStep::from_options(options(step)?)?),
        "service" => Box::new(service::ServiceStep::from_options(options(step)?)?),
        other => bail!("step {}: unknown kind {other:?}", step.id),
    })
}

/// A step's options as a typed struct.
fn options<T: DeserializeOwned>(step: &PlanStep) -> Result<T> {
    serde_json::from_value(serde_json::Value::Object(step.options.clone()))
        .with_context(|| format!("options of step {} ({})", step.id, step.defined_at))
}

/// What the whole run shares.
pub struct RunContext {
    /// The migrated root (`/system-root` in the container).
    pub root: PathBuf,
    /// The same root without the agent's own mounts (/proc, /run,
    /// resolv.conf): what backups read and restores write.
    pub pristine: PathBuf,
    /// Run id.
    pub run_id: String,
    /// The root's release before the migration.
    pub source: OsRelease,
    /// The release the image upgrades to.
    pub target: TargetRelease,
    /// Source release patterns the image accepts.
    pub accepts: Vec<String>,
    /// The plan.
    pub plan: Plan,
    /// Event output.
    pub sink: EventSink,
    /// The package manager of the plan, created on first use.
    pub packages: std::cell::OnceCell<Box<dyn PackageManager>>,
    /// Findings of the check steps so far.
    pub findings: RefCell<Vec<Finding>>,
    /// The state journal (absent for runs that change nothing).
    pub journal: RefCell<Option<Journal>>,
    /// Whether the root is the running host (`--root /`).
    pub live: bool,
}

impl RunContext {
    /// The plan's package manager (apt, zypper or dnf, from the plan's
    /// package upgrade step).
    pub fn packages(&self) -> Result<&dyn PackageManager> {
        if let Some(p) = self.packages.get() {
            return Ok(p.as_ref());
        }
        let made = packages::for_plan(self)?;
        Ok(self.packages.get_or_init(|| made).as_ref())
    }
}

/// What a running step can use.
pub struct StepContext<'a> {
    /// The run.
    pub run: &'a RunContext,
    /// The step.
    pub step: &'a PlanStep,
}

impl StepContext<'_> {
    /// The migrated root.
    pub fn root(&self) -> &Path {
        &self.run.root
    }

    /// Runs a command, streaming its output as events of this step.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        run_streaming(cmd, &self.run.sink, &self.step.id, None)
    }

    /// Runs a command whose stdout carries progress lines.
    pub fn run_with_progress(&self, cmd: &mut Command, progress: &ProgressParser) -> Result<()> {
        run_streaming(cmd, &self.run.sink, &self.step.id, Some(progress))
    }

    /// A command that runs `program` chrooted into the root, with a clean,
    /// non-interactive environment.
    pub fn chroot(&self, program: &str) -> Command {
        chroot(&self.run.root, program)
    }

    /// A path inside the root, symlinks resolved inside it.
    pub fn path(&self, inside: &str) -> Result<PathBuf> {
        crate::rootfs::resolve(&self.run.root, inside)
    }

    /// This step's directory under the migration's backup directory
    /// (`var/lib/migrate/backup/<migration>/<step>` of the pristine root),
    /// kept until cleanup. Not created.
    pub fn backup_dir(&self) -> PathBuf {
        let migration = self
            .run
            .journal
            .borrow()
            .as_ref()
            .map(|j| j.migration_id.clone())
            .unwrap_or_else(|| self.run.run_id.clone());
        self.run
            .pristine
            .join(backup::BACKUP_DIR)
            .join(migration)
            .join(&self.step.id)
    }

    /// Tells the host something about the step's progress.
    pub fn say(&self, line: impl Into<String>) {
        self.run
            .sink
            .output(&self.step.id, OutputStream::Stdout, line);
    }

    /// Reports a finding of a check.
    pub fn finding(&self, finding: Finding) {
        self.run.sink.emit(Event::Finding {
            step: self.step.id.clone(),
            finding: finding.clone(),
        });
        self.run.findings.borrow_mut().push(finding);
    }
}

/// A command that runs `program` chrooted into `root`, with a clean,
/// non-interactive environment.
pub fn chroot(root: &Path, program: &str) -> Command {
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

    #[test]
    fn every_kind_and_option_is_documented_in_docs_plans_md() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plans.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        for spec in KINDS {
            let heading = format!("### `{}` (", spec.kind);
            let at = doc
                .find(&heading)
                .unwrap_or_else(|| panic!("{} is not documented", spec.kind));
            let section = &doc[at..];
            let section = &section[..section[4..].find("### ").map_or(section.len(), |e| e + 4)];
            for phase in spec.phases {
                assert!(
                    section.lines().next().unwrap().contains(phase.name()),
                    "{}: phase {phase}",
                    spec.kind
                );
            }
            for o in spec.options {
                assert!(
                    section.contains(&format!("| `{}` |", o.key)),
                    "{}: option {}",
                    spec.kind,
                    o.key
                );
            }
        }
    }

    /// Minimal valid options of the kinds that require some.
    fn sample_options(kind: &str) -> serde_json::Value {
        match kind {
            "dnf" => serde_json::json!({"releasever": "2"}),
            "command" => serde_json::json!({"command": ["true"]}),
            "postgres" => serde_json::json!({
                "source": {"socket": "/run/postgresql", "database": "app"},
                "target": {"url": "postgresql://app@db/app_new"},
            }),
            "rsync" => serde_json::json!({"source": "/srv/a/", "destination": "/srv/b/"}),
            "config" => {
                serde_json::json!({"source": "/a.yaml", "mapping": {"a": "b"}, "output": "/b.yaml"})
            }
            "service" => serde_json::json!({"action": "stop", "units": ["app.service"]}),
            _ => serde_json::json!({}),
        }
    }

    #[test]
    fn every_registered_kind_can_be_instantiated() {
        for spec in KINDS {
            let serde_json::Value::Object(options) = sample_options(spec.kind) else {
                unreachable!()
            };
            for o in spec.options.iter().filter(|o| o.required) {
                assert!(
                    options.contains_key(o.key),
                    "{}: the sample lacks {}",
                    spec.kind,
                    o.key
                );
            }
            let step = PlanStep {
                id: "s".into(),
                kind: spec.kind.into(),
                phase: spec.phases[0],
                description: None,
                options,
                defined_at: "test".into(),
            };
            let built = instantiate(&step).unwrap_or_else(|e| panic!("{}: {e:#}", spec.kind));
            assert!(!built.describe().is_empty());
        }
    }
}

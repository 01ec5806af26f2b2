//! Everything decided before the container starts: the image (found or
//! pulled, its labels checked), the plan (resolved and validated), the
//! journal's unfinished migration, and the container's spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::resource::{Resource, getrlimit};

use super::{CONTAINER_ROOT, LABEL_ROOT, LABEL_RUN_ID, LaunchOptions};
use crate::core::event::{HOST_SECRETS_DIR, PLAN_ENV, SECRETS_FILE, Verb};
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::image::{ImageLabels, LABEL_PLAN};
use crate::core::journal::Journal;
use crate::core::kinds::Kind;
use crate::core::kinds::postgres::PostgresOptions;
use crate::core::plan::{Plan, PlanSource};
use crate::core::release::OsRelease;
use crate::host::podman::{Bind, ContainerSpec, ImageDetails, Podman, Rlimit};
use crate::host::preflight;
use crate::host::render::{self, OutputFormat};

/// Where a rollback from a snapshot mounts the migrated root.
const MIGRATED_ROOT: &str = "/migrated-root";

/// Everything decided before the container starts.
pub(crate) struct Prepared {
    pub(crate) root: PathBuf,
    pub(crate) reference: String,
    pub(crate) image: ImageDetails,
    pub(crate) plan: Option<Plan>,
    pub(crate) source: OsRelease,
    pub(crate) target: crate::core::release::Release,
    pub(crate) resuming: bool,
    /// Whether this run pulled the image.
    pub(crate) pulled: bool,
    /// A rollback from a snapshot: `root` is the snapshot's copy, and this
    /// the migrated root, mounted read-only for the migration's records.
    pub(crate) restored_from: Option<PathBuf>,
}

/// The image: `--image`, else the image of the unfinished migration (for a
/// rollback: of the migration), else the built-in default for the release.
pub(crate) fn image_reference(
    opts: &LaunchOptions,
    journal: Option<&Journal>,
    os: &OsRelease,
) -> Result<String> {
    if let Some(r) = &opts.image {
        return Ok(r.clone());
    }
    if matches!(opts.verb, Verb::Rollback | Verb::StepBack) {
        return match journal {
            Some(j) => Ok(j.image.reference.clone()),
            None => Err(fail(
                ExitCode::BadInput,
                "no migration is recorded on this root (no var/lib/migrate/state.json); nothing to roll back",
            )),
        };
    }
    // An application's run continues its plan's migration, also after
    // every application had finished.
    if let Some(j) = journal.filter(|j| {
        j.in_progress()
            || (opts.app.is_some() && j.state() == crate::core::lifecycle::State::Completed)
    }) {
        return Ok(j.image.reference.clone());
    }
    preflight::image_reference(opts.default_image.as_deref(), os)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    podman: &Podman,
    opts: &LaunchOptions,
    root: PathBuf,
    os: OsRelease,
    journal: Option<Journal>,
    plan_file: Option<PlanSource>,
    dropins: &[PlanSource],
    reference: String,
) -> Result<Prepared> {
    // Pulling can take minutes: its progress shows on a terminal (or with
    // -v), and as `output` events with --output json.
    let shown = opts.verbose > 0 || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (image, labels, pulled) =
        preflight::find_or_pull_image(podman, &reference, |line| match opts.output {
            OutputFormat::Json => render::say(opts.output, &format!("pulling {reference}: {line}")),
            OutputFormat::Human if shown => eprintln!("    [pull] {line}"),
            OutputFormat::Human => {}
        })
        .await?;
    if pulled {
        tracing::info!(reference, id = %image.id, "pulled the migration image");
    }
    preflight::check_protocol(&labels, &reference)?;
    if opts.verb == Verb::Rollback {
        let journal = journal.context("no journal")?;
        return Ok(Prepared {
            root,
            reference,
            image,
            plan: None,
            target: journal.source.release(),
            source: os,
            resuming: false,
            pulled,
            restored_from: None,
        });
    }
    let plan = resolve_plan(&labels, &reference, plan_file, dropins)?;
    plan.check_app(opts.verb, opts.app.as_deref())
        .map_err(|e| fail(ExitCode::BadInput, e))?;
    preflight::check_config_edits(&plan, &root)?;
    let unfinished = journal.filter(Journal::in_progress);
    let resuming = unfinished
        .as_ref()
        .is_some_and(|j| j.plan_hash == plan.hash() && j.image.id == image.id);
    if let Some(j) = &unfinished
        && !resuming
        && opts.verb.changes_root()
        && !opts.force_new
    {
        return Err(fail(
            ExitCode::Inhibited,
            format!(
                "migration {} on {} is unfinished and used {}; continue it with the same plan and image, undo it with `migrate rollback`, or start over with --force-new",
                j.migration_id,
                root.display(),
                if j.image.id == image.id {
                    "another plan".to_string()
                } else {
                    format!("image {} ({})", j.image.reference, short_id(&j.image.id))
                }
            ),
        ));
    }
    let source = match (&unfinished, resuming) {
        (Some(j), true) => j.source.clone(),
        _ => os,
    };
    if !resuming {
        preflight::check_compatible(&labels, &reference, &source)?;
    }
    Ok(Prepared {
        root,
        reference,
        image,
        plan: Some(plan),
        source,
        target: labels.target,
        resuming,
        pulled,
        restored_from: None,
    })
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The plan: `--plan` or the image's, with the root's drop-ins, validated
/// down to each step's options.
fn resolve_plan(
    labels: &ImageLabels,
    reference: &str,
    plan_file: Option<PlanSource>,
    dropins: &[PlanSource],
) -> Result<Plan> {
    let base = match plan_file {
        Some(p) => p,
        None => PlanSource {
            name: format!("the plan of image {reference}"),
            text: labels.plan.clone().ok_or_else(|| {
                fail(
                    ExitCode::BadInput,
                    format!(
                        "image {reference} carries no plan (label {LABEL_PLAN}); rebuild it with `migrate image build {}` or pass --plan",
                        labels.image
                    ),
                )
            })?,
        },
    };
    crate::core::plan::resolve(&base, dropins).exit_code(ExitCode::BadInput)
}

/// Where the host keeps a run's secrets for the agent: its own `/run` (a
/// tmpfs on the hosts this runs on), one directory per run, for root only.
const HOST_SECRETS: &str = "/run/migrate/secrets";

/// A run's secrets directory on the host; removed when dropped. The agent
/// deletes the file in it as soon as it has read it, so a killed `migrate`
/// leaves at most an empty directory in `/run`.
pub(crate) struct HostSecrets {
    dir: PathBuf,
}

impl HostSecrets {
    /// Writes `secrets` (variable -> value) for the agent of `run_id`.
    fn write(run_id: &str, secrets: &BTreeMap<String, String>) -> Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = Path::new(HOST_SECRETS).join(run_id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let guard = Self { dir };
        let file = guard.dir.join(SECRETS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("creating {}", file.display()))?;
        f.write_all(&serde_json::to_vec(secrets)?)
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(guard)
    }
}

impl Drop for HostSecrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The container's spec, and the secrets directory it mounts (to keep
/// until the container ended).
pub(crate) fn container_spec(
    opts: &LaunchOptions,
    p: &Prepared,
    run_id: &str,
) -> Result<(ContainerSpec, Option<HostSecrets>)> {
    let mut secrets = BTreeMap::new();
    let level = match opts.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let mut env = BTreeMap::from([("MIGRATE_LOG".to_string(), level.to_string())]);
    let mut command: Vec<String> = Vec::new();
    if opts.verb == Verb::Rollback {
        command.extend(["rollback".into(), "--root".into(), CONTAINER_ROOT.into()]);
        command.extend(["--run-id".into(), run_id.into()]);
        if opts.etc_only {
            command.push("--etc-only".into());
        }
        if p.restored_from.is_some() {
            command.extend(["--restored-from".into(), MIGRATED_ROOT.into()]);
        }
        if opts.revert {
            command.push("--revert".into());
        }
        if p.root == Path::new("/") {
            command.push("--live".into());
        }
    } else {
        let plan = p.plan.as_ref().context("no plan")?;
        env.insert(
            PLAN_ENV.to_string(),
            serde_json::to_string(plan).context("encoding the plan")?,
        );
        command.extend(["run".into(), "--verb".into(), opts.verb.name().into()]);
        command.extend(["--root".into(), CONTAINER_ROOT.into()]);
        command.extend(["--run-id".into(), run_id.into()]);
        command.extend(["--image-ref".into(), p.reference.clone()]);
        command.extend(["--image-id".into(), p.image.id.clone()]);
        if let Some(d) = &p.image.digest {
            command.extend(["--image-digest".into(), d.clone()]);
        }
        if opts.force_new {
            command.push("--force-new".into());
        }
        if let Some(app) = &opts.app {
            command.extend(["--app".into(), app.clone()]);
        }
        if p.root == Path::new("/") {
            command.push("--live".into());
        }
        // Passwords named by environment variable come from migrate's own
        // environment (never the plan, never a command line), and go to the
        // agent in a file (never the container's environment, which podman
        // stores and shows).
        for step in plan.steps.iter().filter(|s| s.kind == Kind::Postgres) {
            let opts: PostgresOptions = step.options()?;
            for var in opts.password_envs() {
                let value = std::env::var(&var).map_err(|_| {
                    fail(
                        ExitCode::BadInput,
                        format!("step {}: the password variable {var} is not set", step.id),
                    )
                })?;
                secrets.insert(var, value);
            }
        }
    }
    let mut binds = vec![Bind {
        source: p.root.clone(),
        destination: CONTAINER_ROOT.to_string(),
        read_only: !opts.verb.changes_root(),
    }];
    if let Some(migrated) = &p.restored_from {
        binds.push(Bind {
            source: migrated.clone(),
            destination: MIGRATED_ROOT.to_string(),
            read_only: true,
        });
    }
    let host_secrets = if secrets.is_empty() {
        None
    } else {
        let s = HostSecrets::write(run_id, &secrets).exit_code(ExitCode::Environment)?;
        binds.push(Bind {
            source: s.dir.clone(),
            destination: HOST_SECRETS_DIR.to_string(),
            read_only: false,
        });
        Some(s)
    };
    let spec = ContainerSpec {
        name: format!("migrate-{run_id}"),
        image: p.image.id.clone(),
        command,
        env,
        labels: BTreeMap::from([
            (LABEL_RUN_ID.to_string(), run_id.to_string()),
            (LABEL_ROOT.to_string(), p.root.display().to_string()),
        ]),
        binds,
        rlimits: own_rlimits(),
        host_pid: p.root == Path::new("/"),
    };
    Ok((spec, host_secrets))
}

/// The limits this process runs under, for the container: a container asking
/// for more than its caller has fails to start where raising limits is not
/// permitted.
fn own_rlimits() -> Vec<Rlimit> {
    [
        (Resource::RLIMIT_NOFILE, "nofile"),
        (Resource::RLIMIT_NPROC, "nproc"),
        (Resource::RLIMIT_CORE, "core"),
        (Resource::RLIMIT_MEMLOCK, "memlock"),
        (Resource::RLIMIT_STACK, "stack"),
        (Resource::RLIMIT_SIGPENDING, "sigpending"),
        (Resource::RLIMIT_MSGQUEUE, "msgqueue"),
    ]
    .into_iter()
    .filter_map(|(res, name)| {
        getrlimit(res).ok().map(|(soft, hard)| Rlimit {
            name: name.to_string(),
            soft,
            hard,
        })
    })
    .collect()
}

/// A run id: UTC time plus a few bits that differ between processes.
pub(crate) fn new_run_id() -> String {
    let now = std::time::SystemTime::now();
    let stamp: String = crate::core::event::timestamp(now)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{stamp}-{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_timestamped() {
        let id = new_run_id();
        assert_eq!(id.len(), 19, "{id}");
        assert!(id.starts_with("20"), "{id}");
    }

    #[test]
    fn the_container_gets_our_own_limits() {
        let limits = own_rlimits();
        let nofile = limits.iter().find(|l| l.name == "nofile").unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((nofile.soft, nofile.hard), (soft, hard));
    }
}

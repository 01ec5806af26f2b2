//! `migrate run|sync|check|rollback` and `run --dry-run`: from the checks on
//! the host to the report, with the agent doing the work inside the migration
//! container. Split by concern:
//!
//! - [`prepare`]: before any container starts, the host resolves and
//!   validates the plan (the image's, from its label, or `--plan`, plus the
//!   root's drop-ins), reads the state journal and refuses what does not
//!   fit, all without touching the root; then the container's spec.
//! - [`session`]: the container's run, behind [`runtime::ContainerRuntime`]:
//!   every line it prints rendered, logged and applied to the report.
//! - [`outcome`]: what the agent's exit means; report, log and journal
//!   messages at the end.
//! - [`finished`]: a finished migration waits for its reboot (the marker,
//!   the reboot through logind).
//!
//! Runs that change the root take the root's lock; their log and report are
//! written only once the agent starts its first changing step, so a run
//! stopped by a check leaves the root exactly as it was.

pub(crate) mod finished;
pub(crate) mod outcome;
pub(crate) mod prepare;
pub(crate) mod runtime;
pub(crate) mod session;

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::MaintenanceWindow;
use super::journald::{self, Priority};
use super::lock::RootLock;
use super::podman::Podman;
use super::preflight;
use super::render::OutputFormat;
use super::snapshot;
use crate::core::event::Verb;
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::journal::Journal;
use crate::core::release::OsRelease;
pub(crate) use finished::{finished_migration, pending_reboot};
pub(crate) use prepare::{Prepared, new_run_id};

/// Where the root is mounted in the migration container.
pub(crate) const CONTAINER_ROOT: &str = "/system-root";
/// Label on the migration container: the run id.
pub(crate) const LABEL_RUN_ID: &str = "io.migrate.run-id";
/// Label on the migration container: the migrated root.
pub(crate) const LABEL_ROOT: &str = "io.migrate.root";

/// What to launch.
#[derive(Clone, Debug)]
pub(crate) struct LaunchOptions {
    /// The verb.
    pub(crate) verb: Verb,
    /// The root.
    pub(crate) root: PathBuf,
    /// `--image`.
    pub(crate) image: Option<String>,
    /// `--plan`, or the configuration's plan.
    pub(crate) plan: Option<crate::core::plan::PlanFile>,
    /// `--output`.
    pub(crate) output: OutputFormat,
    /// `-v` count.
    pub(crate) verbose: u8,
    /// `--force-new`.
    pub(crate) force_new: bool,
    /// `rollback --etc-only`.
    pub(crate) etc_only: bool,
    /// `--app`: the application of the plan the run acts on.
    pub(crate) app: Option<String>,
    /// A rollback that is the automatic revert after a failed first boot.
    pub(crate) revert: bool,
    /// The configuration's `metrics_dir`: where a recorded run writes its
    /// Prometheus textfile metrics.
    pub(crate) metrics_dir: Option<String>,
    /// The configuration's image: used when neither `--image` nor an
    /// unfinished migration names one.
    pub(crate) default_image: Option<String>,
    /// What the run leaves in the root for the record.
    pub(crate) record: Record,
    /// Whether to reboot into the new release once the migration finished.
    pub(crate) reboot: Reboot,
    /// Why the run does what it does, when the caller decided (an
    /// unattended run outside its window): shown and logged at the start.
    pub(crate) note: Option<String>,
    /// The host's FleetLock slot as the unattended run found it before
    /// starting: recorded in the journal and the report.
    pub(crate) fleetlock: Option<crate::core::journal::FleetLockSlot>,
}

impl LaunchOptions {
    /// Options for `verb` on `root` with everything else at its default.
    pub(crate) fn new(verb: Verb, root: PathBuf) -> Self {
        Self {
            verb,
            root,
            image: None,
            plan: None,
            output: OutputFormat::Human,
            verbose: 0,
            force_new: false,
            etc_only: false,
            app: None,
            revert: false,
            metrics_dir: None,
            default_image: None,
            record: Record::OnChange,
            reboot: Reboot::No,
            note: None,
            fleetlock: None,
        }
    }
}

/// What a run records in the root (`var/log/migrate/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Log and report, once the run starts changing the root: a run stopped
    /// by a check leaves the root exactly as it was.
    OnChange,
    /// Log and report whatever happens (unattended runs: the outcome of a
    /// check is what the administrator looks for).
    Always,
    /// The log once the run changes the root; the caller owns the report
    /// (the post phase, recorded in the migration's report).
    LogOnly,
}

/// Whether a finished migration reboots the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Reboot {
    /// No: the marker waits for a reboot by someone else.
    #[default]
    No,
    /// Yes, right away (`--reboot`).
    Now,
    /// Yes, if now is inside the window; else a later unattended run does.
    InWindow(MaintenanceWindow),
}

/// Runs a verb. Returns on success; every failure is an error carrying its
/// exit code.
pub(crate) async fn launch(opts: &LaunchOptions) -> Result<()> {
    preflight::require_root()?;
    let (root, os) = preflight::inspect_root(&opts.root)?;
    let live = root == Path::new("/");
    if opts.reboot != Reboot::No && !live {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "--reboot reboots this host; it cannot apply to --root {}",
                root.display()
            ),
        ));
    }
    if opts.verb == Verb::Run
        && !opts.force_new
        && opts.app.is_none()
        && let Some(marker) = pending_reboot(&root)?
    {
        return finished_migration(opts, &root, &marker);
    }
    let journal = Journal::load(&root).exit_code(ExitCode::BadInput)?;
    if opts.verb == Verb::Rollback
        && opts.reboot != Reboot::No
        && !journal.as_ref().is_some_and(snapshot::snapshot_backed)
    {
        return Err(fail(
            ExitCode::BadInput,
            "--reboot boots the restored snapshot: this migration's safety backup is no snapshot, and a rollback of /etc needs no reboot",
        ));
    }
    let plan_file = opts
        .plan
        .as_ref()
        .map(crate::core::plan::PlanFile::read)
        .transpose()
        .map_err(|e| fail(ExitCode::BadInput, format!("{e:#}")))?;
    let dropins = crate::core::plan::read_dropins(&root).exit_code(ExitCode::BadInput)?;
    let reference = prepare::image_reference(opts, journal.as_ref(), &os)?;
    // From the journal, the configuration or a built-in default: checked
    // like --image before podman sees it.
    crate::core::image::check_reference(&reference).map_err(|e| fail(ExitCode::BadInput, e))?;

    // A root directory whose migration took a snapshot is rolled back by
    // putting a copy of the snapshot in its place (see host::snapshot).
    let from_snapshot = opts.verb == Verb::Rollback
        && !live
        && journal.as_ref().is_some_and(|j| {
            snapshot::snapshot_backed(j)
                && j.state()
                    .next(crate::core::lifecycle::Transition::RollBack { complete: true })
                    .is_ok()
        });

    let journal_at_start = journal.clone();
    let podman = Podman::connect_for(&root).await?;
    let result = async {
        let mut restore = None;
        let mut _migrated_lock = None;
        let (root, restored_from) = match journal.as_ref().filter(|_| from_snapshot) {
            Some(j) => {
                _migrated_lock = Some(RootLock::acquire(&root)?);
                let staged = stage_snapshot_copy(&podman, &root, j).await?;
                let copy = staged.staging();
                restore = Some(staged);
                (copy, Some(root))
            }
            None => (root, None),
        };
        let mut prepared = prepare::prepare(
            &podman, opts, root, os, journal, plan_file, &dropins, reference,
        )
        .await?;
        prepared.restored_from = restored_from;
        let lock = if opts.verb.changes_root() || opts.record == Record::Always {
            Some(RootLock::acquire(&prepared.root)?)
        } else {
            None
        };
        if lock.is_some() && !prepared.resuming && opts.verb != Verb::Rollback {
            // Another run may have changed the root between our checks and the lock.
            let now = OsRelease::read_from_root(&prepared.root).exit_code(ExitCode::BadInput)?;
            if now.release() != prepared.source.release() {
                return Err(fail(
                    ExitCode::BadInput,
                    format!(
                        "the root changed while migrate was checking it: it now is {}",
                        now.pretty_name()
                    ),
                ));
            }
        }
        // A migration container of this root that outlived its migrate (killed,
        // hung up, out of memory) is followed, not started a second time.
        let live = podman
            .running_for_root(
                LABEL_ROOT,
                &prepared.root.display().to_string(),
                LABEL_RUN_ID,
            )
            .await
            .exit_code(ExitCode::Environment)?;
        let start = match &live {
            Some((name, run_id)) => session::Start::Reattach { name, run_id },
            None => session::Start::New,
        };
        let (report, result) = session::run(&podman, opts, &prepared, lock.as_ref(), start).await;
        if prepared.pulled && !opts.verb.changes_root() {
            // Nothing refers to it any more: leave podman's storage as it was.
            if let Err(e) = podman.remove_image(&prepared.image.id).await {
                tracing::warn!("removing the image this run pulled: {e:#}");
            }
        }
        result?;
        if opts.verb == Verb::Rollback {
            // A rolled-back migration waits for no reboot.
            super::pending::PendingReboot::remove(&prepared.root)
                .exit_code(ExitCode::Environment)?;
        }
        if prepared.root == Path::new("/")
            && opts.verb == Verb::Rollback
            && let Some(j) = journal_at_start.as_ref().filter(|j| snapshot::snapshot_backed(j))
        {
            // The next boot starts the snapshot's copy: it gets this
            // rollback's final report and log too.
            snapshot::copy_records_into_restored(&prepared.root, &j.migration_id)
                .exit_code(ExitCode::Environment)?;
        }
        if let (Some(restore), Some(root)) = (restore, &prepared.restored_from) {
            let kept = restore.commit().exit_code(ExitCode::Environment)?;
            super::render::say(
                opts.output,
                &format!(
                    "{} is the snapshot's copy now; the migrated root is kept as {} (delete it with `btrfs subvolume delete` once it is not needed)",
                    root.display(),
                    kept.display()
                ),
            );
        }
        // An application's move changes no release: no reboot waits.
        if opts.verb == Verb::Run && opts.app.is_none() {
            let marker = finished::mark_pending_reboot(&prepared, &report)?;
            return Ok(Some((prepared.root, marker)));
        }
        Ok(None)
    }
    .await;
    podman.shutdown().await;
    // The reboot comes last: the lock released, podman's private service
    // stopped.
    let finished = result?;
    if opts.verb == Verb::Rollback && opts.reboot == Reboot::Now {
        let wall =
            "migrate: rolled back to the snapshot taken before the migration; rebooting into it";
        super::render::say(opts.output, "rebooting into the restored system");
        journald::send::<&str>(Priority::Notice, journald::ids::REBOOTING, wall, &[]);
        return super::systemd::reboot(wall).exit_code(ExitCode::Environment);
    }
    match finished {
        Some((root, marker)) => finished::reboot_if_due(opts, &root, &marker),
        None => Ok(()),
    }
}

/// The snapshot's writable copy beside `root`, unless a rollback of the
/// same root is still running in a container of its own (on the copy).
async fn stage_snapshot_copy(
    podman: &Podman,
    root: &Path,
    journal: &Journal,
) -> Result<snapshot::Restore> {
    let staging = snapshot::Restore::staging_for(root);
    if let Some((name, _)) = podman
        .running_for_root(LABEL_ROOT, &staging.display().to_string(), LABEL_RUN_ID)
        .await
        .exit_code(ExitCode::Environment)?
    {
        return Err(fail(
            ExitCode::Environment,
            format!(
                "a rollback of {} is still running in container {name}; wait for it to end, then run `migrate rollback` again",
                root.display()
            ),
        ));
    }
    snapshot::Restore::stage(root, journal)
}

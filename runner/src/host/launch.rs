//! `migrate run|sync|check|rollback` and `run --dry-run`: from the checks on
//! the host to the report, with the agent doing the work inside the migration
//! container.
//!
//! Before any container starts, the host resolves and validates the plan
//! (the image's, from its label, or `--plan`, plus the root's drop-ins), reads
//! the state journal and refuses what does not fit, all without touching the
//! root. Runs that change the root take the root's lock; their log and report
//! are written only once the agent starts its first changing step, so a run
//! stopped by a check leaves the root exactly as it was.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::resource::{Resource, getrlimit};

use super::config::MaintenanceWindow;
use super::journald::{self, Priority};
use super::lock::RootLock;
use super::pending::PendingReboot;
use super::podman::{ContainerSpec, ImageDetails, Podman, Rlimit};
use super::preflight;
use super::render::{OutputFormat, Renderer, say};
use super::runlog::RunLog;
use crate::core::event::{DecodeError, Envelope, Event, OutputStream, PLAN_ENV, Verb};
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::image::{ImageLabels, LABEL_PLAN};
use crate::core::journal::{Journal, MigrationStatus};
use crate::core::kinds::Kind;
use crate::core::kinds::postgres::PostgresOptions;
use crate::core::plan::{Phase, Plan, PlanSource};
use crate::core::release::OsRelease;
use crate::core::report::{ImageInfo, Report, RunResult, SourceInfo};

/// Where the root is mounted in the migration container.
pub const CONTAINER_ROOT: &str = "/system-root";
/// Label on the migration container: the run id.
pub const LABEL_RUN_ID: &str = "io.migrate.run-id";
/// Label on the migration container: the migrated root.
pub const LABEL_ROOT: &str = "io.migrate.root";

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// The verb.
    pub verb: Verb,
    /// The root.
    pub root: PathBuf,
    /// `--image`.
    pub image: Option<String>,
    /// `--plan`.
    pub plan: Option<PathBuf>,
    /// `--output`.
    pub output: OutputFormat,
    /// `-v` count.
    pub verbose: u8,
    /// `--force-new`.
    pub force_new: bool,
    /// The configuration's image: used when neither `--image` nor an
    /// unfinished migration names one.
    pub default_image: Option<String>,
    /// What the run leaves in the root for the record.
    pub record: Record,
    /// Whether to reboot into the new release once the migration finished.
    pub reboot: Reboot,
}

impl LaunchOptions {
    /// Options for `verb` on `root` with everything else at its default.
    pub fn new(verb: Verb, root: PathBuf) -> Self {
        Self {
            verb,
            root,
            image: None,
            plan: None,
            output: OutputFormat::Human,
            verbose: 0,
            force_new: false,
            default_image: None,
            record: Record::OnChange,
            reboot: Reboot::No,
        }
    }
}

/// What a run records in the root (`var/log/migrate/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reboot {
    /// No: the marker waits for a reboot by someone else.
    No,
    /// Yes, right away (`--reboot`).
    Now,
    /// Yes, if now is inside the window; else a later unattended run does.
    InWindow(MaintenanceWindow),
}

/// Everything decided before the container starts.
pub(super) struct Prepared {
    pub(super) root: PathBuf,
    pub(super) reference: String,
    pub(super) image: ImageDetails,
    pub(super) plan: Option<Plan>,
    pub(super) source: OsRelease,
    pub(super) target: crate::core::release::Release,
    pub(super) resuming: bool,
    /// Whether this run pulled the image.
    pub(super) pulled: bool,
}

/// Runs a verb. Returns on success; every failure is an error carrying its
/// exit code.
pub async fn launch(opts: &LaunchOptions) -> Result<()> {
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
        && let Some(marker) = pending_reboot(&root)?
    {
        return finished_migration(opts, &root, &marker);
    }
    let journal = Journal::load(&root).exit_code(ExitCode::BadInput)?;
    let plan_file = opts
        .plan
        .as_deref()
        .map(PlanSource::read)
        .transpose()
        .map_err(|e| fail(ExitCode::BadInput, format!("--plan {e:#}")))?;
    let dropins = crate::core::plan::read_dropins(&root).exit_code(ExitCode::BadInput)?;
    let reference = image_reference(opts, journal.as_ref(), &os)?;

    let podman = Podman::connect().await?;
    let result = async {
        let prepared = prepare(
            &podman, opts, root, os, journal, plan_file, &dropins, reference,
        )
        .await?;
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
        let (report, result) = run_container(&podman, opts, &prepared, lock.as_ref()).await;
        if prepared.pulled && !opts.verb.changes_root() {
            // Nothing refers to it any more: leave podman's storage as it was.
            if let Err(e) = podman.remove_image(&prepared.image.id).await {
                tracing::warn!("removing the image this run pulled: {e:#}");
            }
        }
        result?;
        if opts.verb == Verb::Rollback {
            // A rolled-back migration waits for no reboot.
            PendingReboot::remove(&prepared.root).exit_code(ExitCode::Environment)?;
        }
        if opts.verb == Verb::Run {
            let marker = mark_pending_reboot(&prepared, &report)?;
            return Ok(Some((prepared.root, marker)));
        }
        Ok(None)
    }
    .await;
    podman.shutdown().await;
    // The reboot comes last: the lock released, podman's private service
    // stopped.
    match result? {
        Some((root, marker)) => reboot_if_due(opts, &root, &marker),
        None => Ok(()),
    }
}

/// The marker of the migration on `root` that finished and waits for its
/// reboot, if there is one (a marker the journal does not confirm is stale
/// and ignored).
pub fn pending_reboot(root: &Path) -> Result<Option<PendingReboot>> {
    let marker = PendingReboot::read(root).exit_code(ExitCode::BadInput)?;
    let journal = Journal::load(root).exit_code(ExitCode::BadInput)?;
    Ok(marker.filter(|m| {
        journal.is_some_and(|j| {
            j.migration_id == m.migration_id && j.status == MigrationStatus::Completed
        })
    }))
}

/// `migrate run` on a root whose migration is finished: nothing to run; the
/// reboot is what is left.
pub fn finished_migration(opts: &LaunchOptions, root: &Path, marker: &PendingReboot) -> Result<()> {
    let next = match (&opts.reboot, root == Path::new("/")) {
        (Reboot::No, true) => " (`migrate run --reboot` reboots into it)",
        (Reboot::No, false) => {
            " (its first boot runs `migrate cleanup`; `--force-new` starts another migration)"
        }
        _ => "",
    };
    say(
        opts.output,
        &format!(
            "migration {} of {} finished at {}; it waits for the reboot into {}{next}",
            marker.migration_id,
            root.display(),
            marker.finished_at,
            marker.target_name
        ),
    );
    reboot_if_due(opts, root, marker)
}

/// Records that the migration finished and waits for its reboot: the marker
/// that makes `migrate-cleanup.service` run on the next boot.
fn mark_pending_reboot(p: &Prepared, report: &Report) -> Result<PendingReboot> {
    let journal = Journal::load(&p.root)
        .exit_code(ExitCode::Environment)?
        .filter(|j| j.status == MigrationStatus::Completed)
        .ok_or_else(|| {
            fail(
                ExitCode::StepFailed,
                "the run succeeded but the journal does not say the migration completed",
            )
        })?;
    let live = p.root == Path::new("/");
    let target_name = OsRelease::read_from_root(&p.root)
        .ok()
        .filter(|o| o.release() == p.target)
        .map(|o| o.pretty_name())
        .unwrap_or_else(|| p.target.to_string());
    let marker = PendingReboot {
        migration_id: journal.migration_id,
        run_id: report.run_id.clone(),
        finished_at: report
            .finished_at
            .clone()
            .unwrap_or_else(|| crate::core::event::timestamp(std::time::SystemTime::now())),
        target: p.target.clone(),
        target_name,
        image: report.image.clone(),
        plan: p.plan.clone().context("no plan")?,
        live,
        failed_units_before: if live {
            super::systemd::failed_units().ok()
        } else {
            None
        },
    };
    marker.write(&p.root).exit_code(ExitCode::Environment)?;
    Ok(marker)
}

/// Reboots into the new release if asked to and, for unattended runs, if
/// the maintenance window is open; otherwise says what happens next.
fn reboot_if_due(opts: &LaunchOptions, root: &Path, marker: &PendingReboot) -> Result<()> {
    match &opts.reboot {
        Reboot::No if marker.live => {
            say(
                opts.output,
                &format!(
                    "reboot into {} to finish the migration (`migrate run --reboot` does it through logind); migrate-cleanup.service checks the first boot",
                    marker.target_name
                ),
            );
            Ok(())
        }
        Reboot::No => {
            say(
                opts.output,
                &format!(
                    "boot {} to finish the migration: migrate-cleanup.service checks its first boot into {}",
                    root.display(),
                    marker.target_name
                ),
            );
            Ok(())
        }
        Reboot::InWindow(window) if !window.open_now() => {
            let line = format!(
                "the reboot into {} waits for the maintenance window ({window}); the next unattended run inside it reboots",
                marker.target_name
            );
            say(opts.output, &line);
            journald::send(
                Priority::Notice,
                journald::ids::REBOOT_WAITING,
                &line,
                &[("MIGRATE_RUN_ID", &marker.run_id)],
            );
            Ok(())
        }
        Reboot::Now | Reboot::InWindow(_) => super::reboot::reboot_into(root, marker, opts.output),
    }
}

/// The image: `--image`, else the image of the unfinished migration (for a
/// rollback: of the migration), else the built-in default for the release.
fn image_reference(
    opts: &LaunchOptions,
    journal: Option<&Journal>,
    os: &OsRelease,
) -> Result<String> {
    if let Some(r) = &opts.image {
        return Ok(r.clone());
    }
    if opts.verb == Verb::Rollback {
        return match journal {
            Some(j) => Ok(j.image.reference.clone()),
            None => Err(fail(
                ExitCode::BadInput,
                "no migration is recorded on this root (no var/lib/migrate/state.json); nothing to roll back",
            )),
        };
    }
    if let Some(j) = journal.filter(|j| j.in_progress()) {
        return Ok(j.image.reference.clone());
    }
    preflight::image_reference(opts.default_image.as_deref(), os)
}

#[allow(clippy::too_many_arguments)]
async fn prepare(
    podman: &Podman,
    opts: &LaunchOptions,
    root: PathBuf,
    os: OsRelease,
    journal: Option<Journal>,
    plan_file: Option<PlanSource>,
    dropins: &[PlanSource],
    reference: String,
) -> Result<Prepared> {
    let (image, labels, pulled) = preflight::find_or_pull_image(podman, &reference, |line| {
        if opts.verbose > 0 && opts.output == OutputFormat::Human {
            eprintln!("    [pull] {line}");
        }
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
        });
    }
    let plan = resolve_plan(&labels, &reference, plan_file, dropins)?;
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

/// Runs the agent in the migration container and renders, logs and
/// reports what it does. Returns the run's report and its outcome.
pub(super) async fn run_container(
    podman: &Podman,
    opts: &LaunchOptions,
    p: &Prepared,
    lock: Option<&RootLock>,
) -> (Report, Result<()>) {
    let root = p.root.as_path();
    let run_id = new_run_id();
    let image_info = ImageInfo {
        reference: p.reference.clone(),
        id: p.image.id.clone(),
        digest: p.image.digest.clone(),
        pulled: p.pulled,
    };
    let report = Report::new(
        &run_id,
        opts.verb,
        root,
        image_info,
        SourceInfo {
            release: p.source.release(),
            pretty_name: p.source.pretty_name(),
        },
        p.target.clone(),
    );
    let spec = match container_spec(opts, p, &run_id) {
        Ok(s) => s,
        Err(e) => return (report, Err(e)),
    };
    let mut log = RunLog::new(root);
    log.host(&format!(
        "{} {run_id} started: root {} ({}), image {} ({}), podman socket {}{}",
        opts.verb.name(),
        root.display(),
        p.source.pretty_name(),
        p.reference,
        p.image.id,
        podman.socket().display(),
        if podman.is_private_service() {
            " (private service)"
        } else {
            ""
        }
    ));
    journald::send(
        Priority::Info,
        journald::ids::STARTED,
        &format!(
            "migrate {} {run_id} started: {} ({}) -> {} with {}",
            opts.verb.name(),
            root.display(),
            p.source.pretty_name(),
            p.target,
            p.reference
        ),
        &journal_fields(&run_id, opts.verb, root, &[]),
    );
    // A check's JSON output is one report document at the end, not events.
    let check_json = opts.verb == Verb::Check && opts.output == OutputFormat::Json;
    let mut renderer = Renderer::new(
        if check_json {
            OutputFormat::Json
        } else {
            opts.output
        },
        opts.verbose,
        std::io::stdout().is_terminal(),
    );
    if check_json {
        renderer = renderer.quiet();
    }
    renderer.note(&format!(
        "{} {} ({}) -> {} with {}{}",
        match opts.verb {
            Verb::Check => "checking",
            Verb::DryRun => "dry run of",
            Verb::Sync => "syncing",
            Verb::Rollback => "rolling back",
            Verb::Cleanup => "post phase of",
            Verb::Run => "migrating",
        },
        root.display(),
        p.source.pretty_name(),
        p.target,
        p.reference,
        if p.resuming {
            " (continuing the unfinished migration)"
        } else {
            ""
        }
    ));
    if opts.verb == Verb::DryRun
        && let Some(plan) = &p.plan
    {
        show_plan(&mut renderer, plan, opts.output);
    }
    // While the run changes the system, logind must not shut it down.
    let inhibitor = if opts.verb.changes_root() {
        match super::systemd::inhibit(&format!(
            "migrating {} to {} (run {run_id})",
            root.display(),
            p.target
        )) {
            Ok(i) => {
                log.host("holding a logind inhibitor lock (shutdown, sleep) for the run");
                Some(i)
            }
            Err(e) => {
                let line = format!(
                    "no logind inhibitor lock ({e:#}): nothing stops a shutdown during the run"
                );
                if root == Path::new("/") {
                    renderer.note(&format!("warning: {line}"));
                }
                log.host(&line);
                None
            }
        }
    } else {
        None
    };

    let session = Mutex::new(Session {
        root,
        verb: opts.verb,
        record: opts.record,
        renderer,
        log,
        report,
        lock,
        phases: BTreeMap::new(),
        finished: false,
        protocol_error: None,
        write_error: None,
    });
    if opts.verb == Verb::Rollback {
        guard(&session).begin_changes();
    }
    let ticker = async {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            guard(&session).renderer.tick();
        }
    };
    let outcome = tokio::select! {
        o = podman.run(&spec, |stream, line| guard(&session).line(stream, line), shutdown_signal()) => o,
        () = ticker => unreachable!("the ticker never ends"),
    };
    drop(inhibitor);
    let mut session = session.into_inner().unwrap_or_else(|e| e.into_inner());
    session.renderer.finish();

    let (result, code, message) = match outcome {
        Err(e) => (
            RunResult::Failed,
            ExitCode::Environment,
            Some(format!("running the migration container: {e:#}")),
        ),
        Ok(o) if o.cancelled => (
            RunResult::Interrupted,
            ExitCode::StepFailed,
            Some("interrupted by a signal; run `migrate run` again to continue".to_string()),
        ),
        Ok(o) => interpret_exit(
            o.exit_code,
            session.finished,
            session.report.message.clone(),
        ),
    };
    let message = message.or(session.protocol_error.take());
    session.report.finish(result, code.code(), message.clone());
    session.log.host(&format!(
        "{} {run_id} ended: {result:?}, exit code {}{}",
        opts.verb.name(),
        code.code(),
        message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ));
    journal_outcome(&session.report, opts.verb, root);
    if opts.record == Record::Always {
        session.begin_changes();
    }
    let wrote = session.log.writing();
    let owns_report = opts.record != Record::LogOnly;
    if wrote
        && owns_report
        && let Err(e) = session.report.write(root)
    {
        return (
            session.report,
            Err(fail(ExitCode::Environment, format!("{e:#}"))),
        );
    }
    if check_json {
        match serde_json::to_string(&session.report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                return (
                    session.report,
                    Err(anyhow::Error::new(e).context("encoding the report")),
                );
            }
        }
    } else if opts.output == OutputFormat::Human && owns_report {
        print!("{}", super::render::summary(&session.report));
        if wrote {
            println!(
                "report: {}\nlog:    {}",
                root.join(crate::core::report::REPORT_PATH).display(),
                session.log.path().display()
            );
        } else if opts.verb.changes_root() {
            println!("nothing was changed in {}", root.display());
        }
    }
    let outcome = if let Some(e) = session.write_error.take() {
        Err(fail(ExitCode::Environment, e))
    } else {
        match result {
            RunResult::Succeeded => Ok(()),
            _ => {
                let mut line = message.unwrap_or_else(|| "the run failed".into());
                if wrote {
                    line.push_str(&format!(" (log: {})", session.log.path().display()));
                }
                Err(fail(code, line))
            }
        }
    };
    (session.report, outcome)
}

/// The structured fields of every journal message about a run.
fn journal_fields<'a>(
    run_id: &'a str,
    verb: Verb,
    root: &'a Path,
    extra: &[(&'a str, String)],
) -> Vec<(&'a str, String)> {
    let mut fields = vec![
        ("MIGRATE_RUN_ID", run_id.to_string()),
        ("MIGRATE_VERB", verb.name().to_string()),
        ("MIGRATE_ROOT", root.display().to_string()),
    ];
    fields.extend(extra.iter().cloned());
    fields
}

/// The journal message that ends a run: finished, inhibited or failed.
fn journal_outcome(report: &Report, verb: Verb, root: &Path) {
    let (priority, id, what) = match report.result {
        RunResult::Succeeded => (Priority::Notice, journald::ids::FINISHED, "finished"),
        RunResult::Inhibited => (
            Priority::Warning,
            journald::ids::INHIBITED,
            "stopped by a check",
        ),
        _ => (Priority::Error, journald::ids::FAILED, "failed"),
    };
    let mut line = format!("migrate {} {} {what}", verb.name(), report.run_id);
    if let Some(m) = &report.message {
        line.push_str(&format!(": {m}"));
    }
    let result = serde_json::to_value(report.result)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let extra = [
        ("MIGRATE_RESULT", result),
        (
            "MIGRATE_EXIT_CODE",
            report.exit_code.unwrap_or_default().to_string(),
        ),
        ("MIGRATE_TARGET", report.target.to_string()),
    ];
    journald::send(
        priority,
        id,
        &line,
        &journal_fields(&report.run_id, verb, root, &extra),
    );
}

/// Prints the resolved plan (for `--dry-run`).
fn show_plan(renderer: &mut Renderer, plan: &Plan, output: OutputFormat) {
    if output == OutputFormat::Json {
        let json = serde_json::json!({ "v": crate::core::event::PROTOCOL_VERSION, "event": "plan", "plan": plan });
        println!("{json}");
        return;
    }
    renderer.note(&format!(
        "plan: {} (hash {})",
        plan.description,
        plan.hash()
    ));
    for s in &plan.steps {
        let options = if s.options.is_empty() {
            String::new()
        } else {
            format!(" {}", serde_json::Value::Object(s.options.clone()))
        };
        renderer.note(&format!(
            "  {:<8} {:<20} {:<20}{options}  [{}]",
            s.phase, s.id, s.kind, s.defined_at
        ));
    }
}

/// What the agent's exit code means for the run.
fn interpret_exit(
    exit_code: i32,
    finished: bool,
    agent_message: Option<String>,
) -> (RunResult, ExitCode, Option<String>) {
    match exit_code {
        0 if finished => (RunResult::Succeeded, ExitCode::Succeeded, None),
        0 => (
            RunResult::Failed,
            ExitCode::StepFailed,
            Some("the agent exited without finishing the run".into()),
        ),
        1 => (RunResult::Failed, ExitCode::StepFailed, agent_message),
        2 => (RunResult::Failed, ExitCode::BadInput, agent_message),
        3 => (RunResult::Inhibited, ExitCode::Inhibited, agent_message),
        4 => (RunResult::Failed, ExitCode::Environment, agent_message),
        125..=127 => (
            RunResult::Failed,
            ExitCode::Environment,
            Some(format!(
                "the migration container could not run its agent (exit code {exit_code})"
            )),
        ),
        n if n > 128 => (
            RunResult::Failed,
            ExitCode::StepFailed,
            Some(format!("the agent was killed by signal {}", n - 128)),
        ),
        n => (
            RunResult::Failed,
            ExitCode::StepFailed,
            Some(agent_message.unwrap_or_else(|| format!("the agent exited with code {n}"))),
        ),
    }
}

/// Everything that reacts to the container's output.
struct Session<'a> {
    root: &'a Path,
    verb: Verb,
    record: Record,
    renderer: Renderer,
    log: RunLog,
    report: Report,
    lock: Option<&'a RootLock>,
    phases: BTreeMap<String, Phase>,
    finished: bool,
    protocol_error: Option<String>,
    write_error: Option<String>,
}

impl Session<'_> {
    fn line(&mut self, stream: OutputStream, line: &str) {
        if stream == OutputStream::Stdout {
            match Envelope::decode(line) {
                Ok(env) => return self.event(&env),
                Err(DecodeError::NotAnEvent) => {}
                Err(e) => {
                    if self.protocol_error.is_none() {
                        self.protocol_error = Some(e.to_string());
                    }
                }
            }
        }
        self.log.raw(stream, line);
        self.renderer.raw(stream, line);
    }

    fn event(&mut self, env: &Envelope) {
        match &env.event {
            Event::RunStarted { steps, .. } => {
                self.phases = steps.iter().map(|s| (s.id.clone(), s.phase)).collect();
            }
            Event::StepStarted { step }
                if self.verb.changes_root()
                    && self.phases.get(step).is_some_and(|p| *p != Phase::Check) =>
            {
                self.begin_changes();
            }
            _ => {}
        }
        self.log.event(env);
        self.renderer.event(env);
        self.report.apply(env);
        match env.event {
            Event::RunFinished { .. } => self.finished = true,
            Event::Output { .. } | Event::Progress { .. } => return,
            _ => {}
        }
        if self.log.writing()
            && self.record != Record::LogOnly
            && let Err(e) = self.report.write(self.root)
        {
            self.log
                .host(&format!("could not update the report: {e:#}"));
        }
    }

    /// The run starts changing the root: from now on the log, the report and
    /// the lock holder are written there.
    fn begin_changes(&mut self) {
        if self.log.writing() {
            return;
        }
        let result = (|| -> Result<()> {
            if let Some(lock) = self.lock {
                lock.record_holder()?;
            }
            self.log.start_writing()?;
            if self.record == Record::LogOnly {
                return Ok(());
            }
            Report::keep_previous(self.root, &self.report.run_id)?;
            self.report.write(self.root)
        })();
        if let Err(e) = result {
            self.write_error.get_or_insert(format!("{e:#}"));
        }
    }
}

fn guard<'m, T>(m: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn container_spec(opts: &LaunchOptions, p: &Prepared, run_id: &str) -> Result<ContainerSpec> {
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
        if p.root == Path::new("/") {
            command.push("--live".into());
        }
        // Passwords named by environment variable come from migrate's own
        // environment (never the plan, never a command line).
        for step in plan.steps.iter().filter(|s| s.kind == Kind::Postgres) {
            let opts: PostgresOptions = step.options()?;
            for var in opts.password_envs() {
                let value = std::env::var(&var).map_err(|_| {
                    fail(
                        ExitCode::BadInput,
                        format!("step {}: the password variable {var} is not set", step.id),
                    )
                })?;
                env.insert(var, value);
            }
        }
    }
    Ok(ContainerSpec {
        name: format!("migrate-{run_id}"),
        image: p.image.id.clone(),
        command,
        env,
        labels: BTreeMap::from([
            (LABEL_RUN_ID.to_string(), run_id.to_string()),
            (LABEL_ROOT.to_string(), p.root.display().to_string()),
        ]),
        binds: vec![(p.root.clone(), CONTAINER_ROOT.to_string())],
        read_only: !opts.verb.changes_root(),
        rlimits: own_rlimits(),
    })
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
pub fn new_run_id() -> String {
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_exit_codes_map_to_run_results() {
        assert_eq!(interpret_exit(0, true, None).1, ExitCode::Succeeded);
        assert_eq!(interpret_exit(0, false, None).1, ExitCode::StepFailed);
        assert_eq!(interpret_exit(2, true, None).1, ExitCode::BadInput);
        assert_eq!(
            interpret_exit(3, true, None),
            (RunResult::Inhibited, ExitCode::Inhibited, None)
        );
        assert_eq!(interpret_exit(127, false, None).1, ExitCode::Environment);
        let (r, c, m) = interpret_exit(137, false, None);
        assert_eq!((r, c), (RunResult::Failed, ExitCode::StepFailed));
        assert!(m.unwrap().contains("signal 9"));
    }

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

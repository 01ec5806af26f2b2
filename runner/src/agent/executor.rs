//! Runs a plan: the phases a verb asks for, in order, with the state journal
//! kept at every step transition so that an interrupted migration continues
//! where it stopped.
//!
//! - `check`: the check phase only, against a read-only root.
//! - `dry-run`: the check phase, then what each later step would do.
//! - `sync`: check and sync phases; repeatable while services run.
//! - `run`: check, sync and cutover. Resuming after the cutover started
//!   skips checks and pre-copies (the root is mid-upgrade) and every step
//!   that already succeeded.
//!
//! - `step-back` (`migrate rollback --app NAME`): the application's rollback
//!   steps, then its old services back as they were.
//!
//! In a plan with applications every changing run names one (`--app`): the
//! run acts on that application's steps and the root's own, resumes and
//! skips by that application's progress alone, and records where it stands
//! in the journal's `applications`; the migration completes when every
//! application has finished.
//!
//! Nothing is written to the root before the check phase has passed: the
//! journal is created when the first sync or cutover step starts.

use std::cell::{OnceCell, RefCell};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::mounts;
use super::sink::EventSink;
use crate::agent::steps::{RunContext, StepContext, StepKind, instantiate};
use crate::core::event::{
    Event, Finding, OutputStream, PlannedStep, Severity, StepStatus, Verb, timestamp,
};
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::image::ImageDefinition;
use crate::core::journal::{AppPhase, ImageIdentity, Journal, JournalRun, ServiceChange};
use crate::core::kinds::Kind;
use crate::core::lifecycle::{InvalidTransition, State, Transition};
use crate::core::phase::Phase;
use crate::core::plan::{Plan, PlanStep};
use crate::core::release::{OsRelease, Release};
use crate::core::report::StepState;

/// What the host asked for.
pub(crate) struct Request {
    /// What to do.
    pub(crate) verb: Verb,
    /// The root (`/system-root`).
    pub(crate) root: std::path::PathBuf,
    /// Run id.
    pub(crate) run_id: String,
    /// The image the agent runs in.
    pub(crate) image: ImageIdentity,
    /// The resolved plan.
    pub(crate) plan: Plan,
    /// Start a new migration even if another one is unfinished.
    pub(crate) force_new: bool,
    /// Whether the root is the running host.
    pub(crate) live: bool,
    /// The application the run acts on (`--app`).
    pub(crate) app: Option<String>,
}

/// The phases a verb runs.
fn phases(verb: Verb) -> &'static [Phase] {
    match verb {
        Verb::Check => &[Phase::Check],
        Verb::Sync => &[Phase::Check, Phase::Sync],
        Verb::Run | Verb::DryRun => &[Phase::Check, Phase::Sync, Phase::Cutover],
        Verb::Cleanup => &[Phase::Post],
        Verb::Rollback => &[],
        Verb::StepBack => &[Phase::Rollback],
    }
}

/// Runs the request. The caller has entered the private mount namespace.
pub(crate) fn execute(req: Request, def: &ImageDefinition, sink: &EventSink) -> Result<()> {
    let root = req.root.as_path();
    let plan_hash = req.plan.hash();
    let app = req.app.as_deref();
    req.plan
        .check_app(req.verb, app)
        .map_err(|e| fail(ExitCode::BadInput, e))?;
    let existing = Journal::load(root).exit_code(ExitCode::BadInput)?;
    let same = |j: &Journal| j.plan_hash == plan_hash && j.image.id == req.image.id;
    let mut resumed = None;
    if let Some(name) = app {
        resumed = app_journal(existing.as_ref().filter(|j| same(j)), req.verb, name)?;
    }
    if resumed.is_some() {
        // An application's run continues the migration of its plan.
    } else if req.verb == Verb::Cleanup {
        // The post phase belongs to the migration that completed.
        match existing.as_ref() {
            Some(j) if j.state() == State::Completed && same(j) => {
                resumed = existing.clone();
            }
            _ => {
                return Err(fail(
                    ExitCode::BadInput,
                    "no completed migration with this plan and image on this root; nothing to run after the reboot",
                ));
            }
        }
    } else if let Some(j) = existing.as_ref().filter(|j| j.in_progress()) {
        if same(j) {
            resumed = existing.clone();
        } else if !(req.force_new && req.verb.changes_root()) && req.verb != Verb::Check {
            return Err(fail(
                ExitCode::Inhibited,
                format!(
                    "migration {} on this root is unfinished and used another plan or image; continue it with the same plan and image, roll it back, or pass --force-new",
                    j.migration_id
                ),
            ));
        }
    }
    // Which steps this run acts on, and whose progress decides what it
    // skips: an application's own steps, or the whole plan's.
    let in_scope = |s: &PlanStep| Plan::in_scope(s, app);
    let own = |id: &str| {
        app.is_none()
            || req
                .plan
                .steps
                .iter()
                .any(|s| s.id == id && s.app.as_deref() == app)
    };
    let cutover_started = resumed
        .as_ref()
        .is_some_and(|j| j.cutover_started_among(own));
    if req.verb == Verb::Sync && cutover_started {
        return Err(fail(
            ExitCode::BadInput,
            match app {
                Some(name) => format!(
                    "the finish of application {name} has started; continue it with `migrate run --app {name}`"
                ),
                None => "the cutover of this migration has started; continue it with `migrate run`"
                    .to_string(),
            },
        ));
    }
    let source = match &resumed {
        Some(j) => j.source.clone(),
        None => OsRelease::read_from_root(root).exit_code(ExitCode::BadInput)?,
    };
    let target: Release = def.target_release().exit_code(ExitCode::BadInput)?;

    let wanted = phases(req.verb);
    let steps: Vec<&PlanStep> = req
        .plan
        .steps_in(wanted)
        .filter(|s| in_scope(s))
        .filter(|s| req.verb != Verb::StepBack || s.app.is_some())
        .collect();
    let kinds: Vec<Box<dyn StepKind>> = steps
        .iter()
        .map(|s| instantiate(s))
        .collect::<Result<_>>()
        .exit_code(ExitCode::BadInput)?;
    // Every step of the plan this run belongs to (not only this verb's)
    // must find its programs in the image: refused before anything runs.
    for step in req.plan.steps.iter().filter(|s| in_scope(s)) {
        let tools = instantiate(step).exit_code(ExitCode::BadInput)?.tools();
        if let Some(tool) = crate::agent::steps::missing_tool(&tools) {
            return Err(fail(
                ExitCode::BadInput,
                format!(
                    "step {} ({}) runs `{tool}`, which this migration image does not have; derive an image from it that installs {tool} (docs/images.md, \"Deriving an image\")",
                    step.id,
                    step.kind.name()
                ),
            ));
        }
    }

    sink.emit(Event::RunStarted {
        run_id: req.run_id.clone(),
        verb: req.verb,
        resumed: resumed.is_some(),
        source: source.release(),
        target: target.clone(),
        steps: steps
            .iter()
            .zip(&kinds)
            .map(|(s, k)| PlannedStep {
                id: s.id.clone(),
                kind: s.kind.name().to_string(),
                phase: s.phase,
                description: s.description.clone().unwrap_or_else(|| k.describe()),
            })
            .collect(),
    });

    let pristine = mounts::pristine_view(root).exit_code(ExitCode::Environment)?;
    let prepared = mounts::prepare(root).exit_code(ExitCode::Environment)?;
    for action in prepared.actions {
        sink.emit(Event::Output {
            step: None,
            stream: OutputStream::Stderr,
            line: format!("system-root: {action}"),
        });
    }

    let run = RunContext {
        root: root.to_path_buf(),
        pristine,
        run_id: req.run_id.clone(),
        source,
        target: def.target.clone(),
        accepts: def.accepts.clone(),
        plan: req.plan.clone(),
        sink: sink.clone(),
        packages: OnceCell::new(),
        findings: RefCell::new(Vec::new()),
        journal: RefCell::new(resumed),
        live: req.live,
        holds_upgrade: req.verb == Verb::Run,
        manifests: Default::default(),
    };

    let mut checks_judged = false;
    // Outcomes of steps run before the journal existed (the checks), recorded
    // in it once it is created.
    let mut unjournaled: Vec<(&PlanStep, StepStatus)> = Vec::new();
    for (step, kind) in steps.iter().zip(&kinds) {
        if step.phase != Phase::Check && !checks_judged {
            judge_checks(&run)?;
            checks_judged = true;
        }
        let earlier = run
            .journal
            .borrow()
            .as_ref()
            .and_then(|j| j.step(&step.id).map(|s| s.status));
        let skip_reason = if step.phase <= Phase::Sync && cutover_started {
            Some("the cutover had started; not repeated on resume")
        } else if step.phase >= Phase::Cutover
            && matches!(earlier, Some(StepState::Succeeded | StepState::Skipped))
        {
            Some("done in an earlier attempt")
        } else {
            None
        };
        if let Some(reason) = skip_reason {
            sink.emit(Event::StepStarted {
                step: step.id.clone(),
            });
            sink.emit(Event::StepFinished {
                step: step.id.clone(),
                status: StepStatus::Skipped,
                duration_ms: 0,
                message: Some(reason.to_string()),
                backups: Vec::new(),
            });
            continue;
        }
        // apt held at its prompt since the checks holds dpkg's locks: told
        // no before a step that might want them.
        if !holds_apt_held(step) {
            release_held_upgrade(&run);
        }
        let changes = req.verb.changes_root() && step.phase != Phase::Check;
        if changes {
            ensure_journal(&run, &req, existing.as_ref(), &target)?;
            with_journal(&run, |j| {
                for (done, status) in unjournaled.drain(..) {
                    j.start_step(&done.id, done.phase)?;
                    j.finish_step(&done.id, done.phase, status.into(), None);
                }
                if step.kind.changes_packages() && req.verb == Verb::Run {
                    j.packages_changed_at.get_or_insert_with(|| {
                        crate::core::event::timestamp(std::time::SystemTime::now())
                    });
                }
                if let Some(name) = app {
                    let now = j.app_phase(name);
                    match step.phase {
                        Phase::Sync if !matches!(now, AppPhase::Syncing) => {
                            j.set_app(name, AppPhase::Syncing);
                        }
                        Phase::Cutover if !matches!(now, AppPhase::Finishing) => {
                            j.set_app(name, AppPhase::Finishing);
                        }
                        _ => {}
                    }
                }
                j.start_step(&step.id, step.phase)
            })?;
        }
        sink.emit(Event::StepStarted {
            step: step.id.clone(),
        });
        let ctx = StepContext { run: &run, step };
        let started = Instant::now();
        let result = if req.verb == Verb::DryRun && step.phase != Phase::Check {
            kind.dry_run(&ctx).map(|()| StepStatus::Succeeded)
        } else if step.phase == Phase::Check {
            // A check that cannot run cannot vouch for the upgrade: it
            // inhibits, and the other checks still run.
            kind.run(&ctx).or_else(|e| {
                ctx.finding(Finding {
                    id: step.id.clone(),
                    severity: Severity::Inhibitor,
                    message: format!("the check could not run: {e:#}"),
                    hint: "fix the cause, or disable the check with a drop-in (enabled = false) if it does not apply".into(),
                });
                Ok(StepStatus::Failed)
            })
        } else {
            kind.run(&ctx)
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, message) = match &result {
            Ok(s) => (*s, None),
            Err(e) => (StepStatus::Failed, Some(format!("{e:#}"))),
        };
        // A check that could not run already became an inhibitor finding.
        let failed_check = step.phase == Phase::Check && status == StepStatus::Failed;
        if changes {
            with_journal(&run, |j| {
                j.finish_step(&step.id, step.phase, status.into(), message.clone());
                Ok(())
            })?;
        } else {
            unjournaled.push((step, status));
        }
        sink.emit(Event::StepFinished {
            step: step.id.clone(),
            status,
            duration_ms,
            message: message.clone(),
            backups: ctx.backups(),
        });
        if let Some(m) = message.filter(|_| !failed_check) {
            return Err(fail(
                ExitCode::StepFailed,
                format!("step {} failed: {m}", step.id),
            ));
        }
    }
    if !checks_judged {
        judge_checks(&run)?;
    }
    match (req.verb, app) {
        (Verb::Run, None) => {
            post_cutover_snapshot(&run)?;
            with_journal(&run, |j| j.advance(Transition::Complete))?;
        }
        (Verb::Run, Some(name)) => {
            ensure_journal(&run, &req, existing.as_ref(), &target)?;
            let all_finished = with_journal_value(&run, |j| {
                if j.app_phase(name) != AppPhase::Finished {
                    j.set_app(name, AppPhase::Finished);
                }
                req.plan
                    .apps()
                    .iter()
                    .all(|a| j.app_phase(a) == AppPhase::Finished)
            })?;
            run.sink.emit(Event::Output {
                step: None,
                stream: OutputStream::Stdout,
                line: format!("application {name}: finished"),
            });
            if all_finished
                && run
                    .journal
                    .borrow()
                    .as_ref()
                    .is_some_and(|j| j.state() == State::CutoverStarted)
            {
                post_cutover_snapshot(&run)?;
                with_journal(&run, |j| j.advance(Transition::Complete))?;
            }
        }
        (Verb::Sync, Some(name)) => {
            ensure_journal(&run, &req, existing.as_ref(), &target)?;
            with_journal(&run, |j| {
                if j.app_phase(name) != AppPhase::Syncing {
                    j.set_app(name, AppPhase::Syncing);
                }
                if let Some(r) = j.applications.get_mut(name) {
                    r.syncs += 1;
                }
                Ok(())
            })?;
        }
        (Verb::StepBack, Some(name)) => step_back_app(&run, &req.plan, name)?,
        _ => {}
    }
    Ok(())
}

/// The journal an application's run continues: the migration of the same
/// plan and image, unless it ended otherwise than by completing (then the
/// run starts a new one, as any run does). A step back needs one whose
/// application has started; a sync refuses an application that finished.
fn app_journal(same: Option<&Journal>, verb: Verb, app: &str) -> Result<Option<Journal>> {
    let resumable = same.filter(|j| j.in_progress() || j.state() == State::Completed);
    let phase = resumable.map_or(AppPhase::NotStarted, |j| j.app_phase(app));
    match verb {
        Verb::StepBack if matches!(phase, AppPhase::NotStarted | AppPhase::SteppedBack) => {
            Err(fail(
                ExitCode::BadInput,
                format!(
                    "application {app} is {} in this plan's migration on this root: nothing to step back",
                    phase.name()
                ),
            ))
        }
        Verb::Sync if phase == AppPhase::Finished => Err(fail(
            ExitCode::BadInput,
            format!(
                "application {app} has finished; step it back first (`migrate rollback --app {app}`) to move it again"
            ),
        )),
        _ => Ok(resumable.cloned()),
    }
}

/// After an application's rollback steps: its old services as they were
/// before the migration changed them, its steps pending again, and the
/// application (and with it the migration) unfinished.
fn step_back_app(run: &RunContext, plan: &Plan, app: &str) -> Result<()> {
    let changes: Vec<ServiceChange> = run
        .journal
        .borrow()
        .as_ref()
        .map(|j| {
            j.services
                .iter()
                .filter(|c| c.app.as_deref() == Some(app))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let said = crate::agent::steps::service::step_back(&run.pristine, &changes)
        .with_context(|| format!("stepping back the services of application {app}"))
        .exit_code(ExitCode::StepFailed)?;
    for line in said {
        run.sink.emit(Event::Output {
            step: None,
            stream: OutputStream::Stdout,
            line,
        });
    }
    with_journal(run, |j| {
        j.services.retain(|c| c.app.as_deref() != Some(app));
        for s in plan.steps.iter().filter(|s| s.app.as_deref() == Some(app)) {
            let entry = j.step_mut(&s.id, s.phase);
            entry.status = StepState::Pending;
            entry.attempts = 0;
            entry.message = None;
        }
        j.set_app(app, AppPhase::SteppedBack);
        j.advance(Transition::StepBackApp)
    })?;
    run.sink.emit(Event::Output {
        step: None,
        stream: OutputStream::Stdout,
        line: format!("application {app}: stepped back"),
    });
    Ok(())
}

/// A snapshot-backed migration's second snapshot, once its cutover is
/// done (not again when a resumed run finishes it).
/// Whether `step` may run while the checks' `apt-get dist-upgrade` waits at
/// its prompt holding dpkg's locks: the checks, the prefetch, the safety
/// backup, the sources and the upgrade itself.
fn holds_apt_held(step: &PlanStep) -> bool {
    step.phase == Phase::Check
        || matches!(
            step.kind,
            Kind::Prefetch | Kind::SafetyBackup | Kind::AptSources | Kind::Apt
        )
}

/// Tells the held `apt-get dist-upgrade`, if this run has one, no.
fn release_held_upgrade(run: &RunContext) {
    if let Some(apt) = run.packages.get().and_then(|p| p.apt()) {
        apt.release_held();
    }
}

fn post_cutover_snapshot(run: &RunContext) -> Result<()> {
    let Some((migration, backup)) = run.journal.borrow().as_ref().and_then(|j| {
        j.backup
            .clone()
            .filter(|b| b.post_cutover.is_none())
            .map(|b| (j.migration_id.clone(), b))
    }) else {
        return Ok(());
    };
    let taken = crate::agent::steps::backup::post_cutover_snapshot(&run.root, &migration, &backup)
        .context("taking the snapshot after the cutover")
        .exit_code(ExitCode::StepFailed)?;
    if let Some(location) = taken {
        run.sink.emit(Event::Output {
            step: None,
            stream: OutputStream::Stdout,
            line: format!("after the cutover: {} snapshot {location}", backup.method),
        });
        with_journal(run, |j| {
            if let Some(b) = j.backup.as_mut() {
                b.post_cutover = Some(location);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Ends the run with exit code 3 if a check found an inhibitor.
fn judge_checks(run: &RunContext) -> Result<()> {
    let findings = run.findings.borrow();
    let inhibitors: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity == Severity::Inhibitor)
        .map(|f| f.message.as_str())
        .collect();
    if inhibitors.is_empty() {
        return Ok(());
    }
    Err(fail(
        ExitCode::Inhibited,
        format!(
            "{} inhibitor{} stopped the run before anything changed: {}",
            inhibitors.len(),
            if inhibitors.len() == 1 { "" } else { "s" },
            inhibitors.join("; ")
        ),
    ))
}

/// Creates the journal when the first changing step starts (archiving a
/// finished or abandoned one), and records this run in it.
fn ensure_journal(
    run: &RunContext,
    req: &Request,
    existing: Option<&Journal>,
    target: &Release,
) -> Result<()> {
    let mut slot = run.journal.borrow_mut();
    if slot.is_none() {
        if let Some(old) = existing {
            old.archive(&run.pristine)
                .exit_code(ExitCode::Environment)?;
        }
        *slot = Some(Journal::new(
            &req.run_id,
            &req.plan,
            req.image.clone(),
            run.source.clone(),
            target.clone(),
        ));
    }
    if let Some(j) = slot.as_mut()
        && !j.runs.iter().any(|r| r.run_id == req.run_id)
    {
        j.runs.push(JournalRun {
            run_id: req.run_id.clone(),
            verb: req.verb.name().to_string(),
            started_at: timestamp(std::time::SystemTime::now()),
        });
    }
    Ok(())
}

/// Changes the journal (if this run keeps one), saves it, and returns what
/// `f` says.
fn with_journal_value<T: Default>(
    run: &RunContext,
    f: impl FnOnce(&mut Journal) -> T,
) -> Result<T> {
    let mut value = T::default();
    with_journal(run, |j| {
        value = f(j);
        Ok(())
    })?;
    Ok(value)
}

/// Changes the journal and saves it; a transition the lifecycle does not
/// allow is a bug, reported as a failed run.
fn with_journal(
    run: &RunContext,
    f: impl FnOnce(&mut Journal) -> Result<(), InvalidTransition>,
) -> Result<()> {
    if let Some(j) = run.journal.borrow_mut().as_mut() {
        f(j).context("the state journal")?;
        j.save(&run.pristine).exit_code(ExitCode::Environment)?;
    }
    Ok(())
}

/// The image definition shipped in the image.
pub(crate) fn image_definition() -> Result<ImageDefinition> {
    let path = Path::new(crate::core::image::IMAGE_DATA_DIR).join("image.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        fail(
            ExitCode::BadInput,
            format!("reading {}: {e}", path.display()),
        )
    })?;
    ImageDefinition::parse(&text, &path.display().to_string()).exit_code(ExitCode::BadInput)
}

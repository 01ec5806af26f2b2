//! `migrate --unattended`: what `migrate.service` runs, on the schedule of
//! `migrate.timer`, with the host configuration (`/etc/migrate/config.toml`).
//!
//! Disabled (the default), it does nothing. Enabled, it runs the checks
//! (`mode = "check"`) or the migration (`mode = "run"`, whose checks run
//! first), never prompts, and records the outcome in `report.json` and the
//! journal whatever it is, so an inhibitor found at 3 a.m. is there to read
//! in the morning. A migration that finished and waits for its reboot is
//! rebooted when the configuration says so and the maintenance window is
//! open.

use std::path::PathBuf;

use anyhow::Result;

use super::config::{self, Mode};
use super::fleetlock;
use super::journald::{self, Priority};
use super::preflight;
use super::render::OutputFormat;
use super::run::{self, LaunchOptions, Reboot, Record};
use crate::core::event::Verb;
use crate::core::exit::{ExitCode, fail};
use crate::core::journal::SlotState;
use crate::core::report::{ImageInfo, Report, RunResult, SourceInfo};

/// A migration an operator rolled back is not started again by the timer:
/// whatever made it roll back is for a person to look at first. The checks
/// still run; `migrate run --force-new` starts over.
fn refuse_after_rollback(root: &std::path::Path) -> Result<()> {
    use crate::core::lifecycle::State;
    let Some(journal) = crate::core::journal::Journal::load(root).ok().flatten() else {
        return Ok(());
    };
    if !matches!(
        journal.state(),
        State::RolledBack | State::PartlyRolledBack | State::Reverted
    ) {
        return Ok(());
    }
    let line = format!(
        "migration {} to {} is {}; unattended runs do not start it again by themselves: once the cause is fixed, start over with `migrate run --force-new`",
        journal.migration_id,
        journal.target,
        journal.state()
    );
    journald::send::<&str>(Priority::Warning, journald::ids::INHIBITED, &line, &[]);
    Err(fail(ExitCode::Inhibited, line))
}

/// What the command line adds to the configuration.
#[derive(Clone, Debug)]
pub(crate) struct UnattendedOptions {
    /// `--root`.
    pub(crate) root: PathBuf,
    /// `--config`.
    pub(crate) config: Option<PathBuf>,
    /// `--image` (overrides the configuration's).
    pub(crate) image: Option<String>,
    /// `--plan` (overrides the configuration's).
    pub(crate) plan: Option<PathBuf>,
    /// `--reboot` (as if the configuration said `reboot = true`).
    pub(crate) reboot: bool,
    /// `--output`.
    pub(crate) output: OutputFormat,
    /// `-v` count.
    pub(crate) verbose: u8,
}

/// Runs what the configuration asks for. Whatever fails, the outcome is in
/// `report.json`: a failure before the run could start (a bad
/// configuration, an image that cannot be had) leaves a report saying so,
/// for the administrator who reads it in the morning.
pub(crate) async fn unattended(opts: &UnattendedOptions) -> Result<()> {
    preflight::require_root()?;
    let (root, os) = preflight::inspect_root(&opts.root)?;
    let earlier = Report::read(&root).ok().map(|r| r.run_id);
    let result = run_configured(opts, &root).await;
    if let Err(e) = &result {
        let wrote = Report::read(&root).ok().map(|r| r.run_id);
        if wrote == earlier
            && let Err(w) = failure_report(opts, &root, &os, e)
        {
            tracing::warn!("writing the report of the failed unattended run: {w:#}");
        }
    }
    result
}

/// A report for an unattended run that failed before its run started.
fn failure_report(
    opts: &UnattendedOptions,
    root: &std::path::Path,
    os: &crate::core::release::OsRelease,
    e: &anyhow::Error,
) -> Result<()> {
    let run_id = run::new_run_id();
    let mut report = Report::new(
        &run_id,
        Verb::Run,
        root,
        ImageInfo {
            reference: opts.image.clone().unwrap_or_default(),
            ..ImageInfo::default()
        },
        SourceInfo {
            release: os.release(),
            pretty_name: os.pretty_name(),
        },
        crate::core::release::Release {
            id: String::new(),
            version_id: String::new(),
        },
    );
    report.finish(
        RunResult::Failed,
        crate::core::exit::exit_code_of(e).code(),
        Some(format!("{e:#}")),
    );
    Report::keep_previous(root, &run_id)?;
    report.write(root)
}

async fn run_configured(opts: &UnattendedOptions, root: &std::path::Path) -> Result<()> {
    let root = root.to_path_buf();
    let config = config::load(&root, opts.config.as_deref()).map_err(|e| {
        let line = format!("configuration: {e:#}");
        journald::send::<&str>(Priority::Error, journald::ids::FAILED, &line, &[]);
        fail(ExitCode::BadInput, line)
    })?;
    if !config.enabled {
        super::render::say(
            opts.output,
            &format!(
                "unattended migration is disabled: set `enabled = true` in {} to turn it on",
                opts.config
                    .as_deref()
                    .unwrap_or(&root.join(config::CONFIG_PATH))
                    .display()
            ),
        );
        return Ok(());
    }
    let live = root == std::path::Path::new("/");
    let reboot = if (config.reboot || opts.reboot) && live {
        match config.window.clone() {
            Some(w) if !opts.reboot => Reboot::InWindow(w),
            _ => Reboot::Now,
        }
    } else {
        Reboot::No
    };
    // A host that coordinates with its fleet: its FleetLock client (the
    // running host only: a slot is for the machine that reboots).
    let fleet = match (&config.fleetlock, live) {
        (Some(settings), true) => Some(
            fleetlock::Client::new(&root, settings)
                .map_err(|e| fail(ExitCode::BadInput, format!("FleetLock: {e:#}")))?,
        ),
        _ => None,
    };
    if let Some(client) = &fleet {
        release_after_confirmation(client, &root, opts.output).await;
    }
    // The cutover (services stopped, packages upgraded) happens only inside
    // the maintenance window; outside it a run does what may happen while
    // services run: the checks and the sync phase.
    let outside = config
        .window
        .as_ref()
        .filter(|w| config.mode == Mode::Run && !w.open_now());
    let mut verb = match (config.mode, outside) {
        (Mode::Check, _) => Verb::Check,
        (Mode::Run, Some(_)) => Verb::Sync,
        (Mode::Run, None) => Verb::Run,
    };
    if verb != Verb::Check {
        refuse_after_rollback(&root)?;
    }
    let mut note = outside.map(|w| {
        format!(
            "outside the maintenance window ({w}): the checks and the sync phase run now; the cutover waits for a run inside the window"
        )
    });
    let pending = run::pending_reboot(&root)?;
    // Inside the window, with a fleet: a slot first, for the cutover and
    // the reboot after it (taken only before the reboot, every host would
    // cut over at once when the window opens).
    let reboot_due = pending.is_some()
        && match &reboot {
            Reboot::No => false,
            Reboot::Now => true,
            Reboot::InWindow(w) => w.open_now(),
        };
    let mut slot = None;
    if let Some(client) = &fleet
        && (verb == Verb::Run || reboot_due)
    {
        match client.lock().await {
            Ok(()) => slot = Some(client.slot(SlotState::Held, None)),
            Err(refusal) => {
                let line = format!(
                    "no reboot slot from the FleetLock server {} (group {}): {refusal}; {}",
                    config.fleetlock.as_ref().map_or("", |c| c.url.as_str()),
                    config.fleetlock.as_ref().map_or("", |c| c.group.as_str()),
                    if pending.is_some() {
                        "the reboot waits for a later unattended run that gets one"
                    } else {
                        "the checks and the sync phase run now; the cutover waits for a later unattended run that gets one"
                    }
                );
                slot = Some(client.slot(SlotState::Waiting, Some(refusal.to_string())));
                if verb == Verb::Run {
                    verb = Verb::Sync;
                }
                note = Some(line);
            }
        }
    }
    if let Some(line) = note.as_ref().filter(|_| pending.is_none()) {
        journald::send::<&str>(Priority::Notice, journald::ids::STARTED, line, &[]);
    }
    let mut launch = LaunchOptions::new(verb, root.clone());
    launch.note = note;
    launch.fleetlock = slot.clone();
    launch.image = opts.image.clone();
    launch.default_image = config.image.clone();
    launch.metrics_dir = config.metrics_dir.clone();
    launch.plan = opts
        .plan
        .clone()
        .map(crate::core::plan::PlanFile::Host)
        .or(config.plan.clone());
    launch.output = opts.output;
    launch.verbose = opts.verbose;
    launch.record = Record::Always;
    launch.reboot = if config.mode == Mode::Run {
        reboot.clone()
    } else {
        Reboot::No
    };
    if let Some(marker) = pending {
        // Nothing to check or migrate: the reboot is what is left.
        if let Some(slot) = slot.as_ref().filter(|s| s.state == SlotState::Waiting) {
            let line = launch.note.clone().unwrap_or_default();
            super::render::say(opts.output, &line);
            journald::send(
                Priority::Notice,
                journald::ids::REBOOT_WAITING,
                &line,
                &[("MIGRATE_RUN_ID", &marker.run_id)],
            );
            fleetlock::record(&root, slot);
            return Ok(());
        }
        if let Some(slot) = &slot {
            fleetlock::record(&root, slot);
        }
        launch.reboot = reboot;
        return run::finished_migration(&launch, &root, &marker);
    }
    let result = run::launch(&launch).await;
    if let (Some(client), Err(e)) = (&fleet, &result)
        && launch.verb == Verb::Run
        && crate::core::exit::exit_code_of(e) == ExitCode::Inhibited
    {
        give_back_unused_slot(client, &root).await;
    }
    result
}

/// After a run a check inhibited: gives the slot back unless an earlier
/// run had started the cutover (a host between releases keeps its slot, so
/// that the fleet waits for it). Holding it for a host that did not move
/// would stop the fleet for nothing.
async fn give_back_unused_slot(client: &fleetlock::Client, root: &std::path::Path) {
    let journal = crate::core::journal::Journal::load(root).ok().flatten();
    if journal.as_ref().is_some_and(|j| j.cutover_started()) {
        return;
    }
    let slot = match client
        .give_back(Some(
            "the run was inhibited and changed nothing".to_string(),
        ))
        .await
    {
        Ok(released) => released,
        Err((held, _)) => held,
    };
    fleetlock::record(root, &slot);
    if let Ok(mut report) = Report::read(root) {
        report.fleetlock = Some(slot);
        if let Err(w) = report.write(root) {
            tracing::warn!("recording the FleetLock slot in the report: {w:#}");
        }
    }
}

/// Gives back the slot of a migration whose first boot confirmed it, if
/// the first boot could not (the server was down then): the fleet's next
/// host waits for it.
async fn release_after_confirmation(
    client: &fleetlock::Client,
    root: &std::path::Path,
    output: OutputFormat,
) {
    use crate::core::lifecycle::State;
    let Some(journal) = crate::core::journal::Journal::load(root).ok().flatten() else {
        return;
    };
    if journal.state() != State::Confirmed
        || !journal
            .fleetlock
            .as_ref()
            .is_some_and(|s| s.state == SlotState::Held)
    {
        return;
    }
    let slot = match client.give_back(None).await {
        Ok(released) => {
            super::render::say(
                output,
                &format!(
                    "released the FleetLock slot of migration {}, confirmed at its first boot",
                    journal.migration_id
                ),
            );
            released
        }
        Err((held, refusal)) => {
            let line = format!(
                "the FleetLock slot of migration {} is still held: giving it back failed ({refusal}); the next unattended run tries again",
                journal.migration_id
            );
            journald::send::<&str>(Priority::Warning, journald::ids::FAILED, &line, &[]);
            super::render::say(output, &line);
            held
        }
    };
    fleetlock::record(root, &slot);
}

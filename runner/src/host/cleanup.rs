//! `migrate cleanup`: the first boot after a migration, run once by
//! `migrate-cleanup.service` (which starts only while the reboot marker
//! exists).
//!
//! In order: the plan's `post` phase in the migration container (only if the
//! plan has post steps); the health of the new release (the root runs the
//! target release; on a live host, no unit failed that had not failed before
//! the migration); the leftovers (containers of this root's runs that a crash
//! left behind, and the image only if migrate pulled it itself — never
//! anything else in podman's storage); the verdict in the migration's
//! `report.json` and the journal; and the marker removed, so that later
//! boots do not run it again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::journald::{self, Priority};
use super::lock::RootLock;
use super::pending::PendingReboot;
use super::podman::Podman;
use super::preflight;
use super::render::OutputFormat;
use super::run::{self, LABEL_ROOT, LaunchOptions, Prepared, Record};
use super::runlog::RunLog;
use crate::core::event::Verb;
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::journal::Journal;
use crate::core::lifecycle::{State, Transition};
use crate::core::phase::Phase;
use crate::core::release::OsRelease;
use crate::core::report::{AfterReboot, BootResult, Report, SourceInfo, StepReport};

/// What to clean up.
#[derive(Clone, Debug)]
pub(crate) struct CleanupOptions {
    /// `--root`.
    pub(crate) root: PathBuf,
    /// `--output`.
    pub(crate) output: OutputFormat,
    /// `-v` count.
    pub(crate) verbose: u8,
}

/// Runs the cleanup of the migration waiting for its first boot, if any.
pub(crate) async fn cleanup(opts: &CleanupOptions) -> Result<()> {
    preflight::require_root()?;
    let (root, os) = preflight::inspect_root(&opts.root)?;
    let Some(marker) = PendingReboot::read(&root).exit_code(ExitCode::BadInput)? else {
        super::render::say(
            opts.output,
            &format!(
                "no migration on {} waits for its first boot; nothing to clean up",
                root.display()
            ),
        );
        return Ok(());
    };
    let live = root == Path::new("/");
    if live && !marker.rebooted_since().exit_code(ExitCode::Environment)? {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "migration {} finished at {} and this host has not rebooted since; reboot into {} first (`migrate run --reboot`)",
                marker.migration_id, marker.finished_at, marker.target_name
            ),
        ));
    }
    let lock = RootLock::acquire(&root)?;
    lock.record_holder().exit_code(ExitCode::Environment)?;
    if let Some(journal) = Journal::load(&root)
        .exit_code(ExitCode::BadInput)?
        .filter(|j| j.migration_id == marker.migration_id && j.state() == State::Reverted)
    {
        return confirm_revert(opts, &root, &os, &journal);
    }
    let run_id = run::new_run_id();
    let mut log = RunLog::new(&root);
    log.start_writing().exit_code(ExitCode::Environment)?;
    log.host(&format!(
        "cleanup {run_id} of migration {} started: {} runs {}",
        marker.migration_id,
        root.display(),
        os.pretty_name()
    ));
    let mut after = AfterReboot {
        run_id: run_id.clone(),
        checked_at: String::new(),
        result: BootResult::Confirmed,
        message: None,
        running: SourceInfo {
            release: os.release(),
            pretty_name: os.pretty_name(),
        },
        failed_units: Vec::new(),
        steps: Vec::new(),
        removed: Vec::new(),
        notes: Vec::new(),
        health: Vec::new(),
    };
    let mut problems: Vec<String> = Vec::new();

    // The release first: the post phase is pointless on the wrong one.
    if os.release() != marker.target {
        problems.push(format!(
            "the root runs {} ({}), not {}",
            os.release(),
            os.pretty_name(),
            marker.target
        ));
    }

    let has_post = marker.plan.steps_in(&[Phase::Post]).next().is_some();
    match Podman::connect_for(&root).await {
        Ok(podman) => {
            if has_post && problems.is_empty() {
                match post_phase(&podman, opts, &root, &marker, &lock).await {
                    Ok((steps, result)) => {
                        after.steps = steps;
                        if let Err(e) = result {
                            problems.push(format!("post phase: {e:#}"));
                        }
                    }
                    Err(e) => problems.push(format!("post phase: {e:#}")),
                }
            }
            remove_leftovers(&podman, &root, &marker, &mut after, &mut problems).await;
            podman.shutdown().await;
        }
        Err(e) if has_post || marker.image.pulled => {
            problems.push(format!("podman is needed and not available: {e:#}"));
        }
        Err(e) => after.notes.push(format!(
            "podman is not available ({e:#}); leftover containers were not looked for"
        )),
    }

    // The plan's own checks first, with their grace period: a unit that
    // fails while they wait is then among the failed units.
    let health = &marker.plan.health;
    if live && !health.is_empty() {
        log.host(&format!(
            "cleanup {run_id}: the plan's health checks, for up to {} s",
            health.grace().as_secs()
        ));
        after.health = super::health::judge(health);
        for c in after.health.iter().filter(|c| !c.passed) {
            problems.push(format!("health check {}: {}", c.check, c.detail));
        }
    } else if !health.is_empty() {
        after
            .notes
            .push("not the running host: the plan's health checks were not run".to_string());
    }
    if live {
        match super::systemd::failed_units() {
            Ok(units) => {
                let before = marker.failed_units_before.clone().unwrap_or_default();
                after.failed_units = units.into_iter().filter(|u| !before.contains(u)).collect();
                if !after.failed_units.is_empty() {
                    problems.push(format!(
                        "failed unit{}: {}",
                        if after.failed_units.len() == 1 {
                            ""
                        } else {
                            "s"
                        },
                        after.failed_units.join(", ")
                    ));
                }
            }
            Err(e) => problems.push(format!("could not ask systemd for failed units: {e:#}")),
        }
    } else {
        after
            .notes
            .push("not the running host: units were not checked".to_string());
    }

    after.checked_at = crate::core::event::timestamp(std::time::SystemTime::now());
    let mut revert = false;
    if !problems.is_empty() {
        after.result = BootResult::Failed;
        after.message = Some(problems.join("; "));
        if live {
            revert = decide_revert(&root, &mut after.notes);
        }
    }
    // The fleet's next host waits for this one's slot: given back once the
    // new release is confirmed, kept after a failed boot so that the
    // rollout stops here.
    let config = crate::host::config::load(&root, None);
    let slot = match config.as_ref().ok().and_then(|c| c.fleetlock.as_ref()) {
        Some(settings) if live => {
            release_slot(&root, settings, after.result, &mut after.notes).await
        }
        _ => None,
    };
    let report = finalize_report(&root, &marker, &os, after)?;
    let after = report
        .after_reboot
        .clone()
        .context("the report lost its verdict")?;
    record_verdict(&root, &marker, after.result, slot)?;
    PendingReboot::remove(&root).exit_code(ExitCode::Environment)?;
    // The monitoring learns the verdict (the configuration is the root's;
    // one that cannot be read is said where it is used, not here).
    if let Ok(config) = &config
        && let Some(dir) = &config.metrics_dir
    {
        let journal = Journal::load(&root).ok().flatten();
        crate::host::metrics::write(&root, dir, &report, journal.as_ref());
    }

    let verdict = match after.result {
        BootResult::Confirmed => format!(
            "the first boot into {} after migration {} is confirmed",
            os.pretty_name(),
            marker.migration_id
        ),
        BootResult::Failed => format!(
            "the first boot after migration {} is not healthy: {}",
            marker.migration_id,
            after.message.as_deref().unwrap_or_default()
        ),
    };
    log.host(&format!("cleanup {run_id}: {verdict}"));
    for line in after
        .removed
        .iter()
        .map(|r| format!("removed {r}"))
        .chain(after.notes.clone())
    {
        log.host(&format!("cleanup {run_id}: {line}"));
    }
    journald::send(
        if after.result == BootResult::Confirmed {
            Priority::Notice
        } else {
            Priority::Error
        },
        journald::ids::CLEANUP,
        &verdict,
        &[
            ("MIGRATE_RUN_ID", run_id.as_str()),
            ("MIGRATE_MIGRATION_ID", marker.migration_id.as_str()),
            ("MIGRATE_VERB", "cleanup"),
            (
                "MIGRATE_RESULT",
                match after.result {
                    BootResult::Confirmed => "confirmed",
                    BootResult::Failed => "failed",
                },
            ),
        ],
    );
    match opts.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        ),
        OutputFormat::Human => {
            // A service's output goes to the journal, which has the verdict.
            if !journald::under_systemd() {
                println!("{verdict}");
            }
            for r in &after.removed {
                println!("  removed {r}");
            }
            for n in &after.notes {
                println!("  note: {n}");
            }
            println!(
                "report: {}",
                root.join(crate::core::report::REPORT_PATH).display()
            );
        }
    }
    if revert {
        // The rollback takes the root's lock itself.
        drop(lock);
        log.host(&format!(
            "cleanup {run_id}: on_failed_boot = revert: rolling back to the pre-migration snapshot and rebooting into it"
        ));
        return revert_and_reboot(opts, &root, &marker, &verdict).await;
    }
    match after.result {
        BootResult::Confirmed => Ok(()),
        BootResult::Failed => Err(fail(ExitCode::StepFailed, verdict)),
    }
}

/// The first boot after an automatic revert (the marker the revert left in
/// the restored system): the source release runs again, or not. Said in the
/// log and the journal; the marker goes either way.
fn confirm_revert(
    opts: &CleanupOptions,
    root: &Path,
    os: &OsRelease,
    journal: &Journal,
) -> Result<()> {
    let back = os.release() == journal.source.release();
    let line = if back {
        format!(
            "the revert of migration {} is confirmed: {} runs again; the migration is not retried automatically (`migrate run --force-new` starts over)",
            journal.migration_id,
            os.pretty_name()
        )
    } else {
        format!(
            "the revert of migration {} did not bring back {}: {} runs {}",
            journal.migration_id,
            journal.source.release(),
            root.display(),
            os.pretty_name()
        )
    };
    let mut log = RunLog::new(root);
    log.start_writing().exit_code(ExitCode::Environment)?;
    log.host(&format!("cleanup: {line}"));
    journald::send(
        if back {
            Priority::Notice
        } else {
            Priority::Error
        },
        journald::ids::CLEANUP,
        &line,
        &[
            ("MIGRATE_MIGRATION_ID", journal.migration_id.as_str()),
            ("MIGRATE_VERB", "cleanup"),
            (
                "MIGRATE_RESULT",
                if back {
                    "revert-confirmed"
                } else {
                    "revert-failed"
                },
            ),
        ],
    );
    PendingReboot::remove(root).exit_code(ExitCode::Environment)?;
    if !back {
        return Err(fail(ExitCode::StepFailed, line));
    }
    if opts.output == OutputFormat::Json || !journald::under_systemd() {
        super::render::say(opts.output, &line);
    }
    Ok(())
}

/// Whether a failed first boot reverts: the host configuration says
/// `on_failed_boot = "revert"` and the safety backup is a snapshot. Says
/// why not in `notes` when the configuration asks and it cannot.
fn decide_revert(root: &Path, notes: &mut Vec<String>) -> bool {
    let wanted = crate::host::config::load(root, None)
        .is_ok_and(|c| c.on_failed_boot == crate::host::config::OnFailedBoot::Revert);
    if !wanted {
        return false;
    }
    let snapshot = Journal::load(root)
        .ok()
        .flatten()
        .is_some_and(|j| super::snapshot::snapshot_backed(&j));
    notes.push(if snapshot {
        "on_failed_boot = revert: the host is rolled back to the pre-migration snapshot and rebooted into it".to_string()
    } else {
        "on_failed_boot = revert, but the safety backup is not a snapshot: the host stays on the new release".to_string()
    });
    snapshot
}

/// The automatic revert: the rollback from the snapshot (which makes its
/// copy the default subvolume, the journal saying `reverted`), then the
/// reboot into it through logind. Ends with the failed verdict as the
/// error, so that the unit shows it.
async fn revert_and_reboot(
    opts: &CleanupOptions,
    root: &Path,
    marker: &PendingReboot,
    verdict: &str,
) -> Result<()> {
    let mut lo = LaunchOptions::new(Verb::Rollback, root.to_path_buf());
    lo.revert = true;
    lo.output = opts.output;
    lo.verbose = opts.verbose;
    if let Err(e) = run::launch(&lo).await {
        return Err(fail(
            ExitCode::StepFailed,
            format!("{verdict}; the automatic revert failed: {e:#}"),
        ));
    }
    // The restored system's first boot confirms the revert: a marker of
    // its own there (its journal says reverted).
    let mut confirm = marker.clone();
    confirm.finished_at = crate::core::event::timestamp(std::time::SystemTime::now());
    let copy = root.join(
        crate::core::kinds::backup::restored_copy(&marker.migration_id).trim_start_matches('/'),
    );
    confirm.write(&copy).exit_code(ExitCode::Environment)?;
    let wall = format!(
        "migrate: the first boot after migration {} is not healthy; rebooting into the system as it was before",
        marker.migration_id
    );
    journald::send(
        Priority::Warning,
        journald::ids::REBOOTING,
        &wall,
        &[("MIGRATE_MIGRATION_ID", marker.migration_id.as_str())],
    );
    super::systemd::reboot(&wall).exit_code(ExitCode::Environment)?;
    Err(fail(
        ExitCode::StepFailed,
        format!("{verdict}; reverted to the pre-migration snapshot, rebooting into it"),
    ))
}

/// Runs the plan's post phase in the migration container; the steps'
/// outcomes go into the migration's report.
async fn post_phase(
    podman: &Podman,
    opts: &CleanupOptions,
    root: &Path,
    marker: &PendingReboot,
    lock: &RootLock,
) -> Result<(Vec<StepReport>, Result<()>)> {
    let (image, labels) = preflight::inspect_image(podman, &marker.image.id).await?;
    preflight::check_protocol(&labels, &marker.image.reference)?;
    let journal = Journal::load(root)
        .exit_code(ExitCode::BadInput)?
        .context("the root has no migration journal")?;
    let prepared = Prepared {
        root: root.to_path_buf(),
        reference: image.id.clone(),
        image,
        plan: Some(marker.plan.clone()),
        source: journal.source,
        target: marker.target.clone(),
        resuming: false,
        pulled: false,
        restored_from: None,
    };
    let mut lo = LaunchOptions::new(Verb::Cleanup, root.to_path_buf());
    lo.output = opts.output;
    lo.verbose = opts.verbose;
    lo.record = Record::LogOnly;
    let (report, result) =
        run::session::run(podman, &lo, &prepared, Some(lock), run::session::Start::New).await;
    Ok((report.steps, result))
}

/// Moves the migration's state to confirmed or failed after its reboot.
/// Gives the host's FleetLock slot back after a confirmed first boot (a
/// note says how it went); after a failed one it stays held, and a note
/// says so. The slot as it now stands, for the journal.
async fn release_slot(
    root: &Path,
    settings: &crate::host::config::FleetLockConfig,
    result: BootResult,
    notes: &mut Vec<String>,
) -> Option<crate::core::journal::FleetLockSlot> {
    use crate::core::journal::SlotState;
    let client = match super::fleetlock::Client::new(root, settings) {
        Ok(c) => c,
        Err(e) => {
            notes.push(format!("FleetLock: {e:#}; the slot was not given back"));
            return None;
        }
    };
    if result == BootResult::Failed {
        notes.push(format!(
            "the FleetLock slot at {} (group {}, id {}) stays held, so that the fleet's rollout stops at this host; give it back once the host is fixed (docs/fleet.md)",
            settings.url,
            settings.group,
            client.slot(SlotState::Held, None).id
        ));
        return None;
    }
    Some(match client.give_back(None).await {
        Ok(released) => {
            notes.push(format!(
                "gave the FleetLock slot back to {} (group {})",
                settings.url, settings.group
            ));
            released
        }
        Err((held, refusal)) => {
            notes.push(format!(
                "the FleetLock slot could not be given back to {} ({refusal}); the next unattended run tries again",
                settings.url
            ));
            held
        }
    })
}

fn record_verdict(
    root: &Path,
    marker: &PendingReboot,
    result: BootResult,
    slot: Option<crate::core::journal::FleetLockSlot>,
) -> Result<()> {
    let Some(mut journal) = Journal::load(root).exit_code(ExitCode::BadInput)? else {
        return Ok(());
    };
    if journal.migration_id != marker.migration_id {
        return Ok(());
    }
    journal
        .advance(match result {
            BootResult::Confirmed => Transition::Confirm,
            BootResult::Failed => Transition::FailBoot,
        })
        .map_err(|e| fail(ExitCode::BadInput, e))?;
    if slot.is_some() {
        journal.fleetlock = slot;
    }
    journal.save(root).exit_code(ExitCode::Environment)
}

/// Removes what the migration left in podman: containers of this root's
/// runs (a crash leaves them), and the image if migrate pulled it.
async fn remove_leftovers(
    podman: &Podman,
    root: &Path,
    marker: &PendingReboot,
    after: &mut AfterReboot,
    problems: &mut Vec<String>,
) {
    match podman
        .containers_with_label(LABEL_ROOT, &root.display().to_string())
        .await
    {
        Ok(names) => {
            for name in names {
                match podman.remove_container(&name).await {
                    Ok(()) => after.removed.push(format!("container {name}")),
                    Err(e) => problems.push(format!("removing container {name}: {e:#}")),
                }
            }
        }
        Err(e) => problems.push(format!("listing leftover containers: {e:#}")),
    }
    if marker.image.pulled {
        match podman.remove_image(&marker.image.id).await {
            Ok(()) => after.removed.push(format!(
                "image {} ({}), pulled by migrate",
                marker.image.reference,
                short(&marker.image.id)
            )),
            Err(e) => after.notes.push(format!(
                "the image migrate pulled, {}, was not removed: {e:#}",
                marker.image.reference
            )),
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Adds the verdict to the migration's report (rebuilt from the marker and
/// the journal if it was lost) and writes it back where it is.
fn finalize_report(
    root: &Path,
    marker: &PendingReboot,
    os: &OsRelease,
    mut after: AfterReboot,
) -> Result<Report> {
    let mut report = match Report::read_run(root, &marker.run_id) {
        Ok(r) => r,
        Err(e) => {
            after.notes.push(format!(
                "the migration's report was unreadable ({e:#}); this one was rebuilt from the reboot marker"
            ));
            let source = Journal::load(root)
                .ok()
                .flatten()
                .map(|j| j.source)
                .unwrap_or_else(|| os.clone());
            Report::new(
                &marker.run_id,
                Verb::Run,
                root,
                marker.image.clone(),
                SourceInfo {
                    release: source.release(),
                    pretty_name: source.pretty_name(),
                },
                marker.target.clone(),
            )
        }
    };
    report.after_reboot = Some(after);
    report.update(root).exit_code(ExitCode::Environment)?;
    Ok(report)
}

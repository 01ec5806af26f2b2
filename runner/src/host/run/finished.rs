//! A finished migration waits for its reboot: the marker that makes
//! `migrate-cleanup.service` run on the next boot, and the reboot itself
//! (now, in the maintenance window, or by someone else).

use std::path::Path;

use anyhow::{Context, Result};

use super::{LaunchOptions, Prepared, Reboot};
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::journal::Journal;
use crate::core::lifecycle::State;
use crate::core::release::OsRelease;
use crate::core::report::Report;
use crate::host::journald::{self, Priority};
use crate::host::pending::PendingReboot;
use crate::host::render::say;

/// The marker of the migration on `root` that finished and waits for its
/// reboot, if there is one (a marker the journal does not confirm is stale
/// and ignored).
pub(crate) fn pending_reboot(root: &Path) -> Result<Option<PendingReboot>> {
    let marker = PendingReboot::read(root).exit_code(ExitCode::BadInput)?;
    let journal = Journal::load(root).exit_code(ExitCode::BadInput)?;
    Ok(marker.filter(|m| {
        journal.is_some_and(|j| j.migration_id == m.migration_id && j.state() == State::Completed)
    }))
}

/// `migrate run` on a root whose migration is finished: nothing to run; the
/// reboot is what is left.
pub(crate) fn finished_migration(
    opts: &LaunchOptions,
    root: &Path,
    marker: &PendingReboot,
) -> Result<()> {
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
pub(crate) fn mark_pending_reboot(p: &Prepared, report: &Report) -> Result<PendingReboot> {
    let journal = Journal::load(&p.root)
        .exit_code(ExitCode::Environment)?
        .filter(|j| j.state() == State::Completed)
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
            crate::host::systemd::failed_units().ok()
        } else {
            None
        },
    };
    marker.write(&p.root).exit_code(ExitCode::Environment)?;
    Ok(marker)
}

/// Reboots into the new release if asked to and, for unattended runs, if
/// the maintenance window is open; otherwise says what happens next.
pub(crate) fn reboot_if_due(
    opts: &LaunchOptions,
    root: &Path,
    marker: &PendingReboot,
) -> Result<()> {
    // Whether the root can boot: in the report, and a problem holds the
    // reboot (the migration stays completed, waiting for it).
    let bootable =
        crate::host::bootable::check(root, marker.live, &marker.plan.health.before_reboot)
            .map_err(|e| {
                fail(
                    ExitCode::Environment,
                    format!("checking the root can boot: {e:#}"),
                )
            })?;
    // Recorded when the outcome changed (a rerun on an unchanged root leaves
    // the report as it was).
    if let Ok(mut report) = Report::read_run(root, &marker.run_id)
        && report.bootable.as_ref().is_none_or(|b| {
            (&b.kernel, &b.problems, &b.notes)
                != (&bootable.kernel, &bootable.problems, &bootable.notes)
        })
    {
        report.bootable = Some(bootable.clone());
        let _ = report.update(root);
    }
    if !bootable.problems.is_empty() {
        let held = format!(
            "{} would not boot into {}: {}",
            root.display(),
            marker.target_name,
            bootable.problems.join("; ")
        );
        journald::send(
            Priority::Warning,
            journald::ids::REBOOT_WAITING,
            &held,
            &[("MIGRATE_RUN_ID", &marker.run_id)],
        );
        let rebooting_now = match &opts.reboot {
            Reboot::Now => true,
            Reboot::InWindow(window) => window.open_now(),
            Reboot::No => false,
        };
        if rebooting_now {
            return Err(fail(
                ExitCode::Inhibited,
                format!("the reboot is held: {held}; fix it, then `migrate run --reboot` reboots"),
            ));
        }
        say(opts.output, &format!("warning: {held}"));
    }
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
        Reboot::Now | Reboot::InWindow(_) => {
            crate::host::reboot::reboot_into(root, marker, opts.output)
        }
    }
}

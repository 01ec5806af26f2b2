//! The reboot into the new release: recorded in the report, the log and the
//! journal, announced to logged-in users, and carried out by logind and
//! systemd (reboot.target: services stopped in order, file systems
//! unmounted), never forced.

use std::path::Path;

use anyhow::Result;

use super::journald::{self, Priority};
use super::pending::PendingReboot;
use super::render::OutputFormat;
use super::runlog::RunLog;
use crate::core::exit::{ExitCode, fail};
use crate::core::report::Report;

/// Asks logind to reboot the host into the release `marker` migrated it to.
pub(crate) fn reboot_into(root: &Path, marker: &PendingReboot, output: OutputFormat) -> Result<()> {
    let line = format!(
        "rebooting into {} to finish migration {} (run {})",
        marker.target_name, marker.migration_id, marker.run_id
    );
    let mut log = RunLog::new(root);
    if log.start_writing().is_ok() {
        log.host(&format!("{line}: asking logind for an orderly reboot"));
    }
    if let Ok(mut report) = Report::read_run(root, &marker.run_id) {
        report.reboot_requested_at =
            Some(crate::core::event::timestamp(std::time::SystemTime::now()));
        let _ = report.update(root);
    }
    journald::send(
        Priority::Notice,
        journald::ids::REBOOTING,
        &line,
        &[
            ("MIGRATE_RUN_ID", marker.run_id.as_str()),
            ("MIGRATE_MIGRATION_ID", marker.migration_id.as_str()),
            ("MIGRATE_TARGET", &marker.target.to_string()),
        ],
    );
    super::render::say(output, &line);
    super::systemd::reboot(&format!("migrate: {line}")).map_err(|e| {
        fail(
            ExitCode::Environment,
            format!("{e:#}; reboot the host yourself to finish the migration"),
        )
    })
}

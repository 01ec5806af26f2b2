//! Prometheus textfile metrics: after every run that records, the host
//! writes `migrate.prom` into the directory the configuration's
//! `metrics_dir` names (node_exporter's textfile collector reads it), so
//! that a fleet sees its migrations in the monitoring it already has.
//!
//! Written like every root path of the host side (inside the root, a
//! temporary file renamed over the old one); a failure to write is a
//! warning, never a failed run.

use std::fmt::Write as _;
use std::path::Path;

use crate::core::journal::Journal;
use crate::core::lifecycle::State;
use crate::core::report::{Report, RunResult};

/// The file written into the metrics directory.
pub(crate) const FILE: &str = "migrate.prom";

/// Writes the metrics of `report` (and of the migration `journal` records)
/// into `dir`, a directory in `root`. Errors are logged, not returned.
pub(crate) fn write(root: &Path, dir: &str, report: &Report, journal: Option<&Journal>) {
    let rel = format!("{}/{FILE}", dir.trim_matches('/'));
    let text = render(report, journal);
    if let Err(e) = crate::core::rootfs::confined::write_atomic(root, &rel, text.as_bytes()) {
        tracing::warn!("writing the metrics {}: {e:#}", root.join(&rel).display());
    }
}

/// The textfile.
pub(crate) fn render(report: &Report, journal: Option<&Journal>) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, labels: &[(&str, String)], value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
        }
    };
    let verb = ("verb", report.verb.name().to_string());
    let ended = report
        .finished_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0.0, |t| t.timestamp() as f64);
    gauge(
        "migrate_last_run_timestamp_seconds",
        "When the last recorded migrate run ended (Unix time).",
        std::slice::from_ref(&verb),
        ended,
    );
    gauge(
        "migrate_last_run_success",
        "Whether the last recorded migrate run succeeded.",
        std::slice::from_ref(&verb),
        f64::from(u8::from(report.result == RunResult::Succeeded)),
    );
    gauge(
        "migrate_last_run_exit_code",
        "The exit code of the last recorded migrate run.",
        std::slice::from_ref(&verb),
        f64::from(report.exit_code.unwrap_or(-1)),
    );
    gauge(
        "migrate_last_run_duration_seconds",
        "How long the last recorded migrate run took.",
        &[verb],
        report.duration_ms.unwrap_or(0) as f64 / 1000.0,
    );
    if let Some(j) = journal {
        let state = j.state();
        gauge(
            "migrate_migration_info",
            "The migration on this root: releases and where it stands (1 for the one recorded).",
            &[
                ("migration", j.migration_id.clone()),
                ("source", j.source.release().to_string()),
                ("target", j.target.to_string()),
                ("state", state_label(state).to_string()),
            ],
            1.0,
        );
        gauge(
            "migrate_reboot_pending",
            "Whether a finished migration waits for its reboot.",
            &[],
            f64::from(u8::from(state == State::Completed)),
        );
        gauge(
            "migrate_migration_confirmed",
            "Whether the first boot after the migration confirmed the new release.",
            &[],
            f64::from(u8::from(state == State::Confirmed)),
        );
        if let Some(slot) = &j.fleetlock {
            use crate::core::journal::SlotState;
            gauge(
                "migrate_fleetlock_slot_held",
                "Whether this host holds a FleetLock reboot slot.",
                &[("group", slot.group.clone())],
                f64::from(u8::from(slot.state == SlotState::Held)),
            );
            gauge(
                "migrate_fleetlock_waiting",
                "Whether the cutover or reboot waits for a FleetLock slot.",
                &[("group", slot.group.clone())],
                f64::from(u8::from(slot.state == SlotState::Waiting)),
            );
        }
    }
    out
}

/// The state's name in the journal (`cutover_started`, ...).
fn state_label(state: State) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| state.name().to_string())
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

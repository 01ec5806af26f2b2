//! `migrate status`: where the current or last migration of a root stands,
//! from the state journal (per step, kept by the agent at every transition)
//! and the last run's report.

use std::path::Path;

use anyhow::Result;

use super::render::OutputFormat;
use crate::core::exit::{ExitCode, WithExitCode};
use crate::core::journal::Journal;
use crate::core::report::{REPORT_PATH, Report};

/// Prints the status of `root`.
pub(crate) fn status(root: &Path, output: OutputFormat) -> Result<()> {
    let (root, _) = super::preflight::inspect_root(root)?;
    let journal = Journal::load(&root).exit_code(ExitCode::BadInput)?;
    let report = if root.join(REPORT_PATH).exists() {
        Some(Report::read(&root).exit_code(ExitCode::BadInput)?)
    } else {
        None
    };
    if output == OutputFormat::Json {
        let value = serde_json::json!({
            "root": root,
            "migration": journal,
            "last_run": report,
        });
        println!("{}", serde_json::to_string(&value)?);
        return Ok(());
    }
    let Some(j) = journal else {
        match report {
            Some(r) => print!("{}", super::render::summary(&r)),
            None => println!("no migration has run on {}", root.display()),
        }
        return Ok(());
    };
    println!(
        "migration {} on {}: {} ({} -> {}, image {})",
        j.migration_id,
        root.display(),
        j.state(),
        j.source.release(),
        j.target,
        j.image.reference
    );
    println!(
        "  {:<22} {:<8} {:<10} {:>8}  FINISHED",
        "STEP", "PHASE", "STATUS", "ATTEMPTS"
    );
    for s in &j.steps {
        println!(
            "  {:<22} {:<8} {:<10} {:>8}  {}{}",
            s.id,
            s.phase.name(),
            serde_json::to_value(s.status)?.as_str().unwrap_or("?"),
            s.attempts,
            s.finished_at.as_deref().unwrap_or("-"),
            s.message
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        );
    }
    if !j.applications.is_empty() {
        println!(
            "  {:<22} {:<13} {:>5}  SINCE",
            "APPLICATION", "PHASE", "SYNCS"
        );
        for (name, a) in &j.applications {
            println!(
                "  {:<22} {:<13} {:>5}  {}",
                name,
                a.phase.name(),
                a.syncs,
                a.since.as_deref().unwrap_or("-")
            );
        }
    }
    if let Some(b) = &j.backup {
        println!(
            "  backup: {} at {} ({}){}",
            b.method,
            b.location,
            b.created_at,
            b.post_cutover
                .as_deref()
                .map(|p| format!("; after the cutover: {p}"))
                .unwrap_or_default()
        );
    }
    if let Some(f) = &j.fleetlock {
        println!(
            "  FleetLock slot: {} since {} ({} group {} as {}){}",
            serde_json::to_value(f.state)?.as_str().unwrap_or("?"),
            f.since,
            f.server,
            f.group,
            f.id,
            f.answer
                .as_deref()
                .map(|a| format!(": {a}"))
                .unwrap_or_default()
        );
    }
    if let Some(r) = report {
        println!(
            "  last run {} ({}): {}{}",
            r.run_id,
            r.verb.name(),
            serde_json::to_value(r.result)?.as_str().unwrap_or("?"),
            r.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

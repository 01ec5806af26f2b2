//! The end of a run: what the agent's exit means, the report finished and
//! written, the summary, the journal message, the error the user sees.

use std::path::Path;

use anyhow::Result;

use super::LaunchOptions;
use super::Record;
use super::session::Session;
use crate::core::event::Verb;
use crate::core::exit::{ExitCode, fail};
use crate::core::report::{Report, RunResult};
use crate::host::journald::{self, Priority};
use crate::host::podman::ContainerOutcome;
use crate::host::render::OutputFormat;

impl Session<'_> {
    /// Ends the run: the report finished from the container's `outcome`,
    /// written where the run records, the summary or the JSON document
    /// printed; the error carries the exit code.
    pub(crate) fn conclude(
        self,
        opts: &LaunchOptions,
        outcome: Result<ContainerOutcome>,
        check_json: bool,
    ) -> (Report, Result<()>) {
        let root = self.root;
        let mut session = self;
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
        if opts.verb.changes_root() {
            session.report.safety_backup = crate::core::journal::Journal::load(root)
                .ok()
                .flatten()
                .and_then(|j| j.backup);
        }
        if let Some(slot) = &opts.fleetlock {
            session.report.fleetlock = Some(slot.clone());
            crate::host::fleetlock::record(root, slot);
        }
        let (stops, starts) = std::mem::take(&mut session.service_steps);
        session.report.measure_downtime(&stops, &starts);
        let run_id = session.report.run_id.clone();
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
        if wrote && let Some(dir) = &opts.metrics_dir {
            let journal = crate::core::journal::Journal::load(root).ok().flatten();
            crate::host::metrics::write(root, dir, &session.report, journal.as_ref());
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
            print!("{}", crate::host::render::summary(&session.report));
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
}

/// The structured fields of every journal message about a run.
pub(crate) fn journal_fields<'a>(
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
}

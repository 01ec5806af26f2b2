//! Showing a run to the person (or program) that started it.
//!
//! - On a terminal: a live status line (step, elapsed time, progress, last
//!   output line) and one line per finished step.
//! - Not on a terminal: plain lines, every output line of every tool.
//! - `--output json`: the agent's events as JSON lines, unchanged; text the
//!   agent printed outside the protocol is wrapped as `output` events.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::core::event::{
    Envelope, Event, OutputStream, PlannedStep, RunStatus, Severity, StepStatus,
};
use crate::core::report::{BootResult, Report, RunResult};

/// `--output`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutputFormat {
    /// For people: a live display on a terminal, plain lines otherwise.
    Human,
    /// JSON lines, one event per line.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Live,
    Plain,
    Json,
    Quiet,
}

struct Current {
    id: String,
    index: usize,
    started: Instant,
    last_line: String,
    percent: Option<f32>,
}

/// Renders events to standard output.
pub(crate) struct Renderer {
    mode: Mode,
    verbose: u8,
    steps: Vec<PlannedStep>,
    current: Option<Current>,
    status_shown: bool,
    last_draw: Option<Instant>,
}

impl Renderer {
    /// A renderer for `format`; `terminal` says whether stdout is a terminal.
    pub(crate) fn new(format: OutputFormat, verbose: u8, terminal: bool) -> Self {
        let mode = match (format, terminal) {
            (OutputFormat::Json, _) => Mode::Json,
            (OutputFormat::Human, true) => Mode::Live,
            (OutputFormat::Human, false) => Mode::Plain,
        };
        Self {
            mode,
            verbose,
            steps: Vec::new(),
            current: None,
            status_shown: false,
            last_draw: None,
        }
    }

    /// A renderer that shows nothing (the caller prints a result at the end).
    pub(crate) fn quiet(mut self) -> Self {
        self.mode = Mode::Quiet;
        self
    }

    /// A message of the host itself.
    pub(crate) fn note(&mut self, message: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => self.json(&Envelope::now(Event::Output {
                step: None,
                stream: OutputStream::Stderr,
                line: format!("migrate: {message}"),
            })),
            Mode::Live | Mode::Plain => self.println(message),
        }
    }

    /// A line the agent printed outside the event protocol (its own
    /// diagnostics on stderr, or a crash message).
    pub(crate) fn raw(&mut self, stream: OutputStream, line: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => self.json(&Envelope::now(Event::Output {
                step: None,
                stream,
                line: line.to_string(),
            })),
            Mode::Plain => self.println(&format!("agent: {line}")),
            Mode::Live => {
                if self.verbose > 0 {
                    self.println(&format!("agent: {line}"));
                }
            }
        }
    }

    /// An event of the agent.
    pub(crate) fn event(&mut self, env: &Envelope) {
        match self.mode {
            Mode::Json => return self.json(env),
            Mode::Quiet => return,
            Mode::Live | Mode::Plain => {}
        }
        match &env.event {
            Event::RunStarted {
                run_id,
                verb,
                resumed,
                source,
                target,
                steps,
            } => {
                self.steps.clone_from(steps);
                self.println(&format!(
                    "{} {run_id}: {source} -> {target}, {} steps{}",
                    verb.name(),
                    steps.len(),
                    if *resumed {
                        ", continuing an interrupted migration"
                    } else {
                        ""
                    }
                ));
            }
            Event::Finding { finding, .. } => {
                let label = match finding.severity {
                    crate::core::event::Severity::Inhibitor => "INHIBITOR",
                    crate::core::event::Severity::Warning => "warning",
                    crate::core::event::Severity::Info => "info",
                };
                self.println(&format!("  {label}: {}", finding.message));
                self.println(&format!("           {}", finding.hint));
            }
            Event::StepStarted { step } => {
                let index = self.steps.iter().position(|s| &s.id == step).unwrap_or(0);
                if self.mode == Mode::Plain {
                    let desc = self
                        .steps
                        .get(index)
                        .map(|s| s.description.as_str())
                        .unwrap_or("");
                    self.println(&format!(
                        "==> [{}/{}] {step}: {desc}",
                        index + 1,
                        self.steps.len()
                    ));
                }
                self.current = Some(Current {
                    id: step.clone(),
                    index,
                    started: Instant::now(),
                    last_line: String::new(),
                    percent: None,
                });
                self.draw(true);
            }
            Event::Output { step, line, stream } => match self.mode {
                Mode::Plain => {
                    let prefix = step.as_deref().unwrap_or("agent");
                    self.println(&format!("    [{prefix}] {line}"));
                }
                _ => {
                    if self.verbose > 0 {
                        self.println(&format!("    {line}"));
                    }
                    if *stream == OutputStream::Stdout || step.is_some() {
                        if let Some(c) = &mut self.current {
                            c.last_line.clone_from(line);
                        }
                    }
                    self.draw(false);
                }
            },
            Event::Progress {
                percent, message, ..
            } => {
                if let Some(c) = &mut self.current {
                    c.percent = Some(*percent);
                    c.last_line.clone_from(message);
                }
                self.draw(false);
            }
            Event::StepFinished {
                step,
                status,
                duration_ms,
                message,
                ..
            } => {
                let took = human_duration_ms(*duration_ms);
                let line = match (status, self.mode) {
                    (StepStatus::Succeeded, Mode::Live) => format!("  ✓ {step} ({took})"),
                    (StepStatus::Skipped, Mode::Live) => {
                        format!("  - {step} (nothing to do, {took})")
                    }
                    (StepStatus::Failed, Mode::Live) => format!(
                        "  ✗ {step} failed after {took}: {}",
                        message.as_deref().unwrap_or("")
                    ),
                    (StepStatus::Succeeded, _) => format!("<== {step} succeeded in {took}"),
                    (StepStatus::Skipped, _) => format!("<== {step} had nothing to do ({took})"),
                    (StepStatus::Failed, _) => format!(
                        "<== {step} FAILED after {took}: {}",
                        message.as_deref().unwrap_or("")
                    ),
                };
                self.current = None;
                self.println(&line);
            }
            Event::RunFinished {
                status, message, ..
            } => {
                self.current = None;
                let line = match status {
                    RunStatus::Succeeded => "run succeeded".to_string(),
                    RunStatus::Failed => {
                        format!(
                            "run failed: {}",
                            message.as_deref().unwrap_or("see the log")
                        )
                    }
                };
                self.println(&line);
            }
        }
    }

    /// Redraws the status line (elapsed time moves on even without output).
    pub(crate) fn tick(&mut self) {
        self.draw(true);
    }

    /// Clears the status line.
    pub(crate) fn finish(&mut self) {
        self.clear_status();
    }

    fn draw(&mut self, force: bool) {
        if self.mode != Mode::Live {
            return;
        }
        let Some(c) = &self.current else { return };
        let now = Instant::now();
        if !force
            && self
                .last_draw
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        let elapsed =
            human_duration_ms(u64::try_from(c.started.elapsed().as_millis()).unwrap_or(0));
        let percent = c.percent.map(|p| format!(" {p:>3.0}%")).unwrap_or_default();
        let mut line = format!(
            "[{}/{}] {}  {elapsed}{percent}  {}",
            c.index + 1,
            self.steps.len().max(c.index + 1),
            c.id,
            c.last_line.trim()
        );
        let width = terminal_size::terminal_size()
            .map(|(w, _)| usize::from(w.0))
            .unwrap_or(80)
            .saturating_sub(1);
        if line.chars().count() > width {
            line = line.chars().take(width).collect();
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
        self.status_shown = true;
    }

    fn clear_status(&mut self) {
        if self.status_shown {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
            self.status_shown = false;
        }
    }

    fn println(&mut self, line: &str) {
        self.clear_status();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        self.draw(true);
    }

    fn json(&mut self, env: &Envelope) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", env.encode());
        let _ = out.flush();
    }
}

/// A message of the host outside a run's rendering: a plain line, or with
/// `--output json` an `output` event, so that every line of stdout is JSON.
/// `text` safe for a terminal and on one line: control characters (a
/// newline, an escape sequence from a root's file) shown escaped.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(crate) fn say(output: OutputFormat, message: &str) {
    match output {
        OutputFormat::Human => println!("{}", printable(message)),
        OutputFormat::Json => {
            let env = Envelope::now(Event::Output {
                step: None,
                stream: OutputStream::Stderr,
                line: format!("migrate: {message}"),
            });
            if let Ok(line) = serde_json::to_string(&env) {
                println!("{line}");
            }
        }
    }
}

/// An image as a user named it, with the manifest digest it resolved to
/// unless the name already says it (a channel tag shows what it is today).
pub(crate) fn image_shown(reference: &str, digest: Option<&str>) -> String {
    match digest {
        Some(d) if !reference.ends_with(d) => format!("{reference} ({d})"),
        _ => reference.to_string(),
    }
}

/// A human summary of a report: the run on one line, then one line per step.
pub(crate) fn summary(report: &Report) -> String {
    let mut out = format!(
        "run {}: {} -> {} with {}: {}\n",
        report.run_id,
        report.source.release,
        report.target,
        image_shown(&report.image.reference, report.image.digest.as_deref()),
        match report.result {
            RunResult::Running => "running",
            RunResult::Succeeded => "succeeded",
            RunResult::Failed => "FAILED",
            RunResult::Inhibited => "STOPPED by a check",
            RunResult::Interrupted => "INTERRUPTED",
        }
    );
    for s in &report.steps {
        let took = s
            .duration_ms
            .map(|ms| format!(" in {}", human_duration_ms(ms)))
            .unwrap_or_default();
        let status = serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!("  {:<24} {status}{took}", s.id));
        if let Some(m) = &s.message {
            out.push_str(&format!(": {m}"));
        }
        out.push('\n');
    }
    for f in &report.findings {
        out.push_str(&format!(
            "  {:<9} {}: {}\n            {}\n",
            match f.finding.severity {
                Severity::Inhibitor => "INHIBITOR",
                Severity::Warning => "warning",
                Severity::Info => "info",
            },
            f.finding.id,
            f.finding.message,
            f.finding.hint
        ));
    }
    if let Some(t) = &report.reboot_requested_at {
        out.push_str(&format!("  reboot requested at {t}\n"));
    }
    if let Some(a) = &report.after_reboot {
        out.push_str(&format!(
            "  first boot: {} ({}){}\n",
            match a.result {
                BootResult::Confirmed => "confirmed",
                BootResult::Failed => "FAILED",
            },
            a.running.pretty_name,
            a.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// `1.2s`, `3m05s`, `1h02m`.
pub(crate) fn human_duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("plain — text"), "plain — text");
        assert_eq!(printable("a\nb\u{1b}[31mc"), "a\\nb\\u{1b}[31mc");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration_ms(1234), "1.2s");
        assert_eq!(human_duration_ms(65_000), "1m05s");
        assert_eq!(human_duration_ms(3_720_000), "1h02m");
    }
}

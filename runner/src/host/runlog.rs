//! The full log of a run, `ROOT/var/log/migrate/migrate.log`: every line any
//! tool printed, with time and step, plus what the host did. Appended to, so
//! the log of an interrupted run and of its resumption stay together.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::core::event::{Envelope, Event, OutputStream, timestamp};
use crate::core::report::LOG_PATH;

/// A run log. Lines are kept in memory until [`RunLog::start_writing`]: a run
/// that stops before changing anything leaves no log in the root.
pub(crate) struct RunLog {
    file: Option<File>,
    pending: Vec<String>,
    root: PathBuf,
    path: PathBuf,
}

impl RunLog {
    /// A log for `root`, not written yet.
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            file: None,
            pending: Vec::new(),
            root: root.to_path_buf(),
            path: root.join(LOG_PATH),
        }
    }

    /// Opens (creates) the log file for appending and writes what was kept.
    pub(crate) fn start_writing(&mut self) -> Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        // Inside the root whatever its symlinks say, never through one.
        let mut file = crate::core::rootfs::confined::append(&self.root, LOG_PATH)?;
        for line in self.pending.drain(..) {
            let _ = writeln!(file, "{line}");
        }
        self.file = Some(file);
        Ok(())
    }

    /// Whether the log is being written to the root.
    pub(crate) fn writing(&self) -> bool {
        self.file.is_some()
    }

    /// Where the log is (or would be).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A line from the host.
    pub(crate) fn host(&mut self, message: &str) {
        let ts = timestamp(std::time::SystemTime::now());
        self.write(&format!("{ts} [migrate] {message}"));
    }

    /// A line the agent printed outside the event protocol.
    pub(crate) fn raw(&mut self, stream: OutputStream, line: &str) {
        let ts = timestamp(std::time::SystemTime::now());
        let tag = match stream {
            OutputStream::Stdout => "agent",
            OutputStream::Stderr => "agent stderr",
        };
        self.write(&format!("{ts} [{tag}] {line}"));
    }

    /// An agent event (progress events are not logged: they repeat the output).
    pub(crate) fn event(&mut self, env: &Envelope) {
        let text = match &env.event {
            Event::RunStarted {
                run_id,
                verb,
                resumed,
                source,
                target,
                steps,
            } => format!(
                "[agent] {} {run_id}{}: {source} -> {target}; steps: {}",
                verb.name(),
                if *resumed { " (resumed)" } else { "" },
                steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::Finding { step, finding } => format!(
                "[{step}] {:?} {}: {} ({})",
                finding.severity, finding.id, finding.message, finding.hint
            ),
            Event::StepStarted { step } => format!("[{step}] step started"),
            Event::Output { step, line, .. } => {
                format!("[{}] {line}", step.as_deref().unwrap_or("agent"))
            }
            Event::Progress { .. } => return,
            Event::StepFinished {
                step,
                status,
                duration_ms,
                message,
                ..
            } => format!(
                "[{step}] step {status:?} after {duration_ms} ms{}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            Event::RunFinished {
                status,
                message,
                peak_rss_kb,
            } => format!(
                "[agent] run {status:?}{}{}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
                peak_rss_kb
                    .map(|kb| format!(" (agent peak memory {:.1} MB)", kb as f64 / 1024.0))
                    .unwrap_or_default()
            ),
        };
        self.write(&format!("{} {text}", env.ts));
    }

    fn write(&mut self, line: &str) {
        match &mut self.file {
            // The log must not stop the run; a full disk shows up elsewhere.
            Some(f) => {
                let _ = writeln!(f, "{line}");
            }
            None => self.pending.push(line.to_string()),
        }
    }
}

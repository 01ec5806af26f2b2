//! The full log of a run, `ROOT/var/log/migrate/migrate.log`: every line any
//! tool printed, with time and step, plus what the host did. Appended to, so
//! the log of an interrupted run and of its resumption stay together.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::event::{Envelope, Event, OutputStream, timestamp};
use crate::report::LOG_PATH;

/// An open run log.
pub struct RunLog {
    file: File,
    path: PathBuf,
}

impl RunLog {
    /// Opens (creates) the log under `root` for appending.
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join(LOG_PATH);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file, path })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A line from the host.
    pub fn host(&mut self, message: &str) {
        let ts = timestamp(std::time::SystemTime::now());
        self.write(&format!("{ts} [migrate] {message}"));
    }

    /// A line the agent printed outside the event protocol.
    pub fn raw(&mut self, stream: OutputStream, line: &str) {
        let ts = timestamp(std::time::SystemTime::now());
        let tag = match stream {
            OutputStream::Stdout => "agent",
            OutputStream::Stderr => "agent stderr",
        };
        self.write(&format!("{ts} [{tag}] {line}"));
    }

    /// An agent event (progress events are not logged: they repeat the output).
    pub fn event(&mut self, env: &Envelope) {
        let text = match &env.event {
            Event::RunStarted {
                run_id,
                source,
                target,
                steps,
            } => format!(
                "[agent] run {run_id}: {source} -> {target}; steps: {}",
                steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
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
            } => format!(
                "[{step}] step {status:?} after {duration_ms} ms{}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            Event::RunFinished { status, message } => format!(
                "[agent] run {status:?}{}",
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        };
        self.write(&format!("{} {text}", env.ts));
    }

    fn write(&mut self, line: &str) {
        // The log must not stop the run; a full disk shows up elsewhere.
        let _ = writeln!(self.file, "{line}");
    }
}

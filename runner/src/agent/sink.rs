//! Where the agent's events go: JSON lines on standard output, read by the host.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::core::event::{Envelope, Event, OutputStream};

/// Writes events, one JSON line each, and flushes after every line so that the
/// host sees them live. Shared by the threads that read a tool's output.
#[derive(Clone)]
pub(crate) struct EventSink {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Strings that never leave the agent (passwords): replaced in every
    /// event before it is written.
    secrets: Arc<Mutex<Vec<String>>>,
}

impl EventSink {
    /// A sink writing to standard output.
    pub(crate) fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// A sink writing to any writer.
    pub(crate) fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            secrets: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Registers a secret: from now on it is shown as `********` wherever a
    /// tool prints it (a password in an error message, say).
    pub(crate) fn add_secret(&self, secret: &str) {
        if !secret.is_empty() {
            self.secrets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(secret.to_string());
        }
    }

    /// Emits one event.
    pub(crate) fn emit(&self, event: Event) {
        let mut line = Envelope::now(event).encode();
        for secret in self
            .secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            // Match the secret as it appears inside a JSON string.
            let encoded = serde_json::to_string(secret).unwrap_or_default();
            let inner = encoded.trim_matches('"');
            if !inner.is_empty() {
                line = line.replace(inner, "********");
            }
        }
        // A poisoned lock only means another thread panicked mid-write; the
        // writer itself is still usable. If the host went away there is nobody
        // to tell, so write errors are ignored.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Emits a line of output belonging to `step`.
    pub(crate) fn output(&self, step: &str, stream: OutputStream, line: impl Into<String>) {
        self.emit(Event::Output {
            step: Some(step.to_string()),
            stream,
            line: line.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_the_host() {
        let cap = Captured::default();
        let sink = EventSink::to_writer(Box::new(cap.clone()));
        sink.add_secret("s3cr\"et");
        sink.output(
            "db",
            crate::core::event::OutputStream::Stderr,
            "password s3cr\"et rejected",
        );
        sink.emit(Event::RunFinished {
            status: crate::core::event::RunStatus::Failed,
            message: Some("auth failed for s3cr\"et".into()),
            peak_rss_kb: None,
        });
        let text = String::from_utf8_lossy(&cap.0.lock().unwrap()).into_owned();
        assert!(!text.contains("s3cr"), "{text}");
        assert_eq!(text.matches("********").count(), 2, "{text}");
    }
}

/// An in-memory writer for tests: everything written, shared.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(pub Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl Captured {
    /// The events written so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| Envelope::decode(l).unwrap().event)
            .collect()
    }
}

//! Where the agent's events go: JSON lines on standard output, read by the host.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::event::{Envelope, Event, OutputStream};

/// Writes events, one JSON line each, and flushes after every line so that the
/// host sees them live. Shared by the threads that read a tool's output.
#[derive(Clone)]
pub struct EventSink {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl EventSink {
    /// A sink writing to standard output.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// A sink writing to any writer.
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Emits one event.
    pub fn emit(&self, event: Event) {
        let line = Envelope::now(event).encode();
        // A poisoned lock only means another thread panicked mid-write; the
        // writer itself is still usable. If the host went away there is nobody
        // to tell, so write errors are ignored.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Emits a line of output belonging to `step`.
    pub fn output(&self, step: &str, stream: OutputStream, line: impl Into<String>) {
        self.emit(Event::Output {
            step: Some(step.to_string()),
            stream,
            line: line.into(),
        });
    }
}

/// An in-memory writer for tests: everything written, shared.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

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
    pub fn events(&self) -> Vec<Event> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| Envelope::decode(l).unwrap().event)
            .collect()
    }
}

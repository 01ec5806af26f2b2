//! Structured messages to the systemd journal, on hosts that run it: the
//! native protocol (`KEY=value` lines in a datagram to
//! `/run/systemd/journal/socket`), so that each message carries the run id
//! and a message id a monitoring system can match on.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The journal's native socket.
const SOCKET: &str = "/run/systemd/journal/socket";

/// Message ids (128-bit, as `journalctl MESSAGE_ID=...` matches them).
pub(crate) mod ids {
    /// A run started.
    pub(crate) const STARTED: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c01";
    /// A run finished successfully.
    pub(crate) const FINISHED: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c02";
    /// A run failed (a step, or the environment).
    pub(crate) const FAILED: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c03";
    /// A check found an inhibitor; nothing was changed.
    pub(crate) const INHIBITED: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c04";
    /// migrate asked logind to reboot.
    pub(crate) const REBOOTING: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c05";
    /// A finished migration waits for the maintenance window to reboot.
    pub(crate) const REBOOT_WAITING: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c07";
    /// The first boot after a migration was checked.
    pub(crate) const CLEANUP: &str = "6d1f1c1d4b7a4c0f9a9d1b0e3f2a5c06";
}

/// Syslog-style priorities.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Priority {
    /// 3
    Error = 3,
    /// 4
    Warning = 4,
    /// 5
    Notice = 5,
    /// 6
    Info = 6,
}

/// Whether the journal listens on this host. Runs started by hand are
/// recorded too: who migrated or rebooted the host belongs in its journal.
pub(crate) fn available() -> bool {
    Path::new(SOCKET).exists()
}

/// Whether this process is a systemd service (its standard output already
/// goes to the journal).
pub(crate) fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

/// Whether this process sent a message to the journal.
static SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Before the process exits: journald attributes a message to its unit
/// (`_SYSTEMD_UNIT`) from the sender's cgroup, which it reads while the
/// sender lives; a message sent just before exiting can lose its unit. Under
/// systemd, after sending, stay a moment.
pub(crate) fn linger() {
    if under_systemd() && SENT.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Sends one message with `fields` (`MIGRATE_RUN_ID`, ...); does nothing when
/// journald does not listen. Failures are ignored: the journal is a second channel.
pub(crate) fn send<V: AsRef<str>>(
    priority: Priority,
    message_id: &str,
    message: &str,
    fields: &[(&str, V)],
) {
    if !available() {
        return;
    }
    let mut datagram = Vec::new();
    field(&mut datagram, "MESSAGE", message);
    field(&mut datagram, "MESSAGE_ID", message_id);
    field(&mut datagram, "PRIORITY", &(priority as u8).to_string());
    field(&mut datagram, "SYSLOG_IDENTIFIER", "migrate");
    for (k, v) in fields {
        field(&mut datagram, k, v.as_ref());
    }
    if let Ok(socket) = UnixDatagram::unbound()
        && socket.send_to(&datagram, SOCKET).is_ok()
    {
        SENT.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Appends one field: `KEY=value\n`, or for values with a newline the
/// length-prefixed binary form the protocol defines.
fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    } else {
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_native_protocol() {
        let mut out = Vec::new();
        field(&mut out, "MESSAGE", "one line");
        assert_eq!(out, b"MESSAGE=one line\n");
        let mut out = Vec::new();
        field(&mut out, "MESSAGE", "two\nlines");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(out, want);
    }
}

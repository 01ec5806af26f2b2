//! The plan's `[health]` checks on the first boot after a migration: units
//! that must be active, commands that must succeed, TCP ports that must
//! answer. Tried again every two seconds until all pass or the plan's grace
//! period ends; the last try is the verdict.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::core::plan::Health;
use crate::core::plan::health::split_port;
use crate::core::report::HealthCheck;

/// Between two tries.
const RETRY: Duration = Duration::from_secs(2);
/// The longest a command may run in one try.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection may take in one try.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Tries the checks until all pass or the grace period ends; the last try.
pub(crate) fn judge(health: &Health) -> Vec<HealthCheck> {
    let deadline = Instant::now() + health.grace();
    loop {
        let results = try_once(health);
        let now = Instant::now();
        if results.iter().all(|r| r.passed) || now >= deadline {
            return results;
        }
        std::thread::sleep(RETRY.min(deadline - now));
    }
}

fn try_once(health: &Health) -> Vec<HealthCheck> {
    let mut out = Vec::new();
    for unit in &health.units {
        let (passed, detail) = match super::systemd::active_state(unit) {
            Ok(state) => (state == "active", state),
            Err(e) => (false, format!("{e:#}")),
        };
        out.push(HealthCheck {
            check: format!("unit {unit}"),
            passed,
            detail,
        });
    }
    for command in &health.commands {
        let (passed, detail) = run(command);
        out.push(HealthCheck {
            check: format!("command {}", command.join(" ")),
            passed,
            detail,
        });
    }
    for port in &health.ports {
        let (passed, detail) = connect(port);
        out.push(HealthCheck {
            check: format!("port {port}"),
            passed,
            detail,
        });
    }
    out
}

/// Runs a command with no input, killed after [`COMMAND_TIMEOUT`].
fn run(command: &[String]) -> (bool, String) {
    let Some((program, args)) = command.split_first() else {
        return (false, "empty command".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {program}: {e}")),
    };
    // Read stderr on the side, so that a chatty command cannot block.
    let stderr = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < COMMAND_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let said = stderr
        .and_then(|t| t.join().ok())
        .map(|t| crate::core::cmd::stderr_tail(&t))
        .unwrap_or_default();
    match status {
        Some(s) if s.success() => (true, "exit status 0".into()),
        Some(s) => (false, format!("{s}{said}")),
        None => (
            false,
            format!("killed after {} s{said}", COMMAND_TIMEOUT.as_secs()),
        ),
    }
}

/// Connects to `HOST:PORT` (each address the host name resolves to).
fn connect(address: &str) -> (bool, String) {
    let (host, port) = match split_port(address) {
        Ok(hp) => hp,
        Err(e) => return (false, e),
    };
    let addrs = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return (false, format!("cannot resolve {host}: {e}")),
    };
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return (true, format!("{addr} accepted a connection")),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    (false, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_ports_are_judged_and_failures_say_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        // A port nothing listens on: one just given back.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let health = Health {
            grace_seconds: Some(0),
            units: vec![],
            commands: vec![
                vec!["true".into()],
                vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()],
                vec!["/nonexistent/program".into()],
            ],
            ports: vec![open.clone(), closed.clone()],
            before_reboot: vec![],
        };
        let r = judge(&health);
        let by = |check: &str| r.iter().find(|c| c.check == check).unwrap().clone();
        assert!(by("command true").passed);
        let failed = by("command sh -c echo broken >&2; exit 3");
        assert!(!failed.passed);
        assert!(
            failed.detail.contains("exit status: 3: broken"),
            "{failed:?}"
        );
        assert!(
            by("command /nonexistent/program")
                .detail
                .contains("cannot run /nonexistent/program")
        );
        assert!(by(&format!("port {open}")).passed);
        let refused = by(&format!("port {closed}"));
        assert!(
            !refused.passed && refused.detail.contains("refused"),
            "{refused:?}"
        );
    }

    #[test]
    fn checks_are_tried_again_until_they_pass_within_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ready");
        let later = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            std::fs::write(later, "").unwrap();
        });
        let health = Health {
            grace_seconds: Some(20),
            commands: vec![vec!["test".into(), "-e".into(), flag.display().to_string()]],
            ..Health::default()
        };
        let r = judge(&health);
        assert!(r[0].passed, "{r:?}");
    }
}

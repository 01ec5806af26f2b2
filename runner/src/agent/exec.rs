//! Running a step's tools with their output streamed to the host as events.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::sink::EventSink;
use crate::core::cmd::{CommandExt, stderr_tail};
use crate::core::event::{Event, OutputStream};

/// Turns a line of a tool's standard output into a progress event instead of
/// an output line (`None`: an ordinary line).
pub(crate) type ProgressParser = dyn Fn(&str) -> Option<(f32, String)> + Sync;

/// Runs `cmd`, streaming each line of its stdout and stderr as an `output`
/// event of `step`; lines recognized by `progress` become `progress` events.
/// Fails unless the command exits with status 0; the error names the command
/// and ends with the last lines of its stderr.
pub(crate) fn run_streaming(
    cmd: &mut Command,
    sink: &EventSink,
    step: &str,
    progress: Option<&ProgressParser>,
) -> Result<()> {
    run_streaming_with(
        cmd,
        sink,
        step,
        &Streaming {
            progress,
            ..Streaming::default()
        },
    )
    .map(|_| ())
}

/// A tool that ended unsuccessfully: what the failure message says, plus the
/// exit code for callers that interpret it (zypper's, for one).
#[derive(Debug, thiserror::Error)]
#[error("{tool} failed ({status}){detail}")]
pub(crate) struct ToolFailed {
    /// The tool's name.
    pub(crate) tool: String,
    /// How it ended, as the OS says it.
    pub(crate) status: String,
    /// Its exit code, if it exited.
    pub(crate) code: Option<i32>,
    /// `": "` and the lines that explain the failure, or nothing.
    pub(crate) detail: String,
}

/// Options of [`run_streaming_with`].
#[derive(Default)]
pub(crate) struct Streaming<'a> {
    /// Progress lines on stdout.
    pub(crate) progress: Option<&'a ProgressParser>,
    /// Kill the command (SIGKILL) after this long.
    pub(crate) timeout: Option<Duration>,
    /// Exit codes that count as success (empty: only 0).
    pub(crate) ok_exit_codes: &'a [i32],
    /// Lines (of either stream) that explain a failure better than the tail
    /// of stderr, e.g. a solver's "Problem:" lines; a failure names the first
    /// two instead of the tail.
    pub(crate) notable: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
}

/// [`run_streaming`] with a timeout and accepted exit codes; returns the exit
/// code.
pub(crate) fn run_streaming_with(
    cmd: &mut Command,
    sink: &EventSink,
    step: &str,
    opts: &Streaming<'_>,
) -> Result<i32> {
    let progress = opts.progress;
    let line = cmd.display();
    tracing::debug!(command = %line, "running");
    sink.output(step, OutputStream::Stderr, format!("$ {line}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let stderr = child.stderr.take().context("child stderr")?;
    let tail = Arc::new(Mutex::new(String::new()));
    let notable_lines = Mutex::new(Vec::<String>::new());
    let remember = |l: &str| {
        if opts.notable.is_some_and(|n| n(l)) {
            let mut n = notable_lines.lock().unwrap_or_else(|p| p.into_inner());
            if n.len() < 20 {
                n.push(l.trim().to_string());
            }
        }
    };
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));

    std::thread::scope(|scope| {
        if let Some(limit) = opts.timeout {
            let timed_out = Arc::clone(&timed_out);
            scope.spawn(move || {
                if finished.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                    timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            });
        }
        let tail = Arc::clone(&tail);
        let remember = &remember;
        scope.spawn(move || {
            for_each_line(stderr, |l| {
                remember(l);
                sink.output(step, OutputStream::Stderr, l);
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.push_str(l);
                t.push('\n');
                // Keep the buffer bounded; only the tail is ever reported.
                if t.len() > 16 * 1024 {
                    let cut = t.len() - 8 * 1024;
                    let cut = (cut..t.len())
                        .find(|i| t.is_char_boundary(*i))
                        .unwrap_or(cut);
                    t.drain(..cut);
                }
            });
        });
        for_each_line(stdout, |l| {
            if stdout_event(sink, step, progress, l) {
                remember(l);
            }
        });
        let status = child.wait();
        let _ = done.send(());
        status
    })
    .map_err(|e| anyhow::anyhow!("waiting for {}: {e}", tool_name(cmd)))
    .and_then(|status| {
        let t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            bail!(
                "{} did not finish within {}s and was killed{}",
                tool_name(cmd),
                opts.timeout.map(|d| d.as_secs()).unwrap_or_default(),
                stderr_tail(&t)
            );
        }
        let code = status.code();
        let ok = match code {
            Some(c) if opts.ok_exit_codes.is_empty() => c == 0,
            Some(c) => opts.ok_exit_codes.contains(&c),
            None => false,
        };
        if !ok {
            let notable = notable_lines.lock().unwrap_or_else(|p| p.into_inner());
            let why = crate::core::cmd::failure_detail(notable.iter().map(String::as_str), &t);
            return Err(ToolFailed {
                tool: tool_name(cmd),
                status: status.to_string(),
                code,
                detail: why,
            }
            .into());
        }
        Ok(code.unwrap_or(0))
    })
}

/// Emits a line of a tool's stdout as an event of `step`: a `progress`
/// event if `progress` recognizes it, else an `output` line. Whether it
/// was an output line.
pub(crate) fn stdout_event(
    sink: &EventSink,
    step: &str,
    progress: Option<&ProgressParser>,
    line: &str,
) -> bool {
    match progress.and_then(|p| p(line)) {
        Some((percent, message)) => {
            sink.emit(Event::Progress {
                step: step.to_string(),
                percent,
                message,
            });
            false
        }
        None => {
            sink.output(step, OutputStream::Stdout, line);
            true
        }
    }
}

/// The tool a command runs, seen through `chroot ROOT` and
/// `sh -c SCRIPT NAME` wrappers: `apt-get` rather than `chroot`. The whole
/// command line is in the log already (the `$ ...` line).
fn tool_name(cmd: &Command) -> String {
    let mut words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned());
    let mut program = words.next().unwrap_or_default();
    loop {
        let base = program.rsplit('/').next().unwrap_or_default().to_string();
        match base.as_str() {
            "chroot" => {
                let _root = words.next();
                program = words.next().unwrap_or(base);
            }
            "sh" | "bash" => {
                let mut rest = words.by_ref().skip_while(|w| w != "-c").skip(1);
                let _script = rest.next();
                return rest.next().unwrap_or(base);
            }
            _ => return base,
        }
    }
}

/// Calls `f` with each line `reader` produces. A line ends with `\n` or with a
/// `\r` (progress meters redraw their line with carriage returns; each
/// redraw is a line). Empty lines from `\r\n` endings are not reported.
pub(crate) fn for_each_line(reader: impl Read, mut f: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut after_cr = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(c) => c,
        };
        let mut used = 0;
        for &b in chunk {
            used += 1;
            match b {
                b'\n' if after_cr && line.is_empty() => {}
                b'\n' | b'\r' => {
                    f(&String::from_utf8_lossy(&line));
                    line.clear();
                }
                _ => line.push(b),
            }
            after_cr = b == b'\r';
        }
        reader.consume(used);
    }
    if !line.is_empty() {
        f(&String::from_utf8_lossy(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::sink::Captured;

    #[test]
    fn output_lines_and_progress_are_streamed_as_events() {
        let cap = Captured::default();
        let sink = EventSink::to_writer(Box::new(cap.clone()));
        let parse = |l: &str| {
            l.strip_prefix("pct:")
                .map(|p| (p.parse().unwrap_or(0.0), "x".into()))
        };
        run_streaming(
            Command::new("sh").args(["-c", "echo out; echo err >&2; echo pct:50"]),
            &sink,
            "s1",
            Some(&parse),
        )
        .unwrap();
        let events = cap.events();
        assert!(events.contains(&Event::Output {
            step: Some("s1".into()),
            stream: OutputStream::Stdout,
            line: "out".into()
        }));
        assert!(events.contains(&Event::Output {
            step: Some("s1".into()),
            stream: OutputStream::Stderr,
            line: "err".into()
        }));
        assert!(events.contains(&Event::Progress {
            step: "s1".into(),
            percent: 50.0,
            message: "x".into()
        }));
    }

    #[test]
    fn carriage_returns_end_lines_too() {
        let mut lines = Vec::new();
        for_each_line(&b"a\r\nb\n  10%\r  50%\r 100%\nlast"[..], |l| {
            lines.push(l.to_string())
        });
        assert_eq!(lines, ["a", "b", "  10%", "  50%", " 100%", "last"]);
    }

    #[test]
    fn tool_names_look_through_chroot_and_shell_wrappers() {
        let mut c = Command::new("chroot");
        c.args([
            "/system-root",
            "/bin/sh",
            "-c",
            "exec \"$0\" \"$@\" 3>&1",
            "apt-get",
            "-y",
        ]);
        assert_eq!(tool_name(&c), "apt-get");
        let mut c = Command::new("chroot");
        c.args(["/system-root", "dpkg", "--audit"]);
        assert_eq!(tool_name(&c), "dpkg");
        assert_eq!(tool_name(&Command::new("/usr/bin/rsync")), "rsync");
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let sink = EventSink::to_writer(Box::new(Captured::default()));
        let started = std::time::Instant::now();
        let err = run_streaming_with(
            Command::new("sleep").arg("30"),
            &sink,
            "s",
            &Streaming {
                timeout: Some(Duration::from_millis(300)),
                ..Streaming::default()
            },
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            format!("{err:#}").contains("sleep did not finish within 0s"),
            "{err:#}"
        );
    }

    #[test]
    fn notable_lines_explain_a_failure() {
        let sink = EventSink::to_writer(Box::new(Captured::default()));
        let notable = |l: &str| l.starts_with("Problem:");
        let err = run_streaming_with(
            Command::new("sh").args(["-c", "echo Loading; echo 'Problem: nothing provides libfoo >= 3'; echo 'noise' >&2; exit 4"]),
            &sink,
            "s",
            &Streaming {
                notable: Some(&notable),
                ..Streaming::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sh failed (exit status: 4): Problem: nothing provides libfoo >= 3"
        );
    }

    #[test]
    fn accepted_exit_codes_count_as_success() {
        let sink = EventSink::to_writer(Box::new(Captured::default()));
        let code = run_streaming_with(
            Command::new("sh").args(["-c", "exit 3"]),
            &sink,
            "s",
            &Streaming {
                ok_exit_codes: &[0, 3],
                ..Streaming::default()
            },
        )
        .unwrap();
        assert_eq!(code, 3);
    }

    #[test]
    fn a_failing_tool_reports_its_stderr_tail() {
        let sink = EventSink::to_writer(Box::new(Captured::default()));
        let err = run_streaming(
            Command::new("sh").args(["-c", "echo 'E: Unable to locate package' >&2; exit 100"]),
            &sink,
            "s",
            None,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("sh failed (exit status: 100)"), "{msg}");
        assert!(msg.ends_with(": E: Unable to locate package"), "{msg}");
    }
}

//! Running a step's tools with their output streamed to the host as events.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use super::sink::EventSink;
use crate::cmd::{CommandExt, stderr_tail};
use crate::event::{Event, OutputStream};

/// Turns a line of a tool's standard output into a progress event instead of
/// an output line (`None`: an ordinary line).
pub type ProgressParser = dyn Fn(&str) -> Option<(f32, String)> + Sync;

/// Runs `cmd`, streaming each line of its stdout and stderr as an `output`
/// event of `step`; lines recognized by `progress` become `progress` events.
/// Fails unless the command exits with status 0; the error names the command
/// and ends with the last lines of its stderr.
pub fn run_streaming(
    cmd: &mut Command,
    sink: &EventSink,
    step: &str,
    progress: Option<&ProgressParser>,
) -> Result<()> {
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

    std::thread::scope(|scope| {
        let tail = Arc::clone(&tail);
        scope.spawn(move || {
            for_each_line(stderr, |l| {
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
        for_each_line(stdout, |l| match progress.and_then(|p| p(l)) {
            Some((percent, message)) => sink.emit(Event::Progress {
                step: step.to_string(),
                percent,
                message,
            }),
            None => sink.output(step, OutputStream::Stdout, l),
        });
    });

    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        let t = tail.lock().unwrap_or_else(|p| p.into_inner());
        bail!("{} failed ({status}){}", tool_name(cmd), stderr_tail(&t));
    }
    Ok(())
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

fn for_each_line(reader: impl Read, mut f: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                f(text.trim_end_matches(['\n', '\r']));
            }
        }
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
    fn a_failing_tool_reports_its_stderr_tail() {
        let sink = EventSink::to_writer(Box::new(Captured::default()));
        let err = run_streaming(
            Command::new("sh").args(["-c", "echo 'E: Unable to locate package' >&2; exit 100"]),
            &sink,
            "s",
            None,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("sh failed (exit status: 100)"), "{msg}");
        assert!(msg.ends_with(": E: Unable to locate package"), "{msg}");
    }
}

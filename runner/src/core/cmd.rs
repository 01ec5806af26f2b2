//! Running external tools the same way everywhere: every command is logged
//! before it runs, and a failure carries the command line and the tail of what
//! the tool printed on stderr, never just "exit status 1".
//!
//! Every tool the host or the agent runs goes through [`CommandExt`] (captured
//! output) or, for a step's tools whose output is streamed to the host as
//! events, through `agent::exec::run_streaming`, which logs and reports
//! failures the same way. The one exception is the long-running
//! `podman system service` the host may start (`host/podman/service.rs`).

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// How many trailing stderr lines a failure message keeps.
const STDERR_TAIL_LINES: usize = 3;

/// Extension trait for [`std::process::Command`].
pub(crate) trait CommandExt {
    /// Runs the command to completion with captured output; fails unless it
    /// exits with status 0.
    fn run_captured(&mut self) -> Result<Output>;

    /// Runs the command and returns its standard output as a string.
    fn run_get_string(&mut self) -> Result<String>;

    /// Runs the command to completion with captured output, whatever its
    /// exit status, for tools whose non-zero exit is an answer (a dry run
    /// that finds problems, an audit that lists them): the caller reads the
    /// status and words the failure ([`ToolOutput::failure`]).
    fn run_unchecked(&mut self) -> Result<Output>;

    /// The command line, for messages and logs.
    fn display(&self) -> String;
}

impl CommandExt for Command {
    fn run_captured(&mut self) -> Result<Output> {
        let out = self.run_unchecked()?;
        if !out.status.success() {
            let line = self.display();
            bail!(
                "`{line}` failed ({}){}",
                out.status,
                stderr_tail(&String::from_utf8_lossy(&out.stderr))
            );
        }
        Ok(out)
    }

    fn run_unchecked(&mut self) -> Result<Output> {
        let line = self.display();
        tracing::debug!(command = %line, "running");
        let started = std::time::Instant::now();
        let out = self
            .output()
            .with_context(|| format!("starting `{line}`"))?;
        tracing::debug!(
            command = %line,
            status = %out.status,
            ms = started.elapsed().as_millis(),
            "finished"
        );
        Ok(out)
    }

    fn run_get_string(&mut self) -> Result<String> {
        let out = self.run_captured()?;
        String::from_utf8(out.stdout).with_context(|| format!("output of `{}`", self.display()))
    }

    fn display(&self) -> String {
        std::iter::once(self.get_program())
            .chain(self.get_args())
            .map(|a| quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a tool printed, for callers of [`CommandExt::run_unchecked`].
pub(crate) trait ToolOutput {
    /// stdout followed by stderr, as text.
    fn text(&self) -> String;
    /// `"(exit status: N): last lines of stderr"`, for a failure message.
    fn failure(&self) -> String;
}

impl ToolOutput for Output {
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    fn failure(&self) -> String {
        format!(
            "({}){}",
            self.status,
            stderr_tail(&String::from_utf8_lossy(&self.stderr))
        )
    }
}

/// Why a tool failed, in one line: `": first | second"` of its `notable`
/// lines (solver problems, download errors), else the last lines of its
/// `output` ([`stderr_tail`]).
pub(crate) fn failure_detail<'a>(
    notable: impl IntoIterator<Item = &'a str>,
    output: &str,
) -> String {
    let lines: Vec<&str> = notable.into_iter().take(2).map(str::trim).collect();
    if lines.is_empty() {
        stderr_tail(output)
    } else {
        format!(": {}", lines.join(" | "))
    }
}

/// `": last lines"` of a tool's stderr, joined into one line, or nothing.
pub(crate) fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    format!(": {}", lines[start..].join(" | "))
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A read-only question to a tool, asked in the background: started early
/// (on a thread of its own, so that a long answer never fills a pipe), its
/// standard output collected the first time it is wanted, and kept. A
/// question never started is asked then, in the foreground.
#[derive(Default)]
pub(crate) struct Background {
    running: std::cell::RefCell<Option<std::thread::JoinHandle<Result<String, String>>>>,
    answer: std::cell::OnceCell<Result<String, String>>,
}

impl Background {
    /// Starts `cmd` unless it was started or answered already.
    pub(crate) fn start(&self, mut cmd: Command) {
        let mut running = self.running.borrow_mut();
        if running.is_none() && self.answer.get().is_none() {
            *running = Some(std::thread::spawn(move || {
                cmd.run_get_string().map_err(|e| format!("{e:#}"))
            }));
        }
    }

    /// Whether the question was started or answered already.
    pub(crate) fn asked(&self) -> bool {
        self.running.borrow().is_some() || self.answer.get().is_some()
    }

    /// The answer: waits for the started command, or runs `cmd()` now.
    pub(crate) fn get(&self, cmd: impl FnOnce() -> Command) -> Result<String> {
        let answer = self.answer.get_or_init(|| {
            let started = self.running.borrow_mut().take();
            match started {
                Some(thread) => thread
                    .join()
                    .unwrap_or_else(|_| Err("the background query panicked".to_string())),
                None => cmd().run_get_string().map_err(|e| format!("{e:#}")),
            }
        });
        answer.clone().map_err(|e| anyhow::anyhow!(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_query_runs_before_it_is_wanted_and_is_answered_once() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let q = Background::default();
        let mut cmd = Command::new("sh");
        // A long answer (more than a pipe holds) and a trace of each run.
        cmd.args(["-c", "echo x >> \"$1\"; yes answer | head -n 50000", "sh"])
            .arg(&marker);
        q.start(cmd);
        let mut waited = 0;
        while !marker.exists() && waited < 100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            waited += 1;
        }
        assert!(marker.exists(), "the query did not start in the background");
        let never = || -> Command { panic!("a started query is not asked again") };
        let text = q.get(never).unwrap();
        assert_eq!(text.lines().count(), 50000);
        assert_eq!(q.get(never).unwrap(), text);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n");
    }

    #[test]
    fn a_query_never_started_is_asked_when_wanted_and_failures_are_kept() {
        let q = Background::default();
        let err = q
            .get(|| {
                let mut c = Command::new("sh");
                c.args(["-c", "echo broken lists >&2; exit 100"]);
                c
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken lists"), "{err}");
        assert!(err.contains("exit status: 100"), "{err}");
        // Kept: asking again does not run anything.
        let again = q
            .get(|| panic!("a failed query is not asked again"))
            .unwrap_err()
            .to_string();
        assert_eq!(again, err);
    }

    #[test]
    fn failures_name_the_command_and_its_stderr() {
        let err = Command::new("sh")
            .args([
                "-c",
                "echo zero >&2; echo one >&2; echo two >&2; echo three >&2; exit 3",
            ])
            .run_captured()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("`sh -c 'echo zero"), "{msg}");
        assert!(msg.ends_with(": one | two | three"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = Command::new("/nonexistent/tool")
            .run_captured()
            .unwrap_err();
        assert!(format!("{err:#}").contains("starting `/nonexistent/tool`"));
    }

    #[test]
    fn unchecked_runs_return_what_a_failing_tool_said() {
        let out = Command::new("sh")
            .args(["-c", "echo answer; echo why >&2; exit 1"])
            .run_unchecked()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(out.text(), "answer\nwhy\n");
        assert_eq!(out.failure(), "(exit status: 1): why");
        assert!(Command::new("/nonexistent/tool").run_unchecked().is_err());
    }

    #[test]
    fn output_is_returned() {
        let out = Command::new("echo").arg("hi").run_get_string().unwrap();
        assert_eq!(out, "hi\n");
    }
}

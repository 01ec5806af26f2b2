//! The upgrade resolved once for the checks and the cutover of one run.
//!
//! The checks ask apt what the upgrade does (the sizes, the third-party
//! packages' fates, what is left to download) and the cutover's `apt-get
//! dist-upgrade` works it out again: each builds apt's dependency cache of
//! the target's lists and resolves the upgrade, about half a second of a
//! minimal upgrade. When the run goes on to the cutover (`migrate run`),
//! the checks start the cutover's own `apt-get dist-upgrade` instead,
//! without `-y`: apt resolves, prints what it will do with the sizes, and
//! waits at its `Do you want to continue? [Y/n]` prompt, before it
//! downloads or changes anything. The checks read what it printed; the
//! cutover answers `y` and apt goes on with the resolution it has.
//! Anything else answers `n`, and apt says `Abort.` having changed nothing:
//! checks that stop the run, a step apt's locks could stand in the way of,
//! packages left to download, lists gone stale, the end of the run.
//!
//! While it waits, apt holds dpkg's locks and the archive cache's, so
//! nothing changes the package database between the resolution and the
//! upgrade. A `DPkg::Pre-Invoke` gate, a file the agent creates only when it
//! answers `y`, keeps dpkg from running without that answer even if apt
//! did not ask.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};

use crate::agent::exec::{ProgressParser, ToolFailed, for_each_line, stdout_event};
use crate::agent::sink::EventSink;
use crate::core::cmd::{CommandExt, failure_detail};
use crate::core::event::OutputStream;

/// apt's question before it changes anything.
const PROMPT: &str = "Do you want to continue? [Y/n] ";

/// How a held apt's output up to its question ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// At [`PROMPT`].
    Prompt,
    /// At another question (removing essential packages asks for a phrase):
    /// never answered yes here, as `-y` would not either.
    OtherQuestion,
    /// apt ended (nothing to do, or an error).
    Ended,
}

/// What apt printed before it stopped, and the rest of its output.
struct Resolved {
    text: String,
    stop: Stop,
    rest: ChildStdout,
}

/// `apt-get dist-upgrade` waiting at its prompt (see the module's docs).
pub(crate) struct HeldUpgrade {
    child: Child,
    stdin: Option<ChildStdin>,
    line: String,
    reading: Option<JoinHandle<std::io::Result<Resolved>>>,
    resolved: Option<std::result::Result<Resolved, String>>,
    /// Created when the answer is yes (the `DPkg::Pre-Invoke` gate).
    gate: PathBuf,
}

/// The `DPkg::Pre-Invoke` option of the gate at `inside` (the gate's path
/// in the root).
pub(super) fn gate_option(inside: &str) -> String {
    format!("DPkg::Pre-Invoke::=test -e {inside}")
}

impl HeldUpgrade {
    /// Starts `cmd` (`apt-get ... dist-upgrade` without `-y`, its stderr
    /// joined to its stdout) and reads its output up to its question on a
    /// thread of its own. `gate` is the gate file in the agent's view.
    pub(crate) fn start(mut cmd: Command, gate: PathBuf) -> Result<Self> {
        let line = cmd.display();
        tracing::debug!(command = %line, "holding");
        let _ = std::fs::remove_file(&gate);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().context("apt-get's stdout")?;
        let reading = std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = stdout.read(&mut buf)?;
                if n == 0 {
                    return Ok(Resolved {
                        text: String::from_utf8_lossy(&text).into_owned(),
                        stop: Stop::Ended,
                        rest: stdout,
                    });
                }
                text.extend_from_slice(&buf[..n]);
                if let Some(stop) = question(&text) {
                    return Ok(Resolved {
                        text: String::from_utf8_lossy(&text).into_owned(),
                        stop,
                        rest: stdout,
                    });
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            line,
            reading: Some(reading),
            resolved: None,
            gate,
        })
    }

    /// Waits for apt's output up to its question.
    fn join(&mut self) -> &std::result::Result<Resolved, String> {
        if let Some(reading) = self.reading.take() {
            let r = reading
                .join()
                .map_err(|_| "reading apt-get's output panicked".to_string())
                .and_then(|r| r.map_err(|e| format!("reading apt-get's output: {e}")));
            self.resolved = Some(r);
        }
        self.resolved
            .get_or_insert_with(|| Err("apt-get's output was already used".to_string()))
    }

    /// What apt printed before its question: the packages it installs,
    /// upgrades and removes with their versions, and the sizes. An error
    /// when apt ended unsuccessfully without asking.
    pub(crate) fn plan(&mut self) -> Result<String> {
        let (text, stop) = match self.join() {
            Ok(r) => (r.text.clone(), r.stop),
            Err(e) => bail!("{e}"),
        };
        if stop == Stop::Ended {
            let status = self.child.wait().context("waiting for apt-get")?;
            if !status.success() {
                bail!("apt-get dist-upgrade failed ({status}){}", why(&text));
            }
        }
        Ok(text)
    }

    /// Whether apt waits for a yes to the question the cutover answers.
    pub(crate) fn at_prompt(&mut self) -> bool {
        matches!(self.join(), Ok(r) if r.stop == Stop::Prompt)
    }

    /// Answers `y` and streams the rest of apt's output as events of
    /// `step` (what it printed before, too: the log shows the whole
    /// transaction), progress lines through `progress`. Fails as a tool
    /// fails, naming apt's error lines.
    pub(crate) fn proceed(
        mut self,
        sink: &EventSink,
        step: &str,
        progress: &ProgressParser,
    ) -> Result<()> {
        sink.output(step, OutputStream::Stderr, format!("$ {}", self.line));
        let resolved = match self.resolved.take() {
            Some(Ok(r)) if r.stop == Stop::Prompt => r,
            _ => bail!("apt-get dist-upgrade is not waiting at its prompt"),
        };
        let mut seen = String::new();
        let mut show = |l: &str| {
            if stdout_event(sink, step, Some(progress), l)
                && (l.starts_with("E: ") || l.starts_with("W: "))
            {
                seen.push_str(l);
                seen.push('\n');
            }
        };
        for l in resolved.text.lines() {
            show(l);
        }
        std::fs::write(&self.gate, "")
            .with_context(|| format!("creating {}", self.gate.display()))?;
        let mut stdin = self.stdin.take().context("apt-get's stdin")?;
        stdin
            .write_all(b"y\n")
            .context("answering apt-get's prompt")?;
        drop(stdin);
        for_each_line(resolved.rest, &mut show);
        let status = self.child.wait().context("waiting for apt-get")?;
        if !status.success() {
            return Err(ToolFailed {
                tool: "apt-get".into(),
                status: status.to_string(),
                code: status.code(),
                detail: why(&seen),
            }
            .into());
        }
        Ok(())
    }

    /// Answers `n` (apt aborts, having changed nothing) and waits for it.
    pub(crate) fn release(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"n\n");
        }
        let _ = self.join();
        let _ = self.child.wait();
    }
}

impl Drop for HeldUpgrade {
    fn drop(&mut self) {
        self.release();
    }
}

/// The question `text` (apt's output so far) ends with, if it does.
fn question(text: &[u8]) -> Option<Stop> {
    if text.ends_with(PROMPT.as_bytes()) {
        Some(Stop::Prompt)
    } else if text.ends_with(b" ?] ") {
        Some(Stop::OtherQuestion)
    } else {
        None
    }
}

/// `": E: ... | E: ..."` of apt's output, or its last lines.
fn why(text: &str) -> String {
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    failure_detail(errors, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::sink::Captured;
    use crate::core::event::Event;

    /// A stand-in for apt at its prompt: prints a plan and the question,
    /// reads the answer; on `y` prints progress and a line, then checks
    /// the gate (as apt's `DPkg::Pre-Invoke` would); on anything else
    /// says `Abort.` and fails.
    fn fake_apt(dir: &std::path::Path) -> (Command, PathBuf) {
        let gate = dir.join("go");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"printf 'The following packages will be upgraded:\n   a (1 => 2)\nNeed to get 0 B/1 kB of archives.\nDo you want to continue? [Y/n] '
read answer
if [ "$answer" != y ]; then echo Abort.; echo changed-nothing > "$1/answer"; exit 1; fi
test -e "$1/go" || { echo 'E: the gate is shut'; exit 100; }
echo 'pmstatus:a:50:Installing a'
echo 'Setting up a (2) ...'
echo done > "$1/answer""#,
            "sh",
        ])
        .arg(dir);
        (cmd, gate)
    }

    #[test]
    fn the_plan_is_read_at_the_prompt_and_yes_goes_on_through_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let (cmd, gate) = fake_apt(dir.path());
        let mut held = HeldUpgrade::start(cmd, gate).unwrap();
        let plan = held.plan().unwrap();
        assert!(plan.contains("a (1 => 2)") && plan.contains("Need to get 0 B/1 kB"));
        assert!(held.at_prompt());
        assert!(!dir.path().join("answer").exists(), "apt went on unasked");
        let captured = Captured::default();
        let sink = EventSink::to_writer(Box::new(captured.clone()));
        held.proceed(&sink, "upgrade", &super::super::apt_progress)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("answer")).unwrap(),
            "done\n"
        );
        let events = captured.events();
        let text = format!("{events:?}");
        assert!(text.contains("Need to get 0 B/1 kB"), "{text}");
        assert!(text.contains("Setting up a (2)"), "{text}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Progress { percent, .. } if *percent == 50.0)),
            "{text}"
        );
    }

    #[test]
    fn a_held_upgrade_dropped_or_released_is_answered_no() {
        let dir = tempfile::tempdir().unwrap();
        let (cmd, gate) = fake_apt(dir.path());
        let mut held = HeldUpgrade::start(cmd, gate.clone()).unwrap();
        assert!(held.at_prompt());
        drop(held);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("answer")).unwrap(),
            "changed-nothing\n"
        );
        assert!(!gate.exists());
    }

    #[test]
    fn apt_that_ends_without_asking_gives_its_output_or_its_errors() {
        let mut nothing = Command::new("sh");
        nothing.args(["-c", "echo '0 upgraded, 0 newly installed.'"]);
        let dir = tempfile::tempdir().unwrap();
        let mut held = HeldUpgrade::start(nothing, dir.path().join("go")).unwrap();
        assert_eq!(held.plan().unwrap(), "0 upgraded, 0 newly installed.\n");
        assert!(!held.at_prompt());

        let mut broken = Command::new("sh");
        broken.args([
            "-c",
            "echo 'E: Unable to correct problems, you have held broken packages.'; exit 100",
        ]);
        let mut held = HeldUpgrade::start(broken, dir.path().join("go")).unwrap();
        let e = held.plan().unwrap_err().to_string();
        assert!(e.contains("held broken packages"), "{e}");
    }

    #[test]
    fn questions_are_told_apart() {
        assert_eq!(
            question(b"...\nDo you want to continue? [Y/n] "),
            Some(Stop::Prompt)
        );
        assert_eq!(
            question(b" To continue type in the phrase 'Yes, do as I say!'\n ?] "),
            Some(Stop::OtherQuestion)
        );
        assert_eq!(question(b"Get:1 http://x trixie InRelease [140 kB]"), None);
    }
}

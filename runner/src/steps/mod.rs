//! Step kinds: one module per kind. A step is one unit of the plan that the
//! agent runs, reports on and (from the state journal) never repeats once it
//! has succeeded.

pub mod apt;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::agent::exec::{ProgressParser, run_streaming};
use crate::agent::sink::EventSink;
use crate::event::{OutputStream, StepStatus};
use crate::image::TargetRelease;
use crate::release::OsRelease;

/// PATH inside the migrated root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A unit of work in a plan.
pub trait Step {
    /// Unique id within the plan.
    fn id(&self) -> &str;
    /// The step kind, as written in plans.
    fn kind(&self) -> &'static str;
    /// One line saying what the step does.
    fn description(&self) -> String;
    /// Does the work. Returns `Skipped` when there was nothing to do.
    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus>;
}

/// What a running step can use.
pub struct StepContext<'a> {
    /// The migrated root (`/system-root` in the container).
    pub root: &'a Path,
    /// Event output.
    pub sink: &'a EventSink,
    /// Id of the running step.
    pub step: &'a str,
    /// The root's release as found before the run.
    pub source: &'a OsRelease,
    /// The release the image upgrades to.
    pub target: &'a TargetRelease,
}

impl StepContext<'_> {
    /// Runs a command, streaming its output as events of this step.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        run_streaming(cmd, self.sink, self.step, None)
    }

    /// Runs a command whose stdout carries progress lines.
    pub fn run_with_progress(&self, cmd: &mut Command, progress: &ProgressParser) -> Result<()> {
        run_streaming(cmd, self.sink, self.step, Some(progress))
    }

    /// A command that runs `program` chrooted into the root, with a clean,
    /// non-interactive environment.
    pub fn chroot(&self, program: &str) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(self.root)
            .arg(program)
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root");
        cmd
    }

    /// A path inside the root, symlinks resolved inside it.
    pub fn path(&self, inside: &str) -> Result<PathBuf> {
        crate::rootfs::resolve(self.root, inside)
    }

    /// Tells the host something about the step's progress.
    pub fn say(&self, line: impl Into<String>) {
        self.sink.output(self.step, OutputStream::Stdout, line);
    }
}

//! `command`: runs a command in the migration image or chrooted in the root,
//! with an environment, a timeout and the exit codes that count as success.
//! The extension point for custom images and plans.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::{StepContext, StepKind};
use crate::agent::exec::{Streaming, run_streaming_with};
use crate::core::event::StepStatus;
use crate::core::kinds::command::CommandOptions;
use crate::core::phase::Phase;

/// A `command` step.
pub(crate) struct CommandStep {
    opts: CommandOptions,
}

impl CommandStep {
    /// From the step's options.
    pub(crate) fn new(opts: CommandOptions) -> Self {
        Self { opts }
    }

    fn command(&self, ctx: &StepContext<'_>) -> Command {
        let program = &self.opts.command[0];
        let mut cmd = if self.opts.chroot {
            ctx.chroot(program)
        } else {
            let mut c = Command::new(program);
            c.env("MIGRATE_ROOT", ctx.root());
            c
        };
        cmd.args(&self.opts.command[1..])
            .envs(&self.opts.env)
            .env("MIGRATE_STEP", &ctx.step.id)
            .env("MIGRATE_RUN_ID", &ctx.run.run_id);
        cmd
    }
}

impl StepKind for CommandStep {
    fn tools(&self) -> Vec<String> {
        if self.opts.chroot {
            Vec::new()
        } else {
            self.opts.command.first().cloned().into_iter().collect()
        }
    }

    fn describe(&self) -> String {
        format!(
            "Run `{}`{}",
            self.opts.command.join(" "),
            if self.opts.chroot { " in the root" } else { "" }
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let mut cmd = self.command(ctx);
        // A step of a run that changes the root gets a directory to keep
        // what it exports until cleanup (listed in the report); removed
        // again if the command leaves nothing there.
        let backup = if ctx.step.phase != Phase::Check && ctx.run.journal.borrow().is_some() {
            let dir = ctx.backup_dir()?;
            let shown = if self.opts.chroot {
                Path::new("/").join(dir.strip_prefix(&ctx.run.pristine).unwrap_or(&dir))
            } else {
                dir.clone()
            };
            cmd.env("MIGRATE_BACKUP_DIR", shown);
            Some(dir)
        } else {
            None
        };
        let result = run_streaming_with(
            &mut cmd,
            &ctx.run.sink,
            &ctx.step.id,
            &Streaming {
                timeout: self.opts.timeout_s.map(Duration::from_secs),
                ok_exit_codes: &self.opts.ok_exit_codes,
                ..Streaming::default()
            },
        );
        if let Some(dir) = backup {
            // Fails (and keeps it) unless it is empty.
            let _ = std::fs::remove_dir(&dir);
        }
        result?;
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        use crate::core::cmd::CommandExt;
        ctx.say(format!("would run: {}", self.command(ctx).display()));
        Ok(())
    }
}

//! `command`: runs a command in the migration image or chrooted in the root,
//! with an environment, a timeout and the exit codes that count as success.
//! The extension point for custom images and plans.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{StepContext, StepKind};
use crate::agent::exec::{Streaming, run_streaming_with};
use crate::event::StepStatus;

/// Options of a `command` step.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOptions {
    command: Vec<String>,
    #[serde(default)]
    chroot: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    ok_exit_codes: Vec<i32>,
}

/// A `command` step.
pub struct CommandStep {
    opts: CommandOptions,
}

impl CommandStep {
    /// From the step's options.
    pub fn from_options(opts: CommandOptions) -> Result<Self> {
        if opts.command.first().is_none_or(|p| p.is_empty()) {
            bail!("option `command` must name a program");
        }
        Ok(Self { opts })
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
    fn describe(&self) -> String {
        format!(
            "Run `{}`{}",
            self.opts.command.join(" "),
            if self.opts.chroot { " in the root" } else { "" }
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        run_streaming_with(
            &mut self.command(ctx),
            &ctx.run.sink,
            &ctx.step.id,
            &Streaming {
                timeout: self.opts.timeout_s.map(Duration::from_secs),
                ok_exit_codes: &self.opts.ok_exit_codes,
                ..Streaming::default()
            },
        )?;
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        use crate::cmd::CommandExt;
        ctx.say(format!("would run: {}", self.command(ctx).display()));
        Ok(())
    }
}

//! `verify-release`: after the upgrade, the root's os-release must be the
//! target release and its package manager must find it consistent
//! (apt: `dpkg --audit`; zypper, dnf: `rpm -Va --nofiles`).

use anyhow::{Result, bail};

use super::{StepContext, StepKind};
use crate::core::event::StepStatus;
use crate::core::release::{OsRelease, Release};

/// The `verify-release` step.
pub(crate) struct VerifyRelease;

impl StepKind for VerifyRelease {
    fn describe(&self) -> String {
        "Verify the root is the target release and its packages are consistent".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let now = OsRelease::read_from_root(ctx.root())?;
        let target = Release {
            id: ctx.run.target.id.clone(),
            version_id: ctx.run.target.version_id.clone(),
        };
        if now.release() != target {
            bail!(
                "after the upgrade the root's os-release says {} ({}), not {target}",
                now.release(),
                now.pretty_name()
            );
        }
        ctx.say(format!("os-release: {}", now.pretty_name()));
        let pm = ctx.run.packages()?;
        let problems = pm.verify()?;
        if !problems.is_empty() {
            for line in &problems {
                ctx.say(line.clone());
            }
            bail!(
                "{} reports {} problems after the upgrade: {}",
                pm.name(),
                problems.len(),
                problems[0]
            );
        }
        ctx.say(format!(
            "{}: the installed packages are consistent",
            pm.name()
        ));
        Ok(StepStatus::Succeeded)
    }
}

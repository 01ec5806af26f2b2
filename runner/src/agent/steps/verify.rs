//! `verify-release`: after the upgrade, the root's os-release must be the
//! target release and its package manager must find it consistent
//! (apt: `dpkg --audit`; zypper, dnf: `rpm -Va --nofiles`).

use anyhow::{Result, bail};

use super::{StepContext, StepKind};
use crate::core::event::{Finding, Severity, StepStatus};
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
        // What the new release no longer has stays installed, without
        // updates: the report lists it.
        match pm.obsolete() {
            Ok(names) if names.is_empty() => ctx.say(format!(
                "every installed package is in a repository of {target}"
            )),
            Ok(names) => {
                ctx.say(format!(
                    "installed, in no repository of {target}: {}",
                    names.join(" ")
                ));
                ctx.finding(Finding {
                    id: "obsolete-packages".into(),
                    severity: Severity::Warning,
                    message: format!(
                        "{} installed packages are in no repository of {target} and get no updates: {}",
                        names.len(),
                        names.join(", ")
                    ),
                    hint: match pm.name() {
                        "apt" => "apt list '?obsolete' lists them; purge the ones nothing needs any more (apt purge NAME)",
                        "zypper" => "zypper packages --orphaned lists them; remove the ones nothing needs any more (zypper remove NAME)",
                        _ => "dnf list --extras lists them; remove the ones nothing needs any more (dnf remove NAME)",
                    }
                    .into(),
                });
            }
            Err(e) => ctx.say(format!(
                "could not list the packages no repository of {target} has: {e:#}"
            )),
        }
        Ok(StepStatus::Succeeded)
    }
}

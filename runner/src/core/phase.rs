//! The phases of a plan, in the order they run: what each step belongs to,
//! shared by the plan, the registry of kinds, the events and the report.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The phases, in the order they run.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Read-only checks; an inhibitor stops the run.
    Check,
    /// Online, repeatable work while services run (pre-copies, dumps).
    Sync,
    /// The downtime window: stop services, final sync, upgrade, start services.
    Cutover,
    /// After the reboot into the new release (run by the cleanup unit).
    Post,
    /// An application's step back, run by `migrate rollback --app NAME`
    /// only (steps of this phase belong to an application).
    Rollback,
}

impl Phase {
    /// All phases in order.
    pub(crate) const ALL: [Phase; 5] = [
        Phase::Check,
        Phase::Sync,
        Phase::Cutover,
        Phase::Post,
        Phase::Rollback,
    ];

    /// The name used in plans.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Sync => "sync",
            Phase::Cutover => "cutover",
            Phase::Post => "post",
            Phase::Rollback => "rollback",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

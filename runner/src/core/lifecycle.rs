//! A root's migration as one explicit state machine: the states it goes
//! through and, in [`State::next`], every transition that is allowed. The
//! state is persisted in the state journal (`status` in
//! `var/lib/migrate/state.json`); the agent moves it while it runs the plan,
//! the host after the reboot and on rollback. The reboot marker
//! (`var/lib/migrate/reboot-pending`) is only the trigger of the cleanup
//! unit: whether a migration waits for its reboot is [`State::Completed`].
//!
//! ```text
//!                 sync            cutover step starts        run finished
//!   Checked ───────────> Syncing ─────────────> CutoverStarted ───────> Completed
//!      │   (a run starts     │                        │                 │    │
//!      │    right in the ────┼────────────────────────┘                 │    │ first boot
//!      │    cutover)         │ rollback                      rollback  │    ├──────> Confirmed
//!      │                     v                                          v    └──────> FailedAfterReboot
//!      │             RolledBack / PartlyRolledBack  <───────────────────────────────────┘  │
//!      │                                                                                    │ revert
//!      └── (a new migration, --force-new, starts from any end state)                        v
//!                                                                                      Reverted
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a root's migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Nothing has changed the root: no migration, or only checks ran.
    Checked,
    /// Pre-copies of the sync phase ran; services still run the old
    /// release, and `migrate sync` may repeat them.
    Syncing,
    /// A cutover step started: the root is between releases until the run
    /// finishes; the next run continues it.
    CutoverStarted,
    /// Every step through the cutover succeeded; the migration waits for
    /// its reboot (now, in the maintenance window, or in a reboot slot).
    Completed,
    /// The first boot into the new release found it healthy.
    Confirmed,
    /// The first boot into the new release found it unhealthy.
    FailedAfterReboot,
    /// Restored from the safety backup, everything the backup holds.
    RolledBack,
    /// Restored from the safety backup, with what could not be restored
    /// named (a tar backup holds /etc and the package list, not packages).
    PartlyRolledBack,
    /// Booted back into the pre-migration snapshot after a failed boot.
    Reverted,
}

/// The state as the journal records it: `state`, and `status`, the coarse
/// summary that journals had before the states were split (`in_progress`,
/// `completed`, `rolled_back`), written for the readers of state.json that
/// know only it. Reading prefers `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Recorded", into = "Recorded")]
pub(crate) struct Lifecycle(pub(crate) State);

#[derive(Serialize, Deserialize)]
struct Recorded {
    #[serde(default)]
    state: Option<State>,
    #[serde(default)]
    status: Option<String>,
}

impl From<Recorded> for Lifecycle {
    fn from(r: Recorded) -> Self {
        Lifecycle(r.state.unwrap_or(match r.status.as_deref() {
            Some("completed") => State::Completed,
            Some("rolled_back") => State::RolledBack,
            Some("in_progress") => State::CutoverStarted,
            _ => State::Checked,
        }))
    }
}

impl From<Lifecycle> for Recorded {
    fn from(l: Lifecycle) -> Self {
        Recorded {
            state: Some(l.0),
            status: Some(l.0.summary().to_string()),
        }
    }
}

/// What moves a migration from one state to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// A step of the sync phase changed the root.
    Sync,
    /// A step of the cutover phase started.
    StartCutover,
    /// The run through the cutover finished.
    Complete,
    /// The first boot's health check passed.
    Confirm,
    /// The first boot's health check failed.
    FailBoot,
    /// `migrate rollback` restored the safety backup; `complete` says
    /// whether everything could be restored.
    RollBack {
        /// Everything restored.
        complete: bool,
    },
    /// The pre-migration snapshot became the booted system again.
    Revert,
    /// One application of a plan with applications was stepped back: the
    /// migration is unfinished again until it finishes once more.
    StepBackApp,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a migration that is {from} cannot {what}")]
pub(crate) struct InvalidTransition {
    from: State,
    what: &'static str,
}

impl State {
    /// The state after `t`, if `t` may happen in this state.
    pub(crate) fn next(self, t: Transition) -> Result<State, InvalidTransition> {
        use State::*;
        use Transition as T;
        let next = match (self, t) {
            (Checked | Syncing, T::Sync) => Syncing,
            (Checked | Syncing | CutoverStarted, T::StartCutover) => CutoverStarted,
            (CutoverStarted, T::Complete) => Completed,
            (Completed, T::Confirm) => Confirmed,
            (Completed, T::FailBoot) => FailedAfterReboot,
            (
                Syncing | CutoverStarted | Completed | FailedAfterReboot | PartlyRolledBack,
                T::RollBack { complete },
            ) => {
                if complete {
                    RolledBack
                } else {
                    PartlyRolledBack
                }
            }
            (FailedAfterReboot, T::Revert) => Reverted,
            (Syncing, T::StepBackApp) => Syncing,
            (CutoverStarted | Completed, T::StepBackApp) => CutoverStarted,
            (from, t) => {
                return Err(InvalidTransition {
                    from,
                    what: t.describe(),
                });
            }
        };
        Ok(next)
    }

    /// Whether the migration is unfinished: the next run continues it.
    pub(crate) fn in_progress(self) -> bool {
        matches!(self, State::Syncing | State::CutoverStarted)
    }

    /// The coarse summary: `in_progress` (the next run continues),
    /// `completed` (through the cutover) or `rolled_back`.
    pub(crate) fn summary(self) -> &'static str {
        match self {
            State::Checked | State::Syncing | State::CutoverStarted => "in_progress",
            State::Completed | State::Confirmed | State::FailedAfterReboot => "completed",
            State::RolledBack | State::PartlyRolledBack | State::Reverted => "rolled_back",
        }
    }

    /// The name in `migrate status`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Checked => "checked",
            State::Syncing => "syncing",
            State::CutoverStarted => "cutover started",
            State::Completed => "completed, waiting for its reboot",
            State::Confirmed => "confirmed after its reboot",
            State::FailedAfterReboot => "failed after its reboot",
            State::RolledBack => "rolled back",
            State::PartlyRolledBack => "partly rolled back",
            State::Reverted => "reverted after a failed boot",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Transition {
    fn describe(self) -> &'static str {
        match self {
            Transition::Sync => "run its sync phase",
            Transition::StartCutover => "start its cutover",
            Transition::Complete => "complete",
            Transition::Confirm => "be confirmed after a reboot",
            Transition::FailBoot => "fail after a reboot",
            Transition::RollBack { .. } => "be rolled back",
            Transition::Revert => "be reverted",
            Transition::StepBackApp => "step an application back",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;
    use Transition as T;

    #[test]
    fn a_migration_goes_from_checks_through_the_reboot() {
        let mut s = Checked;
        for t in [
            T::Sync,
            T::Sync,
            T::StartCutover,
            T::StartCutover,
            T::Complete,
            T::Confirm,
        ] {
            s = s.next(t).unwrap();
        }
        assert_eq!(s, Confirmed);
        assert_eq!(Completed.next(T::FailBoot), Ok(FailedAfterReboot));
        assert_eq!(FailedAfterReboot.next(T::Revert), Ok(Reverted));
    }

    #[test]
    fn rollback_is_allowed_once_something_changed_and_says_if_it_was_partial() {
        for from in [Syncing, CutoverStarted, Completed, FailedAfterReboot] {
            assert_eq!(from.next(T::RollBack { complete: true }), Ok(RolledBack));
            assert_eq!(
                from.next(T::RollBack { complete: false }),
                Ok(PartlyRolledBack)
            );
        }
        assert_eq!(
            PartlyRolledBack.next(T::RollBack { complete: true }),
            Ok(RolledBack)
        );
    }

    #[test]
    fn stepping_an_application_back_leaves_the_migration_unfinished() {
        assert_eq!(Syncing.next(T::StepBackApp), Ok(Syncing));
        assert_eq!(CutoverStarted.next(T::StepBackApp), Ok(CutoverStarted));
        assert_eq!(Completed.next(T::StepBackApp), Ok(CutoverStarted));
        assert!(CutoverStarted.in_progress());
    }

    #[test]
    fn transitions_out_of_order_are_refused() {
        let refused = [
            (Checked, T::Complete),
            (Syncing, T::Complete),
            (CutoverStarted, T::Sync),
            (CutoverStarted, T::Confirm),
            (Completed, T::StartCutover),
            (Confirmed, T::FailBoot),
            (Confirmed, T::RollBack { complete: true }),
            (RolledBack, T::RollBack { complete: true }),
            (Checked, T::RollBack { complete: true }),
            (Completed, T::Revert),
            (Checked, T::StepBackApp),
            (Confirmed, T::StepBackApp),
            (RolledBack, T::StepBackApp),
        ];
        for (from, t) in refused {
            let e = from.next(t).unwrap_err();
            assert!(e.to_string().starts_with("a migration that is "), "{e}");
        }
    }

    #[test]
    fn the_journal_records_the_state_and_its_summary() {
        let json = serde_json::to_value(Lifecycle(PartlyRolledBack)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "partly_rolled_back", "status": "rolled_back"})
        );
        let back: Lifecycle = serde_json::from_value(json).unwrap();
        assert_eq!(back, Lifecycle(PartlyRolledBack));
        // Journals of before the split have only the summary.
        let old: Lifecycle =
            serde_json::from_value(serde_json::json!({"status": "in_progress"})).unwrap();
        assert_eq!(old, Lifecycle(CutoverStarted));
    }
}

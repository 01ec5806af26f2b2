//! The state journal, `ROOT/var/lib/migrate/state.json`: which migration is
//! under way on this root, with which plan and image, and where each step got
//! to. Written atomically (temporary file, fsync, rename) at every step
//! transition, so that after a crash or a killed container the next run knows
//! exactly where to continue.
//!
//! Only runs that change the root write it (`sync`, `run`, `rollback`), and
//! only once their check phase has passed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::core::event::timestamp;
use crate::core::kinds::backup::Method;
use crate::core::kinds::service::Action;
use crate::core::lifecycle::{InvalidTransition, Lifecycle, State, Transition};
use crate::core::phase::Phase;
use crate::core::plan::Plan;
use crate::core::release::{OsRelease, Release};
pub(crate) use crate::core::report::ImageInfo as ImageIdentity;
use crate::core::report::StepState;

/// Journal location relative to the root.
pub(crate) const STATE_PATH: &str = crate::core::root_paths::RootPath::State.rel();
/// Journal format version.
pub(crate) const JOURNAL_VERSION: u32 = 1;

/// One invocation of migrate on this migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JournalRun {
    /// Run id.
    #[serde(deserialize_with = "crate::core::ids::deserialize")]
    pub(crate) run_id: String,
    /// Verb (`sync`, `run`, `rollback`).
    pub(crate) verb: String,
    /// When it started.
    pub(crate) started_at: String,
}

/// One step's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JournalStep {
    /// Step id.
    pub(crate) id: String,
    /// Its phase.
    pub(crate) phase: Phase,
    /// Where it got to.
    pub(crate) status: StepState,
    /// How many times it was started.
    pub(crate) attempts: u32,
    /// Start of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<String>,
    /// End of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at: Option<String>,
    /// Failure message of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
}

/// Where the safety backup is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct BackupRecord {
    /// `tar`, `btrfs` or `snapper`.
    pub(crate) method: Method,
    /// Location: a directory relative to the root (tar), a snapshot path
    /// (btrfs) or a snapshot number (snapper).
    pub(crate) location: String,
    /// When it was taken.
    pub(crate) created_at: String,
    /// The package manager whose package selection the backup holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) package_manager: Option<String>,
    /// The snapshot taken when the cutover finished (btrfs, snapper): the
    /// migrated system as the run left it, before its first boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) post_cutover: Option<String>,
}

/// The host's reboot slot from a FleetLock server (unattended runs of a
/// host configured with `fleetlock_url`): asked for before the cutover,
/// released once the first boot confirmed the new release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct FleetLockSlot {
    /// The server's base URL.
    pub(crate) server: String,
    /// The host's reboot group.
    pub(crate) group: String,
    /// The host's id in the protocol.
    pub(crate) id: String,
    /// Where the slot stands.
    pub(crate) state: SlotState,
    /// When it got there.
    pub(crate) since: String,
    /// The server's last refusal, or why it could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) answer: Option<String>,
}

/// Where a FleetLock slot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SlotState {
    /// Asked for and not granted: the cutover (or the reboot) waits for a
    /// later unattended run.
    Waiting,
    /// Granted: the host may cut over and reboot.
    Held,
    /// Given back after the first boot confirmed the new release.
    Released,
}

/// A service the plan stopped or disabled, so that rollback can step it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceChange {
    /// Unit name.
    pub(crate) unit: String,
    /// What the plan did (`stop`, `disable`, `mask`).
    pub(crate) action: Action,
    /// Whether it was active before.
    pub(crate) was_active: bool,
    /// Whether it was enabled before.
    pub(crate) was_enabled: bool,
    /// The system bus socket (a path in the root) for units of a running
    /// root; none for an offline root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bus: Option<String>,
    /// The application whose step changed it (its step back steps it
    /// back); none: the whole root's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) app: Option<String>,
}

/// Where one application of a plan with applications stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AppPhase {
    /// Nothing of it has run.
    NotStarted,
    /// Its sync steps ran (start and pre-copies); the old services still
    /// serve, and `migrate sync --app` may repeat them.
    Syncing,
    /// Its cutover steps started (the finish); the next `migrate run --app`
    /// continues it.
    Finishing,
    /// Its cutover steps all succeeded: the new side serves.
    Finished,
    /// Stepped back (`migrate rollback --app`): the old services serve
    /// again; a later sync and run start it over.
    SteppedBack,
}

impl AppPhase {
    /// The name in `migrate status`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AppPhase::NotStarted => "not started",
            AppPhase::Syncing => "syncing",
            AppPhase::Finishing => "finishing",
            AppPhase::Finished => "finished",
            AppPhase::SteppedBack => "stepped back",
        }
    }
}

/// One application's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppRecord {
    /// Where it stands.
    pub(crate) phase: AppPhase,
    /// When it got there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<String>,
    /// How many of its sync runs completed.
    #[serde(default)]
    pub(crate) syncs: u32,
}

/// The journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// Format version.
    pub(crate) version: u32,
    /// Id of the migration: the run id of its first changing run.
    #[serde(deserialize_with = "crate::core::ids::deserialize")]
    pub(crate) migration_id: String,
    /// Hash of the plan ([`Plan::hash`]).
    pub(crate) plan_hash: String,
    /// The image.
    pub(crate) image: ImageIdentity,
    /// The root's release before the migration.
    pub(crate) source: OsRelease,
    /// The release the image upgrades to.
    pub(crate) target: Release,
    /// Where the migration stands.
    #[serde(flatten)]
    pub(crate) lifecycle: Lifecycle,
    /// When the journal was created.
    pub(crate) created_at: String,
    /// When it was last written.
    pub(crate) updated_at: String,
    /// Every run on this migration.
    pub(crate) runs: Vec<JournalRun>,
    /// Every step of the plan, in order.
    pub(crate) steps: Vec<JournalStep>,
    /// The safety backup, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backup: Option<BackupRecord>,
    /// Services changed by the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) services: Vec<ServiceChange>,
    /// When a package transaction first began on the root (from then on
    /// the packages are no longer the backup's: a tar rollback of `/etc`
    /// alone would mix two releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) packages_changed_at: Option<String>,
    /// The host's FleetLock slot, on a host that coordinates its reboots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fleetlock: Option<FleetLockSlot>,
    /// Each application of a plan with applications, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) applications: BTreeMap<String, AppRecord>,
}

impl Journal {
    /// A journal for a migration that starts now.
    pub(crate) fn new(
        run_id: &str,
        plan: &Plan,
        image: ImageIdentity,
        source: OsRelease,
        target: Release,
    ) -> Self {
        let now = timestamp(std::time::SystemTime::now());
        Self {
            version: JOURNAL_VERSION,
            migration_id: run_id.to_string(),
            plan_hash: plan.hash(),
            image,
            source,
            target,
            lifecycle: Lifecycle(State::Checked),
            created_at: now.clone(),
            updated_at: now,
            runs: Vec::new(),
            steps: plan
                .steps
                .iter()
                .map(|s| JournalStep {
                    id: s.id.clone(),
                    phase: s.phase,
                    status: StepState::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    message: None,
                })
                .collect(),
            backup: None,
            services: Vec::new(),
            packages_changed_at: None,
            fleetlock: None,
            applications: plan
                .apps()
                .into_iter()
                .map(|a| {
                    (
                        a.to_string(),
                        AppRecord {
                            phase: AppPhase::NotStarted,
                            since: None,
                            syncs: 0,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Reads the journal of `root`, if there is one.
    pub(crate) fn load(root: &Path) -> Result<Option<Self>> {
        crate::core::fsutil::read_json_if_exists(root, STATE_PATH, "a migrate state journal")
    }

    /// Writes the journal atomically.
    pub(crate) fn save(&mut self, root: &Path) -> Result<()> {
        self.updated_at = timestamp(std::time::SystemTime::now());
        let json = serde_json::to_vec_pretty(self).context("encoding the journal")?;
        crate::core::rootfs::confined::write_atomic(root, STATE_PATH, &json)
    }

    /// Moves the journal aside (`state-MIGRATION.json`) so a new migration can
    /// start: `--force-new`.
    pub(crate) fn archive(&self, root: &Path) -> Result<()> {
        let to = STATE_PATH.replace("state.json", &format!("state-{}.json", self.migration_id));
        crate::core::rootfs::confined::rename(root, STATE_PATH, &to)
    }

    /// Whether it is unfinished (the next run continues it).
    pub(crate) fn in_progress(&self) -> bool {
        self.state().in_progress()
    }

    /// Whether a cutover step has started: from then on the root is no
    /// longer the source release as it was, and checks and pre-copies are
    /// not repeated.
    pub(crate) fn cutover_started(&self) -> bool {
        self.cutover_started_among(|_| true)
    }

    /// Whether a cutover step among those `ours` selects (by id) has
    /// started: one application's finish, in a plan with applications.
    pub(crate) fn cutover_started_among(&self, ours: impl Fn(&str) -> bool) -> bool {
        self.steps.iter().any(|s| {
            matches!(s.phase, Phase::Cutover | Phase::Post) && s.attempts > 0 && ours(&s.id)
        })
    }

    /// Moves application `app` to `phase`, now.
    pub(crate) fn set_app(&mut self, app: &str, phase: AppPhase) {
        let record = self
            .applications
            .entry(app.to_string())
            .or_insert(AppRecord {
                phase,
                since: None,
                syncs: 0,
            });
        record.phase = phase;
        record.since = Some(timestamp(std::time::SystemTime::now()));
    }

    /// Where application `app` stands.
    pub(crate) fn app_phase(&self, app: &str) -> AppPhase {
        self.applications
            .get(app)
            .map_or(AppPhase::NotStarted, |r| r.phase)
    }

    /// The entry of step `id`.
    pub(crate) fn step(&self, id: &str) -> Option<&JournalStep> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The entry of step `id`, created (pending) if the plan gained it.
    pub(crate) fn step_mut(&mut self, id: &str, phase: Phase) -> &mut JournalStep {
        let index = match self.steps.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.steps.push(JournalStep {
                    id: id.to_string(),
                    phase,
                    status: StepState::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    message: None,
                });
                self.steps.len() - 1
            }
        };
        &mut self.steps[index]
    }

    /// Where the migration stands.
    pub(crate) fn state(&self) -> State {
        self.lifecycle.0
    }

    /// Moves the migration's state ([`State::next`]).
    pub(crate) fn advance(&mut self, t: Transition) -> Result<(), InvalidTransition> {
        self.lifecycle.0 = self.state().next(t)?;
        Ok(())
    }

    /// Records that step `id` starts; the first changing step of a phase
    /// moves the migration's state.
    pub(crate) fn start_step(&mut self, id: &str, phase: Phase) -> Result<(), InvalidTransition> {
        match phase {
            // A plan with applications syncs one while another's cutover
            // has started: only the first sync moves the migration.
            Phase::Sync if self.state() == State::Checked => self.advance(Transition::Sync)?,
            Phase::Cutover if self.state() != State::CutoverStarted => {
                self.advance(Transition::StartCutover)?;
            }
            _ => {}
        }
        let s = self.step_mut(id, phase);
        s.status = StepState::Running;
        s.attempts += 1;
        s.started_at = Some(timestamp(std::time::SystemTime::now()));
        s.finished_at = None;
        s.message = None;
        Ok(())
    }

    /// Records how step `id` ended.
    pub(crate) fn finish_step(
        &mut self,
        id: &str,
        phase: Phase,
        status: StepState,
        message: Option<String>,
    ) {
        let s = self.step_mut(id, phase);
        s.status = status;
        s.finished_at = Some(timestamp(std::time::SystemTime::now()));
        s.message = message;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::plan::{PlanSource, resolve};

    fn plan() -> Plan {
        resolve(
            &PlanSource {
                name: "p".into(),
                text: "[[step]]\nid = \"c\"\nkind = \"check-package-db\"\nphase = \"check\"\n[[step]]\nid = \"u\"\nkind = \"apt\"\nphase = \"cutover\"\n".into(),
            },
            &[],
        )
        .unwrap()
    }

    #[test]
    fn step_transitions_are_persisted_and_reloaded() {
        let root = tempfile::tempdir().unwrap();
        let plan = plan();
        let mut j = Journal::new(
            "run1",
            &plan,
            ImageIdentity::default(),
            OsRelease::parse("ID=debian\nVERSION_ID=12\n"),
            "debian:13".parse().unwrap(),
        );
        assert!(!j.cutover_started());
        j.start_step("c", Phase::Check).unwrap();
        j.finish_step("c", Phase::Check, StepState::Succeeded, None);
        assert!(!j.cutover_started(), "checks do not start the cutover");
        assert_eq!(j.state(), State::Checked);
        j.start_step("u", Phase::Cutover).unwrap();
        assert_eq!(j.state(), State::CutoverStarted);
        j.save(root.path()).unwrap();
        let loaded = Journal::load(root.path()).unwrap().unwrap();
        assert_eq!(loaded.step("u").unwrap().status, StepState::Running);
        assert_eq!(loaded.step("u").unwrap().attempts, 1);
        assert!(loaded.cutover_started());
        assert_eq!(loaded.plan_hash, plan.hash());
        assert_eq!(loaded.source.version_id(), Some("12"));
    }

    #[test]
    fn applications_have_their_own_phase_and_cutover() {
        let plan = resolve(
            &PlanSource {
                name: "p".into(),
                text: "[[step]]\nid = \"a-sync\"\nkind = \"command\"\nphase = \"sync\"\napp = \"a\"\ncommand = [\"true\"]\n\
                       [[step]]\nid = \"b-sync\"\nkind = \"command\"\nphase = \"sync\"\napp = \"b\"\ncommand = [\"true\"]\n\
                       [[step]]\nid = \"a-cut\"\nkind = \"command\"\nphase = \"cutover\"\napp = \"a\"\ncommand = [\"true\"]\n"
                    .into(),
            },
            &[],
        )
        .unwrap();
        let mut j = Journal::new(
            "run1",
            &plan,
            ImageIdentity::default(),
            OsRelease::parse("ID=debian\nVERSION_ID=12\n"),
            "debian:13".parse().unwrap(),
        );
        assert_eq!(j.app_phase("a"), AppPhase::NotStarted);
        assert_eq!(j.app_phase("b"), AppPhase::NotStarted);
        j.start_step("a-sync", Phase::Sync).unwrap();
        j.start_step("a-cut", Phase::Cutover).unwrap();
        j.set_app("a", AppPhase::Finishing);
        assert_eq!(j.state(), State::CutoverStarted);
        // b still syncs: a's cutover is not b's, and the migration stays
        // where it is.
        let a_steps = ["a-sync", "a-cut"];
        assert!(j.cutover_started_among(|id| a_steps.contains(&id)));
        assert!(!j.cutover_started_among(|id| id == "b-sync"));
        j.start_step("b-sync", Phase::Sync).unwrap();
        assert_eq!(j.state(), State::CutoverStarted);
        let json = serde_json::to_value(&j).unwrap();
        assert_eq!(json["applications"]["a"]["phase"], "finishing");
        assert_eq!(json["applications"]["b"]["phase"], "not_started");
        assert!(json["applications"]["a"]["since"].is_string());
    }

    #[test]
    fn archiving_makes_room_for_a_new_migration() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::new(
            "m1",
            &plan(),
            ImageIdentity::default(),
            OsRelease::default(),
            "debian:13".parse().unwrap(),
        );
        j.save(root.path()).unwrap();
        j.archive(root.path()).unwrap();
        assert!(Journal::load(root.path()).unwrap().is_none());
        assert!(root.path().join("var/lib/migrate/state-m1.json").exists());
    }

    #[test]
    fn no_journal_is_not_an_error_but_a_broken_one_is() {
        let root = tempfile::tempdir().unwrap();
        assert!(Journal::load(root.path()).unwrap().is_none());
        std::fs::create_dir_all(root.path().join("var/lib/migrate")).unwrap();
        std::fs::write(root.path().join(STATE_PATH), "{").unwrap();
        assert!(Journal::load(root.path()).is_err());
    }
}

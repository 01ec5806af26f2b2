//! The run report, `ROOT/var/log/migrate/report.json`: what was run with which
//! image, each step with its status and duration, and the overall result. The
//! host builds it from the agent's events and writes it after every change of a
//! step, so that a crash leaves a report that says how far the run got.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::core::event::{Envelope, Event, Finding, PlannedStep, RunStatus, StepStatus, Verb};
use crate::core::phase::Phase;
use crate::core::release::Release;

/// Report location relative to the migrated root.
pub(crate) const REPORT_PATH: &str = crate::core::root_paths::RootPath::Report.rel();
/// Log location relative to the migrated root.
pub(crate) const LOG_PATH: &str = crate::core::root_paths::RootPath::Log.rel();

/// Overall result of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunResult {
    /// The run is in progress (or the host died while it was).
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed, or the agent did not finish.
    Failed,
    /// A check found an inhibitor; nothing was changed.
    Inhibited,
    /// The run was interrupted by a signal.
    Interrupted,
}

/// State of one step in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StepState {
    /// Not reached (yet).
    Pending,
    /// Started, not finished.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed.
    Failed,
    /// Nothing to do.
    Skipped,
}

impl From<StepStatus> for StepState {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Succeeded => Self::Succeeded,
            StepStatus::Failed => Self::Failed,
            StepStatus::Skipped => Self::Skipped,
        }
    }
}

/// The image a run used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct ImageInfo {
    /// The reference the user gave (or the default).
    pub(crate) reference: String,
    /// Image id.
    pub(crate) id: String,
    /// Manifest digest, when podman knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) digest: Option<String>,
    /// Whether migrate pulled the image itself (and so removes it once the
    /// migration is finished).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) pulled: bool,
}

/// The source release as found in the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct SourceInfo {
    /// `ID:VERSION_ID`.
    #[serde(flatten)]
    pub(crate) release: Release,
    /// `PRETTY_NAME`.
    pub(crate) pretty_name: String,
}

/// One step of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct StepReport {
    /// Step id.
    pub(crate) id: String,
    /// Step kind.
    pub(crate) kind: String,
    /// Phase.
    pub(crate) phase: Phase,
    /// What the step does.
    pub(crate) description: String,
    /// Where it got to.
    pub(crate) status: StepState,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<String>,
    /// How long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<u64>,
    /// Failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// Files the step keeps in the migration's backup directory (paths in
    /// the root: copies of configuration, exports, dumps), kept until
    /// cleanup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) backups: Vec<String>,
}

/// A finding of a check, with the step that found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct ReportFinding {
    /// The check step.
    pub(crate) step: String,
    /// The finding.
    #[serde(flatten)]
    pub(crate) finding: Finding,
}

/// The report of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Report {
    /// Version of `migrate` that wrote the report.
    pub(crate) migrate_version: String,
    /// Run id.
    #[serde(deserialize_with = "crate::core::ids::deserialize")]
    #[schemars(with = "String")]
    pub(crate) run_id: String,
    /// What the run did.
    pub(crate) verb: Verb,
    /// Whether it continued an interrupted migration.
    #[serde(default)]
    pub(crate) resumed: bool,
    /// Overall result.
    pub(crate) result: RunResult,
    /// The exit code `migrate` ended with (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<i32>,
    /// Why the run failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// The migrated root, as given on the command line.
    pub(crate) root: PathBuf,
    /// The migration image.
    pub(crate) image: ImageInfo,
    /// Release found in the root before the run.
    pub(crate) source: SourceInfo,
    /// Release the image upgrades to.
    pub(crate) target: Release,
    /// When the run started.
    pub(crate) started_at: String,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at: Option<String>,
    /// Wall-clock duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<u64>,
    /// Every step, in plan order.
    pub(crate) steps: Vec<StepReport>,
    /// What the checks found.
    #[serde(default)]
    pub(crate) findings: Vec<ReportFinding>,
    /// The full log, relative to the root.
    pub(crate) log: String,
    /// The agent's peak resident memory, in KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_peak_rss_kb: Option<u64>,
    /// When migrate asked for the reboot into the new release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reboot_requested_at: Option<String>,
    /// The services' downtime in the cutover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) downtime: Option<Downtime>,
    /// Whether the migrated root can boot, checked before the reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bootable: Option<Bootability>,
    /// What the first boot after the migration found (`migrate cleanup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) after_reboot: Option<AfterReboot>,
    /// The migration's safety backup as the state journal records it when
    /// the run ends: where `migrate rollback` returns to, and for a
    /// snapshot-backed migration the snapshot taken after the cutover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) safety_backup: Option<crate::core::journal::BackupRecord>,
    /// The host's FleetLock reboot slot as the run left it (unattended runs
    /// of a host configured with `fleetlock_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fleetlock: Option<crate::core::journal::FleetLockSlot>,
}

/// How the first boot into the new release went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BootResult {
    /// The new release runs, no unit failed because of the migration and
    /// the post phase succeeded.
    Confirmed,
    /// Something is wrong; `message` says what.
    Failed,
}

/// Whether a finished migration's root can boot (checked by the host when
/// the migration finishes and before it reboots): a problem holds the
/// reboot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Bootability {
    /// When it was checked (first found so: a later check with the same
    /// outcome does not rewrite it).
    pub(crate) checked_at: String,
    /// The newest kernel in `/boot` (none: the root has no kernel of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kernel: Option<String>,
    /// What would keep it from booting, one line each; empty: bootable.
    #[serde(default)]
    pub(crate) problems: Vec<String>,
    /// What was not checked, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
}

/// How long the services were down: from the start of the cutover's first
/// step that stops them to the end of its last step that starts them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Downtime {
    /// The step that stopped the services.
    pub(crate) from_step: String,
    /// The step that started them again.
    pub(crate) to_step: String,
    /// Milliseconds between the two.
    pub(crate) duration_ms: u64,
}

impl Report {
    /// Sets [`Report::downtime`] from the steps that ran: `stops` and
    /// `starts` are the ids of the plan's service steps that stop and that
    /// start (or restart) services. Nothing when either did not end well.
    pub(crate) fn measure_downtime(&mut self, stops: &[String], starts: &[String]) {
        let ms = |s: &StepReport| {
            s.started_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        // A stop with nothing to stop (skipped) still marks where the
        // window opens.
        let done = |s: &&StepReport| matches!(s.status, StepState::Succeeded | StepState::Skipped);
        let first = self
            .steps
            .iter()
            .filter(done)
            .find(|s| stops.contains(&s.id));
        let last = self
            .steps
            .iter()
            .filter(done)
            .rfind(|s| starts.contains(&s.id));
        self.downtime = match (first, last) {
            (Some(a), Some(b)) => match (ms(a), ms(b)) {
                (Some(from), Some(to)) => Some(Downtime {
                    from_step: a.id.clone(),
                    to_step: b.id.clone(),
                    duration_ms: (to + b.duration_ms.unwrap_or(0)).saturating_sub(from),
                }),
                _ => None,
            },
            _ => None,
        };
    }
}

/// The report's final part, written by `migrate cleanup` on the first boot
/// after the migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct AfterReboot {
    /// Run id of the cleanup.
    pub(crate) run_id: String,
    /// When the boot was checked.
    pub(crate) checked_at: String,
    /// The verdict.
    pub(crate) result: BootResult,
    /// Why it failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// The release the root runs now.
    pub(crate) running: SourceInfo,
    /// Units that failed on this boot and had not failed before the
    /// migration.
    #[serde(default)]
    pub(crate) failed_units: Vec<String>,
    /// The post phase.
    #[serde(default)]
    pub(crate) steps: Vec<StepReport>,
    /// What was removed: leftover containers, the image migrate pulled.
    #[serde(default)]
    pub(crate) removed: Vec<String>,
    /// What the cleanup could not do or check.
    #[serde(default)]
    pub(crate) notes: Vec<String>,
    /// The plan's health checks (`[health]`), as last tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) health: Vec<HealthCheck>,
}

/// One of the plan's health checks on the first boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct HealthCheck {
    /// What was checked: `unit NAME`, `command PROGRAM ARGS`, `port HOST:PORT`.
    pub(crate) check: String,
    /// Whether it passed.
    pub(crate) passed: bool,
    /// What was found: the unit's state, the command's exit, the connection.
    pub(crate) detail: String,
}

impl Report {
    /// A report for a run that is about to start.
    pub(crate) fn new(
        run_id: &str,
        verb: Verb,
        root: &Path,
        image: ImageInfo,
        source: SourceInfo,
        target: Release,
    ) -> Self {
        Self {
            migrate_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: run_id.to_string(),
            verb,
            resumed: false,
            result: RunResult::Running,
            exit_code: None,
            message: None,
            root: root.to_path_buf(),
            image,
            source,
            target,
            started_at: crate::core::event::timestamp(std::time::SystemTime::now()),
            finished_at: None,
            duration_ms: None,
            steps: Vec::new(),
            findings: Vec::new(),
            log: LOG_PATH.to_string(),
            agent_peak_rss_kb: None,
            reboot_requested_at: None,
            downtime: None,
            bootable: None,
            after_reboot: None,
            safety_backup: None,
            fleetlock: None,
        }
    }

    /// Updates the report with an agent event.
    pub(crate) fn apply(&mut self, envelope: &Envelope) {
        match &envelope.event {
            Event::RunStarted { steps, resumed, .. } => {
                self.steps = steps.iter().map(planned).collect();
                self.resumed = *resumed;
            }
            Event::Finding { step, finding } => self.findings.push(ReportFinding {
                step: step.clone(),
                finding: finding.clone(),
            }),
            Event::StepStarted { step } => {
                let s = self.step_mut(step);
                s.status = StepState::Running;
                s.started_at = Some(envelope.ts.clone());
            }
            Event::StepFinished {
                step,
                status,
                duration_ms,
                message,
                backups,
            } => {
                let s = self.step_mut(step);
                s.status = (*status).into();
                s.duration_ms = Some(*duration_ms);
                s.message.clone_from(message);
                if !backups.is_empty() {
                    s.backups.clone_from(backups);
                }
            }
            Event::RunFinished {
                status,
                message,
                peak_rss_kb,
            } => {
                self.result = match status {
                    RunStatus::Succeeded => RunResult::Succeeded,
                    RunStatus::Failed => RunResult::Failed,
                };
                self.message.clone_from(message);
                self.agent_peak_rss_kb = *peak_rss_kb;
            }
            Event::Output { .. } | Event::Progress { .. } => {}
        }
    }

    fn step_mut(&mut self, id: &str) -> &mut StepReport {
        let index = match self.steps.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                // A step the agent did not announce: still report it.
                self.steps.push(planned(&PlannedStep {
                    id: id.to_string(),
                    kind: String::new(),
                    phase: Phase::Cutover,
                    description: String::new(),
                }));
                self.steps.len() - 1
            }
        };
        &mut self.steps[index]
    }

    /// Records the end of the run. A run the agent did not finish is failed
    /// with `message` (or interrupted).
    pub(crate) fn finish(&mut self, result: RunResult, exit_code: i32, message: Option<String>) {
        self.result = result;
        self.exit_code = Some(exit_code);
        if message.is_some() {
            self.message = message;
        }
        let now = std::time::SystemTime::now();
        self.finished_at = Some(crate::core::event::timestamp(now));
        if let Ok(start) = humantime::parse_rfc3339(&self.started_at) {
            self.duration_ms = now
                .duration_since(start)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok());
        }
        for step in &mut self.steps {
            if step.status == StepState::Running {
                step.status = StepState::Failed;
                step.message.get_or_insert_with(|| "did not finish".into());
            }
        }
    }

    /// Moves the report of an earlier run aside (`report-RUNID.json`), so
    /// that `report.json` is always the latest run's and none is lost.
    pub(crate) fn keep_previous(root: &Path, current_run: &str) -> Result<()> {
        match Self::read(root) {
            Ok(old) if old.run_id != current_run => {
                crate::core::rootfs::confined::rename(root, REPORT_PATH, &kept(&old.run_id))
            }
            _ => Ok(()),
        }
    }

    /// Writes the report under `root` atomically (temporary file, fsync, rename).
    pub(crate) fn write(&self, root: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("encoding the report")?;
        crate::core::rootfs::confined::write_atomic(root, REPORT_PATH, &json)
    }

    /// Rewrites this run's report where it is: `report.json` if that still
    /// is this run's (or there is none), else the copy kept aside.
    pub(crate) fn update(&self, root: &Path) -> Result<()> {
        let path = match Self::read_file(root, REPORT_PATH) {
            Ok(r) if r.run_id != self.run_id => kept(&self.run_id),
            _ => REPORT_PATH.to_string(),
        };
        let json = serde_json::to_vec_pretty(self).context("encoding the report")?;
        crate::core::rootfs::confined::write_atomic(root, &path, &json)
    }

    /// Reads the report of the last run under `root`.
    pub(crate) fn read(root: &Path) -> Result<Self> {
        Self::read_file(root, REPORT_PATH)
    }

    /// Reads the report of run `run_id` under `root`: `report.json` if it is
    /// that run's, else the copy kept aside by [`Report::keep_previous`].
    pub(crate) fn read_run(root: &Path, run_id: &str) -> Result<Self> {
        match Self::read_file(root, REPORT_PATH) {
            Ok(r) if r.run_id == run_id => Ok(r),
            _ => Self::read_file(root, &kept(run_id)),
        }
    }

    fn read_file(root: &Path, rel: &str) -> Result<Self> {
        crate::core::fsutil::read_json_if_exists(root, rel, "a migrate report")?
            .with_context(|| format!("reading {}: no such file", root.join(rel).display()))
    }
}

/// Where the report of run `run_id` is kept once a later run's is
/// `report.json`.
fn kept(run_id: &str) -> String {
    REPORT_PATH.replace("report.json", &format!("report-{run_id}.json"))
}

fn planned(p: &PlannedStep) -> StepReport {
    StepReport {
        id: p.id.clone(),
        kind: p.kind.clone(),
        phase: p.phase,
        description: p.description.clone(),
        status: StepState::Pending,
        started_at: None,
        duration_ms: None,
        message: None,
        backups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report::new(
            "r1",
            Verb::Run,
            Path::new("/srv/root"),
            ImageInfo::default(),
            SourceInfo {
                release: "debian:12".parse().unwrap(),
                pretty_name: "Debian 12".into(),
            },
            "debian:13".parse().unwrap(),
        )
    }

    fn ev(event: Event) -> Envelope {
        Envelope::now(event)
    }

    #[test]
    fn the_downtime_runs_from_the_first_stop_to_the_end_of_the_last_start() {
        let mut r = report();
        let step = |id: &str, at: &str, ms: u64, status: StepState| StepReport {
            id: id.into(),
            kind: "service".into(),
            phase: Phase::Cutover,
            description: String::new(),
            status,
            started_at: Some(at.into()),
            duration_ms: Some(ms),
            message: None,
            backups: Vec::new(),
        };
        r.steps = vec![
            step(
                "stop",
                "2026-12-01T10:00:00.000Z",
                100,
                StepState::Succeeded,
            ),
            step(
                "copy",
                "2026-12-01T10:00:00.100Z",
                200,
                StepState::Succeeded,
            ),
            step(
                "start",
                "2026-12-01T10:00:00.300Z",
                50,
                StepState::Succeeded,
            ),
        ];
        let (stops, starts) = (vec!["stop".to_string()], vec!["start".to_string()]);
        r.measure_downtime(&stops, &starts);
        assert_eq!(
            r.downtime,
            Some(Downtime {
                from_step: "stop".into(),
                to_step: "start".into(),
                duration_ms: 350,
            })
        );
        // A start that did not happen: no downtime to speak of.
        r.steps[2].status = StepState::Failed;
        r.measure_downtime(&stops, &starts);
        assert_eq!(r.downtime, None);
    }

    #[test]
    fn events_drive_step_states() {
        let mut r = report();
        r.apply(&ev(Event::RunStarted {
            run_id: "r1".into(),
            verb: Verb::Run,
            resumed: false,
            source: "debian:12".parse().unwrap(),
            target: "debian:13".parse().unwrap(),
            steps: vec![
                PlannedStep {
                    id: "a".into(),
                    kind: "apt".into(),
                    phase: Phase::Cutover,
                    description: "A".into(),
                },
                PlannedStep {
                    id: "b".into(),
                    kind: "apt".into(),
                    phase: Phase::Cutover,
                    description: "B".into(),
                },
            ],
        }));
        r.apply(&ev(Event::StepStarted { step: "a".into() }));
        assert_eq!(r.steps[0].status, StepState::Running);
        r.apply(&ev(Event::StepFinished {
            step: "a".into(),
            status: StepStatus::Succeeded,
            duration_ms: 5,
            message: None,
            backups: vec!["/var/lib/migrate/backup/m/a/x.conf".into()],
        }));
        r.apply(&ev(Event::StepStarted { step: "b".into() }));
        r.finish(RunResult::Failed, 1, Some("agent died".into()));
        assert_eq!(r.steps[0].status, StepState::Succeeded);
        assert_eq!(r.steps[0].duration_ms, Some(5));
        assert_eq!(r.steps[0].backups, ["/var/lib/migrate/backup/m/a/x.conf"]);
        assert_eq!(r.steps[1].status, StepState::Failed);
        assert_eq!(r.result, RunResult::Failed);
        assert_eq!(r.exit_code, Some(1));
    }

    #[test]
    fn report_roundtrips_through_the_file() {
        let root = tempfile::tempdir().unwrap();
        let mut r = report();
        r.finish(RunResult::Succeeded, 0, None);
        r.write(root.path()).unwrap();
        assert_eq!(Report::read(root.path()).unwrap(), r);
    }

    /// docs/report.schema.json, the JSON Schema of report.json, is generated
    /// from these types: this test fails when they changed and the file did
    /// not (`UPDATE_SCHEMA=1 cargo test -p migrate report_schema` rewrites it).
    #[test]
    fn the_report_schema_in_docs_is_generated_from_the_types() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report.schema.json");
        let schema = schemars::schema_for!(Report);
        let text = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == text,
            "docs/report.schema.json is out of date: run UPDATE_SCHEMA=1 cargo test -p migrate report_schema"
        );
    }

    /// Every field the schema has is described in docs/report.md.
    #[test]
    fn docs_report_md_describes_every_field() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report.md"),
        )
        .unwrap();
        let schema = schemars::schema_for!(Report);
        let mut fields = Vec::new();
        collect_properties(schema.as_value(), &mut fields);
        for f in fields {
            assert!(
                doc.contains(&format!("`{f}`")),
                "docs/report.md does not describe `{f}`"
            );
        }
    }

    fn collect_properties(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().cloned());
                }
                for value in map.values() {
                    collect_properties(value, out);
                }
            }
            serde_json::Value::Array(items) => {
                for i in items {
                    collect_properties(i, out);
                }
            }
            _ => {}
        }
    }
}

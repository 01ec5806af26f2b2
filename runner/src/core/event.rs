//! The agent -> host event protocol: one JSON object per line on the agent's
//! standard output.
//!
//! Every line carries the protocol version `v`, a timestamp `ts` and the event
//! kind `event`. The host refuses images whose agent speaks another version (the
//! version is also an image label, so the mismatch is found before a container
//! starts). Within a version, fields are only ever added, never changed.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::core::release::Release;

/// Environment variable carrying the resolved plan (JSON) from the host to
/// the agent.
pub(crate) const PLAN_ENV: &str = "MIGRATE_PLAN";

/// Where the host's secrets for the agent (passwords a plan names by
/// environment variable) are bind-mounted in the container: a directory on
/// the host's `/run` holding [`SECRETS_FILE`], which the agent reads and
/// deletes when it starts. Never the container's environment.
pub(crate) const HOST_SECRETS_DIR: &str = "/run/migrate-host-secrets";
/// The file in [`HOST_SECRETS_DIR`]: a JSON object, variable -> value.
pub(crate) const SECRETS_FILE: &str = "secrets.json";

/// The version of this protocol spoken by this build of agent and host.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// One line of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// Protocol version.
    pub(crate) v: u32,
    /// RFC 3339 UTC time the agent emitted the event.
    pub(crate) ts: String,
    /// The event itself.
    #[serde(flatten)]
    pub(crate) event: Event,
}

/// Something that happened in the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The agent validated its plan and is about to run it.
    RunStarted {
        /// Run identifier chosen by the host.
        run_id: String,
        /// What the run does.
        #[serde(default = "default_verb")]
        verb: Verb,
        /// Whether it continues an interrupted migration.
        #[serde(default)]
        resumed: bool,
        /// The release found in the root.
        source: Release,
        /// The release the image upgrades to.
        target: Release,
        /// Every step the run will go through, in order.
        steps: Vec<PlannedStep>,
    },
    /// A step started.
    StepStarted {
        /// Step id.
        step: String,
    },
    /// A line of output of a tool run by a step (or of the agent itself).
    Output {
        /// The step the line belongs to, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// Which stream of the tool the line came from.
        stream: OutputStream,
        /// The line, without its newline.
        line: String,
    },
    /// A finding of a check step.
    Finding {
        /// The check step.
        step: String,
        /// What it found.
        #[serde(flatten)]
        finding: Finding,
    },
    /// Measured progress of a long step.
    Progress {
        /// Step id.
        step: String,
        /// Percent done, 0 to 100.
        percent: f32,
        /// What is being worked on.
        message: String,
    },
    /// A step ended.
    StepFinished {
        /// Step id.
        step: String,
        /// How it ended.
        status: StepStatus,
        /// Wall-clock duration in milliseconds.
        duration_ms: u64,
        /// For failures: one line saying what went wrong.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Files the step keeps in its backup directory (paths in the
        /// root), kept until cleanup.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backups: Vec<String>,
    },
    /// The run ended; no event follows.
    RunFinished {
        /// How the run ended.
        status: RunStatus,
        /// For failures: one line saying what went wrong and where.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// The agent's own peak resident memory, in KiB.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peak_rss_kb: Option<u64>,
    },
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verb {
    /// The check phase only; changes nothing.
    Check,
    /// What the plan would do; changes nothing.
    DryRun,
    /// Check and sync phases (repeatable while services run).
    Sync,
    /// Everything through the cutover.
    Run,
    /// Restore from the safety backup.
    Rollback,
    /// The post phase after the reboot.
    Cleanup,
    /// One application's step back (`migrate rollback --app NAME`): its
    /// rollback steps, then its old services enabled and started again.
    StepBack,
}

impl Verb {
    /// Whether runs of this verb change the root.
    pub(crate) fn changes_root(self) -> bool {
        !matches!(self, Verb::Check | Verb::DryRun)
    }

    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Verb::Check => "check",
            Verb::DryRun => "dry-run",
            Verb::Sync => "sync",
            Verb::Run => "run",
            Verb::Rollback => "rollback",
            Verb::Cleanup => "cleanup",
            Verb::StepBack => "step-back",
        }
    }
}

fn default_verb() -> Verb {
    Verb::Run
}

/// How serious a finding is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Severity {
    /// For information.
    Info,
    /// Reported; the run goes on.
    Warning,
    /// Stops the run (exit code 3) before anything is changed.
    Inhibitor,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct Finding {
    /// Stable identifier (`disk-space./var`, `held-packages`, ...).
    pub(crate) id: String,
    /// How serious it is.
    pub(crate) severity: Severity,
    /// What was found, in one line.
    pub(crate) message: String,
    /// What to do about it.
    pub(crate) hint: String,
}

/// A step as announced at the start of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlannedStep {
    /// Unique step id.
    pub(crate) id: String,
    /// Step kind (`apt`, `rsync`, ...).
    pub(crate) kind: String,
    /// Phase the step belongs to.
    #[serde(default = "default_phase")]
    pub(crate) phase: crate::core::phase::Phase,
    /// One line saying what the step does.
    pub(crate) description: String,
}

fn default_phase() -> crate::core::phase::Phase {
    crate::core::phase::Phase::Cutover
}

/// Output stream of a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StepStatus {
    /// It did what it should.
    Succeeded,
    /// It failed; the run stops.
    Failed,
    /// It had nothing to do (e.g. already done in an earlier attempt).
    Skipped,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunStatus {
    /// Every step succeeded.
    Succeeded,
    /// A step failed or the agent could not run the plan.
    Failed,
}

/// Why a line could not be decoded as an event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Not a JSON object at all: ordinary text output.
    #[error("not an event line")]
    NotAnEvent,
    /// An event from an agent speaking another protocol version.
    #[error("agent speaks event protocol version {0}, this migrate speaks {PROTOCOL_VERSION}")]
    Version(u32),
    /// A JSON object of the right version that does not fit the protocol.
    #[error("malformed event: {0}")]
    Malformed(serde_json::Error),
}

impl Envelope {
    /// Wraps an event with the current version and time.
    pub(crate) fn now(event: Event) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ts: timestamp(SystemTime::now()),
            event,
        }
    }

    /// One line of JSON, without the newline.
    pub(crate) fn encode(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"v":{PROTOCOL_VERSION},"event":"encode_error","message":"{e}"}}"#)
        })
    }

    /// Decodes one line.
    pub(crate) fn decode(line: &str) -> Result<Self, DecodeError> {
        let line = line.trim_end();
        if !line.starts_with('{') {
            return Err(DecodeError::NotAnEvent);
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|_| DecodeError::NotAnEvent)?;
        let Some(v) = value.get("v").and_then(serde_json::Value::as_u64) else {
            return Err(DecodeError::NotAnEvent);
        };
        if v != u64::from(PROTOCOL_VERSION) {
            return Err(DecodeError::Version(u32::try_from(v).unwrap_or(u32::MAX)));
        }
        serde_json::from_value(value).map_err(DecodeError::Malformed)
    }
}

/// RFC 3339 UTC timestamp with millisecond precision.
pub(crate) fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(event: Event) {
        let env = Envelope::now(event);
        let line = env.encode();
        assert!(!line.contains('\n'));
        assert_eq!(Envelope::decode(&line).unwrap(), env);
    }

    #[test]
    fn every_event_kind_roundtrips() {
        roundtrip(Event::RunStarted {
            run_id: "r1".into(),
            verb: Verb::Sync,
            resumed: true,
            source: "debian:12".parse().unwrap(),
            target: "debian:13".parse().unwrap(),
            steps: vec![PlannedStep {
                id: "upgrade".into(),
                kind: "apt".into(),
                phase: crate::core::phase::Phase::Cutover,
                description: "Upgrade packages".into(),
            }],
        });
        roundtrip(Event::Finding {
            step: "disk-space".into(),
            finding: Finding {
                id: "disk-space./var".into(),
                severity: Severity::Inhibitor,
                message: "needs 2 GB".into(),
                hint: "free space".into(),
            },
        });
        roundtrip(Event::StepStarted { step: "s".into() });
        roundtrip(Event::Output {
            step: Some("s".into()),
            stream: OutputStream::Stderr,
            line: "a \"quoted\"\tline".into(),
        });
        roundtrip(Event::Output {
            step: None,
            stream: OutputStream::Stdout,
            line: String::new(),
        });
        roundtrip(Event::Progress {
            step: "s".into(),
            percent: 42.5,
            message: "Unpacking".into(),
        });
        roundtrip(Event::StepFinished {
            step: "s".into(),
            status: StepStatus::Failed,
            duration_ms: 1234,
            message: Some("apt-get exited with 100".into()),
            backups: vec!["/var/lib/migrate/backup/m/s/export.json".into()],
        });
        roundtrip(Event::RunFinished {
            status: RunStatus::Succeeded,
            message: None,
            peak_rss_kb: Some(9000),
        });
    }

    #[test]
    fn wire_format_is_stable() {
        let env = Envelope {
            v: 1,
            ts: "2026-01-02T03:04:05.678Z".into(),
            event: Event::StepStarted {
                step: "upgrade".into(),
            },
        };
        assert_eq!(
            env.encode(),
            r#"{"v":1,"ts":"2026-01-02T03:04:05.678Z","event":"step_started","step":"upgrade"}"#
        );
    }

    #[test]
    fn plain_text_is_not_an_event() {
        for line in [
            "",
            "Reading package lists...",
            "{not json",
            "{\"no\":\"version\"}",
        ] {
            assert!(matches!(
                Envelope::decode(line),
                Err(DecodeError::NotAnEvent)
            ));
        }
    }

    #[test]
    fn other_protocol_versions_are_refused() {
        let line = r#"{"v":2,"ts":"x","event":"step_started","step":"s"}"#;
        assert!(matches!(
            Envelope::decode(line),
            Err(DecodeError::Version(2))
        ));
    }

    #[test]
    fn unknown_event_kinds_are_malformed() {
        let line = r#"{"v":1,"ts":"x","event":"teleport","step":"s"}"#;
        assert!(matches!(
            Envelope::decode(line),
            Err(DecodeError::Malformed(_))
        ));
    }
}

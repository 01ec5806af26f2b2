//! The agent: runs inside the migration image, with the root to migrate at
//! `/system-root`, and reports to the host through events on stdout.

pub mod exec;
pub mod mounts;
pub mod sink;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use crate::event::{Event, OutputStream, PlannedStep, RunStatus, StepStatus};
use crate::exit::{ExitCode, WithExitCode, exit_code_of, fail};
use crate::image::{IMAGE_DATA_DIR, ImageDefinition};
use crate::release::OsRelease;
use crate::steps::{Step, StepContext, apt};
use sink::EventSink;

/// `migrate-agent`: the migration image's entry point. Started by `migrate`;
/// not meant to be run by hand.
#[derive(Debug, Parser)]
#[command(name = "migrate-agent", version)]
pub struct AgentCli {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Run the migration of the root mounted at --root.
    Run {
        /// Where the root to migrate is mounted.
        #[arg(long, default_value = "/system-root")]
        root: PathBuf,
        /// Run id chosen by the host.
        #[arg(long, default_value = "manual")]
        run_id: String,
    },
}

/// Entry point of `migrate-agent`; returns the process exit code.
pub fn main() -> i32 {
    let cli = match AgentCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::BadInput.code()
            } else {
                0
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIGRATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .init();
    let sink = EventSink::stdout();
    let AgentCommand::Run { root, run_id } = cli.command;
    match run(&root, &run_id, &sink) {
        Ok(()) => {
            sink.emit(Event::RunFinished {
                status: RunStatus::Succeeded,
                message: None,
            });
            0
        }
        Err(e) => {
            sink.emit(Event::RunFinished {
                status: RunStatus::Failed,
                message: Some(format!("{e:#}")),
            });
            exit_code_of(&e).code()
        }
    }
}

fn run(root: &Path, run_id: &str, sink: &EventSink) -> Result<()> {
    // Before any thread exists: the kernel refuses a new mount namespace to a
    // multi-threaded process.
    mounts::enter_private_namespace().exit_code(ExitCode::Environment)?;
    if !root.join("etc").is_dir() {
        return Err(fail(
            ExitCode::Environment,
            format!("{} does not contain a root filesystem", root.display()),
        ));
    }
    let def_path = Path::new(IMAGE_DATA_DIR).join("image.toml");
    let text = std::fs::read_to_string(&def_path)
        .with_context(|| format!("reading {}", def_path.display()))
        .exit_code(ExitCode::BadInput)?;
    let def = ImageDefinition::parse(&text, &def_path.display().to_string())
        .exit_code(ExitCode::BadInput)?;
    let target = def.target_release().exit_code(ExitCode::BadInput)?;
    let source = OsRelease::read_from_root(root).exit_code(ExitCode::BadInput)?;
    let accepted = def.accepted().exit_code(ExitCode::BadInput)?;
    if !accepted.iter().any(|p| p.matches(&source.release())) {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "the root is {} ({}); this image upgrades only {}",
                source.release(),
                source.pretty_name(),
                def.accepts.join(", ")
            ),
        ));
    }

    let steps = debian_plan();
    sink.emit(Event::RunStarted {
        run_id: run_id.to_string(),
        source: source.release(),
        target,
        steps: steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id().to_string(),
                kind: s.kind().to_string(),
                description: s.description(),
            })
            .collect(),
    });

    let prepared = mounts::prepare(root).exit_code(ExitCode::Environment)?;
    for action in prepared.actions {
        sink.emit(Event::Output {
            step: None,
            stream: OutputStream::Stderr,
            line: format!("system-root: {action}"),
        });
    }

    for step in &steps {
        let ctx = StepContext {
            root,
            sink,
            step: step.id(),
            source: &source,
            target: &def.target,
        };
        sink.emit(Event::StepStarted {
            step: step.id().to_string(),
        });
        let started = Instant::now();
        let result = step.run(&ctx);
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(status) => sink.emit(Event::StepFinished {
                step: step.id().to_string(),
                status,
                duration_ms,
                message: None,
            }),
            Err(e) => {
                let message = format!("{e:#}");
                sink.emit(Event::StepFinished {
                    step: step.id().to_string(),
                    status: StepStatus::Failed,
                    duration_ms,
                    message: Some(message.clone()),
                });
                return Err(fail(
                    ExitCode::StepFailed,
                    format!("step {} failed: {message}", step.id()),
                ));
            }
        }
    }
    Ok(())
}

/// The Debian upgrade as a fixed sequence of steps.
fn debian_plan() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(apt::SwitchSources {
            id: "switch-sources".into(),
        }),
        Box::new(apt::DistUpgrade {
            id: "upgrade-packages".into(),
        }),
        Box::new(apt::VerifyRelease {
            id: "verify-release".into(),
        }),
    ]
}

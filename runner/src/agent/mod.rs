//! The agent: runs inside the migration image, with the root to migrate at
//! `/system-root`, and reports to the host through events on stdout.

pub(crate) mod exec;
pub(crate) mod executor;
pub(crate) mod mounts;
pub(crate) mod rollback;
pub(crate) mod secrets;
pub(crate) mod sink;
pub(crate) mod steps;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use crate::core::event::{Event, RunStatus, Verb};
use crate::core::exit::{ExitCode, WithExitCode, exit_code_of, fail};
use crate::core::journal::ImageIdentity;
use crate::core::plan::Plan;
use sink::EventSink;

use crate::core::event::PLAN_ENV;

/// `migrate-agent`: the migration image's entry point. Started by `migrate`;
/// not meant to be run by hand.
#[derive(Debug, Parser)]
#[command(name = "migrate-agent", version)]
pub(crate) struct AgentCli {
    #[command(subcommand)]
    command: AgentCommand,
}

/// Verbs the host can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RunVerb {
    Check,
    DryRun,
    Sync,
    Run,
    Cleanup,
    StepBack,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Run the plan (from $MIGRATE_PLAN) on the root mounted at --root.
    Run {
        /// What to do.
        #[arg(long, value_enum, default_value = "run")]
        verb: RunVerb,
        /// Where the root to migrate is mounted.
        #[arg(long, default_value = "/system-root")]
        root: PathBuf,
        /// Run id chosen by the host.
        #[arg(long, default_value = "manual")]
        run_id: String,
        /// Image reference, id and digest, for the journal.
        #[arg(long, default_value = "")]
        image_ref: String,
        #[arg(long, default_value = "")]
        image_id: String,
        #[arg(long)]
        image_digest: Option<String>,
        /// Start a new migration even if another is unfinished.
        #[arg(long)]
        force_new: bool,
        /// The root is the running host (services are reached over D-Bus).
        #[arg(long)]
        live: bool,
        /// The application of the plan the run acts on.
        #[arg(long)]
        app: Option<String>,
    },
    /// Restore the root from its safety backup.
    Rollback {
        /// Where the root is mounted.
        #[arg(long, default_value = "/system-root")]
        root: PathBuf,
        /// Run id chosen by the host.
        #[arg(long, default_value = "manual")]
        run_id: String,
        /// Restore /etc alone although packages changed since the backup.
        #[arg(long)]
        etc_only: bool,
        /// The root is a writable copy of the migration's pre-cutover
        /// snapshot, made by the host; the migrated root is mounted here
        /// (read-only) for the migration's journal, report and logs.
        #[arg(long)]
        restored_from: Option<PathBuf>,
        /// The root is the running host: a snapshot becomes the default
        /// subvolume for its next boot.
        #[arg(long)]
        live: bool,
        /// The automatic revert after a failed first boot (the journal
        /// records `reverted`).
        #[arg(long)]
        revert: bool,
    },
}

/// Entry point of `migrate-agent`; returns the process exit code.
pub(crate) fn main() -> i32 {
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
        // Its stderr is a pipe to migrate, which shows the lines as they are.
        .with_ansi(false)
        .init();
    let sink = EventSink::stdout();
    let result = dispatch(cli.command, &sink);
    // The agent's own peak memory (not its children's), in KiB on Linux.
    let peak_rss_kb = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .ok()
        .and_then(|u| u64::try_from(u.max_rss()).ok());
    match result {
        Ok(()) => {
            sink.emit(Event::RunFinished {
                status: RunStatus::Succeeded,
                message: None,
                peak_rss_kb,
            });
            0
        }
        Err(e) => {
            sink.emit(Event::RunFinished {
                status: RunStatus::Failed,
                message: Some(format!("{e:#}")),
                peak_rss_kb,
            });
            exit_code_of(&e).code()
        }
    }
}

fn dispatch(command: AgentCommand, sink: &EventSink) -> Result<()> {
    // Before any thread exists: the kernel refuses a new mount namespace to a
    // multi-threaded process.
    mounts::enter_private_namespace().exit_code(ExitCode::Environment)?;
    secrets::take_from_host().exit_code(ExitCode::Environment)?;
    match command {
        AgentCommand::Run {
            verb,
            root,
            run_id,
            image_ref,
            image_id,
            image_digest,
            force_new,
            live,
            app,
        } => {
            check_root(&root)?;
            if matches!(verb, RunVerb::Check | RunVerb::DryRun) && !live {
                // A root directory is read-only all the way down: a
                // filesystem mounted inside it is as untouchable as the root
                // itself. (The running host's mounts are its own business:
                // its /proc, /dev and /run stay as they are.)
                mounts::make_read_only(&root).exit_code(ExitCode::Environment)?;
            }
            let _one_agent = match verb {
                RunVerb::Check | RunVerb::DryRun => None,
                RunVerb::Sync | RunVerb::Run | RunVerb::Cleanup | RunVerb::StepBack => {
                    Some(one_agent(&root)?)
                }
            };
            let plan: Plan = std::env::var(PLAN_ENV)
                .map_err(|_| fail(ExitCode::BadInput, format!("${PLAN_ENV} carries no plan")))
                .and_then(|json| {
                    serde_json::from_str(&json)
                        .with_context(|| format!("parsing the plan in ${PLAN_ENV}"))
                        .exit_code(ExitCode::BadInput)
                })?;
            let def = executor::image_definition()?;
            executor::execute(
                executor::Request {
                    verb: match verb {
                        RunVerb::Check => Verb::Check,
                        RunVerb::DryRun => Verb::DryRun,
                        RunVerb::Sync => Verb::Sync,
                        RunVerb::Run => Verb::Run,
                        RunVerb::Cleanup => Verb::Cleanup,
                        RunVerb::StepBack => Verb::StepBack,
                    },
                    root,
                    run_id,
                    image: ImageIdentity {
                        reference: image_ref,
                        id: image_id,
                        digest: image_digest,
                        pulled: false,
                    },
                    plan,
                    force_new,
                    live,
                    app,
                },
                &def,
                sink,
            )
        }
        AgentCommand::Rollback {
            root,
            run_id,
            etc_only,
            restored_from,
            live,
            revert,
        } => {
            check_root(&root)?;
            let _one_agent = one_agent(&root)?;
            let _migrated = restored_from.as_deref().map(one_agent).transpose()?;
            let how = rollback::How {
                etc_only,
                restored_from: restored_from.as_deref(),
                live,
                revert,
            };
            rollback::rollback(&root, &run_id, &how, sink)
        }
    }
}

/// One agent per root, whatever dies: an exclusive `flock` on the root's
/// `var/lib` directory for the agent's whole life, released by the kernel
/// when it ends. (The host holds one on the root directory itself, which a
/// `migrate` that died releases while its agent goes on; this one is the
/// agent's own.) Locking a directory creates nothing in the root.
fn one_agent(root: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = root.join("var/lib");
    let file = std::fs::File::open(&dir)
        .with_context(|| format!("opening {}", dir.display()))
        .exit_code(ExitCode::Environment)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        fail(
            ExitCode::Environment,
            if e == nix::errno::Errno::EWOULDBLOCK {
                "another migrate agent is working on this root; `migrate run` re-attaches to it"
                    .to_string()
            } else {
                format!("locking {}: {e}", dir.display())
            },
        )
    })
}

fn check_root(root: &std::path::Path) -> Result<()> {
    if root.join("etc").is_dir() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::Environment,
            format!("{} does not contain a root filesystem", root.display()),
        ))
    }
}

//! The `migrate` command line: one options struct per verb, shared groups
//! flattened in, so that each verb's `--help` shows only what applies to it
//! and a flag on a verb it does not apply to is refused.

use std::path::PathBuf;

use anyhow::Result;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand};

use super::cleanup::{CleanupOptions, cleanup};
use super::image_cmd::{self, BuildOptions};
use super::render::OutputFormat;
use super::run::{self, LaunchOptions, Reboot};
use super::unattended::{UnattendedOptions, unattended};
use crate::core::event::Verb;
use crate::core::exit::{ExitCode, fail};

/// Upgrade a Linux host (or a root filesystem) to a new release from inside a
/// migration container built from the target release.
///
/// The host keeps running while the migration container, started with the
/// root bind-mounted at /system-root, runs the plan: checks, then the sync
/// phase (repeatable while services run), then the cutover. An interrupted
/// run continues where it stopped; `migrate rollback` returns to the safety
/// backup taken before the cutover.
///
/// A finished migration waits for one reboot (`--reboot` asks logind for
/// it); on the first boot after it, migrate-cleanup.service runs `migrate
/// cleanup`. migrate.service runs `migrate --unattended` with the host
/// configuration, /etc/migrate/config.toml.
///
/// Without a verb, migrate runs `run` with the options given.
///
/// Exit codes: 0 succeeded, 1 a step failed, 2 bad usage or input
/// (incompatible root or image, invalid plan or configuration), 3 a check
/// stopped the run, 4 environment problem (no podman, not root, another run
/// holds the lock).
#[derive(Debug, Parser)]
#[command(
    name = "migrate",
    version,
    propagate_version = true,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    /// The options of `run`, the default verb.
    #[command(flatten)]
    run: RunArgs,
    /// What to do (default: run).
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--root`.
#[derive(Debug, Args)]
struct RootArgs {
    /// The root filesystem to migrate: `/` for this host, or a directory
    /// holding another root.
    #[arg(long, default_value = "/", value_name = "PATH")]
    root: PathBuf,
}

/// `--output` and `-v`.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Output format: `human` (live progress on a terminal, plain lines
    /// otherwise) or `json` (one JSON document per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// More detail: show every line of tool output (-v), debug logs of the
    /// agent (-vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The image and the configuration naming one.
#[derive(Debug, Args)]
struct ImageArgs {
    /// Migration image to use (default: the image of an unfinished
    /// migration, else the built-in image for the root's release, e.g.
    /// localhost/migrate/debian-13:latest for Debian 12). Pulled when it
    /// names a registry host or an archive (oci-archive:PATH); pinned with
    /// @sha256:DIGEST it is that image or none (a tag that moved, or an
    /// archive holding another image, is refused).
    #[arg(long, value_name = "REF", value_parser = image_reference)]
    image: Option<String>,
    /// Host configuration to use instead of ROOT/etc/migrate/config.toml
    /// (drop-ins in ROOT/etc/migrate/config.d/*.toml still apply). Its
    /// `image` and `plan` apply to every run; the rest to --unattended.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What the plan runs: the image, the plan, the configuration.
#[derive(Debug, Args)]
struct PlanArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Plan file replacing the image's plan (drop-ins in
    /// ROOT/etc/migrate/plan.d/*.toml still apply).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
}

/// `--app`.
#[derive(Debug, Args)]
struct AppArgs {
    /// Act on one application of a plan whose steps belong to applications
    /// (`app` on its steps): its steps and the root's own, nothing of the
    /// others. Such a plan moves its applications one at a time.
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
}

/// `migrate run` (and `migrate` without a verb).
#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    plan: PlanArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Once the migration finished, reboot into the new release through
    /// logind (an orderly reboot, after a wall message). Also reboots a
    /// finished migration that still waits for its reboot.
    #[arg(long, conflicts_with = "app")]
    reboot: bool,
    /// Run as the configuration says, without prompting (what
    /// migrate.service does): nothing when disabled, else the checks
    /// (mode = "check") or the migration (mode = "run", whose checks run
    /// first), with the outcome recorded in report.json and the journal;
    /// cuts over and reboots only inside the maintenance window, and with
    /// fleetlock_url only holding a reboot slot from that FleetLock server.
    #[arg(long, conflicts_with_all = ["dry_run", "app"])]
    unattended: bool,
    /// Show the resolved plan and what each step would do (package manager
    /// simulation); change nothing.
    #[arg(long, conflicts_with = "reboot")]
    dry_run: bool,
    #[command(flatten)]
    new: NewArgs,
    #[command(flatten)]
    app: AppArgs,
}

/// `--force-new`.
#[derive(Debug, Args)]
struct NewArgs {
    /// Start a new migration even though another one is unfinished on this
    /// root (its journal is kept as state-ID.json).
    #[arg(long)]
    force_new: bool,
}

/// `migrate check`.
#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    plan: PlanArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// `migrate sync`.
#[derive(Debug, Args)]
struct SyncArgs {
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    plan: PlanArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    new: NewArgs,
    #[command(flatten)]
    app: AppArgs,
}

/// `migrate rollback`.
#[derive(Debug, Args)]
struct RollbackArgs {
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    image: ImageArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Restore /etc alone although the migration already changed packages
    /// and its backup is no snapshot: the old release's configuration over
    /// the new release's programs. Recorded as a partial rollback, exit 1.
    /// Without it, such a rollback is refused (exit 3) and nothing changes.
    #[arg(long, conflicts_with = "app")]
    etc_only: bool,
    /// Reboot once the rollback is done: the running host, rolled back
    /// from a btrfs or snapper snapshot, boots the restored system (through
    /// logind, announced with a wall message).
    #[arg(long, conflicts_with = "app")]
    reboot: bool,
    /// Step one application back instead of restoring the root: its
    /// `rollback` steps (e.g. stop the new side), then the services its
    /// steps stopped or disabled enabled and started again; the root and
    /// the other applications are left as they are.
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
    /// The plan the application moved with (as given to `migrate run
    /// --app`), for its rollback steps.
    #[arg(long, value_name = "FILE", requires = "app")]
    plan: Option<PathBuf>,
}

/// `migrate status`.
#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Output format: `human` or `json` (one document).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `migrate cleanup`.
#[derive(Debug, Args)]
struct CleanupArgs {
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// The verbs.
#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the root: checks, sync and cutover (continues an interrupted
    /// migration).
    Run(RunArgs),
    /// Run only the checks; change nothing. Exit code 3 if one inhibits.
    Check(CheckArgs),
    /// Run the checks and the sync phase (pre-copies); repeat while services
    /// keep running, then `migrate run` does the cutover.
    Sync(SyncArgs),
    /// Show where the current or last migration stands, step by step.
    Status(StatusArgs),
    /// Restore the root from the safety backup taken before the cutover, and
    /// say what could not be restored.
    Rollback(RollbackArgs),
    /// On the first boot after a migration (migrate-cleanup.service): run the
    /// plan's post phase, check the new release is healthy, remove what the
    /// migration left in podman, finalize report.json. Runs once.
    Cleanup(CleanupArgs),
    /// Build, list and inspect migration images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Write the man pages and shell completions into DIR (packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write man/ and completions/.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `migrate image ...`.
#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build a migration image from a built-in definition (e.g. debian-13)
    /// or a definition directory.
    ///
    /// Sends the Containerfile, the definition and the static migrate-agent
    /// binary to podman as the build context, and labels the image with the
    /// release it upgrades to, the releases it accepts and its plan. A
    /// definition directory holds image.toml, plan.toml, a Containerfile and
    /// any files the Containerfile copies from image/.
    Build {
        /// Name of a built-in definition, or a definition directory.
        #[arg(value_name = "TARGET")]
        target: String,
        /// Base image built from the target release (the Containerfile's BASE).
        #[arg(long, value_name = "REF", value_parser = image_reference)]
        base: Option<String>,
        /// Tag of the new image (default: the definition's default tag).
        #[arg(long, value_name = "REF")]
        tag: Option<String>,
        /// The static migrate-agent binary (default: beside this executable,
        /// or $MIGRATE_AGENT).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Output format: `human` or `json`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// List the migration images podman has.
    List {
        /// Output format: `human` or `json`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// Show what a migration image's labels say.
    Inspect {
        /// Image reference.
        #[arg(value_name = "REF", value_parser = image_reference)]
        reference: String,
        /// Output format: `human` or `json`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
}

/// `--image`: checked before anything uses it.
fn image_reference(s: &str) -> Result<String, String> {
    crate::core::image::check_reference(s).map(|()| s.to_string())
}

/// Parses the command line. On `--help` and `--version` prints them and
/// gives exit code 0; on bad usage prints one line and gives exit code 2.
pub(crate) fn parse() -> Result<Cli, std::process::ExitCode> {
    parse_from(std::env::args_os()).map_err(|e| match e {
        Usage::Shown => std::process::ExitCode::SUCCESS,
        Usage::Bad(line) => {
            eprintln!("error: {}", crate::host::render::printable(&line));
            std::process::ExitCode::from(2)
        }
    })
}

/// Why parsing ended without a command to run.
#[derive(Debug)]
enum Usage {
    /// Help or version was printed.
    Shown,
    /// Bad usage, in one line.
    Bad(String),
}

fn parse_from<I, T>(args: I) -> Result<Cli, Usage>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(verb_first(args.into_iter().map(Into::into).collect())) {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            Err(Usage::Shown)
        }
        Err(e) => Err(Usage::Bad(usage_line(&e))),
    }
}

/// The options that take a value as the next argument.
const WITH_VALUE: [&str; 8] = [
    "--root", "--image", "--plan", "--config", "--output", "--base", "--tag", "--agent",
];

/// `migrate [OPTIONS] VERB [ARGS]` read as `migrate VERB [OPTIONS] [ARGS]`:
/// options may come before the verb, as they always could; each verb still
/// takes only its own. Without a verb, nothing moves (`run` is the default).
fn verb_first(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let verbs = [
        "run", "check", "sync", "status", "rollback", "cleanup", "image",
    ];
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            return args;
        }
        if verbs.contains(&a.as_ref()) {
            break;
        }
        if !a.starts_with('-') {
            return args; // a value clap will judge
        }
        i += if WITH_VALUE.contains(&a.as_ref()) {
            2
        } else {
            1
        };
    }
    if i <= 1 || i >= args.len() {
        return args;
    }
    // `image` has verbs of its own: the options go after those.
    let verb_end = if args[i] == "image" && i + 1 < args.len() {
        i + 2
    } else {
        i + 1
    };
    let mut out = vec![args[0].clone()];
    out.extend_from_slice(&args[i..verb_end]);
    out.extend_from_slice(&args[1..i]);
    out.extend_from_slice(&args[verb_end..]);
    out
}

/// A clap error as one line; a flag given to a verb it does not belong to
/// names the verbs that take it.
fn usage_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
    {
        let flag = arg.split('=').next().unwrap_or(arg);
        let verbs = verbs_taking(flag);
        if !verbs.is_empty() {
            let names: Vec<String> = verbs.iter().map(|v| format!("`migrate {v}`")).collect();
            return format!("{flag} applies to {} only", names.join(" and "));
        }
    }
    if e.kind() == ErrorKind::ValueValidation
        && let (Some(ContextValue::String(arg)), Some(why)) =
            (e.get(ContextKind::InvalidArg), std::error::Error::source(e))
    {
        // Our own reason, which quotes the value safely (it may hold a
        // newline).
        let flag = arg.split(' ').next().unwrap_or(arg);
        return format!("{flag}: {why}");
    }
    // clap's own message is several lines; the first says it.
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid usage").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see migrate --help)")
}

/// The verbs (subcommands of `migrate`) that take the long flag `flag`.
fn verbs_taking(flag: &str) -> Vec<String> {
    let Some(long) = flag.strip_prefix("--") else {
        return Vec::new();
    };
    Cli::command()
        .get_subcommands()
        .filter(|verb| verb.get_arguments().any(|a| a.get_long() == Some(long)))
        .map(|verb| verb.get_name().to_string())
        .collect()
}

impl Cli {
    /// The `-v` count of the verb.
    pub(crate) fn verbose(&self) -> u8 {
        match &self.command {
            None => self.run.out.verbose,
            Some(Command::Run(a)) => a.out.verbose,
            Some(Command::Check(a)) => a.out.verbose,
            Some(Command::Sync(a)) => a.out.verbose,
            Some(Command::Rollback(a)) => a.out.verbose,
            Some(Command::Cleanup(a)) => a.out.verbose,
            Some(Command::Status(_) | Command::Image(_) | Command::GenerateDocs { .. }) => 0,
        }
    }

    /// Runs the chosen verb.
    pub(crate) async fn exec(self) -> Result<()> {
        let command = match self.command {
            Some(c) => c,
            None => Command::Run(self.run),
        };
        match command {
            Command::Run(a) => run(a).await,
            Command::Check(a) => {
                launch_verb(Verb::Check, a.root, a.plan, a.out, Tweaks::default()).await
            }
            Command::Sync(a) => {
                launch_verb(
                    Verb::Sync,
                    a.root,
                    a.plan,
                    a.out,
                    Tweaks {
                        force_new: a.new.force_new,
                        app: a.app.app,
                        ..Tweaks::default()
                    },
                )
                .await
            }
            Command::Rollback(a) if a.app.is_some() => {
                let plan = PlanArgs {
                    image: a.image,
                    plan: a.plan,
                };
                launch_verb(
                    Verb::StepBack,
                    a.root,
                    plan,
                    a.out,
                    Tweaks {
                        app: a.app,
                        ..Tweaks::default()
                    },
                )
                .await
            }
            Command::Rollback(a) => {
                let plan = PlanArgs {
                    image: a.image,
                    plan: None,
                };
                launch_verb(
                    Verb::Rollback,
                    a.root,
                    plan,
                    a.out,
                    Tweaks {
                        etc_only: a.etc_only,
                        reboot: if a.reboot { Reboot::Now } else { Reboot::No },
                        ..Tweaks::default()
                    },
                )
                .await
            }
            Command::Cleanup(a) => {
                cleanup(&CleanupOptions {
                    root: a.root.root,
                    output: a.out.output,
                    verbose: a.out.verbose,
                })
                .await
            }
            Command::Status(a) => super::status::status(&a.root.root, a.output),
            Command::GenerateDocs { dir } => super::docs::generate(&dir),
            Command::Image(ImageCommand::Build {
                target,
                base,
                tag,
                agent,
                output,
            }) => {
                image_cmd::build(&BuildOptions {
                    target,
                    base,
                    tag,
                    agent,
                    output,
                })
                .await
            }
            Command::Image(ImageCommand::List { output }) => image_cmd::list(output).await,
            Command::Image(ImageCommand::Inspect { reference, output }) => {
                image_cmd::inspect(&reference, output).await
            }
        }
    }
}

/// `migrate run`: unattended, a dry run or the migration.
async fn run(a: RunArgs) -> Result<()> {
    if a.unattended {
        return unattended(&UnattendedOptions {
            root: a.root.root,
            config: a.plan.image.config,
            image: a.plan.image.image,
            plan: a.plan.plan,
            reboot: a.reboot,
            output: a.out.output,
            verbose: a.out.verbose,
        })
        .await;
    }
    let verb = if a.dry_run { Verb::DryRun } else { Verb::Run };
    let reboot = if a.reboot { Reboot::Now } else { Reboot::No };
    let tweaks = Tweaks {
        force_new: a.new.force_new,
        reboot,
        app: a.app.app,
        ..Tweaks::default()
    };
    launch_verb(verb, a.root, a.plan, a.out, tweaks).await
}

/// What a verb adds to the options every verb shares.
#[derive(Debug, Default)]
struct Tweaks {
    /// `--force-new`.
    force_new: bool,
    /// `--reboot`.
    reboot: Reboot,
    /// `rollback --etc-only`.
    etc_only: bool,
    /// `--app`.
    app: Option<String>,
}

/// The verbs that run the agent in a migration container.
async fn launch_verb(
    verb: Verb,
    root: RootArgs,
    plan: PlanArgs,
    out: OutputArgs,
    tweaks: Tweaks,
) -> Result<()> {
    // The configuration's image and plan apply to every run.
    let config = super::config::load(&root.root, plan.image.config.as_deref())
        .map_err(|e| fail(ExitCode::BadInput, format!("configuration: {e:#}")))?;
    let mut opts = LaunchOptions::new(verb, root.root);
    opts.image = plan.image.image;
    opts.default_image = config.image;
    opts.metrics_dir = config.metrics_dir;
    opts.plan = plan
        .plan
        .map(crate::core::plan::PlanFile::Host)
        .or(config.plan);
    opts.output = out.output;
    opts.verbose = out.verbose;
    opts.force_new = tweaks.force_new;
    opts.reboot = tweaks.reboot;
    opts.etc_only = tweaks.etc_only;
    opts.app = tweaks.app;
    run::launch(&opts).await
}

#[cfg(test)]
mod tests;

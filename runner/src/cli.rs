//! The `migrate` command line.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::event::Verb;
use crate::exit::{ExitCode, fail};
use crate::host::cleanup::{CleanupOptions, cleanup};
use crate::host::image_cmd::{self, BuildOptions};
use crate::host::launch::{self, LaunchOptions, Reboot};
use crate::host::render::OutputFormat;
use crate::host::unattended::{UnattendedOptions, unattended};

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
/// Exit codes: 0 succeeded, 1 a step failed, 2 bad usage or input
/// (incompatible root or image, invalid plan or configuration), 3 a check
/// stopped the run, 4 environment problem (no podman, not root, another run
/// holds the lock).
#[derive(Debug, Parser)]
#[command(
    name = "migrate",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options that every verb takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The root filesystem to migrate: `/` for this host, or a directory
    /// holding another root.
    #[arg(long, global = true, default_value = "/", value_name = "PATH")]
    pub root: PathBuf,
    /// Migration image to use (default: the image of an unfinished
    /// migration, else the built-in image for the root's release, e.g.
    /// localhost/migrate/debian-13:latest for Debian 12).
    #[arg(long, global = true, value_name = "REF")]
    pub image: Option<String>,
    /// Plan file replacing the image's plan (drop-ins in
    /// ROOT/etc/migrate/plan.d/*.toml still apply).
    #[arg(long, global = true, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Host configuration to use instead of ROOT/etc/migrate/config.toml
    /// (drop-ins in ROOT/etc/migrate/config.d/*.toml still apply). Its
    /// `image` and `plan` apply to every run; the rest to --unattended.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With run: once the migration finished, reboot into the new release
    /// through logind (an orderly reboot, after a wall message). Also
    /// reboots a finished migration that still waits for its reboot.
    #[arg(long, global = true)]
    pub reboot: bool,
    /// Run as the configuration says, without prompting (what
    /// migrate.service does): nothing when disabled, else the checks
    /// (mode = "check") or the migration (mode = "run"), with the outcome
    /// recorded in report.json and the journal; reboots only inside the
    /// maintenance window.
    #[arg(long, global = true)]
    pub unattended: bool,
    /// With run: show the resolved plan and what each step would do
    /// (package manager simulation); change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Start a new migration even though another one is unfinished on this
    /// root (its journal is kept as state-ID.json).
    #[arg(long, global = true)]
    pub force_new: bool,
    /// Output format: `human` (live progress on a terminal, plain lines
    /// otherwise) or `json` (one event per line).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// More detail: show every line of tool output (-v), debug logs of the
    /// agent (-vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the root: checks, sync and cutover (continues an interrupted
    /// migration).
    Run,
    /// Run only the checks; change nothing. Exit code 3 if one inhibits.
    Check,
    /// Run the checks and the sync phase (pre-copies); repeat while services
    /// keep running, then `migrate run` does the cutover.
    Sync,
    /// Show where the current or last migration stands, step by step.
    Status,
    /// Restore the root from the safety backup taken before the cutover, and
    /// say what could not be restored.
    Rollback,
    /// On the first boot after a migration (migrate-cleanup.service): run the
    /// plan's post phase, check the new release is healthy, remove what the
    /// migration left in podman, finalize report.json. Runs once.
    Cleanup,
    /// Build, list and inspect migration images.
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `migrate image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
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
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// Tag of the new image (default: the definition's default tag).
        #[arg(long, value_name = "REF")]
        tag: Option<String>,
        /// The static migrate-agent binary (default: beside this executable,
        /// or $MIGRATE_AGENT).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
    /// List the migration images podman has.
    List,
    /// Show what a migration image's labels say.
    Inspect {
        /// Image reference.
        #[arg(value_name = "REF")]
        reference: String,
    },
}

impl Cli {
    /// Runs the chosen verb.
    pub async fn exec(self) -> Result<()> {
        let g = self.global;
        let command = self.command.unwrap_or(Command::Run);
        let run_only = |flag: &str| {
            fail(
                ExitCode::BadInput,
                format!("{flag} applies to `migrate run` only"),
            )
        };
        let is_run = matches!(command, Command::Run);
        if g.dry_run && !is_run {
            return Err(run_only("--dry-run"));
        }
        if g.reboot && !is_run {
            return Err(run_only("--reboot"));
        }
        if g.unattended && !is_run {
            return Err(run_only("--unattended"));
        }
        if g.dry_run && (g.reboot || g.unattended) {
            return Err(fail(
                ExitCode::BadInput,
                "--dry-run changes nothing; it does not go with --reboot or --unattended",
            ));
        }
        let verb = match &command {
            Command::Run if g.unattended => {
                return unattended(&UnattendedOptions {
                    root: g.root,
                    config: g.config,
                    image: g.image,
                    plan: g.plan,
                    reboot: g.reboot,
                    output: g.output,
                    verbose: g.verbose,
                })
                .await;
            }
            Command::Run if g.dry_run => Verb::DryRun,
            Command::Run => Verb::Run,
            Command::Check => Verb::Check,
            Command::Sync => Verb::Sync,
            Command::Rollback => Verb::Rollback,
            Command::Cleanup => {
                return cleanup(&CleanupOptions {
                    root: g.root,
                    output: g.output,
                    verbose: g.verbose,
                })
                .await;
            }
            Command::Status => return crate::host::status::status(&g.root, g.output),
            Command::Image(ImageCommand::Build {
                target,
                base,
                tag,
                agent,
            }) => {
                return image_cmd::build(&BuildOptions {
                    target: target.clone(),
                    base: base.clone(),
                    tag: tag.clone(),
                    agent: agent.clone(),
                    output: g.output,
                })
                .await;
            }
            Command::Image(ImageCommand::List) => return image_cmd::list(g.output).await,
            Command::Image(ImageCommand::Inspect { reference }) => {
                return image_cmd::inspect(reference, g.output).await;
            }
        };
        // The configuration's image and plan apply to every run.
        let config = crate::host::config::load(&g.root, g.config.as_deref())
            .map_err(|e| fail(ExitCode::BadInput, format!("configuration: {e:#}")))?;
        let mut opts = LaunchOptions::new(verb, g.root);
        opts.image = g.image;
        opts.default_image = config.image;
        opts.plan = g.plan.or(config.plan);
        opts.output = g.output;
        opts.verbose = g.verbose;
        opts.force_new = g.force_new;
        if g.reboot {
            opts.reboot = Reboot::Now;
        }
        launch::launch(&opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("migrate").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_verb_with_root_slash() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.global.root, PathBuf::from("/"));
        assert_eq!(cli.global.output, OutputFormat::Human);
    }

    #[test]
    fn global_options_go_before_or_after_the_verb() {
        let cli = parse(&[
            "run", "--root", "/srv/r", "--image", "img", "--output", "json", "-vv",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Run)));
        assert_eq!(cli.global.root, PathBuf::from("/srv/r"));
        assert_eq!(cli.global.image.as_deref(), Some("img"));
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.verbose, 2);
        let cli = parse(&["--root", "/srv/r", "run"]).unwrap();
        assert_eq!(cli.global.root, PathBuf::from("/srv/r"));
    }

    #[test]
    fn image_build_takes_target_base_and_tag() {
        let cli = parse(&[
            "image",
            "build",
            "debian-13",
            "--base",
            "localhost/debian:13",
            "--tag",
            "t:1",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Image(ImageCommand::Build {
                target,
                base,
                tag,
                agent,
            })) => {
                assert_eq!(target, "debian-13");
                assert_eq!(base.as_deref(), Some("localhost/debian:13"));
                assert_eq!(tag.as_deref(), Some("t:1"));
                assert!(agent.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_verb_parses() {
        for (args, check) in [
            (&["check"][..], "Check"),
            (&["sync"], "Sync"),
            (&["status"], "Status"),
            (&["rollback"], "Rollback"),
            (&["cleanup"], "Cleanup"),
            (&["image", "list"], "Image"),
        ] {
            let cli = parse(args).unwrap();
            assert!(format!("{:?}", cli.command).contains(check), "{args:?}");
        }
        let cli = parse(&["run", "--dry-run", "--plan", "/p.toml", "--force-new"]).unwrap();
        assert!(cli.global.dry_run && cli.global.force_new);
        assert_eq!(cli.global.plan, Some(PathBuf::from("/p.toml")));
        let cli = parse(&["--unattended", "--reboot", "--config", "/c.toml"]).unwrap();
        assert!(cli.command.is_none() && cli.global.unattended && cli.global.reboot);
        assert_eq!(cli.global.config, Some(PathBuf::from("/c.toml")));
    }

    #[test]
    fn bad_usage_is_exit_code_2() {
        for args in [
            &["--output", "xml"][..],
            &["frobnicate"],
            &["image", "build"],
            &["run", "--root"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn help_fits_in_100_columns() {
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        for line in help.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line:?}");
        }
    }
}

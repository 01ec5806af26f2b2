//! The command line: per-verb options, one-line usage errors, help.

use super::*;

fn parse(args: &[&str]) -> Result<Cli, Usage> {
    parse_from(std::iter::once("migrate").chain(args.iter().copied()))
}

fn bad(args: &[&str]) -> String {
    match parse(args) {
        Err(Usage::Bad(line)) => line,
        other => panic!("{args:?} parsed: {other:?}"),
    }
}

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn run_is_the_default_verb_with_root_slash() {
    let cli = parse(&[]).unwrap();
    assert!(cli.command.is_none());
    assert_eq!(cli.run.root.root, PathBuf::from("/"));
    assert_eq!(cli.run.out.output, OutputFormat::Human);
    let cli = parse(&["--unattended", "--reboot", "--config", "/c.toml"]).unwrap();
    assert!(cli.command.is_none() && cli.run.unattended && cli.run.reboot);
    assert_eq!(cli.run.plan.image.config, Some(PathBuf::from("/c.toml")));
}

#[test]
fn run_takes_its_options_after_the_verb() {
    let cli = parse(&[
        "run",
        "--root",
        "/srv/r",
        "--image",
        "img",
        "--output",
        "json",
        "-vv",
        "--dry-run",
        "--plan",
        "/p.toml",
        "--force-new",
    ])
    .unwrap();
    let Some(Command::Run(a)) = &cli.command else {
        panic!("{cli:?}")
    };
    assert_eq!(a.root.root, PathBuf::from("/srv/r"));
    assert_eq!(a.plan.image.image.as_deref(), Some("img"));
    assert_eq!(a.plan.plan, Some(PathBuf::from("/p.toml")));
    assert_eq!(a.out.output, OutputFormat::Json);
    assert!(a.dry_run && a.new.force_new);
    assert_eq!(cli.verbose(), 2);
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
            ..
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
    for args in [
        &["check", "--root", "/r", "--plan", "/p"][..],
        &["sync", "--force-new"],
        &["status", "--output", "json"],
        &["rollback", "--image", "i"],
        &["cleanup", "-v"],
        &["image", "list"],
        &["image", "inspect", "x", "--output", "json"],
    ] {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e:?}"));
    }
}

#[test]
fn a_flag_of_another_verb_is_one_line_naming_the_verbs_that_take_it() {
    assert_eq!(
        bad(&["check", "--dry-run"]),
        "--dry-run applies to `migrate run` only"
    );
    assert!(
        bad(&["run", "--etc-only"]).contains("`migrate rollback` only"),
        "{}",
        bad(&["run", "--etc-only"])
    );
    assert_eq!(
        bad(&["status", "--force-new"]),
        "--force-new applies to `migrate run` and `migrate sync` only"
    );
    assert_eq!(
        bad(&["image", "build", "x", "--reboot"]),
        "--reboot applies to `migrate run` and `migrate rollback` only"
    );
    assert_eq!(
        bad(&["cleanup", "--unattended"]),
        "--unattended applies to `migrate run` only"
    );
    assert!(bad(&["status", "--plan", "p"]).starts_with("--plan applies to `migrate run`"));
}

#[test]
fn options_that_contradict_each_other_are_refused() {
    for args in [
        &["run", "--dry-run", "--reboot"][..],
        &["run", "--dry-run", "--unattended"],
        &["--dry-run", "--reboot"],
    ] {
        let line = bad(args);
        assert!(line.contains("cannot be used with"), "{args:?}: {line}");
        assert_eq!(line.lines().count(), 1);
    }
}

#[test]
fn bad_usage_is_one_line() {
    for args in [
        &["--output", "xml"][..],
        &["frobnicate"],
        &["image", "build"],
        &["run", "--root"],
        &["--reboot", "check"],
    ] {
        let line = bad(args);
        assert_eq!(line.lines().count(), 1, "{args:?}: {line}");
    }
}

#[test]
fn each_verb_help_shows_only_its_options() {
    let mut cmd = Cli::command();
    let help = |cmd: &mut clap::Command, verb: &str| {
        cmd.find_subcommand_mut(verb)
            .unwrap()
            .render_long_help()
            .to_string()
    };
    let status = help(&mut cmd, "status");
    for flag in [
        "--reboot",
        "--unattended",
        "--dry-run",
        "--force-new",
        "--plan",
    ] {
        assert!(!status.contains(flag), "status --help shows {flag}");
    }
    let run = help(&mut cmd, "run");
    for flag in [
        "--reboot",
        "--unattended",
        "--dry-run",
        "--force-new",
        "--plan",
    ] {
        assert!(run.contains(flag), "run --help lacks {flag}");
    }
    let image = cmd.find_subcommand_mut("image").unwrap();
    let build = image
        .find_subcommand_mut("build")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(
        !build.contains("--root") && !build.contains("--reboot"),
        "{build}"
    );
}

#[test]
fn help_fits_in_100_columns() {
    let mut cmd = Cli::command();
    let mut helps = vec![cmd.render_long_help().to_string()];
    for verb in ["run", "check", "sync", "status", "rollback", "cleanup"] {
        let sub = cmd.find_subcommand_mut(verb).unwrap();
        helps.push(sub.render_long_help().to_string());
    }
    for help in helps {
        for line in help.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line:?}");
        }
    }
}

#[test]
fn a_bad_image_reference_is_one_line_and_never_reaches_podman() {
    for (image, says) in [
        (
            "!!x",
            "--image: image reference \"!!x\": invalid reference format",
        ),
        (
            "a\nb",
            "--image: image reference \"a\\nb\" has spaces or control characters",
        ),
        ("", "--image: an image reference must not be empty"),
        (
            "oci-archive:/nonexistent.tar",
            "--image: oci-archive:/nonexistent.tar: no such file",
        ),
    ] {
        assert_eq!(bad(&["check", "--image", image]), says);
    }
    assert!(bad(&["image", "inspect", "my image"]).starts_with("<REF>: image reference"));
}

#[test]
fn options_may_come_before_the_verb_and_still_belong_to_it() {
    let cli = parse(&["--root", "/r", "--image", "i", "check", "--output", "json"]).unwrap();
    let Some(Command::Check(a)) = &cli.command else {
        panic!("{cli:?}")
    };
    assert_eq!(a.root.root, PathBuf::from("/r"));
    assert_eq!(a.plan.image.image.as_deref(), Some("i"));
    assert_eq!(
        bad(&["--image", "i", "check", "--dry-run"]),
        "--dry-run applies to `migrate run` only"
    );
    assert!(parse(&["--output", "json", "image", "list"]).is_ok());
    assert!(parse(&["--unattended", "--config", "/c.toml"]).is_ok());
}

//! `migrate generate-docs DIR` (hidden; what `scripts/package.sh` runs):
//! the man pages and shell completions, from the definitions they describe.
//!
//! - `man/man8/`: `migrate.8` and one page per verb (`migrate-run.8`,
//!   `migrate-image-build.8`, ...), from the clap definitions (clap_mangen);
//! - `man/man5/`: `migrate-plan.5` and `migrate-config.5`, from the
//!   project's own Markdown documentation compiled into the binary
//!   (mandown, which netavark builds its pages with): one text to keep true;
//! - `completions/`: bash, zsh and fish (clap_complete).

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::cli::Cli;

/// The plan format: docs/plans.md.
const PLANS: &str = include_str!("../../../docs/plans.md");
/// The host configuration: its section of docs/systemd.md.
const SYSTEMD: &str = include_str!("../../../docs/systemd.md");

/// Writes the pages and completions under `dir`.
pub(crate) fn generate(dir: &Path) -> Result<()> {
    let man8 = dir.join("man/man8");
    let man5 = dir.join("man/man5");
    let completions = dir.join("completions");
    for d in [&man8, &man5, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    pages(&cmd, &man8)?;

    let config = sections(SYSTEMD, &["Configuration", "Unattended runs"]);
    for (name, text) in [("migrate-plan", PLANS), ("migrate-config", config.as_str())] {
        let page = man5.join(format!("{name}.5"));
        std::fs::write(&page, mandown::convert(text, name, 5))
            .with_context(|| format!("writing {}", page.display()))?;
    }

    for (shell, file) in [
        (Shell::Bash, "migrate.bash"),
        (Shell::Zsh, "_migrate"),
        (Shell::Fish, "migrate.fish"),
    ] {
        let path = completions.join(file);
        let mut out =
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        clap_complete::generate(shell, &mut Cli::command(), "migrate", &mut out);
    }
    Ok(())
}

/// `cmd`'s page in section 8 and one for each of its visible verbs.
fn pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration");
    man.generate_to(dir)
        .with_context(|| format!("writing {} in {}", man.get_filename(), dir.display()))?;
    Ok(())
}

/// The Markdown sections of `text` titled `titles` (level 2), each with
/// what it holds, under the document's title.
fn sections(text: &str, titles: &[&str]) -> String {
    let mut out = String::from("# migrate host configuration\n\n");
    let mut keep = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            keep = titles.contains(&title.trim());
        } else if line.starts_with("# ") {
            keep = false;
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_has_a_page_and_the_formats_theirs() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let man8 = dir.path().join("man/man8");
        for page in [
            "migrate.8",
            "migrate-run.8",
            "migrate-check.8",
            "migrate-sync.8",
            "migrate-status.8",
            "migrate-rollback.8",
            "migrate-cleanup.8",
            "migrate-image.8",
            "migrate-image-build.8",
        ] {
            let text = std::fs::read_to_string(man8.join(page)).unwrap();
            assert!(text.starts_with(".ie"), "{page}: {text}");
        }
        assert!(!man8.join("migrate-generate-docs.8").exists());
        let plan = std::fs::read_to_string(dir.path().join("man/man5/migrate-plan.5")).unwrap();
        assert!(plan.contains("verify-copy"), "{plan}");
        let config = std::fs::read_to_string(dir.path().join("man/man5/migrate-config.5")).unwrap();
        assert!(
            config.contains("maintenance_window") && !config.contains("The first boot"),
            "{config}"
        );
        let bash = std::fs::read_to_string(dir.path().join("completions/migrate.bash")).unwrap();
        assert!(bash.contains("rollback"), "{bash}");
    }
}

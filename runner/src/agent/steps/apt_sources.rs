//! `apt-sources`: rewrites the root's apt sources (one-line `.list` files
//! and deb822 `.sources`) as decided (`apt::repos`): the distribution's
//! switched from the source release's suite to the target's, third-party
//! ones mapped, switched, disabled or kept; comments, options and other
//! suites left alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::apt::{Apt, repos};
use super::{RunContext, StepContext, StepKind};
use crate::core::event::StepStatus;
use crate::core::fsutil::write_atomic;

/// Switches the apt sources of the root from the source release's suite to the
/// target's.
pub(crate) struct SwitchSources;

/// The source and target suites (codenames) of the migration.
pub(super) fn suites(run: &RunContext) -> Result<(&str, &str)> {
    let from = run.source.codename().context(
        "the root's os-release has no VERSION_CODENAME; cannot tell which apt suite it uses",
    )?;
    let to = run
        .target
        .codename
        .as_deref()
        .context("the image's target release has no codename")?;
    Ok((from, to))
}

/// The plan's apt, whose sources this step decides.
fn apt<'a>(ctx: &'a StepContext<'_>) -> Result<&'a Apt> {
    ctx.run
        .packages()?
        .apt()
        .context("the apt-sources step needs apt as the plan's package manager")
}

/// What every source becomes, one line each; fails when the plan makes a
/// third-party source an inhibitor, or when no source of the distribution
/// names the source or the target release.
fn decided<'a>(ctx: &StepContext<'_>, apt: &'a Apt) -> Result<&'a [repos::Source]> {
    let (from, to) = suites(ctx.run)?;
    let sources = apt.sources()?;
    let inhibiting: Vec<String> = sources
        .iter()
        .filter(|s| s.inhibits)
        .map(|s| format!("{}:{} {}", s.file, s.index, s.uri()))
        .collect();
    if !inhibiting.is_empty() {
        bail!(
            "third_party = \"inhibit\", and no vendor map, `keep` or `disable` decides these third-party sources: {}",
            inhibiting.join(", ")
        );
    }
    let of_release = sources.iter().any(|s| {
        !s.third_party()
            && s.suites
                .iter()
                .any(|x| switch_suite(x, from, to).is_some() || switch_suite(x, to, to).is_some())
    });
    if !of_release {
        bail!(
            "no apt source of the distribution in the root uses suite {from} or {to}; nothing to switch"
        );
    }
    Ok(sources)
}

impl StepKind for SwitchSources {
    fn describe(&self) -> String {
        "Switch apt sources to the target release; map, switch or disable third-party ones".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let apt = apt(ctx)?;
        // The cutover changes the root: where no check decided the sources
        // yet, listing them may use the root's own apt cache.
        apt.may_use_root_cache();
        let sources = decided(ctx, apt)?;
        for s in sources {
            ctx.say(s.describe(apt.target_suite()));
        }
        let note = format!("migration {} to {}", ctx.migration_id(), apt.target_suite());
        let mut changed = Vec::new();
        apt.apply_sources(&note, |file, new| {
            let old = std::fs::read_to_string(file).unwrap_or_default();
            if old == new {
                return Ok(());
            }
            changed.push(format!(
                "/{}",
                file.strip_prefix(ctx.root()).unwrap_or(file).display()
            ));
            write_atomic(file, new.as_bytes())
        })?;
        if changed.is_empty() {
            ctx.say("every source already as decided");
            return Ok(StepStatus::Skipped);
        }
        ctx.say(format!("rewritten: {}", changed.join(", ")));
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        let apt = apt(ctx)?;
        for s in decided(ctx, apt)? {
            ctx.say(format!("would leave {}", s.describe(apt.target_suite())));
        }
        Ok(())
    }
}

/// The root's apt source files: `sources.list`, then `sources.list.d`'s
/// `.list` and `.sources` files by name.
pub(crate) fn source_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let list = crate::core::rootfs::resolve(root, "etc/apt/sources.list")?;
    if list.is_file() {
        files.push(list);
    }
    let dir = crate::core::rootfs::resolve(root, "etc/apt/sources.list.d")?;
    if dir.is_dir() {
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        extra.sort();
        files.extend(extra);
    }
    Ok(files)
}

/// The suite `suite` becomes when switching `from` -> `to`, if it is one of
/// the release's suites (`bookworm`, `bookworm-updates`, `bookworm-security`).
pub(crate) fn switch_suite(suite: &str, from: &str, to: &str) -> Option<String> {
    if suite == from {
        return Some(to.to_string());
    }
    suite
        .strip_prefix(from)
        .filter(|rest| rest.starts_with('-'))
        .map(|rest| format!("{to}{rest}"))
}

/// Switches suites in one-line `sources.list` text. Returns the new text and
/// the number of entries that use the release. Comments, options and
/// whitespace are kept as they are.
pub(crate) fn switch_one_line(text: &str, from: &str, to: &str) -> (String, usize) {
    let mut changes = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match suite_span(line) {
            Some((start, end)) => match switch_suite(&line[start..end], from, to) {
                Some(new) => {
                    changes += 1;
                    out.push_str(&line[..start]);
                    out.push_str(&new);
                    out.push_str(&line[end..]);
                }
                None => out.push_str(line),
            },
            None => out.push_str(line),
        }
    }
    (out, changes)
}

/// Byte range of the suite field of a one-line entry
/// (`deb [options] URI SUITE [COMPONENT...]`).
fn suite_span(line: &str) -> Option<(usize, usize)> {
    let mut tokens = tokens(line);
    let (s, e) = tokens.next()?;
    let kind = &line[s..e];
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    let (mut s, mut e) = tokens.next()?;
    if line[s..e].starts_with('[') {
        while !line[s..e].ends_with(']') {
            (s, e) = tokens.next()?;
        }
        tokens.next()?; // the URI
    }
    let suite = tokens.next()?;
    if line[suite.0..suite.1].starts_with('#') {
        return None;
    }
    Some(suite)
}

fn tokens(line: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = &line[pos..];
        let start = pos + rest.find(|c: char| !c.is_whitespace())?;
        let len = line[start..]
            .find(char::is_whitespace)
            .unwrap_or(line.len() - start);
        pos = start + len;
        Some((start, start + len))
    })
}

/// Switches suites in deb822 `*.sources` text (the `Suites:` field, including
/// continuation lines). Returns the new text and the number of suites that
/// belong to the release.
pub(crate) fn switch_deb822(text: &str, from: &str, to: &str) -> (String, usize) {
    let mut changes = 0;
    let mut out = String::with_capacity(text.len());
    let mut in_suites = false;
    for line in text.split_inclusive('\n') {
        let value_start = if line.starts_with([' ', '\t']) && in_suites {
            Some(0)
        } else {
            in_suites = false;
            match line.split_once(':') {
                Some((field, _)) if field.trim().eq_ignore_ascii_case("suites") => {
                    in_suites = true;
                    Some(field.len() + 1)
                }
                _ => None,
            }
        };
        let Some(value_start) = value_start else {
            out.push_str(line);
            continue;
        };
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        out.push_str(&line[..value_start]);
        let value = &line[value_start..];
        let mut last = 0;
        for (s, e) in tokens(value) {
            if let Some(new) = switch_suite(&value[s..e], from, to) {
                changes += 1;
                out.push_str(&value[last..s]);
                out.push_str(&new);
                last = e;
            }
        }
        out.push_str(&value[last..]);
    }
    (out, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources_switch_only_the_suite_field() {
        let text = "\
# bookworm main sources
deb http://mirror.example/debian bookworm main contrib
deb-src http://mirror.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror/bookworm bookworm-updates main
deb [ trusted=yes ] http://security.example/debian-security bookworm-security main # sec
deb http://apt.example.com/ bookworm-backportsx main
deb http://example.com/ stable main
#deb http://mirror.example/debian bookworm main
deb http://example.com/bookworm/ ./
";
        let (new, n) = switch_one_line(text, "bookworm", "trixie");
        assert_eq!(n, 5);
        assert_eq!(
            new,
            "\
# bookworm main sources
deb http://mirror.example/debian trixie main contrib
deb-src http://mirror.example/debian trixie main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror/bookworm trixie-updates main
deb [ trusted=yes ] http://security.example/debian-security trixie-security main # sec
deb http://apt.example.com/ trixie-backportsx main
deb http://example.com/ stable main
#deb http://mirror.example/debian bookworm main
deb http://example.com/bookworm/ ./
"
        );
        // Idempotent: switching again changes nothing.
        let (again, n2) = switch_one_line(&new, "bookworm", "trixie");
        assert_eq!((again.as_str(), n2), (new.as_str(), 0));
    }

    #[test]
    fn deb822_sources_switch_the_suites_field_with_continuations() {
        let text = "\
Types: deb deb-src
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

# bookworm security
Types: deb
URIs: http://mirror.example/debian-security
suites:
 bookworm-security
 stable
Components: main

Types: deb
URIs: http://example.com/bookworm
Suites: ./
";
        let (new, n) = switch_deb822(text, "bookworm", "trixie");
        assert_eq!(n, 3);
        assert!(new.contains("Suites: trixie trixie-updates\n"));
        assert!(new.contains("suites:\n trixie-security\n stable\n"));
        assert!(new.contains("# bookworm security\n"));
        assert!(new.contains("URIs: http://example.com/bookworm\n"));
        assert_eq!(switch_deb822(&new, "bookworm", "trixie").1, 0);
    }
}

//! Debian-family package upgrade with apt, run chrooted in the root so that the
//! root's own apt and dpkg (and their maintainer scripts) do the work.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{Step, StepContext};
use crate::event::StepStatus;
use crate::fsutil::write_atomic;
use crate::release::{OsRelease, Release};

/// Environment that keeps apt, dpkg and debconf from asking anything.
const NONINTERACTIVE: [(&str, &str); 4] = [
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
    ("APT_LISTCHANGES_FRONTEND", "none"),
    ("NEEDRESTART_MODE", "a"),
];

/// dpkg options: keep locally edited configuration files (the new version is
/// left beside them as `.dpkg-dist`), take the package's version of files
/// that were never edited.
const KEEP_LOCAL_CONFIG: [&str; 4] = [
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
];

/// Switches the apt sources of the root from the source release's suite to the
/// target's.
pub struct SwitchSources {
    /// Step id.
    pub id: String,
}

/// Updates the package lists and runs `apt-get dist-upgrade`.
pub struct DistUpgrade {
    /// Step id.
    pub id: String,
}

/// Checks that the root now is the target release and dpkg is consistent.
pub struct VerifyRelease {
    /// Step id.
    pub id: String,
}

impl Step for SwitchSources {
    fn id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &'static str {
        "apt-sources"
    }
    fn description(&self) -> String {
        "Switch apt sources to the target release".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let from = ctx.source.codename().context(
            "the root's os-release has no VERSION_CODENAME; cannot tell which apt suite it uses",
        )?;
        let to = ctx
            .target
            .codename
            .as_deref()
            .context("the image's target release has no codename")?;
        let mut switched = 0;
        let mut already = 0;
        for file in source_files(ctx)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let deb822 = file.extension().is_some_and(|e| e == "sources");
            let (new, changes) = if deb822 {
                switch_deb822(&text, from, to)
            } else {
                switch_one_line(&text, from, to)
            };
            let shown = file.strip_prefix(ctx.root).unwrap_or(&file).display();
            let (_, on_target) = if deb822 {
                switch_deb822(&text, to, to)
            } else {
                switch_one_line(&text, to, to)
            };
            already += on_target;
            if changes > 0 {
                write_atomic(&file, new.as_bytes())?;
                ctx.say(format!(
                    "/{shown}: {changes} entries switched {from} -> {to}"
                ));
                switched += changes;
            }
        }
        if switched == 0 && already == 0 {
            bail!("no apt source in the root uses suite {from} or {to}; nothing to switch");
        }
        Ok(if switched == 0 {
            StepStatus::Skipped
        } else {
            StepStatus::Succeeded
        })
    }
}

fn source_files(ctx: &StepContext<'_>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let list = ctx.path("etc/apt/sources.list")?;
    if list.is_file() {
        files.push(list);
    }
    let dir = ctx.path("etc/apt/sources.list.d")?;
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
fn switch_suite(suite: &str, from: &str, to: &str) -> Option<String> {
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
pub fn switch_one_line(text: &str, from: &str, to: &str) -> (String, usize) {
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
pub fn switch_deb822(text: &str, from: &str, to: &str) -> (String, usize) {
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

impl Step for DistUpgrade {
    fn id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &'static str {
        "apt"
    }
    fn description(&self) -> String {
        "Upgrade all packages (apt-get update, dist-upgrade)".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        // Finish whatever an interrupted earlier attempt left half done.
        ctx.run(&mut apt(ctx, "dpkg", &["--configure", "-a"]))
            .context("finishing interrupted package configuration")?;
        ctx.run(&mut apt(
            ctx,
            "apt-get",
            &["-o", "APT::Update::Error-Mode=any", "update"],
        ))
        .context("updating the package lists")?;
        let mut args = vec!["-y", "-o", "Dpkg::Use-Pty=0"];
        args.extend(KEEP_LOCAL_CONFIG);
        if !dpkg_audit(ctx)?.is_empty() {
            // Packages unpacked but not configured, with dependencies that
            // `dpkg --configure -a` could not satisfy: let apt repair them.
            let mut fix = args.clone();
            fix.extend(["-f", "install"]);
            ctx.run_with_progress(&mut apt_get_with_status(ctx, &fix), &apt_progress)
                .context("repairing broken dependencies")?;
        }
        args.push("dist-upgrade");
        ctx.run_with_progress(&mut apt_get_with_status(ctx, &args), &apt_progress)
            .context("upgrading the packages")?;
        Ok(StepStatus::Succeeded)
    }
}

fn apt(ctx: &StepContext<'_>, program: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = ctx.chroot(program);
    cmd.args(args).envs(NONINTERACTIVE);
    cmd
}

/// What `dpkg --audit` says is wrong in the root (empty: nothing).
fn dpkg_audit(ctx: &StepContext<'_>) -> Result<String> {
    let out = apt(ctx, "dpkg", &["--audit"])
        .output()
        .context("running dpkg --audit")?;
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() && report.is_empty() {
        bail!(
            "dpkg --audit failed ({}){}",
            out.status,
            crate::cmd::stderr_tail(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(report)
}

/// `apt-get ARGS` with its machine-readable progress (`APT::Status-Fd`) on
/// stdout. The status fd must not *be* fd 1: apt closes it in the processes
/// it starts, which would leave dpkg's maintainer scripts without a stdout
/// (base-files.postinst then fails with "echo: I/O error"). So the status
/// goes to fd 3, a duplicate of stdout made by a shell in the root.
fn apt_get_with_status(ctx: &StepContext<'_>, args: &[&str]) -> std::process::Command {
    let mut cmd = ctx.chroot("/bin/sh");
    cmd.args([
        "-c",
        "exec \"$0\" -o APT::Status-Fd=3 \"$@\" 3>&1",
        "apt-get",
    ])
    .args(args)
    .envs(NONINTERACTIVE);
    cmd
}

/// Parses apt's `APT::Status-Fd` lines (`pmstatus:PKG:PERCENT:MESSAGE`,
/// `dlstatus:N:PERCENT:MESSAGE`, and the `pmerror`/`pmconffile` variants
/// that repeat what dpkg already printed).
pub fn apt_progress(line: &str) -> Option<(f32, String)> {
    let (kind, rest) = line.split_once(':')?;
    let prefix = match kind {
        "pmstatus" => "",
        "dlstatus" => "Downloading: ",
        "pmerror" => "Error: ",
        "pmconffile" => "Configuration file: ",
        _ => return None,
    };
    let mut parts = rest.splitn(3, ':');
    let _what = parts.next()?;
    let percent: f32 = parts.next()?.parse().ok()?;
    let message = parts.next().unwrap_or_default();
    Some((percent.clamp(0.0, 100.0), format!("{prefix}{message}")))
}

impl Step for VerifyRelease {
    fn id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &'static str {
        "verify-release"
    }
    fn description(&self) -> String {
        "Verify the root is the target release and dpkg is consistent".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let now = OsRelease::read_from_root(ctx.root)?;
        let target = Release {
            id: ctx.target.id.clone(),
            version_id: ctx.target.version_id.clone(),
        };
        if now.release() != target {
            bail!(
                "after the upgrade the root's os-release says {} ({}), not {target}",
                now.release(),
                now.pretty_name()
            );
        }
        ctx.say(format!("os-release: {}", now.pretty_name()));
        let audit = apt(ctx, "dpkg", &["--audit"])
            .output()
            .context("running dpkg --audit")?;
        let report = String::from_utf8_lossy(&audit.stdout);
        if !audit.status.success() || !report.trim().is_empty() {
            for line in report.lines() {
                ctx.say(line);
            }
            bail!(
                "dpkg --audit reports problems ({}): {}",
                audit.status,
                report.lines().next().unwrap_or("see the log")
            );
        }
        ctx.say("dpkg --audit: clean");
        Ok(StepStatus::Succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources_switch_only_the_suite_field() {
        let text = "\
# bookworm main sources
deb http://deb.debian.org/debian bookworm main contrib
deb-src http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror/bookworm bookworm-updates main
deb [ trusted=yes ] http://security.debian.org/debian-security bookworm-security main # sec
deb http://apt.example.com/ bookworm-backportsx main
deb http://example.com/ stable main
#deb http://deb.debian.org/debian bookworm main
deb http://example.com/bookworm/ ./
";
        let (new, n) = switch_one_line(text, "bookworm", "trixie");
        assert_eq!(n, 5);
        assert_eq!(
            new,
            "\
# bookworm main sources
deb http://deb.debian.org/debian trixie main contrib
deb-src http://deb.debian.org/debian trixie main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror/bookworm trixie-updates main
deb [ trusted=yes ] http://security.debian.org/debian-security trixie-security main # sec
deb http://apt.example.com/ trixie-backportsx main
deb http://example.com/ stable main
#deb http://deb.debian.org/debian bookworm main
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
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

# bookworm security
Types: deb
URIs: http://deb.debian.org/debian-security
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

    #[test]
    fn apt_status_lines_become_progress() {
        assert_eq!(
            apt_progress("pmstatus:libc6:42.5:Unpacking libc6 (amd64)"),
            Some((42.5, "Unpacking libc6 (amd64)".into()))
        );
        assert_eq!(
            apt_progress("dlstatus:3:10:Retrieving file 3 of 30"),
            Some((10.0, "Downloading: Retrieving file 3 of 30".into()))
        );
        assert_eq!(apt_progress("Setting up libc6 ..."), None);
        assert_eq!(apt_progress("pmstatus:x:notanumber:y"), None);
    }
}

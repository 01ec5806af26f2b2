//! What zypper and dnf upgrades share: the rpm database queries, and the
//! two-phase upgrade that downloads everything before it changes anything.
//!
//! 1. The root's repository files, with the plan's changes applied, are
//!    written to a scratch directory; the package manager resolves the whole
//!    upgrade against them and downloads every package. A solver problem or an
//!    unreachable repository fails here, with the root unchanged.
//! 2. The repository files (and zypper's `/etc/products.d`) are backed up,
//!    the new ones written into the root, and the upgrade runs from the
//!    packages already downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::core::cmd::CommandExt;
use anyhow::{Context, Result};

use super::StepContext;
use super::repofile::{self, RepoFiles};
use crate::agent::exec::{Streaming, run_streaming_with};
use crate::core::fsutil::write_atomic;
use crate::core::kinds::packages::RepoChange;

/// `rpm --root ROOT ARGS`, run from the migration image.
pub(crate) fn rpm(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("rpm");
    cmd.arg("--root").arg(root).args(args);
    cmd
}

/// The installed size in bytes of the named packages (`rpm -q` prints
/// "package X is not installed" for the others, which count nothing).
pub(crate) fn installed_size(root: &Path, packages: &[String]) -> Result<u64> {
    if packages.is_empty() {
        return Ok(0);
    }
    let out = rpm(root, &["-q", "--qf", "%{SIZE}\\n"])
        .args(packages)
        .run_unchecked()?;
    Ok(super::packages::sum_sizes(
        &String::from_utf8_lossy(&out.stdout),
        1,
    ))
}

/// Installed packages, by name, with their `version-release` (the
/// `gpg-pubkey` entries of imported keys left out).
pub(crate) fn installed_versions(
    root: &Path,
) -> Result<std::collections::BTreeMap<String, String>> {
    let text = rpm(root, &["-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\\n"]).run_get_string()?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| *name != "gpg-pubkey")
        .map(|(name, vr)| (name.to_string(), vr.to_string()))
        .collect())
}

/// Problems of the rpm database: unreadable, or dependencies unsatisfied.
pub(crate) fn database_problems(root: &Path) -> Result<Vec<String>> {
    let query = rpm(root, &["-qa"]).run_unchecked()?;
    if !query.status.success() {
        return Ok(vec![format!(
            "the rpm database cannot be read{}",
            crate::core::cmd::stderr_tail(&String::from_utf8_lossy(&query.stderr))
        )]);
    }
    Ok(verify(root)?
        .into_iter()
        .map(|l| format!("rpm: {l}"))
        .collect())
}

/// Removes exactly `names` with rpm, after `rpm -e --test` found that
/// nothing else depends on them (see `PackageManager::remove_exactly`).
pub(crate) fn remove_exactly(ctx: &StepContext<'_>, names: &[String]) -> Result<Option<String>> {
    let test = rpm(ctx.root(), &["-e", "--test"])
        .args(names)
        .run_unchecked()?;
    if !test.status.success() {
        let said: Vec<String> = String::from_utf8_lossy(&test.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        return Ok(Some(format!("rpm -e --test: {}", said.join("; "))));
    }
    ctx.run(rpm(ctx.root(), &["-e"]).args(names))
        .context("removing the obsolete packages")?;
    Ok(None)
}

/// Unsatisfied dependencies of the installed packages (`rpm -Va --nofiles`).
pub(crate) fn verify(root: &Path) -> Result<Vec<String>> {
    let out = rpm(
        root,
        &[
            "-Va",
            "--nofiles",
            "--noscripts",
            "--nodigest",
            "--nosignature",
        ],
    )
    .run_unchecked()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Where a package manager keeps its repository files, inside the root.
pub(crate) struct RepoDir {
    /// e.g. `etc/zypp/repos.d`.
    pub(crate) in_root: &'static str,
}

impl RepoDir {
    /// The directory in the root.
    pub(crate) fn path(&self, root: &Path) -> Result<PathBuf> {
        crate::core::rootfs::resolve(root, self.in_root)
    }

    /// The root's repository files with `changes` applied.
    pub(crate) fn switched(
        &self,
        root: &Path,
        changes: &[RepoChange],
    ) -> Result<(RepoFiles, Vec<String>)> {
        let current = repofile::read_dir(&self.path(root)?)?;
        repofile::apply(&current, changes)
    }

    /// Writes `files` into `dir` (a scratch directory), replacing what is there.
    pub(crate) fn write_scratch(files: &RepoFiles, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in files {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        Ok(())
    }

    /// Writes the changed files into the root (atomically, one by one).
    pub(crate) fn write_root(&self, root: &Path, files: &RepoFiles) -> Result<usize> {
        let dir = self.path(root)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = 0;
        for (name, text) in files {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                write_atomic(&path, text.as_bytes())?;
                written += 1;
            }
        }
        Ok(written)
    }
}

/// Copies `dirs` of the root (e.g. the repository files) into
/// `var/lib/migrate/backup/<migration>/<step>/`, once per migration.
pub(crate) fn back_up_dirs(ctx: &StepContext<'_>, dirs: &[&str]) -> Result<()> {
    let base = ctx.backup_path();
    if base.exists() {
        return Ok(()); // taken by an earlier attempt, before anything changed
    }
    let partial = base.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    for dir in dirs {
        let from = crate::core::rootfs::resolve(&ctx.run.pristine, dir)?;
        if from.is_dir() {
            copy_tree(&from, &partial.join(dir))?;
        }
    }
    std::fs::create_dir_all(&partial)?;
    std::fs::rename(&partial, &base).with_context(|| format!("renaming to {}", base.display()))?;
    ctx.say(format!(
        "backed up {} to /{}",
        dirs.iter()
            .map(|d| format!("/{d}"))
            .collect::<Vec<_>>()
            .join(", "),
        base.strip_prefix(&ctx.run.pristine)
            .unwrap_or(&base)
            .display()
    ));
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Runs a package manager command of an upgrade, streaming its output; a
/// failure names the lines `notable` picks (solver problems, download
/// errors), and `accept` may declare other exit codes successful.
pub(crate) fn run_pm(
    ctx: &StepContext<'_>,
    cmd: &mut Command,
    notable: &(dyn Fn(&str) -> bool + Sync),
    ok_exit_codes: &[i32],
) -> Result<i32> {
    run_streaming_with(
        cmd,
        &ctx.run.sink,
        &ctx.step.id,
        &Streaming {
            notable: Some(notable),
            ok_exit_codes,
            ..Streaming::default()
        },
    )
}

/// The `.rpm` files below `dir` of the root (a package cache, one directory
/// per repository): how many, how many bytes.
pub(crate) fn cached_packages(root: &Path, dir: &str) -> Result<(usize, u64)> {
    let top = crate::core::rootfs::resolve(root, dir)?;
    let mut found = (0, 0);
    let mut pending = vec![top];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                pending.push(e.path());
            } else if m.is_file() && e.file_name().to_string_lossy().ends_with(".rpm") {
                found.0 += 1;
                found.1 += m.len();
            }
        }
    }
    Ok(found)
}

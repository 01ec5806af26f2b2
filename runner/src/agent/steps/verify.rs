//! `verify-release`: after the upgrade, the root's os-release must be the
//! target release and its package manager must find it consistent
//! (apt: `dpkg --audit`; zypper, dnf: `rpm -Va --nofiles`). It lists what
//! the report should tell: packages no repository of the target has, and
//! configuration drift (files of `/etc` kept in their old version, the
//! package's new one beside them).

use anyhow::{Result, bail};

use super::{StepContext, StepKind};
use crate::core::event::{Finding, Severity, StepStatus};
use crate::core::kinds::packages::VerifyReleaseOptions;
use crate::core::release::{OsRelease, Release};

/// The `verify-release` step.
pub(crate) struct VerifyRelease {
    opts: VerifyReleaseOptions,
}

impl VerifyRelease {
    /// From the step's options.
    pub(crate) fn new(opts: VerifyReleaseOptions) -> Self {
        Self { opts }
    }
}

/// Why `package` must stay although no repository has it: an old
/// PostgreSQL major version (`postgresql-15`, `postgresql-client-15`)
/// whose clusters are still on disk (`/etc/postgresql/15/NAME` or
/// `/var/lib/postgresql/15/NAME`): removing it before the cluster moved
/// would leave the data without the binaries that read it.
pub(crate) fn protected(root: &std::path::Path, package: &str) -> Option<String> {
    let rest = package.strip_prefix("postgresql")?;
    let version: String = rest
        .split('-')
        .find(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit() || c == '.'))?
        .to_string();
    for base in ["etc/postgresql", "var/lib/postgresql"] {
        let dir = crate::core::rootfs::resolve(root, format!("{base}/{version}")).ok()?;
        let clusters: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(cluster) = clusters.into_iter().min() {
            return Some(format!(
                "PostgreSQL {version}'s cluster {cluster} (/{base}/{version}/{cluster}) has not moved to a newer major version"
            ));
        }
    }
    None
}

impl StepKind for VerifyRelease {
    fn describe(&self) -> String {
        "Verify the root is the target release and its packages are consistent".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let now = OsRelease::read_from_root(ctx.root())?;
        let target = Release {
            id: ctx.run.target.id.clone(),
            version_id: ctx.run.target.version_id.clone(),
        };
        if now.release() != target {
            bail!(
                "after the upgrade the root's os-release says {} ({}), not {target}",
                now.release(),
                now.pretty_name()
            );
        }
        ctx.say(format!("os-release: {}", now.pretty_name()));
        let pm = ctx.run.packages()?;
        let problems = pm.verify()?;
        if !problems.is_empty() {
            for line in &problems {
                ctx.say(line.clone());
            }
            bail!(
                "{} reports {} problems after the upgrade: {}",
                pm.name(),
                problems.len(),
                problems[0]
            );
        }
        ctx.say(format!(
            "{}: the installed packages are consistent",
            pm.name()
        ));
        // What the new release no longer has stays installed, without
        // updates: the report lists it.
        match pm.obsolete() {
            Ok(names) if names.is_empty() => ctx.say(format!(
                "every installed package is in a repository of {target}"
            )),
            Ok(names) => {
                ctx.say(format!(
                    "installed, in no repository of {target}: {}",
                    names.join(" ")
                ));
                let names = if self.opts.remove_obsolete {
                    self.remove(ctx, pm, names)?
                } else {
                    names
                };
                if !names.is_empty() {
                    ctx.finding(Finding {
                    id: "obsolete-packages".into(),
                    severity: Severity::Warning,
                    message: format!(
                        "{} installed packages are in no repository of {target} and get no updates: {}",
                        names.len(),
                        names.join(", ")
                    ),
                    hint: match pm.name() {
                        "apt" => "apt list '?obsolete' lists them; purge the ones nothing needs any more (apt purge NAME)",
                        "zypper" => "zypper packages --orphaned lists them; remove the ones nothing needs any more (zypper remove NAME)",
                        _ => "dnf list --extras lists them; remove the ones nothing needs any more (dnf remove NAME)",
                    }
                    .into(),
                });
                }
            }
            Err(e) => ctx.say(format!(
                "could not list the packages no repository of {target} has: {e:#}"
            )),
        }
        drift(ctx);
        Ok(StepStatus::Succeeded)
    }
}

impl VerifyRelease {
    /// Removes what `remove_obsolete` may of `names`; returns those kept.
    fn remove(
        &self,
        ctx: &StepContext<'_>,
        pm: &dyn super::packages::PackageManager,
        names: Vec<String>,
    ) -> Result<Vec<String>> {
        let mut kept = Vec::new();
        let mut candidates = Vec::new();
        for name in names {
            if self.opts.keep.contains(&name) {
                ctx.say(format!("{name}: kept (the plan's `keep`)"));
                kept.push(name);
            } else if let Some(why) = protected(ctx.root(), &name) {
                ctx.say(format!("{name}: kept: {why}"));
                kept.push(name);
            } else {
                candidates.push(name);
            }
        }
        if candidates.is_empty() {
            return Ok(kept);
        }
        match pm.remove_exactly(ctx, &candidates)? {
            None => ctx.say(format!(
                "removed, as the plan's remove_obsolete says: {}",
                candidates.join(" ")
            )),
            Some(why) => {
                ctx.say(format!("not removed ({}): {why}", candidates.join(" ")));
                kept.extend(candidates);
                kept.sort();
            }
        }
        Ok(kept)
    }
}

/// What package managers name the new version of a configuration file they
/// did not install over a locally changed one.
const NEW_VERSION_SUFFIXES: [&str; 3] = [".dpkg-dist", ".ucf-dist", ".rpmnew"];

/// The files of `/etc` whose package's new version waits beside them
/// (`/etc/issue` for `/etc/issue.dpkg-dist`), as (kept, new) paths in the
/// root, sorted. Symlinks are not followed; at most `limit` directories
/// are read.
pub(crate) fn kept_configuration(root: &std::path::Path, limit: usize) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Ok(etc) = crate::core::rootfs::resolve(root, "etc") else {
        return found;
    };
    let mut stack = vec![etc];
    let mut read = 0;
    while let Some(dir) = stack.pop() {
        read += 1;
        if read > limit {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(kept) = NEW_VERSION_SUFFIXES
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|k| !k.is_empty())
            {
                let shown = |p: &std::path::Path| {
                    format!("/{}", p.strip_prefix(root).unwrap_or(p).display())
                };
                found.push((shown(&path.with_file_name(kept)), shown(&path)));
            }
        }
    }
    found.sort();
    found
}

/// Configuration drift: in the log and, if any, as a warning of the report.
fn drift(ctx: &StepContext<'_>) {
    let kept = kept_configuration(ctx.root(), 100_000);
    if kept.is_empty() {
        ctx.say("configuration: no file of /etc kept in its old version");
        return;
    }
    let listed: Vec<String> = kept
        .iter()
        .map(|(old, new)| format!("{old} (new: {new})"))
        .collect();
    for l in &listed {
        ctx.say(format!("configuration kept in its old version: {l}"));
    }
    ctx.finding(Finding {
        id: "config-drift".into(),
        severity: Severity::Warning,
        message: format!(
            "{} configuration files were kept in their old version, the package's new one beside them: {}",
            listed.len(),
            listed.join(", ")
        ),
        hint: "merge what the new versions change (diff OLD NEW), then remove the new ones".into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_postgresql_with_a_cluster_on_disk_is_protected() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("var/lib/postgresql/15/main")).unwrap();
        std::fs::create_dir_all(root.path().join("etc/postgresql/17")).unwrap();
        let why = protected(root.path(), "postgresql-15").unwrap();
        assert!(why.contains("/var/lib/postgresql/15/main"), "{why}");
        assert!(protected(root.path(), "postgresql-client-15").is_some());
        assert_eq!(protected(root.path(), "postgresql-17"), None, "no cluster");
        assert_eq!(protected(root.path(), "postgresql-common"), None);
        assert_eq!(protected(root.path(), "libgnutls30"), None);
    }

    #[test]
    fn kept_configuration_is_found_beside_its_new_version() {
        let root = tempfile::tempdir().unwrap();
        for f in [
            "etc/issue",
            "etc/issue.dpkg-dist",
            "etc/ssh/sshd_config.ucf-dist",
            "etc/app/app.conf.rpmnew",
            "etc/other.dpkg-old",
            "etc/.dpkg-dist",
        ] {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        std::os::unix::fs::symlink("/etc", root.path().join("etc/loop")).unwrap();
        assert_eq!(
            kept_configuration(root.path(), 100),
            [
                (
                    "/etc/app/app.conf".to_string(),
                    "/etc/app/app.conf.rpmnew".to_string()
                ),
                ("/etc/issue".to_string(), "/etc/issue.dpkg-dist".to_string()),
                (
                    "/etc/ssh/sshd_config".to_string(),
                    "/etc/ssh/sshd_config.ucf-dist".to_string()
                ),
            ]
        );
    }
}

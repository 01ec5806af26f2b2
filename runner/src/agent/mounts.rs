//! Preparing `/system-root` so that the root's own tools can run in it.
//!
//! The agent moves into a mount namespace of its own first; every mount made
//! here disappears with the agent, so nothing is left mounted in the root and
//! nothing propagates back to the host, however the agent ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use crate::core::rootfs;

/// Directories of the root that must be live filesystems for package scripts.
const API_FILESYSTEMS: [&str; 3] = ["proc", "sys", "dev"];

/// Moves this process into a new, private mount namespace. Must be called
/// before the process starts any thread (the kernel refuses otherwise).
pub(crate) fn enter_private_namespace() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / a private mount tree")?;
    Ok(())
}

/// Temporary directory for tools run in the root, as seen inside the root:
/// on the agent's scratch tmpfs, so that it is writable even when the root is
/// mounted read-only (`check`, `--dry-run`).
pub(crate) const ROOT_TMP: &str = "/run/migrate/tmp";

/// Where the pristine view of the root is mounted in the container.
const PRISTINE: &str = "/run/migrate-pristine";

/// A second view of the root without the mounts [`prepare`] adds (/proc,
/// /run, resolv.conf): what backups read and restores write, so that they
/// see the root's own files. Must be made before [`prepare`], in the private
/// namespace (mounts made later under the root do not reach it).
pub(crate) fn pristine_view(root: &Path) -> Result<PathBuf> {
    let view = PathBuf::from(PRISTINE);
    std::fs::create_dir_all(&view).with_context(|| format!("creating {}", view.display()))?;
    mount(
        Some(root),
        &view,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {} on {}", root.display(), view.display()))?;
    Ok(view)
}

/// What [`prepare`] did, for the log.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// Human lines, one per action.
    pub(crate) actions: Vec<String>,
}

/// Makes sure `dir` exists to mount on: `false` when it does not and the
/// root is read-only.
fn mount_point(dir: &Path) -> Result<bool> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// Mounts `/proc`, `/sys` and `/dev` (recursive binds of the agent's own),
/// a tmpfs on `/run` and working name resolution in `root`, where the root
/// does not already have them (a live host root bind-mounted with its
/// submounts already has them all).
pub(crate) fn prepare(root: &Path) -> Result<Prepared> {
    let mut done = Prepared::default();
    let mounted = MountTable::read()?;
    for name in API_FILESYSTEMS {
        let target = root.join(name);
        if mounted.is_mount_point(&target) {
            done.actions.push(format!("/{name}: already mounted"));
            continue;
        }
        if !mount_point(&target)? {
            // A read-only root (check, --dry-run) without the directory:
            // nothing may be created in it, so the tools do without.
            done.actions.push(format!(
                "/{name}: the read-only root has no mount point; not mounted"
            ));
            continue;
        }
        mount(
            Some(Path::new("/").join(name).as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting /{name} on {}", target.display()))?;
        done.actions.push(format!("/{name}: bound"));
    }

    let run = root.join("run");
    if mounted.is_mount_point(&run) {
        done.actions.push("/run: already mounted".into());
    } else if !mount_point(&run)? {
        done.actions
            .push("/run: the read-only root has no mount point; not mounted".into());
        return Ok(done);
    } else {
        mount(
            Some("tmpfs"),
            &run,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .with_context(|| format!("mounting a tmpfs on {}", run.display()))?;
        std::fs::create_dir_all(run.join("lock")).context("creating /run/lock")?;
        done.actions.push("/run: fresh tmpfs".into());
    }

    // Scratch space for questions about the target release (package lists
    // of the target, simulations): private to the agent, gone with it.
    let scratch = run.join("migrate");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", scratch.display()))?;
    let tmp = root.join(ROOT_TMP.trim_start_matches('/'));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;

    done.actions.push(provide_name_resolution(root)?);
    Ok(done)
}

/// Makes `etc/resolv.conf` of the root usable: where it is missing, empty or
/// points into `/run` (systemd-resolved's stub on an offline root), the
/// agent's own resolver configuration is bind-mounted over it. Files of the
/// root itself are never created or changed.
fn provide_name_resolution(root: &Path) -> Result<String> {
    let target = rootfs::resolve(root, "etc/resolv.conf")?;
    let usable = std::fs::read_to_string(&target)
        .map(|t| t.lines().any(|l| l.trim_start().starts_with("nameserver")))
        .unwrap_or(false);
    if usable {
        return Ok("resolv.conf: the root's own".into());
    }
    if !target.exists() {
        // Only create the file where it lands in the tmpfs on /run.
        if !target.starts_with(root.join("run")) {
            return Ok(format!(
                "resolv.conf: missing in the root ({}); name resolution may fail",
                target.display()
            ));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, b"").with_context(|| format!("creating {}", target.display()))?;
    }
    mount(
        Some("/etc/resolv.conf"),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting /etc/resolv.conf on {}", target.display()))?;
    Ok("resolv.conf: the migration container's".into())
}

/// Mount points of this mount namespace, from `/proc/self/mountinfo`.
struct MountTable {
    points: Vec<PathBuf>,
}

impl MountTable {
    fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let points = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape_octal(p)))
            .collect();
        Self { points }
    }

    fn is_mount_point(&self, path: &Path) -> bool {
        self.points.iter().any(|p| p == path)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` octal.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let table = MountTable::parse(
            "22 1 0:21 / /system-root rw,relatime - overlay overlay rw\n\
             23 22 0:5 / /system-root/my\\040dir rw - tmpfs tmpfs rw\n",
        );
        assert!(table.is_mount_point(Path::new("/system-root")));
        assert!(table.is_mount_point(Path::new("/system-root/my dir")));
        assert!(!table.is_mount_point(Path::new("/system-root/proc")));
    }
}

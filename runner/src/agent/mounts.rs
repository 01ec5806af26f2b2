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

/// Mounts `/proc`, `/sys` and `/dev` in `root`, a tmpfs on `/run` and
/// working name resolution, where the root does not already have them (a
/// live host root bind-mounted with its submounts already has them all).
///
/// A root directory gets no host device and no writable kernel setting: its
/// `/dev` is a tmpfs built here with the few nodes package scripts use (no
/// disk, so no bootloader can be installed onto one of the host's), its
/// `/proc` is that of the container's own PID namespace with `/proc/sys` and
/// `/proc/sysrq-trigger` read-only, and its `/sys` is read-only throughout.
pub(crate) fn prepare(root: &Path) -> Result<Prepared> {
    let mut done = Prepared::default();
    let mounted = MountTable::read()?;
    for name in API_FILESYSTEMS {
        let target = root.join(name);
        if mounted.is_mount_point(&target) {
            done.actions.push(format!("/{name}: already mounted"));
            continue;
        }
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!(
                "{} is a symbolic link; refusing to mount /{name} through it",
                target.display()
            );
        }
        if !mount_point(&target)? {
            // A read-only root (check, --dry-run) without the directory:
            // nothing may be created in it, so the tools do without.
            done.actions.push(format!(
                "/{name}: the read-only root has no mount point; not mounted"
            ));
            continue;
        }
        match name {
            "dev" => {
                build_dev(&target)?;
                done.actions
                    .push("/dev: a tmpfs with null, zero, full, random, urandom, tty, pts, shm (no host device)".into());
            }
            _ => {
                bind(Path::new("/").join(name).as_path(), &target, true)?;
                if name == "proc" {
                    for sub in ["sys", "sysrq-trigger"] {
                        let p = target.join(sub);
                        if !p.exists() {
                            continue; // a kernel without magic SysRq
                        }
                        bind(&p, &p, false)?;
                        remount_read_only(&p, MsFlags::empty())?;
                    }
                    done.actions.push(
                        "/proc: the container's (own PID namespace), /proc/sys read-only".into(),
                    );
                } else {
                    make_read_only(&target)?;
                    done.actions.push("/sys: bound read-only".into());
                }
            }
        }
    }

    let run = root.join("run");
    if mounted.is_mount_point(&run) {
        done.actions.push("/run: already mounted".into());
    } else if !mount_point(&run)? {
        done.actions
            .push("/run: the read-only root has no mount point; not mounted".into());
        return Ok(done);
    } else {
        tmpfs(&run, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=0755")?;
        std::fs::create_dir_all(run.join("lock")).context("creating /run/lock")?;
        done.actions.push("/run: fresh tmpfs".into());
    }

    // Scratch space for questions about the target release (package lists
    // of the target, simulations): private to the agent, gone with it.
    let scratch = run.join("migrate");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    tmpfs(
        &scratch,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )?;
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

/// Mounts a fresh tmpfs on `target`.
pub(crate) fn tmpfs(target: &Path, flags: MsFlags, options: &str) -> Result<()> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .with_context(|| format!("mounting a tmpfs on {}", target.display()))
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<()> {
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("bind-mounting {} on {}", source.display(), target.display()))
}

fn remount_read_only(point: &Path, keep: MsFlags) -> Result<()> {
    mount(
        None::<&str>,
        point,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
        None::<&str>,
    )
    .with_context(|| format!("making {} read-only", point.display()))
}

/// Makes `top` and every mount below it read-only in this mount namespace
/// (a bind mount's `ro` covers only its top mount: a filesystem mounted
/// inside the root would stay writable). The mounts keep their other flags.
pub(crate) fn make_read_only(top: &Path) -> Result<usize> {
    let table = MountTable::read()?;
    let mut count = 0;
    for (point, flags) in &table.mounts {
        if point == top || point.starts_with(top) {
            remount_read_only(point, *flags)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Device nodes of the container bound into a root's own `/dev`.
const DEVICE_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A `/dev` for a root directory: a tmpfs with the usual character devices
/// (bound from the container's), a private devpts instance, a tmpfs on
/// `shm` and the usual links. A privileged container sees every device of
/// the host; the root sees none of them.
fn build_dev(target: &Path) -> Result<()> {
    tmpfs(
        target,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=4m",
    )?;
    for node in DEVICE_NODES {
        let path = target.join(node);
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        bind(&Path::new("/dev").join(node), &path, false)?;
    }
    let pts = target.join("pts");
    std::fs::create_dir(&pts).with_context(|| format!("creating {}", pts.display()))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .with_context(|| format!("mounting devpts on {}", pts.display()))?;
    let shm = target.join("shm");
    std::fs::create_dir(&shm).with_context(|| format!("creating {}", shm.display()))?;
    tmpfs(&shm, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777")?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, target.join(link))
            .with_context(|| format!("creating {}/{link}", target.display()))?;
    }
    Ok(())
}

/// Mount points of this mount namespace, from `/proc/self/mountinfo`, in
/// its order (a mount after the one it is mounted on), each with the flags
/// a read-only remount must keep.
struct MountTable {
    mounts: Vec<(PathBuf, MsFlags)>,
}

impl MountTable {
    fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mounts = text
            .lines()
            .filter_map(|l| {
                let mut fields = l.split(' ');
                let point = fields.nth(4)?;
                let options = fields.next().unwrap_or("");
                Some((PathBuf::from(unescape_octal(point)), kept_flags(options)))
            })
            .collect();
        Self { mounts }
    }

    fn is_mount_point(&self, path: &Path) -> bool {
        self.mounts.iter().any(|(p, _)| p == path)
    }
}

/// The per-mount flags of a mountinfo options field that a remount must
/// repeat so as not to clear them.
fn kept_flags(options: &str) -> MsFlags {
    options.split(',').fold(MsFlags::empty(), |acc, o| {
        acc | match o {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        }
    })
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

    #[test]
    fn a_remount_keeps_the_mount_flags() {
        let table = MountTable::parse(
            "22 1 0:21 / /system-root rw,nosuid,nodev,relatime - ext4 /dev/x rw\n",
        );
        assert_eq!(
            table.mounts[0].1,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME
        );
    }
}

//! Small filesystem helpers shared by host and agent.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// The largest state document (journal, marker, report) read.
pub(crate) const DOCUMENT_LIMIT: u64 = 64 << 20;

/// Reads a regular file of at most `limit` bytes; `Ok(None)` when it does not
/// exist. A FIFO, device, socket or directory is refused without blocking
/// (it is opened non-blocking and checked before a byte is read), and so is
/// a larger file: what a root or a command line names is never read without
/// bound. Errors are one line naming the path.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {}", path.display(), io_reason(&e))),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!("{}: is a directory", path.display());
    }
    if !meta.is_file() {
        anyhow::bail!("{}: not a regular file", path.display());
    }
    if meta.len() > limit {
        anyhow::bail!("{}: larger than {limit} bytes", path.display());
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("{}: larger than {limit} bytes", path.display());
    }
    Ok(Some(bytes))
}

/// [`read_limited`] as UTF-8 text.
pub(crate) fn read_text_limited(path: &Path, limit: u64) -> Result<Option<String>> {
    read_limited(path, limit)?
        .map(|b| {
            String::from_utf8(b).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))
        })
        .transpose()
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.to_string(),
    }
}

/// Reads the JSON document `rel` of `root` (inside it, bounded:
/// [`crate::core::rootfs::confined`]); `Ok(None)` when it does not exist.
/// `what` names the document in the error for a file that is not one.
pub(crate) fn read_json_if_exists<T: serde::de::DeserializeOwned>(
    root: &Path,
    rel: &str,
    what: &str,
) -> Result<Option<T>> {
    let Some(bytes) = crate::core::rootfs::confined::read(root, rel, DOCUMENT_LIMIT)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{}: not {what}", root.join(rel).display()))
}

/// Makes `path` readable by its owner only: a file 0600, a directory 0700
/// with everything in it likewise (symlinks are left alone).
pub(crate) fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        return Ok(());
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))?;
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            restrict(&entry?.path())?;
        }
    }
    Ok(())
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. Readers see the old or the
/// new contents, never a mix, even after a power loss. Parent directories are
/// created. An existing file's permissions are kept.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Who holds a POSIX (fcntl) write lock on `path`, as "pid N (command)";
/// `None` if nobody does or the file does not exist. Asks with `F_GETLK`,
/// which takes no lock and works on a read-only file system.
pub(crate) fn lock_holder(path: &Path) -> Result<Option<String>> {
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::libc;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut query = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_GETLK(&mut query))
        .with_context(|| format!("querying the lock on {}", path.display()))?;
    if query.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    let pid = query.l_pid;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Ok(Some(format!("pid {pid} ({})", comm.trim())))
}

/// Whether `path` is the top directory of a btrfs subvolume (not followed
/// if it is a symlink).
pub(crate) fn is_subvolume(path: &Path) -> bool {
    let on_btrfs = nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC);
    // The top directory of a btrfs subvolume has inode 256.
    on_btrfs
        && std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_dir() && std::os::unix::fs::MetadataExt::ino(&m) == 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_contents_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/file");
        write_atomic(&p, b"one").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_lock_held_by_another_process_is_reported_with_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "").unwrap();
        assert_eq!(lock_holder(&path).unwrap(), None);
        assert_eq!(lock_holder(&dir.path().join("missing")).unwrap(), None);
        // flock(1) takes an flock lock, not a POSIX one; python's fcntl.lockf
        // takes the POSIX lock dpkg uses.
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let holder = lock_holder(&path).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(holder, Some(format!("pid {} (python3)", child.id())));
    }

    #[test]
    fn restricted_trees_are_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("dump.dir");
        std::fs::create_dir_all(dump.join("sub")).unwrap();
        std::fs::write(dump.join("toc.dat"), "x").unwrap();
        std::fs::write(dump.join("sub/1.dat"), "x").unwrap();
        restrict(&dump).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dump), 0o700);
        assert_eq!(mode(&dump.join("sub")), 0o700);
        assert_eq!(mode(&dump.join("toc.dat")), 0o600);
        assert_eq!(mode(&dump.join("sub/1.dat")), 0o600);
    }

    #[test]
    fn fifos_devices_and_huge_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_limited(&fifo, 100).unwrap_err().to_string();
        assert!(e.ends_with("fifo: not a regular file"), "{e}");
        let e = read_limited(Path::new("/dev/zero"), 100)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/dev/zero: not a regular file");
        let e = read_limited(dir.path(), 100).unwrap_err().to_string();
        assert!(e.ends_with(": is a directory"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        assert!(
            read_limited(&big, 100)
                .unwrap_err()
                .to_string()
                .ends_with("larger than 100 bytes")
        );
        assert_eq!(read_limited(&big, 101).unwrap().unwrap().len(), 101);
        assert!(
            read_limited(&dir.path().join("missing"), 1)
                .unwrap()
                .is_none()
        );
    }
}

//! One migration at a time per root: an exclusive `flock` on the root
//! directory itself, held for the whole run and released by the kernel when
//! the process ends, however it ends. Locking the directory creates nothing,
//! so a run stopped by a check leaves the root untouched; once the run starts
//! changing the root, the holder's pid is recorded in
//! `ROOT/var/lib/migrate/lock` for the message a second run prints.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::core::exit::{ExitCode, fail};

/// Pid file location relative to the root.
pub(crate) const LOCK_PATH: &str = crate::core::root_paths::RootPath::Lock.rel();

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct RootLock {
    _lock: Flock<File>,
    root: PathBuf,
}

impl RootLock {
    /// Takes the lock of `root`, or fails with exit code 4 naming the process
    /// that holds it.
    pub(crate) fn acquire(root: &Path) -> Result<Self> {
        let dir = File::open(root).map_err(|e| {
            fail(
                ExitCode::Environment,
                format!("opening {}: {e}", root.display()),
            )
        })?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self {
                _lock: lock,
                root: root.to_path_buf(),
            }),
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = crate::core::rootfs::confined::read(root, LOCK_PATH, 64)
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                Err(fail(
                    ExitCode::Environment,
                    format!("another migrate run{by} is working on {}", root.display()),
                ))
            }
            Err((_, errno)) => Err(fail(
                ExitCode::Environment,
                format!("locking {}: {errno}", root.display()),
            )),
        }
    }

    /// Records this process as the holder, in `ROOT/var/lib/migrate/lock`.
    pub(crate) fn record_holder(&self) -> Result<()> {
        crate::core::rootfs::confined::write_atomic(
            &self.root,
            LOCK_PATH,
            format!("{}\n", std::process::id()).as_bytes(),
        )
        .context("recording the lock holder")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::exit::exit_code_of;

    #[test]
    fn a_second_lock_on_the_same_root_is_refused_until_the_first_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let first = RootLock::acquire(root.path()).unwrap();
        assert!(
            std::fs::read_dir(root.path()).unwrap().next().is_none(),
            "taking the lock creates nothing"
        );
        let err = RootLock::acquire(root.path()).unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::Environment);
        assert!(
            err.to_string()
                .contains("another migrate run is working on"),
            "{err}"
        );
        first.record_holder().unwrap();
        let err = RootLock::acquire(root.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(first);
        RootLock::acquire(root.path()).unwrap();
    }
}

//! One migration at a time per root: an exclusive `flock` on
//! `ROOT/var/lib/migrate/lock`, held for the whole run and released by the
//! kernel when the process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::exit::{ExitCode, WithExitCode, fail};

/// Lock file location relative to the root.
pub const LOCK_PATH: &str = "var/lib/migrate/lock";

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct RootLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl RootLock {
    /// Takes the lock of `root`, or fails with exit code 4 naming the process
    /// that holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_PATH);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))
                .exit_code(ExitCode::Environment)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
            .exit_code(ExitCode::Environment)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(fail(
                    ExitCode::Environment,
                    format!(
                        "another migrate run{by} is working on {}: {} is locked",
                        root.display(),
                        path.display()
                    ),
                ));
            }
            Err((_, errno)) => {
                return Err(fail(
                    ExitCode::Environment,
                    format!("locking {}: {errno}", path.display()),
                ));
            }
        };
        // Record who holds it, for the message above.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "{}", std::process::id());
        let _ = lock.flush();
        Ok(Self { _lock: lock, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::exit_code_of;

    #[test]
    fn a_second_lock_on_the_same_root_is_refused_until_the_first_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let first = RootLock::acquire(root.path()).unwrap();
        let err = RootLock::acquire(root.path()).unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::Environment);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        RootLock::acquire(root.path()).unwrap();
    }
}

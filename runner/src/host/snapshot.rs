//! `migrate rollback` of a root directory from its migration's snapshot.
//!
//! A snapshot-backed migration (btrfs, snapper) keeps the pre-cutover root
//! as a read-only snapshot under the root's `/.snapshots`. Rolling a root
//! directory back puts a writable copy of that snapshot in the root's place:
//!
//! 1. [`Restore::stage`]: the copy is made beside the root, in its parent
//!    directory (`.NAME.migrate-restore`), with `btrfs subvolume snapshot`;
//! 2. the agent runs the rollback on the copy, with the migrated root
//!    mounted read-only beside it: the migration's journal, report and logs
//!    are copied over, the journal records the rollback, the run's own log
//!    and report are written there;
//! 3. [`Restore::commit`]: the copy and the root trade places in one atomic
//!    rename (`RENAME_EXCHANGE`), the snapshots directory moves into the
//!    restored root, and the migrated root is kept as
//!    `NAME.rolled-back-MIGRATION` until the operator deletes it.
//!
//! This is the one place where migrate writes outside a root: in the root's
//! parent directory, two names derived from the root's own. A failure before
//! the exchange deletes the copy and leaves the root as it was.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::core::cmd::CommandExt;
use crate::core::exit::{ExitCode, fail};
use crate::core::fsutil::is_subvolume;
use crate::core::journal::{BackupRecord, Journal};
use crate::core::kinds::backup::Method;

/// Where snapshots live in a root (snapper's layout).
const SNAPSHOTS: &str = ".snapshots";

/// Whether `journal`'s migration can be rolled back by [`Restore`].
pub(crate) fn snapshot_backed(journal: &Journal) -> bool {
    journal
        .backup
        .as_ref()
        .is_some_and(|b| matches!(b.method, Method::Btrfs | Method::Snapper))
}

/// The snapshot `backup` names, as a path under `root`: only the places
/// migrate itself snapshots to, with no symlink on the way.
pub(crate) fn snapshot_path(
    root: &Path,
    migration: &str,
    backup: &BackupRecord,
) -> Result<PathBuf> {
    let rel: PathBuf = match backup.method {
        Method::Btrfs if backup.location == format!("/{SNAPSHOTS}/migrate-{migration}") => {
            [SNAPSHOTS, &format!("migrate-{migration}")]
                .iter()
                .collect()
        }
        Method::Snapper
            if !backup.location.is_empty()
                && backup.location.bytes().all(|b| b.is_ascii_digit()) =>
        {
            [SNAPSHOTS, &backup.location, "snapshot"].iter().collect()
        }
        _ => {
            return Err(fail(
                ExitCode::BadInput,
                format!(
                    "the journal names the {} snapshot {:?}, which is not where migrate takes snapshots",
                    backup.method, backup.location
                ),
            ));
        }
    };
    let mut path = root.to_path_buf();
    for part in rel.components() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(fail(
                    ExitCode::BadInput,
                    format!("{} is not a directory", path.display()),
                ));
            }
            Err(e) => {
                return Err(fail(
                    ExitCode::BadInput,
                    format!(
                        "the {} snapshot {} of migration {migration} is gone ({}: {e})",
                        backup.method,
                        backup.location,
                        path.display()
                    ),
                ));
            }
        }
    }
    if !is_subvolume(&path) {
        return Err(fail(
            ExitCode::BadInput,
            format!("{} is not a btrfs snapshot", path.display()),
        ));
    }
    Ok(path)
}

/// A writable copy of the pre-cutover snapshot beside the root, deleted
/// again unless [`Restore::commit`] put it in the root's place.
pub(crate) struct Restore {
    parent: PathBuf,
    name: OsString,
    staging_name: OsString,
    kept_name: OsString,
    committed: bool,
}

impl Restore {
    /// Checks the root and the snapshot, then makes the copy.
    pub(crate) fn stage(root: &Path, journal: &Journal) -> Result<Self> {
        let backup = journal
            .backup
            .as_ref()
            .ok_or_else(|| fail(ExitCode::BadInput, "the migration has no safety backup"))?;
        let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else {
            return Err(fail(
                ExitCode::BadInput,
                format!(
                    "{} has no parent directory to restore it in",
                    root.display()
                ),
            ));
        };
        if !is_subvolume(root) {
            return Err(fail(
                ExitCode::Environment,
                format!(
                    "{} is not the top of a btrfs subvolume, so the {} snapshot {} cannot take its place; restore it by hand from that snapshot",
                    root.display(),
                    backup.method,
                    backup.location
                ),
            ));
        }
        let snapshot = snapshot_path(root, &journal.migration_id, backup)?;
        let staging_name = staging_name(name);
        let mut kept_name = name.to_os_string();
        kept_name.push(format!(".rolled-back-{}", journal.migration_id));
        let restore = Self {
            parent: parent.to_path_buf(),
            name: name.to_os_string(),
            staging_name,
            kept_name,
            committed: false,
        };
        let kept = restore.kept();
        if std::fs::symlink_metadata(&kept).is_ok() {
            return Err(fail(
                ExitCode::BadInput,
                format!(
                    "{} already exists: a rolled-back root of this migration is kept there; move or delete it first",
                    kept.display()
                ),
            ));
        }
        let staging = restore.staging();
        if std::fs::symlink_metadata(&staging).is_ok() {
            // Left by a rollback that was interrupted before its exchange.
            if !is_subvolume(&staging) {
                return Err(fail(
                    ExitCode::Environment,
                    format!(
                        "{} is in the way and not a copy migrate made; move it away",
                        staging.display()
                    ),
                ));
            }
            delete_subvolume(&staging)?;
        }
        btrfs()?
            .args(["subvolume", "snapshot"])
            .arg(&snapshot)
            .arg(&staging)
            .run_captured()
            .map_err(|e| fail(ExitCode::Environment, format!("{e:#}")))?;
        Ok(restore)
    }

    /// Where the copy of `root` is staged.
    pub(crate) fn staging_for(root: &Path) -> PathBuf {
        match (root.parent(), root.file_name()) {
            (Some(parent), Some(name)) => parent.join(staging_name(name)),
            _ => root.join(".migrate-restore"),
        }
    }

    /// The copy, while staged.
    pub(crate) fn staging(&self) -> PathBuf {
        self.parent.join(&self.staging_name)
    }

    /// Where the migrated root is kept once the copy took its place.
    pub(crate) fn kept(&self) -> PathBuf {
        self.parent.join(&self.kept_name)
    }

    /// Puts the copy in the root's place; returns where the migrated root
    /// is kept.
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        let parent = pathrs::Root::open(&self.parent)
            .with_context(|| format!("opening {}", self.parent.display()))?;
        parent
            .rename(
                &self.staging_name,
                &self.name,
                pathrs::flags::RenameFlags::RENAME_EXCHANGE,
            )
            .with_context(|| {
                format!(
                    "exchanging {} and the restored copy",
                    self.parent.join(&self.name).display()
                )
            })?;
        // From here on the root is restored; nothing is deleted any more.
        self.committed = true;
        let root = self.parent.join(&self.name);
        let migrated = self.staging();
        if let Err(e) = move_snapshots(&migrated, &root) {
            tracing::warn!("moving the snapshots into the restored root: {e:#}");
        }
        let kept = self.kept();
        std::fs::rename(&migrated, &kept)
            .with_context(|| format!("renaming {} to {}", migrated.display(), kept.display()))?;
        Ok(kept)
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = delete_subvolume(&self.staging())
        {
            tracing::warn!("{e:#}");
        }
    }
}

/// After the running host's rollback: the run's final report and log
/// into the snapshot's copy the next boot starts (the agent copied the
/// migration's records while this run was still going).
pub(crate) fn copy_records_into_restored(root: &Path, migration: &str) -> Result<()> {
    let copy =
        root.join(crate::core::kinds::backup::restored_copy(migration).trim_start_matches('/'));
    for rel in [
        crate::core::report::REPORT_PATH,
        crate::core::report::LOG_PATH,
    ] {
        let (from, to) = (root.join(rel), copy.join(rel));
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn staging_name(root_name: &std::ffi::OsStr) -> OsString {
    let mut staging = OsString::from(".");
    staging.push(root_name);
    staging.push(".migrate-restore");
    staging
}

/// The snapshots stay with the root: the copy holds empty placeholders
/// where the migrated root has the snapshot subvolumes (a snapshot does not
/// descend into nested subvolumes). Subvolumes move across subvolumes,
/// plain directories do not: a `.snapshots` subvolume (snapper's) moves
/// whole, a plain `.snapshots` directory one snapshot at a time.
fn move_snapshots(migrated: &Path, root: &Path) -> Result<()> {
    let (from, to) = (migrated.join(SNAPSHOTS), root.join(SNAPSHOTS));
    if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    if is_subvolume(&from) {
        remove_placeholder(&to)?;
        return std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()));
    }
    std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if !is_subvolume(&entry.path()) {
            continue;
        }
        let target = to.join(entry.file_name());
        remove_placeholder(&target)?;
        std::fs::rename(entry.path(), &target).with_context(|| {
            format!("moving {} to {}", entry.path().display(), target.display())
        })?;
    }
    Ok(())
}

/// Removes `path` if it is an empty directory (a nested subvolume's
/// placeholder in a snapshot).
fn remove_placeholder(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => Err(anyhow::anyhow!("{} is in the way", path.display())),
        Err(_) => Ok(()),
    }
}

fn btrfs() -> Result<Command> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("btrfs").is_file()));
    if !found {
        return Err(fail(
            ExitCode::Environment,
            "rolling back from a btrfs snapshot needs the `btrfs` command (btrfs-progs) on this host",
        ));
    }
    Ok(Command::new("btrfs"))
}

fn delete_subvolume(path: &Path) -> Result<()> {
    btrfs()?
        .args(["subvolume", "delete"])
        .arg(path)
        .run_captured()
        .map(|_| ())
        .map_err(|e| fail(ExitCode::Environment, format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(method: Method, location: &str) -> BackupRecord {
        BackupRecord {
            method,
            location: location.into(),
            created_at: "t".into(),
            package_manager: None,
            post_cutover: None,
        }
    }

    #[test]
    fn only_the_places_migrate_snapshots_to_are_accepted() {
        let root = tempfile::tempdir().unwrap();
        for (method, location) in [
            (Method::Btrfs, "/.snapshots/migrate-other"),
            (Method::Btrfs, "/../../etc"),
            (Method::Snapper, "../1"),
            (Method::Snapper, ""),
            (Method::Tar, "var/lib/migrate/backup/m1"),
        ] {
            let e = snapshot_path(root.path(), "m1", &backup(method, location)).unwrap_err();
            assert!(
                e.to_string().contains("not where migrate takes snapshots"),
                "{method} {location}: {e}"
            );
        }
    }

    #[test]
    fn a_symlinked_snapshots_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("migrate-m1")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join(SNAPSHOTS)).unwrap();
        let e = snapshot_path(
            root.path(),
            "m1",
            &backup(Method::Btrfs, "/.snapshots/migrate-m1"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }

    #[test]
    fn a_missing_snapshot_is_named() {
        let root = tempfile::tempdir().unwrap();
        let e = snapshot_path(root.path(), "m1", &backup(Method::Snapper, "4")).unwrap_err();
        assert!(
            e.to_string()
                .contains("the snapper snapshot 4 of migration m1 is gone"),
            "{e}"
        );
    }
}

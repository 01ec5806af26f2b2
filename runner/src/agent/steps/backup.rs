//! `safety-backup`: taken before the first cutover step, so that
//! `migrate rollback` has something to return to.
//!
//! - Where the root is a btrfs subvolume: a read-only snapshot (through
//!   snapper when the root has it configured), which holds everything.
//! - Otherwise: `var/lib/migrate/backup/<migration>/` with a gzip tarball of
//!   `/etc` (owners, modes, symlinks and nanosecond mtimes, so a restore is
//!   exact), the package selection with versions, and a manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{StepContext, StepKind, chroot};
use crate::core::cmd::CommandExt;
use crate::core::event::{StepStatus, timestamp};
use crate::core::journal::BackupRecord;
use crate::core::kinds::backup::{BackupOptions, Method};

/// Backup directory relative to the root.
pub(crate) const BACKUP_DIR: &str = "var/lib/migrate/backup";
/// The tarball of /etc in a backup directory.
pub(crate) const ETC_ARCHIVE: &str = "etc.tar.gz";
/// The package selection in a backup directory.
pub(crate) const PACKAGES_FILE: &str = "packages.txt";
/// What a tar backup is, written last: the backup is complete once it is there.
const MANIFEST_FILE: &str = "manifest.json";

/// The `safety-backup` step.
pub(crate) struct SafetyBackup {
    method: Method,
}

impl SafetyBackup {
    /// From the step's options.
    pub(crate) fn new(o: BackupOptions) -> Self {
        Self { method: o.method }
    }
}

impl StepKind for SafetyBackup {
    fn describe(&self) -> String {
        "Take a safety backup (snapshot, or /etc and the package selection)".into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let migration = {
            let journal = ctx.run.journal.borrow();
            let journal = journal
                .as_ref()
                .context("the safety backup needs the state journal")?;
            if let Some(b) = &journal.backup {
                ctx.say(format!(
                    "backup of this migration already taken ({} at {}, {})",
                    b.method, b.location, b.created_at
                ));
                return Ok(StepStatus::Skipped);
            }
            journal.migration_id.clone()
        };
        let pristine = &ctx.run.pristine;
        let method = match self.method {
            Method::Auto if snapper_configured(pristine) => Method::Snapper,
            Method::Auto
                if crate::core::fsutil::is_subvolume(pristine) && has_tool(pristine, "btrfs") =>
            {
                Method::Btrfs
            }
            Method::Auto => Method::Tar,
            m => m,
        };
        let record = match method {
            Method::Tar | Method::Auto => tar_backup(ctx, &migration)?,
            Method::Btrfs => btrfs_snapshot(ctx, &migration)?,
            Method::Snapper => snapper_snapshot(ctx, &migration)?,
        };
        ctx.say(format!("backup: {} at {}", record.method, record.location));
        if let Some(j) = ctx.run.journal.borrow_mut().as_mut() {
            j.backup = Some(record);
        }
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        let pristine = &ctx.run.pristine;
        let what = if snapper_configured(pristine) && self.method != Method::Tar {
            "a snapper snapshot of the root"
        } else if crate::core::fsutil::is_subvolume(pristine) && self.method != Method::Tar {
            "a read-only btrfs snapshot of the root"
        } else {
            "a tarball of /etc and the package selection under /var/lib/migrate/backup/"
        };
        ctx.say(format!("would take {what}"));
        Ok(())
    }
}

/// Whether the plan's safety backup will be a snapshot of this root: what
/// the upgrade replaces then keeps taking space until the snapshot goes.
pub(crate) fn will_snapshot(run: &super::RunContext) -> bool {
    let Some(step) = run
        .plan
        .first_of_kind(&[crate::core::kinds::Kind::SafetyBackup])
    else {
        return false;
    };
    let method = step
        .options::<BackupOptions>()
        .map(|o| o.method)
        .unwrap_or_default();
    let pristine = &run.pristine;
    match method {
        Method::Tar => false,
        Method::Snapper => true,
        Method::Btrfs => true,
        Method::Auto => {
            snapper_configured(pristine)
                || (crate::core::fsutil::is_subvolume(pristine) && has_tool(pristine, "btrfs"))
        }
    }
}

fn has_tool(root: &Path, name: &str) -> bool {
    ["usr/bin", "usr/sbin", "bin", "sbin"]
        .iter()
        .any(|d| root.join(d).join(name).is_file())
}

fn snapper_configured(root: &Path) -> bool {
    root.join("etc/snapper/configs/root").is_file() && has_tool(root, "snapper")
}

fn btrfs_snapshot(ctx: &StepContext<'_>, migration: &str) -> Result<BackupRecord> {
    let pristine = &ctx.run.pristine;
    if !crate::core::fsutil::is_subvolume(pristine) {
        bail!("the root is not a btrfs subvolume; use method tar");
    }
    // A subvolume of its own, as snapper makes it: later snapshots of the
    // root leave it out, and a rollback moves it into the restored root.
    if std::fs::symlink_metadata(pristine.join(".snapshots")).is_err() {
        ctx.run(
            ctx.chroot("btrfs")
                .args(["subvolume", "create", "/.snapshots"]),
        )?;
    }
    let location = format!("/.snapshots/migrate-{migration}");
    ctx.run(
        ctx.chroot("btrfs")
            .args(["subvolume", "snapshot", "-r", "/", &location]),
    )?;
    Ok(BackupRecord {
        method: Method::Btrfs,
        location,
        created_at: timestamp(std::time::SystemTime::now()),
        package_manager: None,
        post_cutover: None,
    })
}

fn snapper_snapshot(ctx: &StepContext<'_>, migration: &str) -> Result<BackupRecord> {
    // In the root with /proc mounted: snapper finds the file system in
    // /etc/mtab, the kernel's mount table.
    let number = ctx
        .chroot("snapper")
        .args(["--no-dbus", "-c", "root", "create", "--type", "pre"])
        .args(["--cleanup-algorithm", "number", "--print-number"])
        .args([
            "--description",
            &format!("migrate {migration} safety backup"),
        ])
        .run_get_string()?;
    Ok(BackupRecord {
        method: Method::Snapper,
        location: number.trim().to_string(),
        created_at: timestamp(std::time::SystemTime::now()),
        package_manager: None,
        post_cutover: None,
    })
}

/// The second snapshot of a snapshot-backed migration, taken when its
/// cutover finished: the migrated system before its first boot (snapper's
/// `post` of the safety backup's `pre`, so `snapper list` pairs them).
/// Returns its location, or `None` for a tar backup. `root` is the root
/// with /proc mounted.
pub(crate) fn post_cutover_snapshot(
    root: &Path,
    migration: &str,
    backup: &BackupRecord,
) -> Result<Option<String>> {
    match backup.method {
        Method::Tar | Method::Auto => Ok(None),
        Method::Btrfs => {
            let location = format!("/.snapshots/migrate-{migration}-post");
            chroot(root, "btrfs")
                .args(["subvolume", "snapshot", "-r", "/", &location])
                .run_captured()?;
            Ok(Some(location))
        }
        Method::Snapper => {
            let number = chroot(root, "snapper")
                .args(["--no-dbus", "-c", "root", "create", "--type", "post"])
                .args(["--pre-number", &backup.location])
                .args(["--cleanup-algorithm", "number", "--print-number"])
                .args([
                    "--description",
                    &format!("migrate {migration} after the cutover"),
                ])
                .run_get_string()?;
            Ok(Some(number.trim().to_string()))
        }
    }
}

fn tar_backup(ctx: &StepContext<'_>, migration: &str) -> Result<BackupRecord> {
    let pristine = &ctx.run.pristine;
    let rel = format!("{BACKUP_DIR}/{migration}");
    let dir = pristine.join(&rel);
    let partial = pristine.join(format!("{rel}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    std::fs::set_permissions(
        &partial,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;

    let entries = archive_etc(pristine, &partial.join(ETC_ARCHIVE))?;
    ctx.say(format!("/etc: {entries} entries archived"));
    // The plan's package manager, or, for plans without a package step,
    // whichever the root has.
    let manager = match ctx.run.packages() {
        Ok(pm) => Some(pm.name().to_string()),
        Err(_) => super::packages::detect(&ctx.run.root).map(str::to_string),
    };
    if let Some(name) = &manager {
        let selection = super::packages::selection_command(name, &ctx.run.root)
            .run_get_string()
            .context("listing the installed packages")?;
        write_synced(&partial.join(PACKAGES_FILE), selection.as_bytes())?;
        ctx.say(format!(
            "package selection: {} packages",
            selection.lines().count()
        ));
    }
    let manifest = serde_json::json!({
        "migration": migration,
        "method": "tar",
        "created_at": timestamp(std::time::SystemTime::now()),
        "source": ctx.run.source.pretty_name(),
        "contents": { ETC_ARCHIVE: "/etc", PACKAGES_FILE: "installed packages: name, version, status" },
    });
    write_synced(
        &partial.join(MANIFEST_FILE),
        manifest.to_string().as_bytes(),
    )?;
    publish(&partial, &dir)?;
    Ok(BackupRecord {
        method: Method::Tar,
        location: rel,
        created_at: timestamp(std::time::SystemTime::now()),
        package_manager: manager,
        post_cutover: None,
    })
}

/// Moves the backup's files from `partial` into the migration's backup
/// directory `dir`, the manifest last (a backup is complete once its
/// manifest is there). Only the backup's own files are replaced: `dir` also
/// holds what earlier steps kept until cleanup (a `postgres` step's dump of
/// the sync phase), which stays.
fn publish(partial: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for name in [ETC_ARCHIVE, PACKAGES_FILE, MANIFEST_FILE] {
        let (from, to) = (partial.join(name), dir.join(name));
        if from.exists() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        } else if name != MANIFEST_FILE && to.exists() {
            // Left by an earlier attempt that had it; this backup has not.
            std::fs::remove_file(&to).with_context(|| format!("removing {}", to.display()))?;
        }
    }
    std::fs::remove_dir_all(partial).with_context(|| format!("removing {}", partial.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Archives `root/etc` into a gzip tarball, every entry preceded by a PAX
/// `mtime` with nanoseconds. Returns the number of entries.
fn archive_etc(root: &Path, archive: &Path) -> Result<usize> {
    let file = File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    let mut count = 0;
    let mut stack = vec![PathBuf::from("etc")];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let meta =
            std::fs::symlink_metadata(&abs).with_context(|| format!("stat {}", abs.display()))?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink() || ft.is_fifo()) {
            continue; // sockets and devices do not belong in /etc
        }
        let mtime = format!("{}.{:09}", meta.mtime(), meta.mtime_nsec());
        // Extended attributes (SELinux labels, ACLs, capabilities) as
        // GNU tar and bsdtar write them; the restore unpacks them.
        let mut pax: Vec<(String, Vec<u8>)> = vec![("mtime".into(), mtime.into_bytes())];
        if !ft.is_symlink() {
            for name in
                xattr::list(&abs).with_context(|| format!("listing xattrs of {}", abs.display()))?
            {
                if let Some(value) = xattr::get(&abs, &name)
                    .with_context(|| format!("reading xattrs of {}", abs.display()))?
                {
                    pax.push((format!("SCHILY.xattr.{}", name.to_string_lossy()), value));
                }
            }
        }
        tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        if ft.is_fifo() {
            // The builder would open it (and block): a header is all there is.
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_entry_type(tar::EntryType::Fifo);
            header.set_size(0);
            tar.append_data(&mut header, &rel, std::io::empty())
        } else {
            tar.append_path_with_name(&abs, &rel)
        }
        .with_context(|| format!("archiving {}", abs.display()))?;
        count += 1;
        if ft.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&abs)
                .with_context(|| format!("reading {}", abs.display()))?
                .filter_map(|e| e.ok().map(|e| rel.join(e.file_name())))
                .collect();
            children.sort();
            children.reverse();
            stack.extend(children);
        }
    }
    let gz = tar.into_inner().context("finishing the archive")?;
    let mut writer = gz.finish().context("finishing the compression")?;
    writer.flush()?;
    writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("flushing the archive: {}", e.error()))?
        .sync_all()?;
    Ok(count)
}

/// What a restore of /etc did.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// Entries written from the archive.
    pub(crate) restored: usize,
    /// Paths removed because the backup did not have them.
    pub(crate) removed: Vec<String>,
}

struct ArchivedEntry {
    path: PathBuf,
    kind: tar::EntryType,
    mtime: (i64, i64),
    /// Mode, owner and group, for what the unpacker cannot make (FIFOs).
    mode: u32,
    owner: (u32, u32),
}

/// Where a restore of /etc is staged, in the root beside it (the same file
/// system, so that the swap is one rename).
const RESTORE_STAGING: &str = ".migrate-restore";

/// Restores `root/etc` exactly as archived, or not at all: the archive is
/// unpacked beside it (owners, modes, mtimes, extended attributes, symlinks,
/// FIFOs), then the staged tree and `/etc` trade places in one atomic
/// rename (`RENAME_EXCHANGE`), and the old tree is removed. A failure before
/// the swap (a damaged archive, a full disk) leaves `/etc` as it was.
pub(crate) fn restore_etc(root: &Path, archive: &Path) -> Result<Restored> {
    let open = || -> Result<tar::Archive<flate2::read::GzDecoder<File>>> {
        let f = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
        Ok(tar::Archive::new(flate2::read::GzDecoder::new(f)))
    };
    // Pass 1: what the backup holds.
    let mut entries = Vec::new();
    for entry in open()?.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        let mut mtime = (i64::try_from(entry.header().mtime()?).unwrap_or(0), 0);
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts.flatten() {
                if ext.key() == Ok("mtime")
                    && let Ok(v) = ext.value()
                {
                    mtime = parse_pax_time(v).unwrap_or(mtime);
                }
            }
        }
        if !path.starts_with("etc")
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            bail!("the backup holds an entry outside etc/: {}", path.display());
        }
        let header = entry.header();
        let mode = header.mode()?;
        let owner = (
            u32::try_from(header.uid()?).unwrap_or(0),
            u32::try_from(header.gid()?).unwrap_or(0),
        );
        entries.push(ArchivedEntry {
            path,
            kind,
            mtime,
            mode,
            owner,
        });
    }
    let wanted: BTreeMap<&Path, tar::EntryType> =
        entries.iter().map(|e| (e.path.as_path(), e.kind)).collect();
    // What the restore will remove, for the user: what /etc has and the
    // backup has not (or has as another type).
    let mut removed = Vec::new();
    list_unwanted(root, Path::new("etc"), &wanted, &mut removed)?;

    // Pass 2: the whole tree, staged.
    let staging = root.join(RESTORE_STAGING);
    if std::fs::symlink_metadata(&staging).is_ok() {
        remove_tree(&staging)?;
    }
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut archive = open()?;
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(true);
    let unpacked = archive
        .unpack(&staging)
        .with_context(|| format!("unpacking the /etc backup into {}", staging.display()));
    if let Err(e) = unpacked.and_then(|()| make_fifos(&staging, &entries)) {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    // Exact mtimes, deepest first so that directories end up right.
    let mut by_depth: Vec<&ArchivedEntry> = entries.iter().collect();
    by_depth.sort_by_key(|e| std::cmp::Reverse(e.path.components().count()));
    for e in by_depth {
        let (secs, nanos) = e.mtime;
        let t = nix::sys::time::TimeSpec::new(secs, nanos);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &staging.join(&e.path),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting the mtime of {}", e.path.display()))?;
    }

    // Pass 3: the swap, then the old tree goes.
    // pathrs: renameat2 inside the root (nix has it for glibc only, and the
    // agent is built for musl).
    pathrs::Root::open(root)
        .and_then(|r| {
            r.rename(
                format!("{RESTORE_STAGING}/etc"),
                "etc",
                pathrs::flags::RenameFlags::RENAME_EXCHANGE,
            )
        })
        .with_context(|| format!("swapping the restored /etc into {}", root.display()))?;
    if let Err(e) = remove_tree(&staging) {
        // /etc is restored; only the old copy is left behind.
        tracing::warn!("removing the replaced /etc: {e:#}");
    }
    Ok(Restored {
        restored: entries.len(),
        removed,
    })
}

/// The unpacker writes FIFOs as empty files: made here as they were.
fn make_fifos(staging: &Path, entries: &[ArchivedEntry]) -> Result<()> {
    for e in entries.iter().filter(|e| e.kind == tar::EntryType::Fifo) {
        let path = staging.join(&e.path);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(e.mode))
            .with_context(|| format!("making the FIFO {}", path.display()))?;
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(e.owner.0)),
            Some(nix::unistd::Gid::from_raw(e.owner.1)),
        )
        .with_context(|| format!("setting the owner of {}", path.display()))?;
        // mkfifo applies the umask; the archived mode is the truth.
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(e.mode & 0o7777),
        )?;
    }
    Ok(())
}

fn remove_tree(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

fn parse_pax_time(v: &str) -> Option<(i64, i64)> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, "0"));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i64 = format!("{digits:0<9}").parse().ok()?;
    Some((secs, nanos))
}

fn same_type(meta: &std::fs::Metadata, kind: tar::EntryType) -> bool {
    let ft = meta.file_type();
    match kind {
        tar::EntryType::Directory => ft.is_dir(),
        tar::EntryType::Symlink => ft.is_symlink(),
        tar::EntryType::Fifo => ft.is_fifo(),
        _ => ft.is_file(),
    }
}

fn list_unwanted(
    root: &Path,
    rel: &Path,
    wanted: &BTreeMap<&Path, tar::EntryType>,
    removed: &mut Vec<String>,
) -> Result<()> {
    let abs = root.join(rel);
    let Ok(meta) = std::fs::symlink_metadata(&abs) else {
        return Ok(());
    };
    let keep = wanted.get(rel).is_some_and(|k| same_type(&meta, *k));
    if !keep {
        removed.push(format!("/{}", rel.display()));
        return Ok(());
    }
    if meta.is_dir() {
        let mut children: Vec<PathBuf> = std::fs::read_dir(&abs)
            .with_context(|| format!("reading {}", abs.display()))?
            .filter_map(|e| e.ok().map(|e| rel.join(e.file_name())))
            .collect();
        children.sort();
        for child in children {
            list_unwanted(root, &child, wanted, removed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// path, type, mode, size, mtime (s, ns), symlink target, content.
    fn snapshot(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.join("etc")];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let target = std::fs::read_link(&p)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let content = if m.is_file() {
                std::fs::read_to_string(&p).unwrap()
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {} {}.{} {target} {content}",
                p.strip_prefix(root).unwrap().display(),
                m.mode(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn etc_is_restored_exactly_with_extras_removed() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(etc.join("apt/sources.list.d")).unwrap();
        std::fs::write(
            etc.join("apt/sources.list"),
            "deb http://mirror/debian bookworm main\n",
        )
        .unwrap();
        std::fs::write(etc.join("issue"), "Debian 12\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", etc.join("os-release")).unwrap();
        std::fs::set_permissions(
            etc.join("issue"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let before = snapshot(root.path());

        let archive = root.path().join("etc.tar.gz");
        assert_eq!(archive_etc(root.path(), &archive).unwrap(), 6);

        // What an upgrade does to /etc.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            etc.join("apt/sources.list"),
            "deb http://mirror/debian trixie main\n",
        )
        .unwrap();
        std::fs::write(etc.join("issue.dpkg-dist"), "Debian 13\n").unwrap();
        std::fs::remove_file(etc.join("os-release")).unwrap();
        std::fs::write(etc.join("os-release"), "now a file\n").unwrap();
        std::fs::create_dir_all(etc.join("new.d/sub")).unwrap();
        std::fs::remove_dir(etc.join("apt/sources.list.d")).unwrap();
        assert_ne!(snapshot(root.path()), before);

        let r = restore_etc(root.path(), &archive).unwrap();
        assert_eq!(r.restored, 6);
        assert!(
            r.removed.contains(&"/etc/issue.dpkg-dist".to_string()),
            "{:?}",
            r.removed
        );
        assert!(
            r.removed.contains(&"/etc/new.d".to_string()),
            "{:?}",
            r.removed
        );
        assert_eq!(snapshot(root.path()), before);
    }

    #[test]
    fn a_restore_keeps_extended_attributes_and_fifos() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("labelled"), "x").unwrap();
        xattr::set(etc.join("labelled"), "user.migrate-test", b"label").unwrap();
        nix::unistd::mkfifo(
            &etc.join("initctl"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let archive = root.path().join("etc.tar.gz");
        archive_etc(root.path(), &archive).unwrap();
        xattr::remove(etc.join("labelled"), "user.migrate-test").unwrap();
        std::fs::remove_file(etc.join("initctl")).unwrap();
        restore_etc(root.path(), &archive).unwrap();
        assert_eq!(
            xattr::get(etc.join("labelled"), "user.migrate-test").unwrap(),
            Some(b"label".to_vec())
        );
        let ft = std::fs::symlink_metadata(etc.join("initctl"))
            .unwrap()
            .file_type();
        assert!(ft.is_fifo(), "{ft:?}");
        assert!(!root.path().join(RESTORE_STAGING).exists());
    }

    #[test]
    fn a_restore_that_fails_half_way_leaves_etc_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(etc.join("a")).unwrap();
        for i in 0..200 {
            std::fs::write(etc.join(format!("a/f{i}")), format!("{i}").repeat(500)).unwrap();
        }
        let archive = root.path().join("etc.tar.gz");
        archive_etc(root.path(), &archive).unwrap();
        // The upgraded /etc, and a backup damaged in its second half.
        std::fs::write(etc.join("a/f1"), "changed").unwrap();
        std::fs::write(etc.join("new"), "added").unwrap();
        let before = snapshot(root.path());
        let bytes = std::fs::read(&archive).unwrap();
        std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
        assert!(restore_etc(root.path(), &archive).is_err());
        assert_eq!(snapshot(root.path()), before, "/etc changed");
        assert!(!root.path().join(RESTORE_STAGING).exists());
    }

    #[test]
    fn a_new_backup_keeps_what_earlier_steps_left_in_the_backup_directory() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("m1");
        // A dump of the sync phase, and an earlier attempt's backup.
        std::fs::create_dir_all(dir.join("move-db")).unwrap();
        std::fs::write(dir.join("move-db/app.dump"), "dump").unwrap();
        std::fs::write(dir.join(ETC_ARCHIVE), "old").unwrap();
        std::fs::write(dir.join(PACKAGES_FILE), "old").unwrap();
        let partial = top.path().join("m1.partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join(ETC_ARCHIVE), "new").unwrap();
        std::fs::write(partial.join(MANIFEST_FILE), "{}").unwrap();
        publish(&partial, &dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("move-db/app.dump")).unwrap(),
            "dump"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(ETC_ARCHIVE)).unwrap(),
            "new"
        );
        assert!(dir.join(MANIFEST_FILE).exists());
        assert!(!dir.join(PACKAGES_FILE).exists(), "not part of this backup");
        assert!(!partial.exists());
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(
            parse_pax_time("1700000000.123456789"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }
}

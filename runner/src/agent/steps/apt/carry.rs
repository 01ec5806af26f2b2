//! The target's lists the checks fetched, carried into the cutover.
//!
//! The checks fetch the target's package lists into the agent's scratch area
//! (for the sources as the cutover writes them), and apt builds its cache of
//! them there. When the cutover follows in the same run, the lists are copied
//! into the root's lists directory in place of the old release's (as
//! `apt-get update` would leave it, so that the root has the lists of its
//! sources whatever happens next), and the cutover's apt reads the scratch
//! lists and cache as they are, instead of fetching every list again and
//! rebuilding the cache: about two seconds of a minimal upgrade. Only while
//! they are fresh and only for the sources they were fetched for; otherwise
//! `apt-get update` revalidates the copies.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// How long lists fetched by the checks are used without asking the
/// repositories again.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(600);

/// Copies the regular file `from` to `dir/name` and says so; `false` (and
/// nothing copied) when `from` is not a regular file or something other
/// than one is at `dir/name` (a link or a directory the root put there).
/// The copy is a file of its own beside the target, renamed over it: never
/// written through whatever is at either name. Its modification time is
/// kept (apt asks a repository whether a list changed since then).
pub(super) fn copy_list(from: &Path, dir: &Path, name: &OsStr) -> Result<bool> {
    let target = dir.join(name);
    if target.symlink_metadata().is_ok_and(|m| !m.is_file()) {
        return Ok(false);
    }
    let Ok(mut src) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(from)
    else {
        return Ok(false);
    };
    let meta = src.metadata()?;
    if !meta.is_file() {
        return Ok(false);
    }
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(".migrate");
    let temp = dir.join(temp_name);
    let _ = std::fs::remove_file(&temp);
    let copied = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp)
        .and_then(|mut dst| {
            std::io::copy(&mut src, &mut dst)?;
            dst.set_modified(meta.modified()?)?;
            std::fs::rename(&temp, &target)
        });
    if copied.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    copied.with_context(|| format!("copying {} to {}", from.display(), dir.display()))?;
    Ok(true)
}

/// Makes the lists directory `to` hold the lists of `from`: each regular
/// file of `from` copied ([`copy_list`]), every other regular file of `to`
/// removed (the lists of sources no longer there, as `apt-get update`
/// removes them); `lock`, directories and links are left alone. How many
/// lists were copied.
pub(super) fn mirror(from: &Path, to: &Path) -> Result<usize> {
    let mut kept: Vec<OsString> = Vec::new();
    for e in std::fs::read_dir(from)
        .with_context(|| format!("listing {}", from.display()))?
        .filter_map(std::result::Result::ok)
    {
        let name = e.file_name();
        if name == "lock" || !e.file_type()?.is_file() {
            continue;
        }
        if copy_list(&e.path(), to, &name)? {
            kept.push(name);
        }
    }
    for e in std::fs::read_dir(to)
        .with_context(|| format!("listing {}", to.display()))?
        .filter_map(std::result::Result::ok)
    {
        let name = e.file_name();
        if name != "lock" && e.file_type()?.is_file() && !kept.contains(&name) {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(kept.len())
}

/// Whether two texts of a source file say the same to apt: the same lines,
/// comments and blank lines aside (the cutover's copy and the checks' copy
/// differ only in the comment naming the migration).
pub(super) fn sources_alike(a: &str, b: &str) -> bool {
    fn read(text: &str) -> impl Iterator<Item = &str> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }
    read(a).eq(read(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn mirror_replaces_the_old_lists_and_keeps_times() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        write(&from.path().join("x_trixie_InRelease"), "new release");
        write(&from.path().join("x_trixie_main_Packages"), "Package: a\n");
        write(&from.path().join("lock"), "");
        std::fs::create_dir(from.path().join("partial")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        std::fs::File::options()
            .write(true)
            .open(from.path().join("x_trixie_InRelease"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        write(
            &to.path().join("x_bookworm_main_Packages"),
            "Package: old\n",
        );
        write(&to.path().join("lock"), "");
        std::fs::create_dir(to.path().join("partial")).unwrap();
        assert_eq!(mirror(from.path(), to.path()).unwrap(), 2);
        let mut names: Vec<String> = std::fs::read_dir(to.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "lock",
                "partial",
                "x_trixie_InRelease",
                "x_trixie_main_Packages"
            ]
        );
        let copied = to.path().join("x_trixie_InRelease");
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), "new release");
        assert_eq!(copied.metadata().unwrap().modified().unwrap(), old);
    }

    #[test]
    fn mirror_never_writes_through_a_link_or_reads_a_fifo() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(&from.path().join("x_InRelease"), "release");
        nix::unistd::mkfifo(&from.path().join("x_fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let victim = outside.path().join("victim");
        write(&victim, "untouched");
        std::os::unix::fs::symlink(&victim, to.path().join("x_InRelease")).unwrap();
        assert_eq!(mirror(from.path(), to.path()).unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(
            to.path()
                .join("x_InRelease")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!to.path().join("x_fifo").exists());
    }

    #[test]
    fn sources_alike_only_comments_aside() {
        let cutover = "# migrate: migration 1 to trixie: disabled, gone\n# deb http://v/ bookworm main\ndeb http://d/ trixie main\n";
        let checks = "# migrate: scratch copy: disabled, gone\n# deb http://v/ bookworm main\n\ndeb http://d/ trixie main\n";
        assert!(sources_alike(cutover, checks));
        assert!(!sources_alike(cutover, "deb http://d/ bookworm main\n"));
        assert!(!sources_alike("Types: deb\nEnabled: no\n", "Types: deb\n"));
    }
}

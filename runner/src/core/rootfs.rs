//! Paths inside a root filesystem that is not the one we run in.
//!
//! A root mounted at `/system-root` (or given with `--root`) contains absolute
//! symlinks such as `etc/os-release -> /usr/lib/os-release`. Following them with the
//! kernel would leave the root and read the *running* system's files, so paths are
//! resolved here component by component, with `/` meaning the root.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// At most this many symlinks are followed for one path (as the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute or relative, interpreted inside `root`) to a path on
/// the running system, following symlinks as if `root` were `/`.
///
/// The final component need not exist; missing intermediate directories are
/// returned unresolved, so that callers can report "not found" themselves.
pub(crate) fn resolve(root: &Path, path: impl AsRef<Path>) -> Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = components(path.as_ref());
    pending.reverse();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut followed = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = join(root, &resolved).join(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    bail!(
                        "too many levels of symbolic links at {}",
                        candidate.display()
                    );
                }
                let target = std::fs::read_link(&candidate)
                    .with_context(|| format!("reading symlink {}", candidate.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved.push(name),
        }
    }
    Ok(join(root, &resolved))
}

fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn join(root: &Path, parts: &[std::ffi::OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

#[cfg(test)]
mod confined_tests {
    use std::path::Path;

    use super::confined;

    /// A root whose migrate paths are symlinks out of it, and a canary
    /// directory outside: every write lands inside the root or is refused,
    /// and the canary never changes.
    #[test]
    fn symlinks_in_a_root_never_steer_reads_or_writes_out_of_it() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        let canary = top.path().join("canary");
        std::fs::create_dir_all(&canary).unwrap();
        std::fs::write(canary.join("host.log"), "host\n").unwrap();
        std::fs::write(canary.join("secret.toml"), "[[step]]\nid = \"x\"\n").unwrap();
        let snapshot = |d: &Path| {
            let mut v: Vec<(String, String)> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let c = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), c)
                })
                .collect();
            v.sort();
            v
        };
        let before = snapshot(&canary);

        // The log directory a symlink to the canary: inside the root that
        // path does not exist, so nothing is written, anywhere.
        std::fs::create_dir_all(root.join("var/log")).unwrap();
        std::os::unix::fs::symlink(&canary, root.join("var/log/migrate")).unwrap();
        assert!(confined::append(&root, "var/log/migrate/migrate.log").is_err());
        assert!(confined::write_atomic(&root, "var/log/migrate/report.json", b"{}").is_err());
        // A symlink to a directory the root has: followed as the root sees it.
        std::fs::remove_file(root.join("var/log/migrate")).unwrap();
        std::fs::create_dir_all(root.join("srv/logs")).unwrap();
        std::os::unix::fs::symlink("/srv/logs", root.join("var/log/migrate")).unwrap();
        let mut log = confined::append(&root, "var/log/migrate/migrate.log").unwrap();
        std::io::Write::write_all(&mut log, b"line\n").unwrap();
        confined::write_atomic(&root, "var/log/migrate/report.json", b"{}").unwrap();
        let inside = root.join("srv/logs");
        assert_eq!(
            std::fs::read_to_string(inside.join("migrate.log")).unwrap(),
            "line\n"
        );
        assert_eq!(
            std::fs::read_to_string(inside.join("report.json")).unwrap(),
            "{}"
        );

        // The state file itself a symlink to a host file: replaced, not followed.
        std::fs::create_dir_all(root.join("var/lib/migrate")).unwrap();
        std::os::unix::fs::symlink(
            canary.join("host.log"),
            root.join("var/lib/migrate/state.json"),
        )
        .unwrap();
        confined::write_atomic(&root, "var/lib/migrate/state.json", b"{\"v\":1}").unwrap();
        let state = root.join("var/lib/migrate/state.json");
        assert!(
            !std::fs::symlink_metadata(&state)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A log that is a symlink to a host file is refused.
        std::fs::create_dir_all(root.join("var/log2")).unwrap();
        std::os::unix::fs::symlink(canary.join("host.log"), root.join("var/log2/migrate.log"))
            .unwrap();
        assert!(confined::append(&root, "var/log2/migrate.log").is_err());
        // ... and so, before a run starts, is any file not a regular one.
        let e = confined::check_writable(&root, "var/log2/migrate.log").unwrap_err();
        assert!(
            e.to_string().ends_with(
                "migrate.log: a symbolic link; migrate writes it only as a regular file"
            ),
            "{e}"
        );
        assert!(confined::check_writable(&root, "var/log2/report.json").is_ok());
        assert!(confined::check_writable(&root, "srv/logs/report.json").is_ok());
        let e = confined::check_writable(&root, "srv/logs").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("srv/logs: a directory; migrate writes it only as a regular file"),
            "{e}"
        );
        // migrate's directories: missing, or directories as the root sees them.
        assert!(confined::check_directory(&root, "var/log/migrate").is_ok());
        assert!(confined::check_directory(&root, "var/log/none").is_ok());
        let e = confined::check_directory(&root, "var/log2/migrate.log").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("a symbolic link to nothing inside the root"),
            "{e}"
        );
        let e = confined::check_directory(&root, "srv/logs/report.json").unwrap_err();
        assert!(
            e.to_string().ends_with("report.json: not a directory"),
            "{e}"
        );

        // A drop-in symlinked to a host file reads the root's file of that
        // name (there is none), and `..` stops at the root.
        std::fs::create_dir_all(root.join("etc/migrate/plan.d")).unwrap();
        std::os::unix::fs::symlink(
            canary.join("secret.toml"),
            root.join("etc/migrate/plan.d/50-x.toml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../../canary/secret.toml",
            root.join("etc/migrate/plan.d/60-y.toml"),
        )
        .unwrap();
        assert_eq!(
            confined::list(&root, "etc/migrate/plan.d").unwrap(),
            ["50-x.toml", "60-y.toml"]
        );
        assert!(
            confined::read(&root, "etc/migrate/plan.d/50-x.toml", 100)
                .unwrap()
                .is_none()
        );
        assert!(
            confined::read(&root, "etc/migrate/plan.d/60-y.toml", 100)
                .unwrap()
                .is_none()
        );
        confined::remove(&root, "var/lib/migrate/state.json").unwrap();
        confined::rename(
            &root,
            "var/log/migrate/report.json",
            "var/log/migrate/report-1.json",
        )
        .unwrap();

        assert_eq!(snapshot(&canary), before, "a file outside the root changed");
    }

    #[test]
    fn reads_inside_a_root_are_bounded_and_regular_files_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &root.path().join("etc/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::write(root.path().join("etc/big"), vec![b'x'; 10]).unwrap();
        let e = confined::read(root.path(), "etc/fifo", 100)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("etc/fifo: not a regular file"), "{e}");
        let e = confined::read(root.path(), "etc/big", 5)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("larger than 5 bytes"), "{e}");
        let e = confined::read(root.path(), "etc", 5)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("etc: is a directory"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("usr/lib/os-release"), "ID=x\n").unwrap();
        symlink("/usr/lib/os-release", root.path().join("etc/os-release")).unwrap();
        let p = resolve(root.path(), "/etc/os-release").unwrap();
        assert_eq!(p, root.path().join("usr/lib/os-release"));
    }

    #[test]
    fn relative_symlinks_and_dotdot_cannot_escape() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        symlink(
            "../../../../usr/lib/os-release",
            root.path().join("etc/os-release"),
        )
        .unwrap();
        let p = resolve(root.path(), "etc/os-release").unwrap();
        assert_eq!(p, root.path().join("usr/lib/os-release"));
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let root = tempfile::tempdir().unwrap();
        symlink("b", root.path().join("a")).unwrap();
        symlink("a", root.path().join("b")).unwrap();
        assert!(resolve(root.path(), "a").is_err());
    }
}

/// Files the host and the agent keep in a root (`var/log/migrate/`,
/// `var/lib/migrate/`, `etc/migrate/`), reached through [`pathrs`]: every
/// path resolves inside the root as a chroot would see it (an absolute
/// symlink means the root's `/`, `..` stops at it), so a root's symlinks can
/// never steer a read or a write out of it. New files are created exclusively
/// and never through a final symlink; reads take regular files only, bounded.
pub(crate) mod confined {
    use std::fs::{File, Permissions};
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use anyhow::{Context, Result, bail};
    use pathrs::flags::{OpenFlags, RenameFlags};
    use pathrs::{Root, error::ErrorKind};

    fn open(root: &Path) -> Result<Root> {
        // pathrs wants the root itself free of symlinks.
        let real =
            std::fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
        Root::open(&real).with_context(|| format!("opening {}", root.display()))
    }

    fn not_found(e: &pathrs::error::Error) -> bool {
        e.kind() == ErrorKind::OsError(Some(nix::libc::ENOENT))
    }

    fn shown(root: &Path, rel: &str) -> String {
        root.join(rel).display().to_string()
    }

    /// Reads `rel`, a regular file of at most `limit` bytes; `Ok(None)` if
    /// it does not exist. A FIFO or device is refused without blocking.
    pub(crate) fn read(root: &Path, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let r = open(root)?;
        let file = match r.open_subpath(
            rel,
            OpenFlags::O_RDONLY
                | OpenFlags::O_NONBLOCK
                | OpenFlags::O_NOCTTY
                | OpenFlags::O_CLOEXEC,
        ) {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => bail!("{}: {e}", shown(root, rel)),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", shown(root, rel)))?;
        if meta.is_dir() {
            bail!("{}: is a directory", shown(root, rel));
        }
        if !meta.is_file() {
            bail!("{}: not a regular file", shown(root, rel));
        }
        if meta.len() > limit {
            bail!("{}: larger than {limit} bytes", shown(root, rel));
        }
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", shown(root, rel)))?;
        if bytes.len() as u64 > limit {
            bail!("{}: larger than {limit} bytes", shown(root, rel));
        }
        Ok(Some(bytes))
    }

    /// The names in directory `rel` (none if it does not exist).
    pub(crate) fn list(root: &Path, rel: &str) -> Result<Vec<String>> {
        let r = open(root)?;
        let dir = match r.resolve(rel) {
            Ok(h) => h,
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => bail!("{}: {e}", shown(root, rel)),
        };
        let file = dir
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .with_context(|| format!("{}: not a directory", shown(root, rel)))?;
        let mut d = nix::dir::Dir::from_fd(file.into())
            .with_context(|| format!("reading {}", shown(root, rel)))?;
        let mut names = Vec::new();
        for entry in d.iter() {
            let entry = entry.with_context(|| format!("reading {}", shown(root, rel)))?;
            let Ok(name) = entry.file_name().to_str().map(str::to_string) else {
                bail!(
                    "{}: a file name that is not UTF-8: {}",
                    shown(root, rel),
                    entry.file_name().to_string_lossy()
                );
            };
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn parent_and_name(rel: &str) -> (&str, &str) {
        rel.rsplit_once('/').unwrap_or(("", rel))
    }

    /// Opens `rel` to append (created 0644 with its directories if missing,
    /// never through a final symlink).
    pub(crate) fn append(root: &Path, rel: &str) -> Result<File> {
        let r = open(root)?;
        let (parent, _) = parent_and_name(rel);
        r.mkdir_all(parent, &Permissions::from_mode(0o755))
            .with_context(|| format!("creating {}", shown(root, parent)))?;
        let file = r
            .create_file(
                rel,
                OpenFlags::O_WRONLY
                    | OpenFlags::O_APPEND
                    | OpenFlags::O_NOFOLLOW
                    | OpenFlags::O_NONBLOCK
                    | OpenFlags::O_CLOEXEC,
                &Permissions::from_mode(0o644),
            )
            .with_context(|| format!("opening {}", shown(root, rel)))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            bail!("{}: not a regular file", shown(root, rel));
        }
        Ok(file)
    }

    /// Writes `rel` atomically: a new temporary file beside it (created
    /// exclusively, an unpredictable name), fsync, rename over it, fsync of
    /// the directory. An existing file's permissions are kept.
    pub(crate) fn write_atomic(root: &Path, rel: &str, contents: &[u8]) -> Result<()> {
        let r = open(root)?;
        let (parent, name) = parent_and_name(rel);
        let dir = r
            .mkdir_all(parent, &Permissions::from_mode(0o755))
            .with_context(|| format!("creating {}", shown(root, parent)))?;
        let mode = match r.open_subpath(rel, OpenFlags::O_PATH | OpenFlags::O_NOFOLLOW) {
            Ok(f) => f
                .metadata()
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644),
            Err(_) => 0o644,
        };
        let (tmp, mut file) = (0..16)
            .find_map(|_| {
                let tmp = format!("{parent}/.{name}.{}.tmp", unpredictable());
                r.create_file(
                    &tmp,
                    OpenFlags::O_WRONLY
                        | OpenFlags::O_EXCL
                        | OpenFlags::O_NOFOLLOW
                        | OpenFlags::O_CLOEXEC,
                    &Permissions::from_mode(mode),
                )
                .ok()
                .map(|f| (tmp, f))
            })
            .with_context(|| format!("creating a temporary file beside {}", shown(root, rel)))?;
        let written = file
            .write_all(contents)
            .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = r.remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", shown(root, rel)));
        }
        if let Err(e) = r.rename(&tmp, rel, RenameFlags::empty()) {
            let _ = r.remove_file(&tmp);
            bail!("replacing {}: {e}", shown(root, rel));
        }
        if let Ok(d) = dir.reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Fails unless `rel` is missing or a regular file: migrate writes its
    /// files only as regular files, never through a symlink, a FIFO or a
    /// device the root put in their place. (Its directories may be symlinks:
    /// they resolve inside the root.)
    pub(crate) fn check_writable(root: &Path, rel: &str) -> Result<()> {
        let r = open(root)?;
        let file = match r.open_subpath(rel, OpenFlags::O_PATH | OpenFlags::O_NOFOLLOW) {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::OsError(Some(nix::libc::ENOTDIR)) => {
                bail!("{}: a parent is not a directory", shown(root, rel))
            }
            Err(e) => bail!("{}: {e}", shown(root, rel)),
        };
        let kind = file
            .metadata()
            .with_context(|| format!("inspecting {}", shown(root, rel)))?
            .file_type();
        let what = if kind.is_file() {
            return Ok(());
        } else if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        bail!(
            "{}: {what}; migrate writes it only as a regular file",
            shown(root, rel)
        )
    }

    /// Fails unless `rel` is missing or a directory (a symlink to a
    /// directory inside the root is one): what stands in the way of creating
    /// migrate's own directories is refused before a run starts.
    pub(crate) fn check_directory(root: &Path, rel: &str) -> Result<()> {
        let r = open(root)?;
        match r.resolve(rel) {
            Ok(h) => {
                let meta = h
                    .reopen(OpenFlags::O_PATH)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .and_then(|f| f.metadata().map_err(Into::into))
                    .with_context(|| format!("inspecting {}", shown(root, rel)))?;
                if meta.is_dir() {
                    Ok(())
                } else {
                    bail!("{}: not a directory", shown(root, rel))
                }
            }
            Err(e) if not_found(&e) => {
                // Missing, or a symlink to nothing inside the root.
                match r.open_subpath(rel, OpenFlags::O_PATH | OpenFlags::O_NOFOLLOW) {
                    Ok(_) => bail!(
                        "{}: a symbolic link to nothing inside the root",
                        shown(root, rel)
                    ),
                    Err(_) => Ok(()),
                }
            }
            Err(e) => bail!("{}: {e}", shown(root, rel)),
        }
    }

    /// Renames `from` to `to`, both inside the root.
    pub(crate) fn rename(root: &Path, from: &str, to: &str) -> Result<()> {
        open(root)?
            .rename(from, to, RenameFlags::empty())
            .with_context(|| format!("moving {} to {}", shown(root, from), shown(root, to)))
    }

    /// Removes the file (or symlink) `rel`; a missing one is no error.
    pub(crate) fn remove(root: &Path, rel: &str) -> Result<()> {
        match open(root)?.remove_file(rel) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => bail!("removing {}: {e}", shown(root, rel)),
        }
    }

    /// A name part nobody can guess ahead of time.
    fn unpredictable() -> String {
        let mut bytes = [0u8; 8];
        if File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .is_err()
        {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            bytes = (nanos as u64 ^ u64::from(std::process::id())).to_le_bytes();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

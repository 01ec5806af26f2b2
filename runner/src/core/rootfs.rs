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

//! The root's package lists read directly, for one question: which installed
//! packages no list offers in their installed version (what `apt list
//! --installed` marks `local`). apt answers it by building its whole package
//! cache first, about a second on Debian's main list alone; reading the lists
//! for the few fields the answer needs takes a tenth of that.
//!
//! Only uncompressed lists that are regular files are read; anything else
//! (compressed lists, a symbolic link, a FIFO in a hostile root) leaves the
//! question to apt.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

/// Longest line kept whole; the fields read here are far shorter, and a
/// longer line (a hostile list) is skipped to its end without being kept.
const MAX_LINE: u64 = 4096;

/// One installed package: name, architecture, version.
type Package = (String, String, String);

/// The installed packages (`dpkg-query -W -f` [`INSTALLED_FORMAT`] output)
/// whose installed version none of the root's package lists offers, sorted,
/// named as apt names them (`NAME:ARCH` for an architecture other than the
/// `native` one and `all`); `None` when the lists cannot be read here (apt
/// must answer).
pub(crate) fn local_packages(
    root: &Path,
    installed: &str,
    native: &str,
) -> Result<Option<Vec<String>>> {
    let installed = parse_installed(installed);
    let names: HashSet<&str> = installed.iter().map(|(n, _, _)| n.as_str()).collect();
    let Some(lists) = Lists::read(root, Some(&names))? else {
        return Ok(None);
    };
    Ok(Some(lists.local(installed, native)))
}

/// What the root's package lists offer, read once: each stanza's name,
/// architecture and version (of the packages asked for, or all), and the
/// lists as they were when read.
pub(crate) struct Lists {
    files: Vec<ListFile>,
    offered: HashSet<Package>,
}

/// A list file as read: path, size, modification time, inode. A list
/// rewritten since (by `apt-get update`) differs in one of them.
#[derive(Debug, PartialEq, Eq)]
struct ListFile {
    path: PathBuf,
    len: u64,
    mtime: (i64, i64),
    ino: u64,
}

impl Lists {
    /// Reads the root's binary package lists for the stanzas of `names`
    /// (all of them with `None`); `None` when a list is not a plain,
    /// uncompressed regular file (or there are none).
    fn read(root: &Path, names: Option<&HashSet<&str>>) -> Result<Option<Self>> {
        let Some(paths) = package_lists(root)? else {
            return Ok(None);
        };
        let mut lists = Lists {
            files: Vec::with_capacity(paths.len()),
            offered: HashSet::new(),
        };
        for path in paths {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Ok(None);
            }
            offered_versions(
                BufReader::with_capacity(1 << 16, file),
                names,
                &mut lists.offered,
            )
            .with_context(|| format!("reading {}", path.display()))?;
            lists.files.push(ListFile::of(path, &meta));
        }
        Ok(Some(lists))
    }

    /// Whether the root's lists are still the ones read.
    fn current(&self, root: &Path) -> bool {
        let Ok(Some(paths)) = package_lists(root) else {
            return false;
        };
        paths.len() == self.files.len()
            && paths.into_iter().zip(&self.files).all(|(path, read)| {
                std::fs::symlink_metadata(&path)
                    .is_ok_and(|meta| meta.is_file() && ListFile::of(path, &meta) == *read)
            })
    }

    /// Which of `installed` no list offers in its installed version, as
    /// [`local_packages`] names them.
    fn local(&self, installed: Vec<Package>, native: &str) -> Vec<String> {
        let local: BTreeSet<String> = installed
            .into_iter()
            .filter(|p| !self.offered.contains(p))
            .map(|(name, arch, _)| {
                if arch == native || arch == "all" {
                    name
                } else {
                    format!("{name}:{arch}")
                }
            })
            .collect();
        local.into_iter().collect()
    }
}

impl ListFile {
    fn of(path: PathBuf, meta: &std::fs::Metadata) -> Self {
        ListFile {
            path,
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// The root's lists read in a thread of their own while something else
/// runs (the upgrade, which changes the installed packages but not the
/// lists), so that [`ReadAhead::local_packages`] afterwards answers without
/// reading them.
pub(crate) struct ReadAhead {
    root: PathBuf,
    reading: JoinHandle<Result<Option<Lists>>>,
}

impl ReadAhead {
    /// Starts reading the root's lists.
    pub(crate) fn start(root: &Path) -> Self {
        let owned = root.to_path_buf();
        ReadAhead {
            root: root.to_path_buf(),
            reading: std::thread::spawn(move || Lists::read(&owned, None)),
        }
    }

    /// [`local_packages`] from the lists read ahead, if the root's lists are
    /// still those; `None` if they changed since, or could not be read.
    pub(crate) fn local_packages(self, installed: &str, native: &str) -> Option<Vec<String>> {
        let lists = self.reading.join().ok()?.ok()??;
        lists
            .current(&self.root)
            .then(|| lists.local(parse_installed(installed), native))
    }
}

/// `dpkg-query -W -f` format of the lines [`local_packages`] reads.
pub(crate) const INSTALLED_FORMAT: &str =
    "${db:Status-Abbrev}\\t${Package}\\t${Architecture}\\t${Version}\\n";

/// The packages dpkg has a version of (apt's current version): every state
/// but not-installed and config-files.
fn parse_installed(text: &str) -> Vec<Package> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            let (name, arch, version) = (f.next()?, f.next()?, f.next()?);
            let state = status.chars().nth(1)?;
            (!matches!(state, 'n' | 'c') && !name.is_empty())
                .then(|| (name.to_string(), arch.to_string(), version.to_string()))
        })
        .collect()
}

/// The root's binary package lists, or `None` if one is not a plain,
/// uncompressed regular file (or there are none).
fn package_lists(root: &Path) -> Result<Option<Vec<PathBuf>>> {
    let dir = super::repos::root_lists(root)?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut files = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.contains("_Packages") {
            continue;
        }
        if !name.ends_with("_Packages") || !e.file_type()?.is_file() {
            return Ok(None);
        }
        files.push(e.path());
    }
    files.sort();
    Ok((!files.is_empty()).then_some(files))
}

/// Adds to `offered` the (name, architecture, version) of each stanza of a
/// list whose package is one of `names` (every stanza with `None`).
fn offered_versions(
    mut list: impl BufRead,
    names: Option<&HashSet<&str>>,
    offered: &mut HashSet<Package>,
) -> Result<()> {
    let (mut name, mut arch, mut version) = (String::new(), String::new(), String::new());
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = list.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n as u64 == MAX_LINE && line.last() != Some(&b'\n') {
            skip_line(&mut list)?;
            continue;
        }
        // Most lines are other fields (descriptions, dependencies, sums):
        // passed over by their first byte.
        if !matches!(
            line.first(),
            None | Some(b'\n' | b'\r' | b'P' | b'p' | b'A' | b'a' | b'V' | b'v')
        ) {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            if !name.is_empty() && names.is_none_or(|n| n.contains(name.as_str())) {
                offered.insert((
                    std::mem::take(&mut name),
                    std::mem::take(&mut arch),
                    std::mem::take(&mut version),
                ));
            }
            name.clear();
            arch.clear();
            version.clear();
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        if let Some((field, value)) = text.split_once(':')
            && !field.starts_with([' ', '\t'])
        {
            let value = value.trim();
            if field.eq_ignore_ascii_case("Package") {
                name = value.to_string();
            } else if field.eq_ignore_ascii_case("Architecture") {
                arch = value.to_string();
            } else if field.eq_ignore_ascii_case("Version") {
                version = value.to_string();
            }
        }
    }
}

/// Reads past the end of the current line, keeping nothing.
fn skip_line(list: &mut impl BufRead) -> Result<()> {
    loop {
        let buf = list.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            list.consume(i + 1);
            return Ok(());
        }
        let len = buf.len();
        list.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(list: &str, names: &[&str]) -> HashSet<Package> {
        let names: HashSet<&str> = names.iter().copied().collect();
        let mut out = HashSet::new();
        offered_versions(list.as_bytes(), Some(&names), &mut out).unwrap();
        out
    }

    #[test]
    fn list_stanzas_give_name_architecture_and_version() {
        let list = "Package: apt\nVersion: 3.0.3\nArchitecture: amd64\nDescription: x\n continued: not a field\n\n\
                    Package: base-files\nArchitecture: amd64\nVersion: 13.8\n\n\
                    Package: other\nVersion: 1\nArchitecture: all\n";
        let got = offered(list, &["apt", "base-files", "missing"]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&("apt".into(), "amd64".into(), "3.0.3".into())));
        assert!(got.contains(&("base-files".into(), "amd64".into(), "13.8".into())));
        // The last stanza counts without a blank line after it.
        assert_eq!(offered(list, &["other"]).len(), 1);
    }

    #[test]
    fn a_line_longer_than_any_field_is_skipped_without_being_kept() {
        let long = "x".repeat(3 * MAX_LINE as usize);
        let list = format!(
            "Package: a\nDescription: {long}\nVersion: 1\nArchitecture: all\n\nPackage: b\nVersion: 2\nArchitecture: all\n"
        );
        let got = offered(&list, &["a", "b"]);
        assert!(got.contains(&("a".into(), "all".into(), "1".into())));
        assert!(got.contains(&("b".into(), "all".into(), "2".into())));
    }

    #[test]
    fn installed_packages_are_those_dpkg_has_a_version_of() {
        let text = "ii \tbash\tamd64\t5.2.37-2\nrc \told\tamd64\t1.0\nun \tgone\tamd64\t\niU \tlibc6\tamd64\t2.41-12\n";
        assert_eq!(
            parse_installed(text),
            [
                (
                    "bash".to_string(),
                    "amd64".to_string(),
                    "5.2.37-2".to_string()
                ),
                (
                    "libc6".to_string(),
                    "amd64".to_string(),
                    "2.41-12".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_local_packages_are_the_installed_versions_no_list_offers() {
        let root = tempfile::tempdir().unwrap();
        let lists = root.path().join("var/lib/apt/lists");
        std::fs::create_dir_all(lists.join("partial")).unwrap();
        std::fs::write(lists.join("lock"), "").unwrap();
        std::fs::write(
            lists.join("mirror_dists_trixie_main_binary-amd64_Packages"),
            "Package: bash\nVersion: 5.2.37-2\nArchitecture: amd64\n\n\
             Package: libssl3t64\nVersion: 3.5.1-1\nArchitecture: amd64\n\n\
             Package: tzdata\nVersion: 2025b-4\nArchitecture: all\n\n\
             Package: libc6\nVersion: 2.41-12\nArchitecture: i386\n",
        )
        .unwrap();
        std::fs::write(lists.join("mirror_dists_trixie_InRelease"), "signed").unwrap();
        let installed = "ii \tbash\tamd64\t5.2.37-2\n\
                         ii \tlibssl3\tamd64\t3.0.15-1~deb12u1\n\
                         ii \ttzdata\tall\t2025b-4\n\
                         ii \tlibc6\tamd64\t2.41-12\n\
                         ii \tbash\ti386\t5.2.15-2\n\
                         rc \told\tamd64\t1.0\n";
        assert_eq!(
            local_packages(root.path(), installed, "amd64").unwrap(),
            Some(vec![
                "bash:i386".to_string(),
                "libc6".to_string(),
                "libssl3".to_string()
            ])
        );
        // A compressed list, or a FIFO in its place: apt answers.
        std::fs::write(
            lists.join("mirror_dists_trixie_contrib_binary-amd64_Packages.lz4"),
            "",
        )
        .unwrap();
        assert_eq!(
            local_packages(root.path(), installed, "amd64").unwrap(),
            None
        );
        std::fs::remove_file(lists.join("mirror_dists_trixie_contrib_binary-amd64_Packages.lz4"))
            .unwrap();
        nix::unistd::mkfifo(
            &lists.join("hostile_binary-amd64_Packages"),
            nix::sys::stat::Mode::S_IRUSR,
        )
        .unwrap();
        assert_eq!(
            local_packages(root.path(), installed, "amd64").unwrap(),
            None
        );
    }

    #[test]
    fn lists_read_ahead_answer_only_while_the_root_still_has_them() {
        let root = tempfile::tempdir().unwrap();
        let lists = root.path().join("var/lib/apt/lists");
        std::fs::create_dir_all(&lists).unwrap();
        let list = lists.join("mirror_dists_trixie_main_binary-amd64_Packages");
        std::fs::write(
            &list,
            "Package: bash\nVersion: 5.2.37-2\nArchitecture: amd64\n\n\
             Package: tzdata\nVersion: 2025b-4\nArchitecture: all\n",
        )
        .unwrap();
        // Read before the upgrade; asked with what is installed after it.
        let installed = "ii \tbash\tamd64\t5.2.37-2\nii \ttzdata\tall\t2025a-1\n";
        let ahead = ReadAhead::start(root.path());
        assert_eq!(
            ahead.local_packages(installed, "amd64"),
            Some(vec!["tzdata".to_string()])
        );
        // A list rewritten after the read: the read-ahead does not answer.
        let ahead = ReadAhead::start(root.path());
        while !ahead.reading.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::fs::write(
            lists.join("new_Packages"),
            "Package: tzdata\nVersion: 2025a-1\nArchitecture: all\n",
        )
        .unwrap();
        assert_eq!(ahead.local_packages(installed, "amd64"), None);
        let ahead = ReadAhead::start(root.path());
        while !ahead.reading.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::fs::write(
            &list,
            "Package: bash\nVersion: 5.2.37-3\nArchitecture: amd64\n",
        )
        .unwrap();
        assert_eq!(ahead.local_packages(installed, "amd64"), None);
        assert_eq!(
            local_packages(root.path(), installed, "amd64").unwrap(),
            Some(vec!["bash".to_string()])
        );
    }
}

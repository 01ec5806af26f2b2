//! What a copy left behind, to verify the cutover's final pass without
//! reading both whole trees inside the downtime.
//!
//! After each pre-copy (and after the final pass) both trees are walked and
//! every entry recorded: its kind, size, modification and change times,
//! inode, mode, owner, link count, a digest of its extended attributes (ACLs
//! included), a symlink's target, and for a regular file whether both sides
//! had the same content (SHA-256) at that moment. A file is hashed again only
//! when its metadata moved since the previous manifest.
//!
//! The final pass then compares the two trees by metadata (cheap: one
//! `lstat` and one `listxattr` per entry) and by content only where an entry
//! moved on either side since the manifest: what rsync transferred or
//! deleted, and anything else written meanwhile. Why that is as good as
//! reading everything: a file's change time (ctime) is kept by the kernel
//! and moves with every write to its data or metadata; it cannot be set
//! from user space (short of changing the system clock). An entry whose
//! size, mtime, ctime and inode are what they were when both sides were
//! read and found equal holds the same bytes now. What this cannot see is a
//! change below the filesystem (a disk's bit rot, a write to the block
//! device); the verification after the service started (`verify-copy`)
//! reads everything, outside the downtime.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An entry's `lstat`: kind (`f` file, `d` directory, `l` symlink, `o`
/// anything else), size, mtime and ctime (seconds, nanoseconds), inode,
/// mode, owner, group, link count. An array in the manifest: compact and
/// fast to read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stat(
    pub(crate) char,
    pub(crate) u64,
    pub(crate) [i64; 2],
    pub(crate) [i64; 2],
    pub(crate) u64,
    pub(crate) u32,
    pub(crate) u32,
    pub(crate) u32,
    pub(crate) u64,
);

impl Stat {
    /// From the kernel's `struct stat`.
    #[allow(clippy::unnecessary_cast)] // the field types differ by architecture
    pub(crate) fn of(st: &rustix::fs::Stat) -> Self {
        let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode as _) {
            rustix::fs::FileType::RegularFile => 'f',
            rustix::fs::FileType::Directory => 'd',
            rustix::fs::FileType::Symlink => 'l',
            _ => 'o',
        };
        Stat(
            kind,
            if kind == 'f' { st.st_size as u64 } else { 0 },
            [st.st_mtime as i64, st.st_mtime_nsec as i64],
            [st.st_ctime as i64, st.st_ctime_nsec as i64],
            st.st_ino as u64,
            st.st_mode as u32,
            st.st_uid as u32,
            st.st_gid as u32,
            if kind == 'd' { 0 } else { st.st_nlink as u64 },
        )
    }

    /// A path's `lstat`.
    pub(crate) fn lstat(path: &Path) -> std::io::Result<Self> {
        Ok(Self::of(&rustix::fs::lstat(path)?))
    }

    pub(crate) fn kind(&self) -> char {
        self.0
    }

    pub(crate) fn size(&self) -> u64 {
        self.1
    }

    pub(crate) fn mtime(&self) -> [i64; 2] {
        self.2
    }

    pub(crate) fn inode(&self) -> u64 {
        self.4
    }

    pub(crate) fn links(&self) -> u64 {
        self.8
    }

    /// What a copy must reproduce of it (not inode and ctime, which are
    /// each side's own; not a directory's mtime, which rsync sets after its
    /// content and a later write into it moves; not a symlink's, which
    /// rsync leaves as it comes when it falls in the same second).
    pub(crate) fn same_as_copy(&self, other: &Self) -> bool {
        self.0 == other.0
            && self.1 == other.1
            && (self.0 == 'd' || self.0 == 'l' || self.2 == other.2)
            && self.5 == other.5
            && self.6 == other.6
            && self.7 == other.7
            && self.8 == other.8
    }
}

/// What `lstat` does not say: the extended attributes (ACLs included) and
/// a symlink's target. Read only for entries that moved: changing either
/// moves the entry's ctime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extra {
    xattrs: String,
    target: Option<String>,
}

impl Extra {
    fn read(path: &Path, stat: &Stat) -> Result<Self> {
        let target = (stat.kind() == 'l')
            .then(|| std::fs::read_link(path).map(|t| t.to_string_lossy().into_owned()))
            .transpose()
            .with_context(|| format!("reading the link {}", path.display()))?;
        Ok(Self {
            xattrs: xattr_digest(path)?,
            target,
        })
    }
}

fn xattr_digest(path: &Path) -> Result<String> {
    let mut names: Vec<std::ffi::OsString> = xattr::list(path)
        .with_context(|| format!("listing the extended attributes of {}", path.display()))?
        .collect();
    if names.is_empty() {
        return Ok(String::new());
    }
    names.sort();
    let mut h = Sha256::new();
    for name in names {
        let value = xattr::get(path, &name).ok().flatten().unwrap_or_default();
        h.update(name.as_encoded_bytes());
        h.update([0]);
        h.update((value.len() as u64).to_le_bytes());
        h.update(&value);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content.
pub(crate) fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Every entry under `top` (not `top` itself) by path relative to it, with
/// its `lstat` (taken relative to its directory: one path component to
/// resolve, not the whole path). One allocation per entry, its name: a
/// walk is what the final pass spends its time on inside the downtime.
pub(crate) fn walk(top: &Path) -> Result<BTreeMap<String, Stat>> {
    use rustix::fs::{AtFlags, Dir, Mode, OFlags};
    use rustix::io::Errno;
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = top.join(&rel);
        // The top as rsync takes it (`dir/`: a symlink followed); below it,
        // a directory replaced by a symlink meanwhile is not followed.
        let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if !rel.is_empty() {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = match rustix::fs::open(&path, flags, Mode::empty()) {
            Ok(fd) => fd,
            // What vanishes (or stops being a directory) while the tree is
            // walked (a service still writing during a pre-copy) is left
            // out of the record.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) if !rel.is_empty() => continue,
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("reading {}", path.display()));
            }
        };
        let reading = || format!("reading {}", path.display());
        let mut dir = Dir::read_from(&fd)
            .map_err(std::io::Error::from)
            .with_context(reading)?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(std::io::Error::from).with_context(reading)?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let stat = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Stat::of(&st),
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    return Err(std::io::Error::from(e)).with_context(|| {
                        format!(
                            "reading {}",
                            path.join(OsStr::from_bytes(name.to_bytes())).display()
                        )
                    });
                }
            };
            let name = String::from_utf8_lossy(name.to_bytes());
            let key = if rel.is_empty() {
                name.into_owned()
            } else {
                let mut key = String::with_capacity(rel.len() + 1 + name.len());
                key.push_str(&rel);
                key.push('/');
                key.push_str(&name);
                key
            };
            if stat.kind() == 'd' {
                stack.push(key.clone());
            }
            out.insert(key, stat);
        }
    }
    Ok(out)
}

/// Both trees at once.
pub(crate) fn walk_both(
    src: &Path,
    dst: &Path,
) -> Result<(BTreeMap<String, Stat>, BTreeMap<String, Stat>)> {
    std::thread::scope(|scope| {
        let other = scope.spawn(|| walk(dst));
        let s = walk(src)?;
        let d = other
            .join()
            .map_err(|_| anyhow::anyhow!("walking {} failed", dst.display()))??;
        Ok((s, d))
    })
}

/// One path on both sides, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pair {
    /// The source's `lstat`.
    pub(crate) s: Stat,
    /// The copy's `lstat`.
    pub(crate) d: Stat,
    /// The extended attributes' digest both sides had (none: empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) x: String,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) t: Option<String>,
    /// For files: the content's SHA-256 both sides had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) h: Option<String>,
}

/// The manifest format this agent writes and reads.
pub(crate) const VERSION: u32 = 2;

/// Both trees after a copy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) version: u32,
    /// When it was taken (RFC 3339).
    pub(crate) taken_at: String,
    /// Paths alike on both sides.
    pub(crate) entries: BTreeMap<String, Pair>,
}

/// What a verification found.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    /// Entries compared by content now.
    pub(crate) by_content: usize,
    /// Entries found identical by metadata against the manifest.
    pub(crate) by_metadata: usize,
    /// Bytes read to compare contents.
    pub(crate) bytes_read: u64,
    /// Differences, one line each.
    pub(crate) differences: Vec<String>,
    /// The trees as they are now, for the next manifest.
    pub(crate) now: Manifest,
}

/// Compares `src` and `dst` as a copy: the same paths, each reproduced (see
/// [`Stat::same_as_copy`], extended attributes and symlink targets), hard
/// links grouped alike, and for files the same content. An entry whose
/// `lstat` on both sides is what `known` recorded is as it was recorded;
/// only the others are read.
pub(crate) fn compare(src: &Path, dst: &Path, known: Option<Manifest>) -> Result<Verified> {
    let (s, d) = walk_both(src, dst)?;
    let delta = super::delta::Delta::of(&s, &d, known);
    Ok(delta.verify(src, dst, &s, d))
}

/// One entry alike by `lstat` on both sides (`ss`, `ds`), compared by what
/// `lstat` does not say: extended attributes, a symlink's target, a file's
/// content. Its record, or none with the difference noted in `v`.
pub(crate) fn compare_entry(
    path: &str,
    sp: &Path,
    dp: &Path,
    ss: &Stat,
    ds: &Stat,
    v: &mut Verified,
) -> Option<Pair> {
    if !ss.same_as_copy(ds) {
        v.differences.push(format!("{path}: metadata differs"));
        return None;
    }
    let (se, de) = match (Extra::read(sp, ss), Extra::read(dp, ds)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            v.differences.push(format!("{path}: unreadable: {e:#}"));
            return None;
        }
    };
    if se != de {
        v.differences.push(format!("{path}: metadata differs"));
        return None;
    }
    let mut pair = Pair {
        s: *ss,
        d: *ds,
        x: se.xattrs,
        t: se.target,
        h: None,
    };
    if ss.kind() != 'f' {
        v.by_metadata += 1;
        return Some(pair);
    }
    v.by_content += 1;
    v.bytes_read += ss.size() * 2;
    match (hash_file(sp), hash_file(dp)) {
        (Ok(a), Ok(b)) if a == b => {
            pair.h = Some(a);
            Some(pair)
        }
        (Ok(_), Ok(_)) => {
            v.differences.push(format!("{path}: content differs"));
            None
        }
        (Err(e), _) | (_, Err(e)) => {
            v.differences.push(format!("{path}: unreadable: {e:#}"));
            None
        }
    }
}

/// Hard links: paths sharing an inode on one side must share one on the
/// other.
pub(crate) fn link_groups_differ(
    s: &BTreeMap<String, Stat>,
    d: &BTreeMap<String, Stat>,
) -> Vec<String> {
    let mut pairs: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (path, ss) in s.iter().filter(|(_, m)| m.kind() == 'f' && m.8 > 1) {
        if let Some(ds) = d.get(path) {
            match pairs.get(&ss.4) {
                Some(ino) if *ino != ds.4 => out.push(format!("{path}: hard links differ")),
                Some(_) => {}
                None => {
                    pairs.insert(ss.4, ds.4);
                }
            }
        }
    }
    out
}

/// Reads a manifest; none if there is none (or one of another version or
/// unreadable: then everything is compared by content).
pub(crate) fn load(path: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Manifest>(&bytes)
        .ok()
        .filter(|m| m.version == VERSION)
}

/// The manifests of a run's copies. A manifest taken by one pass is kept
/// in memory for the next pass of the same run (the final pass inside the
/// downtime then reads no file), and on disk for later runs. The final
/// pass's manifest is written in the background, outside the downtime;
/// whoever reads a manifest next, and the end of the run, wait for it.
#[derive(Default)]
pub(crate) struct Manifests {
    known: RefCell<HashMap<PathBuf, Manifest>>,
    saving: RefCell<Vec<(PathBuf, Saving)>>,
}

/// A manifest being written, handed back when written.
type Saving = std::thread::JoinHandle<(Manifest, Result<()>)>;

impl Manifests {
    /// The last manifest of the copy kept at `path`: this run's, else the
    /// one on disk (none if there is none).
    pub(crate) fn take(&self, path: &Path) -> Option<Manifest> {
        if let Some(m) = self.known.borrow_mut().remove(path) {
            return Some(m);
        }
        let pending = {
            let mut saving = self.saving.borrow_mut();
            let at = saving.iter().position(|(p, _)| p == path);
            at.map(|i| saving.remove(i))
        };
        if let Some((_, handle)) = pending {
            match handle.join() {
                Ok((m, written)) => {
                    if let Err(e) = written {
                        tracing::warn!("{e:#}");
                    }
                    return Some(m);
                }
                Err(_) => tracing::warn!("writing {} failed", path.display()),
            }
        }
        load(path)
    }

    /// Records `m` as the manifest at `path` now.
    pub(crate) fn put(&self, path: &Path, m: Manifest) -> Result<()> {
        save(path, &m)?;
        self.known.borrow_mut().insert(path.to_path_buf(), m);
        Ok(())
    }

    /// Keeps `m` for this run's next pass over the copy at `path`, not
    /// written.
    pub(crate) fn keep(&self, path: &Path, m: Manifest) {
        self.known.borrow_mut().insert(path.to_path_buf(), m);
    }

    /// Records `m` as the manifest at `path`, written in the background.
    pub(crate) fn put_later(&self, path: &Path, m: Manifest) {
        let file = path.to_path_buf();
        let handle = std::thread::spawn(move || {
            let written = save(&file, &m);
            (m, written)
        });
        self.saving.borrow_mut().push((path.to_path_buf(), handle));
    }

    /// Waits for the manifests being written; the first failure.
    pub(crate) fn wait(&self) -> Result<()> {
        let pending: Vec<_> = self.saving.borrow_mut().drain(..).collect();
        let mut first = Ok(());
        for (path, handle) in pending {
            match handle.join() {
                Ok((m, written)) => {
                    self.known.borrow_mut().insert(path, m);
                    first = first.and(written);
                }
                Err(_) => {
                    first = first.and(Err(anyhow::anyhow!("writing {} failed", path.display())));
                }
            }
        }
        first
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::warn!("{e:#}");
        }
    }
}

/// Writes a manifest (mode 0600, atomically).
pub(crate) fn save(path: &Path, m: &Manifest) -> Result<()> {
    let json = serde_json::to_vec(m).context("encoding the manifest")?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `content` to `path` and puts its mtime back: a change only
    /// its ctime shows.
    pub(crate) fn rewrite_keeping_mtime(path: &Path, content: &str) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, content).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    fn copy(src: &Path, dst: &Path) {
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(dst)
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    #[test]
    fn only_what_moved_is_read_and_a_same_size_same_mtime_change_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("sub/f{i}")), format!("content {i}")).unwrap();
        }
        std::fs::hard_link(src.join("sub/f0"), src.join("link")).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        copy(&src, &dst);

        let first = compare(&src, &dst, None).unwrap();
        assert!(first.differences.is_empty(), "{:?}", first.differences);
        assert_eq!(first.by_content, 21);

        // Nothing moved: nothing is read.
        let second = compare(&src, &dst, Some(first.now.clone())).unwrap();
        assert!(second.differences.is_empty());
        assert_eq!(second.by_content, 0);

        // A copy-side change of the same size with the old mtime put back:
        // its ctime moved, so it is read, and found.
        rewrite_keeping_mtime(&dst.join("sub/f3"), "CONTENT 3");
        let third = compare(&src, &dst, Some(first.now.clone())).unwrap();
        assert_eq!(third.differences, ["sub/f3: content differs"]);
        assert_eq!(third.by_content, 1);

        // A path only on one side, and split hard links, are differences.
        std::fs::write(dst.join("extra"), "x").unwrap();
        std::fs::remove_file(dst.join("link")).unwrap();
        std::fs::copy(dst.join("sub/f0"), dst.join("link")).unwrap();
        let fourth = compare(&src, &dst, None).unwrap();
        assert!(
            fourth
                .differences
                .iter()
                .any(|d| d == "extra: only in the copy"),
            "{:?}",
            fourth.differences
        );
        assert!(
            fourth
                .differences
                .iter()
                .any(|d| d.contains("metadata differs") || d.contains("hard links")),
            "{:?}",
            fourth.differences
        );
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `MANIFEST_SRC=... MANIFEST_DST=... cargo test -p migrate --release
    /// manifest_timing -- --ignored --nocapture`: where the time goes.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn manifest_timing() {
        let (Ok(s), Ok(d)) = (std::env::var("MANIFEST_SRC"), std::env::var("MANIFEST_DST")) else {
            return;
        };
        let t = std::time::Instant::now();
        let first = compare(Path::new(&s), Path::new(&d), None).unwrap();
        eprintln!("first compare (hashing all): {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let (ws, _) = walk_both(Path::new(&s), Path::new(&d)).unwrap();
        eprintln!(
            "walk of both trees ({} entries each): {:?}",
            ws.len(),
            t.elapsed()
        );
        let t = std::time::Instant::now();
        let v = compare(Path::new(&s), Path::new(&d), Some(first.now.clone())).unwrap();
        eprintln!(
            "compare against the manifest: {:?} ({} read)",
            t.elapsed(),
            v.by_content
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let t = std::time::Instant::now();
        save(&p, &v.now).unwrap();
        eprintln!(
            "save: {:?} ({} bytes)",
            t.elapsed(),
            std::fs::metadata(&p).unwrap().len()
        );
        let t = std::time::Instant::now();
        let _ = load(&p).unwrap();
        eprintln!("load: {:?}", t.elapsed());
    }
}

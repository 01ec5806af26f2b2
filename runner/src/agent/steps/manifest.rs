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

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
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
    fn of(m: &std::fs::Metadata) -> Self {
        let ft = m.file_type();
        let kind = if ft.is_file() {
            'f'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else {
            'o'
        };
        Stat(
            kind,
            if kind == 'f' { m.len() } else { 0 },
            [m.mtime(), m.mtime_nsec()],
            [m.ctime(), m.ctime_nsec()],
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            if kind == 'd' { 0 } else { m.nlink() },
        )
    }

    pub(crate) fn kind(&self) -> char {
        self.0
    }

    pub(crate) fn size(&self) -> u64 {
        self.1
    }

    /// What a copy must reproduce of it (not inode and ctime, which are
    /// each side's own; not a directory's mtime, which rsync sets after its
    /// content and a later write into it moves).
    fn same_as_copy(&self, other: &Self) -> bool {
        self.0 == other.0
            && self.1 == other.1
            && (self.0 == 'd' || self.2 == other.2)
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
/// resolve, not the whole path).
pub(crate) fn walk(top: &Path) -> Result<BTreeMap<String, Stat>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = top.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // What vanishes while the tree is walked (a service still
            // writing during a pre-copy) is left out of the record.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", entry.path().display()));
                }
            };
            let rel = rel.join(entry.file_name());
            let stat = Stat::of(&meta);
            if stat.kind() == 'd' {
                stack.push(rel.clone());
            }
            out.insert(rel.to_string_lossy().into_owned(), stat);
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
    let mut known = known.map(|m| m.entries).unwrap_or_default();
    let mut v = Verified::default();
    for path in s.keys().filter(|p| !d.contains_key(*p)) {
        v.differences.push(format!("{path}: missing in the copy"));
    }
    for path in d.keys().filter(|p| !s.contains_key(*p)) {
        v.differences.push(format!("{path}: only in the copy"));
    }
    for (path, ss) in &s {
        let Some(ds) = d.get(path) else { continue };
        if !ss.same_as_copy(ds) {
            v.differences.push(format!("{path}: metadata differs"));
            continue;
        }
        if let Some(k) = known
            .remove(path)
            .filter(|k| k.s == *ss && k.d == *ds && (ss.kind() != 'f' || k.h.is_some()))
        {
            v.by_metadata += 1;
            v.now.entries.insert(path.clone(), k);
            continue;
        }
        let (sp, dp) = (src.join(path), dst.join(path));
        let (se, de) = match (Extra::read(&sp, ss), Extra::read(&dp, ds)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                v.differences.push(format!("{path}: unreadable: {e:#}"));
                continue;
            }
        };
        if se != de {
            v.differences.push(format!("{path}: metadata differs"));
            continue;
        }
        let mut pair = Pair {
            s: *ss,
            d: *ds,
            x: se.xattrs,
            t: se.target,
            h: None,
        };
        if ss.kind() == 'f' {
            v.by_content += 1;
            v.bytes_read += ss.size() * 2;
            match (hash_file(&sp), hash_file(&dp)) {
                (Ok(a), Ok(b)) if a == b => pair.h = Some(a),
                (Ok(_), Ok(_)) => {
                    v.differences.push(format!("{path}: content differs"));
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => {
                    v.differences.push(format!("{path}: unreadable: {e:#}"));
                    continue;
                }
            }
        } else {
            v.by_metadata += 1;
        }
        v.now.entries.insert(path.clone(), pair);
    }
    if v.differences.is_empty() {
        v.differences.extend(link_groups_differ(&s, &d));
    }
    v.now.version = 2;
    v.now.taken_at = crate::core::event::timestamp(std::time::SystemTime::now());
    Ok(v)
}

/// Hard links: paths sharing an inode on one side must share one on the
/// other.
fn link_groups_differ(s: &BTreeMap<String, Stat>, d: &BTreeMap<String, Stat>) -> Vec<String> {
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
        .filter(|m| m.version == 2)
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
mod tests {
    use super::*;

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
        let f = dst.join("sub/f3");
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::fs::write(&f, "CONTENT 3").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
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

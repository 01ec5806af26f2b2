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

/// An entry's metadata, as `lstat` and `listxattr` see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// `f` file, `d` directory, `l` symlink, `o` anything else.
    pub(crate) kind: char,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
    pub(crate) ino: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nlink: u64,
    /// SHA-256 of the sorted extended attributes (names and values).
    pub(crate) xattrs: String,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
}

impl Meta {
    fn read(path: &Path) -> Result<Self> {
        let m = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading {}", path.display()))?;
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
        let target = ft
            .is_symlink()
            .then(|| std::fs::read_link(path).map(|t| t.to_string_lossy().into_owned()))
            .transpose()
            .with_context(|| format!("reading the link {}", path.display()))?;
        Ok(Self {
            kind,
            size: if kind == 'f' { m.len() } else { 0 },
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: if kind == 'd' { 0 } else { m.nlink() },
            xattrs: xattr_digest(path)?,
            target,
        })
    }

    /// What a copy must reproduce (not inode and ctime, which are each
    /// side's own; not a directory's mtime, which rsync sets after its
    /// content and a later write into it moves).
    fn same_as_copy(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && (self.kind == 'd' || self.mtime == other.mtime)
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.nlink == other.nlink
            && self.xattrs == other.xattrs
            && self.target == other.target
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

/// Every entry under `top` (not `top` itself), by path relative to it.
pub(crate) fn walk(top: &Path) -> Result<BTreeMap<String, Meta>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    // What vanishes while the tree is walked (a service still writing
    // during a pre-copy) is left out: it is not in the copy's record.
    let gone = |e: &anyhow::Error| {
        e.root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    };
    while let Some(rel) = stack.pop() {
        let dir = top.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let rel = rel.join(entry.file_name());
            let meta = match Meta::read(&top.join(&rel)) {
                Ok(m) => m,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            if meta.kind == 'd' {
                stack.push(rel.clone());
            }
            out.insert(rel.to_string_lossy().into_owned(), meta);
        }
    }
    Ok(out)
}

/// One path on both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pair {
    pub(crate) src: Meta,
    pub(crate) dst: Meta,
    /// For files: the content's SHA-256, when both sides had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<String>,
}

/// Both trees after a copy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) version: u32,
    /// When it was taken (RFC 3339).
    pub(crate) taken_at: String,
    /// Paths present on both sides.
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
/// [`Meta::same_as_copy`]), hard links grouped alike, and for files the same
/// content, read only where an entry moved on either side since `known`.
pub(crate) fn compare(src: &Path, dst: &Path, known: Option<&Manifest>) -> Result<Verified> {
    let (s, d) = (walk(src)?, walk(dst)?);
    let mut v = Verified::default();
    for path in s.keys().filter(|p| !d.contains_key(*p)) {
        v.differences.push(format!("{path}: missing in the copy"));
    }
    for path in d.keys().filter(|p| !s.contains_key(*p)) {
        v.differences.push(format!("{path}: only in the copy"));
    }
    for (path, sm) in &s {
        let Some(dm) = d.get(path) else { continue };
        if !sm.same_as_copy(dm) {
            v.differences.push(format!("{path}: metadata differs"));
            continue;
        }
        let mut pair = Pair {
            src: sm.clone(),
            dst: dm.clone(),
            sha256: None,
        };
        if sm.kind == 'f' {
            let settled = known
                .and_then(|m| m.entries.get(path))
                .filter(|k| k.src == *sm && k.dst == *dm)
                .and_then(|k| k.sha256.clone());
            match settled {
                Some(sum) => {
                    v.by_metadata += 1;
                    pair.sha256 = Some(sum);
                }
                None => {
                    v.by_content += 1;
                    v.bytes_read += sm.size * 2;
                    match (hash_file(&src.join(path)), hash_file(&dst.join(path))) {
                        (Ok(a), Ok(b)) if a == b => pair.sha256 = Some(a),
                        (Ok(_), Ok(_)) => v.differences.push(format!("{path}: content differs")),
                        (Err(e), _) | (_, Err(e)) => {
                            v.differences.push(format!("{path}: unreadable: {e:#}"));
                        }
                    }
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
    v.now.version = 1;
    v.now.taken_at = crate::core::event::timestamp(std::time::SystemTime::now());
    Ok(v)
}

/// Hard links: paths sharing an inode on one side must share one on the
/// other.
fn link_groups_differ(s: &BTreeMap<String, Meta>, d: &BTreeMap<String, Meta>) -> Vec<String> {
    let mut pairs: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (path, sm) in s.iter().filter(|(_, m)| m.kind == 'f' && m.nlink > 1) {
        if let Some(dm) = d.get(path) {
            match pairs.get(&sm.ino) {
                Some(ino) if *ino != dm.ino => out.push(format!("{path}: hard links differ")),
                Some(_) => {}
                None => {
                    pairs.insert(sm.ino, dm.ino);
                }
            }
        }
    }
    out
}

/// Reads a manifest; none if there is none (or an unreadable one: then
/// everything is compared by content).
pub(crate) fn load(path: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
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
        let second = compare(&src, &dst, Some(&first.now)).unwrap();
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
        let third = compare(&src, &dst, Some(&first.now)).unwrap();
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

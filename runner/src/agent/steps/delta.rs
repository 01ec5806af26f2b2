//! The final pass of a copy inside the downtime, at the cost of what moved.
//!
//! Both trees are walked once (one `lstat` per entry) and every entry set
//! against the manifest of the last pass:
//!
//! - *unchanged*: its `lstat` on both sides is what the manifest recorded
//!   when both sides were read and found alike: nothing to copy, nothing to
//!   read (see [`super::manifest`] for why that is as good as reading it);
//! - *transfer*: missing in the copy, not reproduced by it, or moved on the
//!   source side since the manifest: handed to rsync by name
//!   (`--files-from`), then compared by content;
//! - *compare*: alike by metadata, but moved in the copy since the manifest
//!   (something wrote to the copy): compared by content, not copied (rsync's
//!   quick check would not copy it either);
//! - *delete*: only in the copy: deleted by rsync (`--delete-missing-args`).
//!
//! The top directory itself is always in rsync's list (`.`): rsync sets its
//! mode, owner and times after what it copied and deleted in it, which a
//! walk of the entries below it never sees.
//!
//! rsync thus never walks the trees inside the window, and only the entries
//! that moved are read. Whatever the pass cannot show alike sends the caller
//! back to a whole-tree rsync and comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::manifest::{self, Manifest, Pair, Stat, Verified};

/// What the final pass must copy, delete and read.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// Paths for rsync to bring over (with every other name of a
    /// hard-linked file among them).
    pub(crate) transfer: Vec<String>,
    /// Paths only in the copy, the topmost of each subtree.
    pub(crate) delete: Vec<String>,
    /// Paths alike by metadata that moved in the copy only.
    pub(crate) compare: Vec<String>,
    /// Entries as the manifest recorded them, on both sides.
    pub(crate) unchanged: BTreeMap<String, Pair>,
}

impl Delta {
    /// Sets both trees (`s`, `d`: their entries now) against the manifest.
    pub(crate) fn of(
        s: &BTreeMap<String, Stat>,
        d: &BTreeMap<String, Stat>,
        known: Option<Manifest>,
    ) -> Self {
        // Both in path order: the manifest's entries are met as the walk's,
        // and the unchanged ones keep their own names.
        let mut known = known
            .map(|m| m.entries)
            .unwrap_or_default()
            .into_iter()
            .peekable();
        let mut delta = Delta::default();
        let mut unchanged = Vec::new();
        let mut transfer = BTreeSet::new();
        for (path, ss) in s {
            let recorded = loop {
                match known.peek() {
                    Some((k, _)) if k < path => {
                        known.next();
                    }
                    Some((k, _)) if k == path => break known.next(),
                    _ => break None,
                }
            };
            let Some(ds) = d.get(path) else {
                transfer.insert(path.clone());
                continue;
            };
            match recorded {
                Some((name, k))
                    if k.s == *ss && k.d == *ds && (ss.kind() != 'f' || k.h.is_some()) =>
                {
                    unchanged.push((name, k));
                }
                Some((_, k)) if k.s == *ss && ss.same_as_copy(ds) && !dir_times_differ(ss, ds) => {
                    delta.compare.push(path.clone());
                }
                _ => {
                    transfer.insert(path.clone());
                }
            }
        }
        delta.unchanged = unchanged.into_iter().collect();
        // rsync keeps hard links among the names it is given: every name of
        // a hard-linked file goes with it.
        let linked: Vec<&String> = transfer
            .iter()
            .filter(|p| s.get(*p).is_some_and(|m| m.kind() == 'f' && m.links() > 1))
            .collect();
        if !linked.is_empty() {
            let inodes: BTreeSet<u64> = linked
                .iter()
                .filter_map(|p| s.get(*p))
                .map(Stat::inode)
                .collect();
            let mates: Vec<String> = s
                .iter()
                .filter(|(_, m)| m.kind() == 'f' && m.links() > 1 && inodes.contains(&m.inode()))
                .map(|(p, _)| p.clone())
                .collect();
            for p in mates {
                delta.unchanged.remove(&p);
                delta.compare.retain(|c| *c != p);
                transfer.insert(p);
            }
        }
        delta.transfer = transfer.into_iter().collect();
        let only_in_copy: BTreeSet<&String> = d.keys().filter(|p| !s.contains_key(*p)).collect();
        // The topmost of each subtree only in the copy, below a directory
        // of the source (below what is no longer a directory there, rsync
        // replaces the whole directory, `--force`).
        delta.delete = only_in_copy
            .iter()
            .filter(|p| parent(p).is_none_or(|up| s.get(up).is_some_and(|m| m.kind() == 'd')))
            .map(|p| (*p).clone())
            .collect();
        delta
    }

    /// Nothing for rsync to do below the top.
    pub(crate) fn nothing_to_copy(&self) -> bool {
        self.transfer.is_empty() && self.delete.is_empty()
    }

    /// The names for rsync's `--files-from` with `--from0`: the top first,
    /// so that rsync gives it the source's metadata and times once it has
    /// changed what is in it.
    pub(crate) fn files_from(&self) -> Vec<u8> {
        let mut out = b".\0".to_vec();
        for p in self.transfer.iter().chain(&self.delete) {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    /// After rsync: every entry that moved compared now, by metadata and
    /// content, the deleted ones gone, hard links grouped alike; the rest as
    /// the manifest recorded it. `s` and `d` are the walks the delta was
    /// made from (the source has not moved since: its service is stopped).
    pub(crate) fn verify(
        self,
        src: &Path,
        dst: &Path,
        s: &BTreeMap<String, Stat>,
        mut d: BTreeMap<String, Stat>,
    ) -> Verified {
        let mut v = Verified::default();
        for path in &self.delete {
            match std::fs::symlink_metadata(dst.join(path)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => v.differences.push(format!("{path}: only in the copy")),
            }
            let below = format!("{path}/");
            d.retain(|p, _| p != path && !p.starts_with(&below));
        }
        v.now.entries = self.unchanged;
        v.by_metadata = v.now.entries.len();
        for path in self.transfer.iter().chain(&self.compare) {
            let (sp, dp) = (src.join(path), dst.join(path));
            let (ss, ds) = match (Stat::lstat(&sp), Stat::lstat(&dp)) {
                (Ok(a), Ok(b)) => (a, b),
                (Ok(_), Err(_)) => {
                    v.differences.push(format!("{path}: missing in the copy"));
                    continue;
                }
                (Err(e), _) => {
                    v.differences.push(format!("{path}: unreadable: {e}"));
                    continue;
                }
            };
            d.insert(path.clone(), ds);
            if s.get(path) != Some(&ss) {
                v.differences
                    .push(format!("{path}: moved on the source during the pass"));
                continue;
            }
            if let Some(pair) = manifest::compare_entry(path, &sp, &dp, &ss, &ds, &mut v) {
                v.now.entries.insert(path.clone(), pair);
            }
        }
        // rsync sets the times of the directories above what it copied
        // (moving their change time): their records follow.
        let above: BTreeSet<&str> = self
            .transfer
            .iter()
            .chain(&self.delete)
            .flat_map(|p| std::iter::successors(parent(p), |up| parent(up)))
            .collect();
        for up in above {
            let (Some(pair), Ok(ds)) = (v.now.entries.get_mut(up), Stat::lstat(&dst.join(up)))
            else {
                continue;
            };
            if !pair.s.same_as_copy(&ds) {
                v.differences.push(format!("{up}: metadata differs"));
            }
            pair.d = ds;
            d.insert(up.to_string(), ds);
        }
        match (top_stat(src), top_stat(dst)) {
            (Ok(ss), Ok(ds)) if ss.same_as_copy(&ds) => {}
            (Ok(_), Ok(_)) => v.differences.push("./: metadata differs".to_string()),
            (Err(e), _) | (_, Err(e)) => v.differences.push(format!("./: unreadable: {e}")),
        }
        if v.differences.is_empty() {
            v.differences.extend(manifest::link_groups_differ(s, &d));
        }
        v.now.version = manifest::VERSION;
        v.now.taken_at = crate::core::event::timestamp(std::time::SystemTime::now());
        v
    }
}

/// The top as rsync takes it (`dir/`: a symlink followed).
fn top_stat(top: &Path) -> std::io::Result<Stat> {
    Ok(Stat::of(&rustix::fs::stat(top)?))
}

/// Whether the copy's top lacks the source top's metadata or times: the
/// final pass then runs rsync even when nothing below moved.
pub(crate) fn top_differs(src: &Path, dst: &Path) -> bool {
    match (top_stat(src), top_stat(dst)) {
        (Ok(s), Ok(d)) => !s.same_as_copy(&d) || s.mtime() != d.mtime(),
        _ => true,
    }
}

/// A directory whose modification time the copy does not have: rsync sets
/// it, so it is handed to rsync (the comparison itself ignores directory
/// times, which a later write into the directory moves).
fn dir_times_differ(s: &Stat, d: &Stat) -> bool {
    s.kind() == 'd' && s.mtime() != d.mtime()
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(up, _)| up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn rsync(args: &[&str], src: &Path, dst: &Path) -> String {
        let out = Command::new("rsync")
            .args(["-aHAX", "--numeric-ids"])
            .args(args)
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", dst.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The pass over what moved, with the real rsync: afterwards the
    /// trees are what a whole-tree `rsync --delete` makes them.
    fn pass(src: &Path, dst: &Path, known: Manifest) -> (Delta, Verified) {
        let (s, d) = manifest::walk_both(src, dst).unwrap();
        let delta = Delta::of(&s, &d, Some(known));
        let list = src.parent().unwrap().join("files");
        std::fs::write(&list, delta.files_from()).unwrap();
        let files_from = format!("--files-from={}", list.display());
        rsync(
            &["--from0", "--delete-missing-args", "--force", &files_from],
            src,
            dst,
        );
        let shown = Delta {
            transfer: delta.transfer.clone(),
            delete: delta.delete.clone(),
            compare: delta.compare.clone(),
            unchanged: BTreeMap::new(),
        };
        (shown, delta.verify(src, dst, &s, d))
    }

    #[test]
    fn only_what_moved_is_copied_and_read_and_the_trees_end_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        for sub in ["a", "b", "gone/deep", "turns"] {
            std::fs::create_dir_all(src.join(sub)).unwrap();
        }
        for i in 0..30 {
            std::fs::write(src.join(format!("a/f{i}")), format!("a {i}")).unwrap();
            std::fs::write(src.join(format!("b/f{i}")), format!("b {i}")).unwrap();
        }
        std::fs::write(src.join("gone/deep/x"), "x").unwrap();
        std::fs::write(src.join("turns/y"), "y").unwrap();
        std::fs::write(src.join("plain"), "plain").unwrap();
        std::os::unix::fs::symlink("a/f1", src.join("link")).unwrap();
        rsync(&[], &src, &dst);
        let first = manifest::compare(&src, &dst, None).unwrap();
        assert!(first.differences.is_empty(), "{:?}", first.differences);

        // The service's writes: one file changed, one new in a new
        // directory, one deleted, a directory tree deleted, a directory
        // turned into a file, a new hard link to an untouched file, a
        // symlink retargeted.
        std::fs::write(src.join("a/f2"), "a 2 changed").unwrap();
        std::fs::create_dir_all(src.join("new")).unwrap();
        std::fs::write(src.join("new/z"), "z").unwrap();
        std::fs::remove_file(src.join("b/f3")).unwrap();
        std::fs::remove_dir_all(src.join("gone")).unwrap();
        std::fs::remove_dir_all(src.join("turns")).unwrap();
        std::fs::write(src.join("turns"), "now a file").unwrap();
        std::fs::hard_link(src.join("plain"), src.join("b/plain-link")).unwrap();
        std::fs::remove_file(src.join("link")).unwrap();
        std::os::unix::fs::symlink("a/f4", src.join("link")).unwrap();
        // The top itself: its mode and a modification time that no write
        // of the pass can hit by chance.
        std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        let touched = Command::new("touch")
            .args(["-d", "2001-02-03 04:05:06"])
            .arg(&src)
            .status()
            .unwrap();
        assert!(touched.success());
        assert!(top_differs(&src, &dst));

        let (delta, v) = pass(&src, &dst, first.now);
        assert!(v.differences.is_empty(), "{:?}", v.differences);
        assert!(delta.transfer.contains(&"plain".to_string()), "{delta:?}");
        assert!(delta.delete.contains(&"gone".to_string()), "{delta:?}");
        assert!(
            !delta.delete.contains(&"gone/deep".to_string()),
            "{delta:?}"
        );
        // Only what moved was read: the changed, the new, the linked.
        assert!(v.by_content <= 5, "{} read", v.by_content);
        assert!(v.by_metadata >= 55, "{} trusted", v.by_metadata);
        let left = rsync(
            &["--checksum", "--dry-run", "--itemize-changes", "--delete"],
            &src,
            &dst,
        );
        assert_eq!(left, "", "the trees differ after the pass");
        assert!(!top_differs(&src, &dst));

        // A write to the copy that keeps its size and mtime is read and
        // found; nothing is copied for it.
        manifest::tests::rewrite_keeping_mtime(&dst.join("a/f7"), "A 7");
        let (delta, v2) = pass(&src, &dst, v.now);
        assert_eq!(delta.compare, ["a/f7"]);
        assert!(
            delta.transfer.is_empty() && delta.delete.is_empty(),
            "{delta:?}"
        );
        assert_eq!(v2.differences, ["a/f7: content differs"]);
    }
}

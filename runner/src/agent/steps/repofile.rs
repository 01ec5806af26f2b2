//! Repository definitions of RPM systems (`/etc/zypp/repos.d/*.repo`,
//! `/etc/yum.repos.d/*.repo`): INI files with one section per repository.
//! A plan switches them to the target release with `add`, `replace` and
//! `disable` changes; repositories the plan does not name are left alone.

use std::collections::BTreeMap;
use std::path::Path;

use crate::core::kinds::packages::{RepoAction, RepoChange};
use anyhow::{Context, Result, bail};

/// The repository files of a directory: file name -> text.
pub(crate) type RepoFiles = BTreeMap<String, String>;

/// Reads every `*.repo` file of `dir` (none if it does not exist).
pub(crate) fn read_dir(dir: &Path) -> Result<RepoFiles> {
    let mut files = RepoFiles::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "repo") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("repository file name")?
                .to_string();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            files.insert(name, text);
        }
    }
    Ok(files)
}

/// Applies `changes` to `files`; returns the new files and one line per
/// change made.
pub(crate) fn apply(files: &RepoFiles, changes: &[RepoChange]) -> Result<(RepoFiles, Vec<String>)> {
    let mut out = files.clone();
    let mut said = Vec::new();
    for change in changes {
        change.check().map_err(|e| anyhow::anyhow!(e))?;
        let holder = out
            .iter()
            .find(|(_, text)| section_range(text, &change.id).is_some())
            .map(|(name, _)| name.clone());
        match (change.action, holder) {
            (RepoAction::Disable, Some(file)) => {
                let text = set_keys(&out[&file], &change.id, &[("enabled", "0", "0")]);
                out.insert(file.clone(), text);
                said.push(format!("{}: disabled ({file})", change.id));
            }
            (RepoAction::Disable, None) => {
                said.push(format!("{}: not configured, nothing to disable", change.id))
            }
            (RepoAction::Replace | RepoAction::Add, Some(file)) => {
                let url = change.url.as_deref().unwrap_or_default();
                let mut keys = vec![("baseurl", url, url), ("enabled", "1", "1")];
                if let Some(name) = &change.name {
                    keys.push(("name", name, name));
                }
                let gpg = change.gpgcheck.map(|g| if g { "1" } else { "0" });
                if let Some(g) = gpg {
                    keys.push(("gpgcheck", g, g));
                }
                let text = set_keys(&out[&file], &change.id, &keys);
                out.insert(file.clone(), text);
                said.push(format!("{}: now {url} ({file})", change.id));
            }
            (RepoAction::Replace, None) => bail!(
                "repository {:?} is not configured in the root, so it cannot be replaced (use action = \"add\")",
                change.id
            ),
            (RepoAction::Add, None) => {
                let file = format!("{}.repo", change.id);
                let url = change.url.as_deref().unwrap_or_default();
                let text = format!(
                    "[{}]\nname={}\nenabled=1\nautorefresh=1\nbaseurl={url}\ntype=rpm-md\ngpgcheck={}\n",
                    change.id,
                    change.name.as_deref().unwrap_or(&change.id),
                    if change.gpgcheck.unwrap_or(true) {
                        1
                    } else {
                        0
                    }
                );
                out.insert(file.clone(), text);
                said.push(format!("{}: added {url} ({file})", change.id));
            }
        }
    }
    Ok((out, said))
}

/// The text of section `[id]`, header included.
pub(crate) fn section(text: &str, id: &str) -> Option<String> {
    section_range(text, id).map(|(s, e)| text[s..e].to_string())
}

/// Byte range of section `[id]` (header to the next header).
fn section_range(text: &str, id: &str) -> Option<(usize, usize)> {
    let header = format!("[{id}]");
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            if let Some(s) = start {
                return Some((s, offset));
            }
            if t == header {
                start = Some(offset);
            }
        }
        offset += line.len();
    }
    start.map(|s| (s, text.len()))
}

/// Sets keys in section `[id]`: existing `key=` lines are replaced, missing
/// keys appended (with their default where `value` is for replacing only).
/// Each entry is (key, value if present, value if missing).
fn set_keys(text: &str, id: &str, keys: &[(&str, &str, &str)]) -> String {
    let Some((start, end)) = section_range(text, id) else {
        return text.to_string();
    };
    let section = &text[start..end];
    let mut seen = vec![false; keys.len()];
    let mut new = String::new();
    for line in section.split_inclusive('\n') {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match key.and_then(|k| keys.iter().position(|(name, _, _)| *name == k)) {
            Some(i) => {
                seen[i] = true;
                new.push_str(&format!("{}={}\n", keys[i].0, keys[i].1));
            }
            None => new.push_str(line),
        }
    }
    if !new.ends_with('\n') {
        new.push('\n');
    }
    // Missing keys go right after the section's last key, before blank lines.
    let trailing = new.len() - new.trim_end_matches('\n').len();
    let mut body = new[..new.len() - trailing].to_string();
    body.push('\n');
    for (i, (k, _, missing)) in keys.iter().enumerate() {
        if !seen[i] {
            body.push_str(&format!("{k}={missing}\n"));
        }
    }
    body.push_str(&"\n".repeat(trailing.saturating_sub(1)));
    format!("{}{body}{}", &text[..start], &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, action: &str, url: Option<&str>) -> RepoChange {
        RepoChange {
            id: id.into(),
            action: serde_json::from_value(serde_json::json!(action)).unwrap(),
            url: url.map(str::to_string),
            name: None,
            gpgcheck: None,
        }
    }

    fn files() -> RepoFiles {
        RepoFiles::from([
            (
                "oss.repo".to_string(),
                "[repo-oss]\nname=Main\nenabled=1\nautorefresh=1\nbaseurl=http://mirror/15.6/oss\ntype=rpm-md\n\n[repo-debug]\nname=Debug\nenabled=0\nbaseurl=http://mirror/15.6/debug\n".to_string(),
            ),
            (
                "vendor.repo".to_string(),
                "[vendor]\nname=Vendor\nbaseurl=http://vendor/15\nenabled=1\n".to_string(),
            ),
        ])
    }

    #[test]
    fn replace_changes_only_the_named_section() {
        let (out, said) = apply(
            &files(),
            &[change(
                "repo-oss",
                "replace",
                Some("http://mirror/16.0/oss"),
            )],
        )
        .unwrap();
        assert_eq!(
            out["oss.repo"],
            "[repo-oss]\nname=Main\nenabled=1\nautorefresh=1\nbaseurl=http://mirror/16.0/oss\ntype=rpm-md\n\n[repo-debug]\nname=Debug\nenabled=0\nbaseurl=http://mirror/15.6/debug\n"
        );
        assert_eq!(
            out["vendor.repo"],
            files()["vendor.repo"],
            "unrelated repositories are left alone"
        );
        assert_eq!(said, ["repo-oss: now http://mirror/16.0/oss (oss.repo)"]);
    }

    #[test]
    fn disable_and_add() {
        let mut add = change("repo-new", "add", Some("http://mirror/16.0/new"));
        add.gpgcheck = Some(false);
        let (out, _) = apply(&files(), &[change("vendor", "disable", None), add]).unwrap();
        assert_eq!(
            out["vendor.repo"],
            "[vendor]\nname=Vendor\nbaseurl=http://vendor/15\nenabled=0\n"
        );
        assert!(out["repo-new.repo"].contains("baseurl=http://mirror/16.0/new\n"));
        assert!(out["repo-new.repo"].contains("gpgcheck=0\n"));
    }

    #[test]
    fn missing_keys_are_added_to_the_section() {
        let mut c = change("vendor", "replace", Some("http://vendor/16"));
        c.gpgcheck = Some(false);
        let (out, _) = apply(&files(), &[c]).unwrap();
        assert_eq!(
            out["vendor.repo"],
            "[vendor]\nname=Vendor\nbaseurl=http://vendor/16\nenabled=1\ngpgcheck=0\n"
        );
    }

    #[test]
    fn applying_twice_changes_nothing_more() {
        let changes = [
            change("repo-oss", "replace", Some("http://mirror/16.0/oss")),
            change("vendor", "disable", None),
        ];
        let (once, _) = apply(&files(), &changes).unwrap();
        let (twice, _) = apply(&once, &changes).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn bad_changes_are_refused() {
        assert!(apply(&files(), &[change("nope", "replace", Some("http://x"))]).is_err());
        assert!(apply(&files(), &[change("repo-oss", "replace", None)]).is_err());
        let unknown = serde_json::json!({"id": "repo-oss", "action": "frobnicate"});
        assert!(serde_json::from_value::<RepoChange>(unknown).is_err());
    }
}

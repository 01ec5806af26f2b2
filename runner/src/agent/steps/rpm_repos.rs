//! The root's RPM repositories (zypper's and dnf's `.repo` files), each
//! classified and decided before anything changes, as `apt::repos` does
//! for apt sources.
//!
//! *Classified*: the distribution's when the plan's `repositories` names it
//! or its `gpgkey` file holds one of the step's `distribution_keys`; every
//! other enabled repository is third-party. A step with neither leaves every
//! repository to the release version, as before.
//!
//! *Decided*, for a third-party repository: kept when the plan's `keep`
//! names it; moved where a vendor map says (when that answers); *switched*
//! when its URL uses `$releasever` and answers for the target release, or
//! names the source release's version as a path segment and answers with
//! the target's there; disabled (`enabled=0`) otherwise. A URL that names no
//! release is kept. The decisions become repository changes appended to the
//! plan's, so the scratch fetch, the download pass and the cutover all see
//! the same repositories.

use std::collections::BTreeMap;

use super::apt::repos::Class;
use super::packages::{Fate, fate_line};
use super::repofile::RepoFiles;
use crate::core::kinds::apt::{ThirdPartyPolicy, url_matches};
use crate::core::kinds::packages::{RepoAction, RepoChange, RpmVendorRepo};

/// What the cutover does to a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RpmDecision {
    /// The plan's `repositories` change it, or it is left to the release
    /// version.
    Plan,
    /// Its `$releasever` URL answers for the target release: unchanged.
    Switch,
    /// Moved to this URL (by the named vendor map, or by the release in its
    /// path).
    Moved(String, Option<String>),
    /// Disabled, for the reason given.
    Disable(String),
    /// Kept as it is, for the reason given.
    Keep(String),
}

/// One enabled repository of the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RpmSource {
    /// The file, as a path in the root.
    pub(crate) file: String,
    /// The section (repository id).
    pub(crate) id: String,
    /// Its base URL (or mirror list).
    pub(crate) url: String,
    /// The key files its `gpgkey` names (`file://` URLs, as paths).
    pub(crate) keys: Vec<String>,
    /// What it is.
    pub(crate) class: Class,
    /// What happens to it.
    pub(crate) decision: RpmDecision,
    /// Whether it stops the run (`third_party = "inhibit"`).
    pub(crate) inhibits: bool,
}

impl RpmSource {
    /// One line: where it is, what it is, what happens to it.
    pub(crate) fn describe(&self, target: &str) -> String {
        let class = match &self.class {
            Class::Distribution => "the distribution's".to_string(),
            Class::ThirdParty(why) => format!("third-party ({why})"),
            Class::Unknown => "unknown".to_string(),
        };
        let decision = match &self.decision {
            RpmDecision::Plan => "as the plan's repositories and release version say".to_string(),
            RpmDecision::Switch => format!("switched to release {target} ($releasever)"),
            RpmDecision::Moved(url, Some(vendor)) => {
                format!("mapped by the {vendor} vendor map to {url}")
            }
            RpmDecision::Moved(url, None) => format!("switched to {url}"),
            RpmDecision::Disable(why) => format!("disabled: {why}"),
            RpmDecision::Keep(why) => format!("kept as it is: {why}"),
        };
        format!(
            "{} [{}] {}: {class}; {decision}",
            self.file, self.id, self.url
        )
    }
}

/// The repositories of `files` (file name -> text, in `dir`): enabled
/// sections, with their URL and key files.
pub(crate) fn configured(files: &RepoFiles, dir: &str) -> Vec<RpmSource> {
    let mut out = Vec::new();
    for (name, text) in files {
        let mut current: Option<(String, BTreeMap<String, String>)> = None;
        let mut sections = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') && t.ends_with(']') {
                sections.extend(current.take());
                current = Some((t[1..t.len() - 1].to_string(), BTreeMap::new()));
            } else if let (Some((_, keys)), Some((k, v))) = (current.as_mut(), t.split_once('='))
                && !t.starts_with('#')
            {
                keys.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        sections.extend(current);
        for (id, keys) in sections {
            let enabled = keys.get("enabled").is_none_or(|v| v != "0");
            let url = ["baseurl", "mirrorlist", "metalink"]
                .iter()
                .find_map(|k| keys.get(*k))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            if !enabled || url.is_empty() {
                continue;
            }
            let keys = keys
                .get("gpgkey")
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|k| k.strip_prefix("file://"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            out.push(RpmSource {
                file: format!("/{dir}/{name}"),
                id,
                url,
                keys,
                class: Class::Unknown,
                decision: RpmDecision::Plan,
                inhibits: false,
            });
        }
    }
    out
}

/// What deciding needs from outside.
pub(crate) trait RpmProbe {
    /// The primary-key fingerprints of a key file in the root.
    fn fingerprints(&self, key_file: &str) -> Vec<String>;
    /// The primary-key fingerprints of the migration image's key files
    /// that `pattern` names (an absolute path, `*` allowed in its file
    /// name).
    fn image_fingerprints(&self, pattern: &str) -> Vec<String> {
        image_key_fingerprints(pattern)
    }
    /// Whether `source`, at `url` (its own when `None`), answers for the
    /// target release.
    fn answers(&self, source: &RpmSource, url: Option<&str>) -> bool;
}

/// The plan's word on repositories.
pub(crate) struct RpmPolicy<'a> {
    pub(crate) changes: &'a [RepoChange],
    pub(crate) distribution_keys: &'a [String],
    pub(crate) third_party: ThirdPartyPolicy,
    pub(crate) keep: &'a [String],
    pub(crate) vendors: &'a [RpmVendorRepo],
    /// The source and target release versions (`VERSION_ID`).
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
}

impl RpmPolicy<'_> {
    /// Whether the plan says enough to tell the distribution's repositories.
    pub(crate) fn active(&self) -> bool {
        !self.distribution_keys.is_empty() || !self.changes.is_empty()
    }

    fn normalized(f: &str) -> String {
        f.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase()
    }

    /// Classifies and decides `source` in place.
    pub(crate) fn decide(&self, probe: &dyn RpmProbe, source: &mut RpmSource) {
        let named = self.changes.iter().any(|c| c.id == source.id);
        // Fingerprints, and key files of the image (`/...`).
        let ours: Vec<String> = self
            .distribution_keys
            .iter()
            .flat_map(|k| {
                if k.starts_with('/') {
                    probe.image_fingerprints(k)
                } else {
                    vec![k.clone()]
                }
            })
            .map(|k| Self::normalized(&k))
            .collect();
        let signed = source.keys.iter().any(|k| {
            let k = k
                .replace("$releasever", self.from)
                .replace("$basearch", std::env::consts::ARCH);
            probe
                .fingerprints(&k)
                .iter()
                .any(|f| ours.contains(&Self::normalized(f)))
        });
        if named || signed {
            source.class = Class::Distribution;
            source.decision = RpmDecision::Plan;
            return;
        }
        source.class = Class::ThirdParty(if source.keys.is_empty() {
            "no signing key of the distribution".into()
        } else {
            "signed by a key that is not the distribution's".into()
        });
        if self
            .keep
            .iter()
            .any(|k| *k == source.id || url_matches(k, &source.url))
        {
            source.decision = RpmDecision::Keep("the plan keeps it".into());
            return;
        }
        if let Some(map) = self
            .vendors
            .iter()
            .find(|m| url_matches(&m.matches, &source.url))
        {
            source.decision = if probe.answers(source, Some(&map.url)) {
                RpmDecision::Moved(map.url.clone(), Some(map.vendor.clone()))
            } else {
                RpmDecision::Disable(format!(
                    "the {} vendor map moves it to {}, which does not answer",
                    map.vendor, map.url
                ))
            };
            return;
        }
        let by_release = release_in_path(&source.url, self.from, self.to);
        source.decision = if source.url.contains("$releasever") {
            if probe.answers(source, None) {
                RpmDecision::Switch
            } else {
                RpmDecision::Disable(format!("it does not answer for release {}", self.to))
            }
        } else if let Some(url) = by_release {
            if probe.answers(source, Some(&url)) {
                RpmDecision::Moved(url, None)
            } else {
                RpmDecision::Disable(format!(
                    "it does not answer for release {} ({url})",
                    self.to
                ))
            }
        } else {
            RpmDecision::Keep("its URL names no release".into())
        };
        source.inhibits = self.third_party == ThirdPartyPolicy::Inhibit;
    }
}

/// `url` with the path segment that is the source release's version
/// replaced by the target's (`http://v.example/os/1/x86_64/` for 1 -> 2).
fn release_in_path(url: &str, from: &str, to: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (host, path) = rest.split_once('/')?;
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments.iter().position(|s| *s == from)?;
    let mut new = segments.clone();
    new[at] = to;
    Some(format!("{scheme}://{host}/{}", new.join("/")))
}

/// The decisions of one run, made once: the checks, the dry run and the
/// cutover of a run see the same.
#[derive(Debug, Default)]
pub(crate) struct Decided(std::cell::OnceCell<std::result::Result<Vec<RpmSource>, String>>);

impl Decided {
    /// The decisions, made by `make` the first time.
    pub(crate) fn get(
        &self,
        make: impl FnOnce() -> anyhow::Result<Vec<RpmSource>>,
    ) -> anyhow::Result<&[RpmSource]> {
        match self.0.get_or_init(|| make().map_err(|e| format!("{e:#}"))) {
            Ok(s) => Ok(s),
            Err(e) => anyhow::bail!("{e}"),
        }
    }
}

/// Every enabled repository of `dir` in `root`, decided by `policy` (none
/// when the policy cannot tell the distribution's).
pub(crate) fn decide_all(
    root: &std::path::Path,
    dir: &str,
    policy: &RpmPolicy<'_>,
    probe: &dyn RpmProbe,
) -> anyhow::Result<Vec<RpmSource>> {
    if !policy.active() {
        return Ok(Vec::new());
    }
    let files = super::repofile::read_dir(&crate::core::rootfs::resolve(root, dir)?)?;
    let mut sources = configured(&files, dir);
    for s in &mut sources {
        policy.decide(probe, s);
    }
    Ok(sources)
}

/// The fingerprints of the primary keys of a key file in `root` (gpg of
/// the image; none if it cannot tell).
pub(crate) fn key_fingerprints(root: &std::path::Path, key_file: &str) -> Vec<String> {
    use crate::core::cmd::CommandExt;
    let Ok(path) = crate::core::rootfs::resolve(root, key_file.trim_start_matches('/')) else {
        return Vec::new();
    };
    std::process::Command::new("gpg")
        .args(["--batch", "--no-tty", "--with-colons", "--show-keys"])
        .arg(&path)
        .run_get_string()
        .map(|listing| super::rpm_keys::primary_fingerprints(&listing))
        .unwrap_or_default()
}

/// The primary-key fingerprints of the image's key files `pattern` names
/// (an absolute path, `*` allowed in its file name), sorted by file.
pub(crate) fn image_key_fingerprints(pattern: &str) -> Vec<String> {
    let path = std::path::Path::new(pattern);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| super::postgres::glob_matches(name, n))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| key_fingerprints(std::path::Path::new("/"), &f.to_string_lossy()))
        .collect()
}

/// The single repository `id` of `file` (a path in `root`), moved to `url`
/// when given, written alone into `dir`: what a probe fetches.
pub(crate) fn write_probe(
    root: &std::path::Path,
    source: &RpmSource,
    url: Option<&str>,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let path = crate::core::rootfs::resolve(root, source.file.trim_start_matches('/'))?;
    let text = std::fs::read_to_string(&path)?;
    let section = super::repofile::section(&text, &source.id).unwrap_or_default();
    let files = RepoFiles::from([("probe.repo".to_string(), section)]);
    let files = match url {
        Some(u) => {
            super::repofile::apply(
                &files,
                &[RepoChange {
                    id: source.id.clone(),
                    action: RepoAction::Replace,
                    url: Some(u.to_string()),
                    name: None,
                    gpgcheck: None,
                }],
            )?
            .0
        }
        None => files,
    };
    super::rpm::RepoDir::write_scratch(&files, dir)
}

/// The plan's repository changes followed by those the decisions add;
/// fails when the plan makes undecided third-party repositories an
/// inhibitor.
pub(crate) fn after_plan(
    plan: &[RepoChange],
    sources: &[RpmSource],
) -> anyhow::Result<Vec<RepoChange>> {
    refuse_inhibited(sources)?;
    let mut all = plan.to_vec();
    all.extend(changes(sources));
    Ok(all)
}

/// Fails, naming them, when the plan makes undecided third-party
/// repositories an inhibitor.
fn refuse_inhibited(sources: &[RpmSource]) -> anyhow::Result<()> {
    let inhibiting: Vec<String> = sources
        .iter()
        .filter(|s| s.inhibits)
        .map(|s| format!("{} [{}]", s.file, s.id))
        .collect();
    if !inhibiting.is_empty() {
        anyhow::bail!(
            "third_party = \"inhibit\", and no vendor map or `keep` decides these third-party repositories: {}",
            inhibiting.join(", ")
        );
    }
    Ok(())
}

/// The third-party repositories among decided `sources`, one line each
/// (none when they could not be decided: the repositories check says why).
pub(crate) fn third_party(sources: anyhow::Result<&[RpmSource]>, target: &str) -> Vec<String> {
    sources
        .map(|s| {
            s.iter()
                .filter(|s| s.class != Class::Distribution)
                .map(|s| s.describe(target))
                .collect()
        })
        .unwrap_or_default()
}

/// A package version a repository offers (its metadata, as the package
/// manager lists it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) name: String,
    /// `version-release` (no epoch).
    pub(crate) version: String,
    /// The repository's id.
    pub(crate) repo: String,
}

/// The third-party check's package lines: each installed package
/// (`installed`: name -> version-release) whose installed version a
/// third-party repository offers (`offered`, from the source release's
/// metadata), with what the upgrade does to it (`fates`, from the
/// simulated upgrade; `resolved` false when there was none); then the
/// installed packages no repository of the target has (`extras`), no
/// third-party repository offered and the upgrade leaves as they are.
pub(crate) fn package_lines(
    installed: &BTreeMap<String, String>,
    offered: &[Offer],
    extras: &[String],
    fates: &BTreeMap<String, Fate>,
    resolved: bool,
    target: &str,
) -> Vec<String> {
    let from_third_party: BTreeMap<&str, &str> = offered
        .iter()
        .filter(|o| installed.get(&o.name) == Some(&o.version))
        .map(|o| (o.name.as_str(), o.version.as_str()))
        .collect();
    let mut lines: Vec<String> = from_third_party
        .iter()
        .map(|(name, v)| fate_line(name, v, fates.get(*name), resolved))
        .collect();
    lines.extend(
        extras
            .iter()
            .filter(|name| !from_third_party.contains_key(name.as_str()))
            // Replaced or removed by the upgrade: not left as it is.
            .filter(|name| !fates.contains_key(name.as_str()))
            .filter_map(|name| {
                installed.get(name).map(|v| {
                    format!("{name} (kept at {v}: no repository of release {target} has it)")
                })
            }),
    );
    lines
}

/// The ids of the third-party repositories among decided `sources` (none
/// when they could not be decided).
pub(crate) fn third_party_ids(sources: anyhow::Result<&[RpmSource]>) -> Vec<&str> {
    sources
        .map(|s| {
            s.iter()
                .filter(|s| s.class != Class::Distribution)
                .map(|s| s.id.as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// What the target's resolution says of the installed packages: the fate
/// of each the upgrade changes, and those no repository of the target has.
pub(crate) type Resolution = (BTreeMap<String, Fate>, Vec<String>);

/// The third-party check of zypper and dnf: the third-party repositories
/// among `sources`, and the packages of [`package_lines`] given what those
/// repositories offer now (`offered`) and the target's `resolution` (`None`
/// when the target did not resolve: the other checks say why).
pub(crate) fn foreign(
    root: &std::path::Path,
    sources: anyhow::Result<&[RpmSource]>,
    target: &str,
    offered: &[Offer],
    resolution: Option<Resolution>,
) -> anyhow::Result<super::packages::Foreign> {
    let installed = super::rpm::installed_versions(root)?;
    let resolved = resolution.is_some();
    let (fates, extras) = resolution.unwrap_or_default();
    Ok(super::packages::Foreign {
        repositories: third_party(sources, target),
        packages: package_lines(&installed, offered, &extras, &fates, resolved, target),
    })
}

/// `files` with a comment naming the migration (`note`) and the reason
/// under the header of each repository the decisions disable.
pub(crate) fn with_notes(mut files: RepoFiles, sources: &[RpmSource], note: &str) -> RepoFiles {
    for s in sources {
        let RpmDecision::Disable(why) = &s.decision else {
            continue;
        };
        let name = s.file.rsplit('/').next().unwrap_or_default();
        if let Some(text) = files.get_mut(name) {
            let header = format!("[{}]\n", s.id);
            if let Some(at) = text.find(&header) {
                text.insert_str(
                    at + header.len(),
                    &format!("# migrate: {note}: disabled, {why}\n"),
                );
            }
        }
    }
    files
}

/// The checks' view of the decisions.
pub(crate) fn lines(sources: &[RpmSource], target: &str) -> Vec<super::packages::RepoLine> {
    sources
        .iter()
        .map(|s| super::packages::RepoLine {
            line: s.describe(target),
            place: format!("{} [{}] {}", s.file, s.id, s.url),
            third_party: s.class != Class::Distribution,
            disabled: match &s.decision {
                RpmDecision::Disable(why) => Some(why.clone()),
                _ => None,
            },
            inhibits: s.inhibits,
        })
        .collect()
}

/// The repository changes the decisions add to the plan's.
fn changes(sources: &[RpmSource]) -> Vec<RepoChange> {
    sources
        .iter()
        .filter_map(|s| {
            let (action, url) = match &s.decision {
                RpmDecision::Disable(_) => (RepoAction::Disable, None),
                RpmDecision::Moved(url, _) => (RepoAction::Replace, Some(url.clone())),
                _ => return None,
            };
            Some(RepoChange {
                id: s.id.clone(),
                action,
                url,
                name: None,
                gpgcheck: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl RpmProbe for Fake {
        fn fingerprints(&self, key_file: &str) -> Vec<String> {
            if key_file == format!("/etc/pki/rpm-gpg/os-1-{}", std::env::consts::ARCH) {
                vec!["AAAA BBBB".into()]
            } else {
                vec!["CCCC".into()]
            }
        }
        fn answers(&self, source: &RpmSource, url: Option<&str>) -> bool {
            let url = url.unwrap_or(&source.url);
            url.contains("/b/") || url.contains("/c-new") || url.contains("/d/2/")
        }
        fn image_fingerprints(&self, pattern: &str) -> Vec<String> {
            if pattern == "/usr/share/keys/os-*" {
                vec!["aaaabbbb".into()]
            } else {
                Vec::new()
            }
        }
    }

    #[test]
    fn third_party_packages_are_listed_with_their_fate() {
        let installed: BTreeMap<String, String> = [
            ("vendor-a", "1.0-1"),
            ("vendor-b", "1.0-1"),
            ("vendor-c", "1.1-1"),
            ("dropped", "1.0-1"),
            ("base", "1.0-1"),
            ("oldtool", "1.0-1"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .into();
        let offer = |name: &str, version: &str| Offer {
            name: name.into(),
            version: version.into(),
            repo: "vendor".into(),
        };
        // vendor-c's installed version is not the one its repository has:
        // installed from elsewhere (by hand), not counted as the vendor's.
        let offered = [
            offer("vendor-a", "1.0-1"),
            offer("vendor-b", "1.0-1"),
            offer("vendor-c", "1.0-1"),
            offer("not-installed", "1.0-1"),
        ];
        let fates: BTreeMap<String, Fate> = [
            (
                "vendor-b".to_string(),
                Fate::Upgraded("2.0-1".into(), "vendor-b".into()),
            ),
            (
                "base".to_string(),
                Fate::Upgraded("2.0-1".into(), "testos".into()),
            ),
            ("oldtool".to_string(), Fate::Replaced("newtool".into())),
        ]
        .into();
        let extras = ["dropped", "vendor-a", "oldtool"].map(String::from);
        assert_eq!(
            package_lines(&installed, &offered, &extras, &fates, true, "2"),
            [
                "vendor-a (kept at 1.0-1)",
                "vendor-b (upgraded to 2.0-1 from vendor-b)",
                "dropped (kept at 1.0-1: no repository of release 2 has it)",
            ]
        );
        // Without a resolution of the target: only what is installed.
        assert_eq!(
            package_lines(&installed, &offered, &[], &BTreeMap::new(), false, "2"),
            ["vendor-a (1.0-1)", "vendor-b (1.0-1)"]
        );
    }

    #[test]
    fn repositories_are_classified_by_the_plan_and_keys_and_decided() {
        let files = RepoFiles::from([(
            "all.repo".to_string(),
            "[os]\nbaseurl=http://os.example/$releasever/\ngpgkey=file:///etc/pki/rpm-gpg/os-$releasever-$basearch\n\n\
             [named]\nbaseurl=http://mirror.example/1/\n\n\
             [a]\nbaseurl=http://v.example/a/$releasever/\n\n\
             [b]\nname=B\nbaseurl=http://v.example/b/$releasever/\ngpgkey=file:///etc/pki/rpm-gpg/vendor\n\n\
             [c]\nbaseurl=http://v.example/c-old/\n\n\
             [d]\nbaseurl=http://v.example/d/1/x86_64/\n\n\
             [e]\nbaseurl=http://v.example/e/stable/\n\n\
             [off]\nenabled=0\nbaseurl=http://v.example/off/\n"
                .to_string(),
        )]);
        let mut sources = configured(&files, "etc/yum.repos.d");
        let ids: Vec<&str> = sources.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["os", "named", "a", "b", "c", "d", "e"]);
        let changes = [RepoChange {
            id: "named".into(),
            action: RepoAction::Replace,
            url: Some("http://mirror.example/2/".into()),
            name: None,
            gpgcheck: None,
        }];
        let vendors = [RpmVendorRepo {
            vendor: "Vendor C".into(),
            matches: "http://v.example/c-old".into(),
            url: "http://v.example/c-new/".into(),
        }];
        // The distribution's keys as the image's key files.
        let keys = ["/usr/share/keys/os-*".to_string()];
        let policy = RpmPolicy {
            changes: &changes,
            distribution_keys: &keys,
            third_party: ThirdPartyPolicy::Decide,
            keep: &[],
            vendors: &vendors,
            from: "1",
            to: "2",
        };
        assert!(policy.active());
        for s in &mut sources {
            policy.decide(&Fake, s);
        }
        let decided: Vec<(&str, &RpmDecision)> = sources
            .iter()
            .map(|s| (s.id.as_str(), &s.decision))
            .collect();
        assert_eq!(
            decided,
            [
                ("os", &RpmDecision::Plan),
                ("named", &RpmDecision::Plan),
                (
                    "a",
                    &RpmDecision::Disable("it does not answer for release 2".into())
                ),
                ("b", &RpmDecision::Switch),
                (
                    "c",
                    &RpmDecision::Moved("http://v.example/c-new/".into(), Some("Vendor C".into()))
                ),
                (
                    "d",
                    &RpmDecision::Moved("http://v.example/d/2/x86_64/".into(), None)
                ),
                ("e", &RpmDecision::Keep("its URL names no release".into())),
            ]
        );
        assert_eq!(sources[0].class, Class::Distribution);
        assert_eq!(
            sources[3].describe("2"),
            "/etc/yum.repos.d/all.repo [b] http://v.example/b/$releasever/: third-party (signed by a key that is not the distribution's); switched to release 2 ($releasever)"
        );
        let noted = with_notes(files.clone(), &sources, "migration m1 to release 2");
        assert!(
            noted["all.repo"].contains("[a]\n# migrate: migration m1 to release 2: disabled, it does not answer for release 2\nbaseurl="),
            "{}",
            noted["all.repo"]
        );
        let added = super::changes(&sources);
        assert_eq!(
            added
                .iter()
                .map(|c| (c.id.as_str(), c.action, c.url.as_deref()))
                .collect::<Vec<_>>(),
            [
                ("a", RepoAction::Disable, None),
                ("c", RepoAction::Replace, Some("http://v.example/c-new/")),
                (
                    "d",
                    RepoAction::Replace,
                    Some("http://v.example/d/2/x86_64/")
                ),
            ]
        );
    }
}

//! Operating system releases: `os-release` parsing and release patterns.
//!
//! A release is identified the way `os-release(5)` does it, by `ID` and
//! `VERSION_ID`. Images name the releases they accept as patterns such as
//! `debian:12` or `sles:12.*`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};

use crate::core::rootfs;

/// The parsed contents of an `os-release` file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct OsRelease {
    fields: BTreeMap<String, String>,
}

impl OsRelease {
    /// Parses `os-release(5)` text: `KEY=value` lines, values optionally quoted
    /// with shell-style escapes. Lines that are not assignments are ignored, as
    /// the format asks.
    pub(crate) fn parse(text: &str) -> Self {
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, raw)) = line.split_once('=') else {
                continue;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            fields.insert(key.to_string(), unquote(raw));
        }
        Self { fields }
    }

    /// Reads the `os-release` of the root filesystem at `root`
    /// (`etc/os-release`, falling back to `usr/lib/os-release`), resolving
    /// symlinks inside that root.
    pub(crate) fn read_from_root(root: &Path) -> Result<Self> {
        use crate::core::root_paths::RootPath;
        for candidate in [RootPath::OsRelease, RootPath::UsrOsRelease] {
            // Bounded: a root's os-release may be a FIFO or /dev/zero.
            let rel = candidate.rel();
            if let Some(bytes) = rootfs::confined::read(root, rel, OS_RELEASE_LIMIT)? {
                let text = String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", root.join(rel).display()))?;
                return Ok(Self::parse(&text));
            }
        }
        bail!(
            "{} has no etc/os-release or usr/lib/os-release",
            root.display()
        )
    }

    /// A field by its key, if present and not empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `ID`, lower-case operating system identifier (`linux` when missing, as
    /// the specification says).
    pub(crate) fn id(&self) -> &str {
        self.get("ID").unwrap_or("linux")
    }

    /// `ID_LIKE`: identifiers of related distributions, closest first.
    pub(crate) fn id_like(&self) -> Vec<&str> {
        self.get("ID_LIKE")
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// `VERSION_ID`, if present.
    pub(crate) fn version_id(&self) -> Option<&str> {
        self.get("VERSION_ID")
    }

    /// `VERSION_CODENAME`, if present.
    pub(crate) fn codename(&self) -> Option<&str> {
        self.get("VERSION_CODENAME")
    }

    /// `PRETTY_NAME`, else `NAME VERSION`, else the release.
    pub(crate) fn pretty_name(&self) -> String {
        if let Some(p) = self.get("PRETTY_NAME") {
            return p.to_string();
        }
        match (self.get("NAME"), self.get("VERSION")) {
            (Some(n), Some(v)) => format!("{n} {v}"),
            (Some(n), None) => n.to_string(),
            _ => self.release().to_string(),
        }
    }

    /// The release this file describes.
    pub(crate) fn release(&self) -> Release {
        Release {
            id: self.id().to_string(),
            version_id: self.version_id().unwrap_or_default().to_string(),
        }
    }
}

fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    let mut chars = raw.chars();
    match chars.next() {
        Some(q @ ('"' | '\'')) => {
            let mut out = String::new();
            let mut escaped = false;
            for c in chars {
                if escaped {
                    out.push(c);
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    break;
                } else {
                    out.push(c);
                }
            }
            out
        }
        _ => raw.to_string(),
    }
}

/// The largest os-release read (real ones are a few hundred bytes).
const OS_RELEASE_LIMIT: u64 = 64 << 10;

/// A release: `ID` and `VERSION_ID` from os-release.
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub(crate) struct Release {
    /// os-release `ID`, e.g. `debian`.
    pub(crate) id: String,
    /// os-release `VERSION_ID`, e.g. `12`; empty for rolling releases.
    pub(crate) version_id: String,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version_id.is_empty() {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}:{}", self.id, self.version_id)
        }
    }
}

impl std::str::FromStr for Release {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (id, version_id) = split_spec(s)?;
        if version_id.contains('*') {
            bail!("release {s:?} must not contain a wildcard");
        }
        Ok(Self {
            id: id.to_string(),
            version_id: version_id.to_string(),
        })
    }
}

/// A pattern that matches releases: `ID:VERSION`, where VERSION may end in `*`
/// (`sles:12.*` matches 12.4 and 12.5; `debian:12` matches only 12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReleasePattern {
    id: String,
    version: String,
}

impl ReleasePattern {
    /// Whether `release` matches this pattern.
    #[cfg(test)]
    pub(crate) fn matches(&self, release: &Release) -> bool {
        release.id == self.id && self.version_matches(&release.version_id)
    }

    /// Whether the system `os` describes matches: by `ID`, or by one of its
    /// `ID_LIKE` identifiers (a pattern `rhel:9.*` accepts Rocky Linux 9.4,
    /// whose os-release says `ID=rocky`, `ID_LIKE="rhel centos fedora"`).
    pub(crate) fn matches_os(&self, os: &OsRelease) -> bool {
        let version = os.version_id().unwrap_or_default();
        (os.id() == self.id || os.id_like().contains(&self.id.as_str()))
            && self.version_matches(version)
    }

    fn version_matches(&self, version: &str) -> bool {
        match self.version.strip_suffix('*') {
            Some(prefix) => version.starts_with(prefix),
            None => version == self.version,
        }
    }
}

impl fmt::Display for ReleasePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.version)
    }
}

impl std::str::FromStr for ReleasePattern {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (id, version) = split_spec(s)?;
        if version.is_empty() || version[..version.len() - 1].contains('*') {
            bail!("release pattern {s:?}: the version must be non-empty and may only end in '*'");
        }
        Ok(Self {
            id: id.to_string(),
            version: version.to_string(),
        })
    }
}

fn split_spec(s: &str) -> Result<(&str, &str)> {
    let Some((id, version)) = s.trim().split_once(':') else {
        bail!("release {s:?} is not of the form ID:VERSION (e.g. debian:12)");
    };
    let id_ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !id_ok {
        bail!("release {s:?}: ID must be lower-case letters, digits, '.', '_' or '-'");
    }
    Ok((id, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://distribution.example/"
"#;

    #[test]
    fn parses_debian_os_release() {
        let os = OsRelease::parse(BOOKWORM);
        assert_eq!(os.id(), "debian");
        assert_eq!(os.version_id(), Some("12"));
        assert_eq!(os.codename(), Some("bookworm"));
        assert_eq!(os.pretty_name(), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(os.release().to_string(), "debian:12");
    }

    #[test]
    fn handles_quotes_escapes_comments_and_junk() {
        let os = OsRelease::parse(
            "# comment\nID='opensuse-leap'\nID_LIKE=\"suse opensuse\"\nNAME=\"A \\\"quoted\\\" name\"\nnot an assignment\n=novalue\nVERSION_ID=\"15.6\"\n",
        );
        assert_eq!(os.id(), "opensuse-leap");
        assert_eq!(os.id_like(), vec!["suse", "opensuse"]);
        assert_eq!(os.get("NAME"), Some("A \"quoted\" name"));
        assert_eq!(os.version_id(), Some("15.6"));
    }

    #[test]
    fn missing_id_defaults_to_linux() {
        let os = OsRelease::parse("NAME=Something\n");
        assert_eq!(os.id(), "linux");
        assert_eq!(os.pretty_name(), "Something");
        assert_eq!(os.version_id(), None);
    }

    #[test]
    fn reads_through_an_absolute_symlink_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("usr/lib/os-release"), BOOKWORM).unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", root.path().join("etc/os-release"))
            .unwrap();
        let os = OsRelease::read_from_root(root.path()).unwrap();
        assert_eq!(os.codename(), Some("bookworm"));
    }

    #[test]
    fn a_root_without_os_release_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = OsRelease::read_from_root(root.path()).unwrap_err();
        assert!(err.to_string().contains("has no etc/os-release"), "{err}");
    }

    #[test]
    fn release_patterns_match_exactly_or_by_prefix() {
        let p: ReleasePattern = "debian:12".parse().unwrap();
        assert!(p.matches(&"debian:12".parse().unwrap()));
        assert!(!p.matches(&"debian:12.1".parse().unwrap()));
        assert!(!p.matches(&"ubuntu:12".parse().unwrap()));
        let p: ReleasePattern = "sles:12.*".parse().unwrap();
        assert!(p.matches(&"sles:12.5".parse().unwrap()));
        assert!(!p.matches(&"sles:15.1".parse().unwrap()));
    }

    #[test]
    fn distribution_families_are_recognized_by_id_and_id_like() {
        let samples = [
            (
                "sles 15 SP6",
                "NAME=\"SLES\"\nVERSION=\"15-SP6\"\nVERSION_ID=\"15.6\"\nID=\"sles\"\nID_LIKE=\"suse\"\n",
                "sles:15.6",
            ),
            (
                "sles 12 SP5",
                "NAME=\"SLES\"\nVERSION_ID=\"12.5\"\nID=\"sles\"\n",
                "sles:12.5",
            ),
            (
                "leap 15.6",
                "NAME=\"openSUSE Leap\"\nVERSION_ID=\"15.6\"\nID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n",
                "opensuse-leap:15.6",
            ),
            ("debian 12", "ID=debian\nVERSION_ID=\"12\"\n", "debian:12"),
            (
                "ubuntu 24.04",
                "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n",
                "ubuntu:24.04",
            ),
            (
                "fedora 42",
                "NAME=\"Fedora Linux\"\nVERSION_ID=42\nID=fedora\n",
                "fedora:42",
            ),
            (
                "rocky 9.4",
                "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.4\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
                "rocky:9.4",
            ),
            (
                "alma 9.4",
                "NAME=\"AlmaLinux\"\nVERSION_ID=\"9.4\"\nID=\"almalinux\"\nID_LIKE=\"rhel centos fedora\"\n",
                "almalinux:9.4",
            ),
        ];
        for (name, text, release) in samples {
            assert_eq!(
                OsRelease::parse(text).release().to_string(),
                release,
                "{name}"
            );
        }
        let os = |i: usize| OsRelease::parse(samples[i].1);
        let pattern = |p: &str| p.parse::<ReleasePattern>().unwrap();
        assert!(pattern("sles:12.*").matches_os(&os(1)));
        assert!(!pattern("sles:12.*").matches_os(&os(0)));
        assert!(pattern("suse:15.*").matches_os(&os(0)), "SLES is suse-like");
        assert!(pattern("opensuse-leap:15.*").matches_os(&os(2)));
        assert!(pattern("rhel:9.*").matches_os(&os(6)), "Rocky is rhel-like");
        assert!(pattern("rhel:9.*").matches_os(&os(7)), "Alma is rhel-like");
        assert!(
            !pattern("fedora:9.*").matches_os(&os(5)),
            "the version still has to match"
        );
        assert!(
            !pattern("fedora:41").matches_os(&os(6)),
            "Rocky 9.4 is not Fedora 41"
        );
        assert!(
            pattern("debian:24.04").matches_os(&os(4)),
            "Ubuntu is debian-like by ID_LIKE"
        );
        assert!(!pattern("debian:12").matches_os(&os(4)));
    }

    #[test]
    fn bad_release_specs_are_rejected() {
        for bad in ["debian", "Debian:12", ":12", "debian:", "debian:1*2"] {
            assert!(bad.parse::<ReleasePattern>().is_err(), "{bad}");
        }
        assert!("debian:12*".parse::<Release>().is_err());
    }
}

//! The root's apt sources, each classified and decided before anything
//! changes.
//!
//! *Classified* by what a source is, not where it is served from: the
//! Release file the root's apt last fetched for it (its `Origin` or `Label`
//! against the distribution's, its signature against the distribution's
//! keyrings), so that a company's mirror of Debian stays Debian's and a
//! vendor's repository claiming `Origin: Debian` does not. A source the root
//! never fetched is classified by what its target suite answers, else it is
//! unknown.
//!
//! *Decided*: the distribution's sources are switched to the target suite;
//! a third-party one is kept or disabled when the plan says so, mapped when
//! a vendor map names it, switched when it answers for the target suite,
//! disabled otherwise. Disabled means commented out (one-line) or
//! `Enabled: no` (deb822), a note naming the migration beside it; the safety
//! backup holds `/etc`, so a rollback brings the sources back as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::super::apt_sources::switch_suite;
use crate::core::cmd::CommandExt;
use crate::core::kinds::apt::{AptSourcesOptions, ThirdPartyPolicy, VendorRepo, url_matches};

/// What a source is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The distribution's own (its Release file says so, signed by its key).
    Distribution,
    /// Another's: the reason says what told it apart.
    ThirdParty(String),
    /// Never fetched, and its target suite does not answer.
    Unknown,
}

/// What the cutover does to a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Its suites of the source release become the target's.
    Switch,
    /// Moved where a vendor map says.
    Map(VendorRepo),
    /// Commented out, for the reason given.
    Disable(String),
    /// Left as it is, for the reason given.
    Keep(String),
}

/// One source entry of the root: a line of a one-line file, or a stanza of
/// a deb822 `.sources` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    /// The file, as a path in the root (`/etc/apt/sources.list`).
    pub(crate) file: String,
    /// The line (one-line) or stanza (deb822), counted from 1 as apt does.
    pub(crate) index: usize,
    /// Its URIs.
    pub(crate) uris: Vec<String>,
    /// Its suites.
    pub(crate) suites: Vec<String>,
    /// Where the root's cached lists of it begin (`/var/lib/apt/lists/HOST_PATH_dists_SUITE_`).
    list_prefix: Option<String>,
    /// What it is.
    pub(crate) class: Class,
    /// What the cutover does to it.
    pub(crate) decision: Decision,
    /// Whether it stops the run (`third_party = "inhibit"`).
    pub(crate) inhibits: bool,
}

impl Source {
    /// Whether it is a deb822 stanza.
    pub(crate) fn deb822(&self) -> bool {
        self.file.ends_with(".sources")
    }

    /// One line: where it is, what it is and what happens to it.
    pub(crate) fn describe(&self, to: &str) -> String {
        let class = match &self.class {
            Class::Distribution => "the distribution's".to_string(),
            Class::ThirdParty(why) => format!("third-party ({why})"),
            Class::Unknown => "unknown (never fetched, and no answer)".to_string(),
        };
        let decision = match &self.decision {
            Decision::Switch => format!("switched to {to}"),
            Decision::Map(m) => format!(
                "mapped by the {} vendor map to {} {}",
                m.vendor,
                m.uri.as_deref().unwrap_or(self.uri()),
                m.suite
            ),
            Decision::Disable(why) => format!("disabled: {why}"),
            Decision::Keep(why) => format!("kept as it is: {why}"),
        };
        format!(
            "{}:{} {} {}: {class}; {decision}",
            self.file,
            self.index,
            self.uri(),
            self.suites.join(" ")
        )
    }

    /// Its first URI.
    pub(crate) fn uri(&self) -> &str {
        self.uris.first().map_or("", String::as_str)
    }

    /// Whether it is not the distribution's.
    pub(crate) fn third_party(&self) -> bool {
        self.class != Class::Distribution
    }
}

/// A source's Release file, the fields that tell whose it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReleaseFile {
    /// Where it is (in the agent's view).
    pub(crate) path: PathBuf,
    /// `Origin`.
    pub(crate) origin: String,
    /// `Label`.
    pub(crate) label: String,
}

/// Reads the fields of a Release or InRelease file (an InRelease file's
/// signature armour is skipped).
pub(crate) fn parse_release(text: &str) -> (String, String) {
    let (mut origin, mut label) = (String::new(), String::new());
    for line in text.lines() {
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            break;
        }
        if let Some(v) = line.strip_prefix("Origin:") {
            origin = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Label:") {
            label = v.trim().to_string();
        }
    }
    (origin, label)
}

/// The Release file beside the lists starting with `prefix` in `root`
/// (`prefix` is a path in the root), if apt fetched one.
pub(crate) fn release_at(root: &Path, prefix: &str) -> Option<ReleaseFile> {
    ["InRelease", "Release"].iter().find_map(|name| {
        let inside = format!("{prefix}{name}");
        let path = crate::core::rootfs::resolve(root, inside.trim_start_matches('/')).ok()?;
        let text = crate::core::fsutil::read_text_limited(&path, 64 << 20).ok()??;
        let (origin, label) = parse_release(&text);
        Some(ReleaseFile {
            path: PathBuf::from(inside),
            origin,
            label,
        })
    })
}

/// `apt-get indextargets` rows: source entry, repository URI, suite, the
/// list file, the target's key.
pub(crate) fn parse_indextargets(
    text: &str,
) -> Vec<(String, usize, String, String, Option<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [entry, uri, suite, filename, metakey] = fields[..] else {
            continue;
        };
        let Some((file, index)) = entry.rsplit_once(':') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        // The list file is the Release file's directory plus the target's
        // key with '/' as '_'.
        let prefix = filename
            .strip_suffix(&metakey.replace('/', "_"))
            .filter(|p| p.ends_with('_'))
            .map(str::to_string);
        out.push((
            file.to_string(),
            index,
            uri.trim_end_matches('/').to_string(),
            suite.to_string(),
            prefix,
        ));
    }
    out
}

/// An empty lists directory in the agent's scratch area (see [`entries`]).
const NO_LISTS: &str = "/run/migrate/apt-no-lists";

/// The root's own lists directory (apt's default, as everywhere here).
pub(super) const ROOT_LISTS: &str = "/var/lib/apt/lists/";

/// The root's lists directory in the agent's view, confined to the root.
pub(super) fn root_lists(root: &Path) -> Result<std::path::PathBuf> {
    crate::core::rootfs::resolve(root, ROOT_LISTS.trim_matches('/'))
}

/// The beginnings of the file names (in the root's lists directory) of the
/// lists the cutover makes useless: those of the sources it switches, maps
/// elsewhere or disables, unless a source it keeps has the same lists.
pub(crate) fn replaced_lists(sources: &[Source]) -> Vec<String> {
    let name = |s: &Source| {
        s.list_prefix
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    };
    let kept: Vec<String> = sources
        .iter()
        .filter(|s| matches!(s.decision, Decision::Keep(_)))
        .filter_map(name)
        .collect();
    let mut replaced: Vec<String> = sources
        .iter()
        .filter(|s| !matches!(s.decision, Decision::Keep(_)))
        .filter_map(name)
        .filter(|n| {
            !kept
                .iter()
                .any(|k| k.starts_with(n.as_str()) || n.starts_with(k.as_str()))
        })
        .collect();
    replaced.sort();
    replaced.dedup();
    replaced
}

/// The root's source entries as its apt sees them, enabled ones only; with
/// `root_cache`, apt may use (and refresh) the root's own cache files.
pub(crate) fn entries(root: &Path, root_cache: bool) -> Result<Vec<Source>> {
    let args = [
        "indextargets",
        "--no-release-info",
        "--format",
        "$(SOURCESENTRY)\t$(REPO_URI)\t$(RELEASE)\t$(FILENAME)\t$(METAKEY)",
    ];
    let text = if root_cache {
        super::apt(root, "apt-get", &args)
    } else {
        // Against an empty lists directory and no cache file: apt lists
        // the sources' targets without first building a cache of every list
        // (0.08 s against 0.65 s on Debian's main list); their files are
        // named as in the root's own lists directory.
        let empty = root.join(NO_LISTS.trim_start_matches('/')).join("partial");
        std::fs::create_dir_all(&empty).with_context(|| format!("creating {}", empty.display()))?;
        let lists = format!("Dir::State::Lists={NO_LISTS}");
        let mut cmd = super::apt(
            root,
            "apt-get",
            &[
                "-o",
                &lists,
                "-o",
                "Dir::Cache::pkgcache=",
                "-o",
                "Dir::Cache::srcpkgcache=",
            ],
        );
        cmd.args(args);
        cmd
    }
    .run_get_string()
    .context("listing the root's apt sources (apt-get indextargets)")?;
    let mut by_entry: BTreeMap<(String, usize), Source> = BTreeMap::new();
    for (file, index, uri, suite, prefix) in parse_indextargets(&text) {
        let prefix = prefix.map(|p| match p.strip_prefix(NO_LISTS) {
            Some(name) => format!("{ROOT_LISTS}{}", name.trim_start_matches('/')),
            None => p,
        });
        let s = by_entry.entry((file.clone(), index)).or_insert(Source {
            file,
            index,
            uris: Vec::new(),
            suites: Vec::new(),
            list_prefix: None,
            class: Class::Unknown,
            decision: Decision::Keep(String::new()),
            inhibits: false,
        });
        if !s.uris.contains(&uri) {
            s.uris.push(uri);
        }
        if !s.suites.contains(&suite) {
            s.suites.push(suite);
        }
        if s.list_prefix.is_none() {
            s.list_prefix = prefix;
        }
    }
    // In file order as written, sources.list first.
    let mut out: Vec<Source> = by_entry.into_values().collect();
    out.sort_by(|a, b| {
        (a.file != "/etc/apt/sources.list", &a.file, a.index).cmp(&(
            b.file != "/etc/apt/sources.list",
            &b.file,
            b.index,
        ))
    });
    Ok(out)
}

/// What classifying and deciding needs from outside: the root's Release
/// files, signatures, and answers of target suites.
pub(crate) trait Probe {
    /// The Release file the root's apt fetched for the lists at `prefix`.
    fn cached_release(&self, prefix: &str) -> Option<ReleaseFile>;
    /// Whether one of the distribution's keyrings verifies `release`.
    fn signed_by_distribution(&self, release: &ReleaseFile) -> Result<bool>;
    /// Fetches `source` as `decision` would change it; its Release file if
    /// it answered.
    fn answers(&self, source: &Source, decision: &Decision) -> Option<ReleaseFile>;
}

/// Decides what becomes of every source.
pub(crate) struct Decider<'a> {
    pub(crate) options: &'a AptSourcesOptions,
    /// The plan's vendor maps, then the image's.
    pub(crate) vendors: &'a [VendorRepo],
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
}

impl Decider<'_> {
    fn classify(&self, probe: &dyn Probe, release: Option<&ReleaseFile>) -> Result<Class> {
        if self.options.origins.is_empty() {
            return Ok(Class::Distribution);
        }
        let Some(r) = release else {
            return Ok(Class::Unknown);
        };
        let named = |v: &str| !v.is_empty() && self.options.origins.iter().any(|o| o == v);
        if !(named(&r.origin) || named(&r.label)) {
            let origin = if r.origin.is_empty() {
                "no origin".to_string()
            } else {
                format!("origin {:?}", r.origin)
            };
            return Ok(Class::ThirdParty(origin));
        }
        if !probe.signed_by_distribution(r)? {
            return Ok(Class::ThirdParty(format!(
                "origin {:?}, but not signed by the distribution's keys",
                r.origin
            )));
        }
        Ok(Class::Distribution)
    }

    /// Classifies and decides `source` in place.
    pub(crate) fn decide(&self, probe: &dyn Probe, source: &mut Source) -> Result<()> {
        let (from, to) = (self.from, self.to);
        let bound: Option<&String> = source
            .suites
            .iter()
            .find(|s| switch_suite(s, from, to).is_some());
        let cached = source
            .list_prefix
            .as_deref()
            .and_then(|p| probe.cached_release(p));
        source.class = self.classify(probe, cached.as_ref())?;
        let listed = |list: &[String]| {
            source
                .uris
                .iter()
                .any(|u| list.iter().any(|p| url_matches(p, u)))
        };
        if listed(&self.options.keep) {
            source.decision = Decision::Keep("the plan keeps it".into());
            return Ok(());
        }
        if listed(&self.options.disable) {
            source.decision = Decision::Disable("the plan disables it".into());
            return Ok(());
        }
        let Some(suite) = bound.cloned() else {
            let on_target = source
                .suites
                .iter()
                .any(|s| switch_suite(s, to, to).is_some());
            source.decision = Decision::Keep(if on_target {
                format!("already on {to}")
            } else {
                format!("its suite {} does not name {from}", source.suites.join(" "))
            });
            return Ok(());
        };
        if source.class == Class::Distribution {
            source.decision = Decision::Switch;
            return Ok(());
        }
        if let Some(map) = self.vendors.iter().find(|m| m.maps(source.uri(), &suite)) {
            let mapped = Decision::Map(map.clone());
            source.decision = if probe.answers(source, &mapped).is_some() {
                mapped
            } else {
                Decision::Disable(format!(
                    "the {} vendor map moves it to {} {}, which does not answer",
                    map.vendor,
                    map.uri.as_deref().unwrap_or(source.uri()),
                    map.suite
                ))
            };
            return Ok(());
        }
        match probe.answers(source, &Decision::Switch) {
            Some(release) => {
                if source.class == Class::Unknown {
                    source.class = self.classify(probe, Some(&release))?;
                }
                source.decision = Decision::Switch;
            }
            None => {
                source.decision = Decision::Disable(format!("it has no {to} suite that answers"));
            }
        }
        source.inhibits =
            source.third_party() && self.options.third_party == ThirdPartyPolicy::Inhibit;
        Ok(())
    }
}

/// One source's text rewritten by its decision.
fn rewrite_one_line(line: &str, decision: &Decision, from: &str, to: &str, note: &str) -> String {
    match decision {
        Decision::Keep(_) => line.to_string(),
        Decision::Switch => super::super::apt_sources::switch_one_line(line, from, to).0,
        Decision::Disable(why) => {
            format!("# migrate: {note}: disabled, {why}\n# {line}")
        }
        Decision::Map(map) => map_one_line(line, map),
    }
}

/// `deb [OPTIONS] URI SUITE COMPONENTS` with the URI, the suite and the
/// signed-by option a vendor map gives.
fn map_one_line(line: &str, map: &VendorRepo) -> String {
    let body = line.trim_end_matches('\n');
    let (body, comment) = match body.find(" #") {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    };
    let mut words = body.split_whitespace();
    let kind = words.next().unwrap_or("deb");
    let rest: Vec<&str> = words.collect();
    let (mut options, rest): (Vec<String>, &[&str]) =
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            let opts = rest[..=end]
                .join(" ")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split_whitespace()
                .map(str::to_string)
                .collect();
            (opts, &rest[end + 1..])
        } else {
            (Vec::new(), &rest[..])
        };
    if let Some(key) = &map.signed_by {
        options.retain(|o| !o.starts_with("signed-by="));
        options.push(format!("signed-by={key}"));
    }
    let uri = map
        .uri
        .as_deref()
        .unwrap_or(rest.first().copied().unwrap_or(""));
    let components = rest.get(2..).unwrap_or(&[]).join(" ");
    let mut out = kind.to_string();
    if !options.is_empty() {
        out.push_str(&format!(" [{}]", options.join(" ")));
    }
    out.push_str(&format!(" {uri} {} {components}", map.suite));
    let mut out = out.trim_end().to_string();
    out.push_str(comment);
    if line.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A deb822 stanza rewritten by its decision.
fn rewrite_stanza(
    paragraph: &str,
    decision: &Decision,
    from: &str,
    to: &str,
    note: &str,
) -> String {
    // The blank lines that end the paragraph stay after the stanza.
    let body_len = paragraph.trim_end().len();
    let body_end = paragraph[body_len..]
        .find('\n')
        .map_or(paragraph.len(), |i| body_len + i + 1);
    let (stanza, blanks) = paragraph.split_at(body_end);
    let mut out = rewrite_stanza_body(stanza, decision, from, to, note);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(blanks);
    out
}

fn rewrite_stanza_body(
    stanza: &str,
    decision: &Decision,
    from: &str,
    to: &str,
    note: &str,
) -> String {
    match decision {
        Decision::Keep(_) => stanza.to_string(),
        Decision::Switch => super::super::apt_sources::switch_deb822(stanza, from, to).0,
        Decision::Disable(why) => {
            let mut out = set_fields(stanza, &[("Enabled", None)]);
            out.push_str(&format!(
                "# migrate: {note}: disabled, {why}\nEnabled: no\n"
            ));
            out
        }
        Decision::Map(map) => {
            let uri = map.uri.clone();
            let mut fields: Vec<(&str, Option<String>)> = vec![("Suites", Some(map.suite.clone()))];
            if let Some(u) = uri {
                fields.push(("URIs", Some(u)));
            }
            if let Some(k) = &map.signed_by {
                fields.push(("Signed-By", Some(k.clone())));
            }
            let refs: Vec<(&str, Option<&str>)> =
                fields.iter().map(|(k, v)| (*k, v.as_deref())).collect();
            set_fields(stanza, &refs)
        }
    }
}

/// The stanza with each named field (and its continuation lines) replaced
/// by the value given, or removed when there is none; fields with a value
/// that the stanza lacks are added at its end.
fn set_fields(stanza: &str, fields: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut seen = Vec::new();
    for line in stanza.split_inclusive('\n') {
        if skipping && line.starts_with([' ', '\t']) {
            continue;
        }
        skipping = false;
        let name = line.split_once(':').map(|(n, _)| n.trim());
        let hit = name.and_then(|n| {
            fields
                .iter()
                .find(|(f, _)| !line.starts_with('#') && f.eq_ignore_ascii_case(n))
        });
        match hit {
            Some((f, value)) => {
                skipping = true;
                seen.push(*f);
                if let Some(v) = value {
                    out.push_str(&format!("{f}: {v}\n"));
                }
            }
            None => out.push_str(line),
        }
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for (f, value) in fields {
        if let (false, Some(v)) = (seen.contains(f), value) {
            out.push_str(&format!("{f}: {v}\n"));
        }
    }
    out
}

/// `text` of a source file with the decisions (by line or stanza number)
/// applied.
pub(crate) fn rewrite(
    text: &str,
    deb822: bool,
    decisions: &BTreeMap<usize, &Decision>,
    from: &str,
    to: &str,
    note: &str,
) -> String {
    if !deb822 {
        return text
            .split_inclusive('\n')
            .enumerate()
            .map(|(i, line)| match decisions.get(&(i + 1)) {
                Some(d) => rewrite_one_line(line, d, from, to, note),
                None => line.to_string(),
            })
            .collect();
    }
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    for (paragraph, is_stanza) in paragraphs(text) {
        if is_stanza {
            index += 1;
            if let Some(d) = decisions.get(&index) {
                out.push_str(&rewrite_stanza(paragraph, d, from, to, note));
                continue;
            }
        }
        out.push_str(paragraph);
    }
    out
}

/// The text of the source's line or stanza in `text`.
pub(crate) fn entry_text(text: &str, deb822: bool, index: usize) -> Option<String> {
    if !deb822 {
        return text
            .split_inclusive('\n')
            .nth(index.checked_sub(1)?)
            .map(str::to_string);
    }
    paragraphs(text)
        .filter(|(_, s)| *s)
        .nth(index.checked_sub(1)?)
        .map(|(p, _)| p.to_string())
}

/// A deb822 file cut into paragraphs (the blank lines after each included),
/// each with whether it is a stanza (has a line that is not a comment).
fn paragraphs(text: &str) -> impl Iterator<Item = (&str, bool)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        let mut in_blank = false;
        let mut stanza = false;
        for line in rest.split_inclusive('\n') {
            let blank = line.trim().is_empty();
            if !blank && in_blank {
                break;
            }
            in_blank = blank;
            if !blank && !line.trim_start().starts_with('#') {
                stanza = true;
            }
            end += line.len();
        }
        let (p, r) = rest.split_at(end);
        rest = r;
        Some((p, stanza))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &str = "migration m1 to trixie";

    fn map() -> VendorRepo {
        VendorRepo {
            vendor: "Vendor C".into(),
            matches: "http://v.example/c-old".into(),
            from_suite: None,
            uri: Some("http://v.example/c-new".into()),
            suite: "trixie".into(),
            signed_by: Some("/etc/apt/keyrings/c.gpg".into()),
        }
    }

    #[test]
    fn one_line_sources_are_switched_mapped_disabled_or_kept_by_line() {
        let text = "\
# the distribution
deb http://deb.example/debian bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/a.gpg] http://v.example/a bookworm main # vendor a
deb http://v.example/c-old bookworm main contrib
deb http://v.example/b bookworm main
";
        let switch = Decision::Switch;
        let disable = Decision::Disable("it has no trixie suite that answers".into());
        let mapped = Decision::Map(map());
        let keep = Decision::Keep("the plan keeps it".into());
        let decisions = BTreeMap::from([(2, &switch), (3, &disable), (4, &mapped), (5, &keep)]);
        let new = rewrite(text, false, &decisions, "bookworm", "trixie", NOTE);
        assert_eq!(
            new,
            "\
# the distribution
deb http://deb.example/debian trixie main
# migrate: migration m1 to trixie: disabled, it has no trixie suite that answers
# deb [arch=amd64 signed-by=/etc/apt/keyrings/a.gpg] http://v.example/a bookworm main # vendor a
deb [signed-by=/etc/apt/keyrings/c.gpg] http://v.example/c-new trixie main contrib
deb http://v.example/b bookworm main
"
        );
        assert_eq!(
            entry_text(text, false, 3).as_deref(),
            Some(
                "deb [arch=amd64 signed-by=/etc/apt/keyrings/a.gpg] http://v.example/a bookworm main # vendor a\n"
            )
        );
    }

    #[test]
    fn deb822_stanzas_are_rewritten_by_stanza_number() {
        let text = "\
# comments alone are no stanza

Types: deb
URIs: http://v.example/a
Suites: bookworm
Components: main
Enabled: yes

Types: deb
URIs: http://v.example/c-old
Suites:
 bookworm
Components: main
Signed-By: /etc/apt/keyrings/old.gpg

Types: deb
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main
";
        let disable = Decision::Disable("the plan disables it".into());
        let mapped = Decision::Map(map());
        let switch = Decision::Switch;
        let decisions = BTreeMap::from([(1, &disable), (2, &mapped), (3, &switch)]);
        let new = rewrite(text, true, &decisions, "bookworm", "trixie", NOTE);
        assert_eq!(
            new,
            "\
# comments alone are no stanza

Types: deb
URIs: http://v.example/a
Suites: bookworm
Components: main
# migrate: migration m1 to trixie: disabled, the plan disables it
Enabled: no

Types: deb
URIs: http://v.example/c-new
Suites: trixie
Components: main
Signed-By: /etc/apt/keyrings/c.gpg

Types: deb
URIs: http://deb.example/debian
Suites: trixie trixie-updates
Components: main
"
        );
        assert!(entry_text(text, true, 2).unwrap().contains("c-old"));
        assert_eq!(entry_text(text, true, 4), None);
    }

    #[test]
    fn indextargets_rows_name_the_entry_and_its_release_files() {
        let rows = parse_indextargets(
            "/etc/apt/sources.list:2\thttp://deb.example/debian/\tbookworm\t/var/lib/apt/lists/deb.example_debian_dists_bookworm_main_binary-amd64_Packages\tmain/binary-amd64/Packages\nnot a row\n",
        );
        assert_eq!(
            rows,
            [(
                "/etc/apt/sources.list".to_string(),
                2,
                "http://deb.example/debian".to_string(),
                "bookworm".to_string(),
                Some("/var/lib/apt/lists/deb.example_debian_dists_bookworm_".to_string())
            )]
        );
        assert_eq!(
            parse_release(
                "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nLabel: Debian-Security\nSuite: x\n-----BEGIN PGP SIGNATURE-----\nOrigin: forged\n"
            ),
            ("Debian".to_string(), "Debian-Security".to_string())
        );
    }

    /// Release files by list prefix; answering URIs; keys that verify.
    struct Fake {
        cached: BTreeMap<&'static str, (&'static str, bool)>,
        answering: Vec<&'static str>,
    }

    impl Probe for Fake {
        fn cached_release(&self, prefix: &str) -> Option<ReleaseFile> {
            self.cached.get(prefix).map(|(origin, _)| ReleaseFile {
                path: PathBuf::from(prefix),
                origin: (*origin).to_string(),
                label: String::new(),
            })
        }
        fn signed_by_distribution(&self, release: &ReleaseFile) -> Result<bool> {
            Ok(self
                .cached
                .get(release.path.to_str().unwrap())
                .is_some_and(|(_, signed)| *signed))
        }
        fn answers(&self, source: &Source, decision: &Decision) -> Option<ReleaseFile> {
            let uri = match decision {
                Decision::Map(m) => m.uri.clone().unwrap(),
                _ => source.uri().to_string(),
            };
            self.answering.contains(&uri.as_str()).then(|| ReleaseFile {
                path: PathBuf::from("probe"),
                origin: "Vendor".into(),
                label: String::new(),
            })
        }
    }

    fn source(uri: &str, suite: &str, prefix: Option<&str>) -> Source {
        Source {
            file: "/etc/apt/sources.list".into(),
            index: 1,
            uris: vec![uri.into()],
            suites: vec![suite.into()],
            list_prefix: prefix.map(str::to_string),
            class: Class::Unknown,
            decision: Decision::Keep(String::new()),
            inhibits: false,
        }
    }

    #[test]
    fn the_lists_of_the_suites_the_cutover_replaces_are_named_by_their_beginning() {
        let with = |uri: &str, suite: &str, prefix: &str, decision: Decision| Source {
            decision,
            ..source(uri, suite, Some(prefix))
        };
        let lists = "/var/lib/apt/lists/";
        let sources = [
            with(
                "http://deb.example/debian",
                "bookworm",
                &format!("{lists}deb.example_debian_dists_bookworm_"),
                Decision::Switch,
            ),
            with(
                "http://deb.example/debian",
                "bookworm-updates",
                &format!("{lists}deb.example_debian_dists_bookworm-updates_"),
                Decision::Switch,
            ),
            with(
                "http://v.example/a",
                "bookworm",
                &format!("{lists}v.example_a_dists_bookworm_"),
                Decision::Disable("no trixie suite".into()),
            ),
            // Kept as it is: its lists are still used.
            with(
                "http://v.example/kept",
                "stable",
                &format!("{lists}v.example_kept_dists_stable_"),
                Decision::Keep("its suite stable does not name bookworm".into()),
            ),
            // A flat repository disabled, under the kept one's path: the
            // kept one's lists begin the same way, so none is replaced.
            with(
                "http://v.example/kept",
                "./",
                &format!("{lists}v.example_kept_"),
                Decision::Disable("flat".into()),
            ),
        ];
        assert_eq!(
            replaced_lists(&sources),
            [
                "deb.example_debian_dists_bookworm-updates_",
                "deb.example_debian_dists_bookworm_",
                "v.example_a_dists_bookworm_",
            ]
        );
    }

    #[test]
    fn sources_are_classified_by_release_and_key_and_decided() {
        let fake = Fake {
            cached: BTreeMap::from([
                ("mirror_", ("Debian", true)),
                ("impostor_", ("Debian", false)),
                ("a_", ("Vendor A", false)),
                ("b_", ("Vendor B", false)),
                ("c_", ("Vendor C", false)),
            ]),
            answering: vec!["http://v.example/b", "http://v.example/c-new"],
        };
        let options = AptSourcesOptions {
            origins: vec!["Debian".into()],
            keep: vec!["http://v.example/kept".into()],
            ..Default::default()
        };
        let vendors = [map()];
        let decider = Decider {
            options: &options,
            vendors: &vendors,
            from: "bookworm",
            to: "trixie",
        };
        let decide = |s: &mut Source| decider.decide(&fake, s).unwrap();
        let mut mirror = source(
            "http://10.0.0.1:3142/debian",
            "bookworm-updates",
            Some("mirror_"),
        );
        decide(&mut mirror);
        assert_eq!(
            (&mirror.class, &mirror.decision),
            (&Class::Distribution, &Decision::Switch)
        );
        let mut impostor = source("http://v.example/impostor", "bookworm", Some("impostor_"));
        decide(&mut impostor);
        assert!(
            matches!(&impostor.class, Class::ThirdParty(why) if why.contains("not signed by the distribution's keys")),
            "{impostor:?}"
        );
        assert!(matches!(impostor.decision, Decision::Disable(_)));
        let mut a = source("http://v.example/a", "bookworm", Some("a_"));
        decide(&mut a);
        assert_eq!(a.class, Class::ThirdParty("origin \"Vendor A\"".into()));
        assert_eq!(
            a.describe("trixie"),
            "/etc/apt/sources.list:1 http://v.example/a bookworm: third-party (origin \"Vendor A\"); disabled: it has no trixie suite that answers"
        );
        let mut b = source("http://v.example/b", "bookworm", Some("b_"));
        decide(&mut b);
        assert_eq!(b.decision, Decision::Switch);
        let mut c = source("http://v.example/c-old", "bookworm", Some("c_"));
        decide(&mut c);
        assert_eq!(c.decision, Decision::Map(map()));
        let mut never_fetched = source("http://v.example/b", "bookworm", None);
        decide(&mut never_fetched);
        assert_eq!(
            never_fetched.class,
            Class::ThirdParty("origin \"Vendor\"".into())
        );
        let mut kept = source("http://v.example/kept/sub", "bookworm", Some("a_"));
        decide(&mut kept);
        assert_eq!(kept.decision, Decision::Keep("the plan keeps it".into()));
        let mut stable = source("http://v.example/a", "stable", Some("a_"));
        decide(&mut stable);
        assert_eq!(
            stable.decision,
            Decision::Keep("its suite stable does not name bookworm".into())
        );

        let strict = AptSourcesOptions {
            third_party: ThirdPartyPolicy::Inhibit,
            ..options.clone()
        };
        let decider = Decider {
            options: &strict,
            ..decider
        };
        let mut b = source("http://v.example/b", "bookworm", Some("b_"));
        decider.decide(&fake, &mut b).unwrap();
        assert!(b.inhibits);
        let mut c = source("http://v.example/c-old", "bookworm", Some("c_"));
        decider.decide(&fake, &mut c).unwrap();
        assert!(!c.inhibits, "a mapped source does not inhibit");
    }
}

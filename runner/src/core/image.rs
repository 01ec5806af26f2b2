//! Migration images: their definition (`images/<name>/image.toml`) and the OCI
//! labels generated from it at build time.
//!
//! The labels are the contract between `migrate` and an image: before any
//! container is created, the host reads them to learn which release the image
//! upgrades to, which source releases it accepts and which event protocol its
//! agent speaks.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use oci_spec::image::{ANNOTATION_DESCRIPTION, ANNOTATION_TITLE, ANNOTATION_VERSION};
use serde::Deserialize;

use crate::core::event::PROTOCOL_VERSION;
use crate::core::release::{Release, ReleasePattern};

/// Label: name of the image definition the image was built from.
pub(crate) const LABEL_IMAGE: &str = "io.migrate.image";
/// Label: the release the image upgrades to (`ID:VERSION_ID`).
pub(crate) const LABEL_TARGET: &str = "io.migrate.target";
/// Label: the target release's codename, if it has one.
pub(crate) const LABEL_TARGET_CODENAME: &str = "io.migrate.target.codename";
/// Label: comma-separated release patterns the image accepts as sources.
pub(crate) const LABEL_ACCEPTS: &str = "io.migrate.accepts";
/// Label: the event protocol version of the agent in the image.
pub(crate) const LABEL_PROTOCOL: &str = "io.migrate.protocol";
/// Label: the image's default plan (the text of `plan.toml`), so that the
/// host can resolve and validate the plan before any container starts.
pub(crate) const LABEL_PLAN: &str = "io.migrate.plan";

/// The transports whose references name an archive file.
pub(crate) const ARCHIVE_TRANSPORTS: [&str; 2] = ["oci-archive:", "docker-archive:"];

/// Checks an image reference before anything uses it: a local or registry
/// reference (`[host[:port]/]name[:tag][@digest]`, as the distribution
/// spec's grammar says), an image id, `docker://` and such a reference, or
/// `oci-archive:PATH` / `docker-archive:PATH` naming a regular file. The
/// error is one line.
pub(crate) fn check_reference(reference: &str) -> std::result::Result<(), String> {
    if reference.is_empty() {
        return Err("an image reference must not be empty".into());
    }
    if reference
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "image reference {reference:?} has spaces or control characters"
        ));
    }
    let (unpinned, _) = split_pin(reference);
    if let Some(rest) = ARCHIVE_TRANSPORTS
        .iter()
        .find_map(|t| unpinned.strip_prefix(t))
    {
        // `PATH[:REFERENCE]`: the longest prefix that is a file.
        let candidates = std::iter::once(rest).chain(
            rest.match_indices(':')
                .map(|(i, _)| &rest[..i])
                .collect::<Vec<_>>()
                .into_iter()
                .rev(),
        );
        for path in candidates {
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => return Ok(()),
                Ok(_) => return Err(format!("{reference}: {path} is not a regular file")),
                Err(_) => {}
            }
        }
        return Err(format!("{reference}: no such file"));
    }
    let name = reference.strip_prefix("docker://").unwrap_or(reference);
    match super::reference::invalid(name) {
        None => Ok(()),
        Some(why) => Err(format!("image reference {reference:?}: {why}")),
    }
}

/// A reference split at its digest pin: `NAME[:TAG]@sha256:HEX` (or an
/// archive `oci-archive:PATH@sha256:HEX`) gives `(NAME[:TAG], Some(digest))`;
/// a reference without a well-formed digest at its end comes back whole.
pub(crate) fn split_pin(reference: &str) -> (&str, Option<&str>) {
    let Some((name, digest)) = reference.rsplit_once('@') else {
        return (reference, None);
    };
    let well_formed = match digest.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64,
        Some(("sha512", hex)) => hex.len() == 128,
        _ => false,
    } && digest.split_once(':').is_some_and(|(_, hex)| {
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if well_formed && !name.is_empty() {
        (name, Some(digest))
    } else {
        (reference, None)
    }
}

/// The tag of a registry reference without its pin (`host/name:tag`), if it
/// has one: the part after the last `/` holds a `:`.
pub(crate) fn tag_of(unpinned: &str) -> Option<&str> {
    let name = unpinned.strip_prefix("docker://").unwrap_or(unpinned);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Path of the image definition inside a built image.
pub(crate) const IMAGE_DATA_DIR: &str = "/usr/share/migrate";

/// An image definition, `images/<name>/image.toml` (docs/images.md).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageDefinition {
    /// One line saying what the image does.
    pub(crate) description: String,
    /// Tag given to the image when `--tag` is not passed.
    pub(crate) default_tag: String,
    /// Source releases this image can upgrade (`ID:VERSION`, VERSION may end in `*`).
    pub(crate) accepts: Vec<String>,
    /// The release the image upgrades to.
    pub(crate) target: TargetRelease,
}

/// The target release of an image definition.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetRelease {
    /// os-release `ID`.
    pub(crate) id: String,
    /// os-release `VERSION_ID`.
    pub(crate) version_id: String,
    /// os-release `VERSION_CODENAME`, where the distribution has one.
    #[serde(default)]
    pub(crate) codename: Option<String>,
}

impl ImageDefinition {
    /// Parses and validates `image.toml` text; `origin` names it in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self> {
        let def: Self = toml::from_str(text).with_context(|| format!("parsing {origin}"))?;
        def.accepted()
            .with_context(|| format!("{origin}: key `accepts`"))?;
        def.target_release()
            .with_context(|| format!("{origin}: table `target`"))?;
        if def.accepts.is_empty() {
            bail!("{origin}: `accepts` lists no source release");
        }
        Ok(def)
    }

    /// The target release.
    pub(crate) fn target_release(&self) -> Result<Release> {
        format!("{}:{}", self.target.id, self.target.version_id).parse()
    }

    /// The accepted source releases.
    pub(crate) fn accepted(&self) -> Result<Vec<ReleasePattern>> {
        self.accepts.iter().map(|a| a.parse()).collect()
    }

    /// The labels an image built from this definition (with default plan
    /// `plan`) carries.
    pub(crate) fn labels(&self, name: &str, plan: &str) -> Result<BTreeMap<String, String>> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_PLAN.to_string(), plan.to_string());
        labels.insert(LABEL_IMAGE.to_string(), name.to_string());
        labels.insert(LABEL_TARGET.to_string(), self.target_release()?.to_string());
        if let Some(codename) = &self.target.codename {
            labels.insert(LABEL_TARGET_CODENAME.to_string(), codename.clone());
        }
        labels.insert(LABEL_ACCEPTS.to_string(), self.accepts.join(","));
        labels.insert(LABEL_PROTOCOL.to_string(), PROTOCOL_VERSION.to_string());
        labels.insert(ANNOTATION_TITLE.to_string(), format!("migrate {name}"));
        labels.insert(ANNOTATION_DESCRIPTION.to_string(), self.description.clone());
        labels.insert(
            ANNOTATION_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        Ok(labels)
    }
}

/// What the labels of a migration image say.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ImageLabels {
    /// Name of the image definition.
    pub(crate) image: String,
    /// The release the image upgrades to.
    pub(crate) target: Release,
    /// The source releases it accepts.
    pub(crate) accepts: Vec<ReleasePattern>,
    /// Event protocol version of its agent.
    pub(crate) protocol: u32,
    /// The image's default plan (TOML), if it carries one.
    pub(crate) plan: Option<String>,
}

impl ImageLabels {
    /// Reads the labels of an image configuration. `Ok(None)` means the image
    /// carries no migration labels at all (it is not a migration image); an
    /// error means it claims to be one but its labels are broken.
    pub(crate) fn from_config(config: &oci_spec::image::Config) -> Result<Option<Self>> {
        match config.labels() {
            Some(labels) => Self::from_labels(labels),
            None => Ok(None),
        }
    }

    /// Reads a label map; see [`ImageLabels::from_config`].
    pub(crate) fn from_labels(labels: &HashMap<String, String>) -> Result<Option<Self>> {
        let Some(protocol) = labels.get(LABEL_PROTOCOL) else {
            return Ok(None);
        };
        let get = |key: &str| {
            labels
                .get(key)
                .map(String::as_str)
                .with_context(|| format!("label {key} is missing"))
        };
        let protocol = protocol
            .parse()
            .with_context(|| format!("label {LABEL_PROTOCOL}={protocol:?} is not a number"))?;
        let target = get(LABEL_TARGET)?
            .parse()
            .with_context(|| format!("label {LABEL_TARGET}"))?;
        let accepts = get(LABEL_ACCEPTS)?
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<ReleasePattern>>>()
            .with_context(|| format!("label {LABEL_ACCEPTS}"))?;
        if accepts.is_empty() {
            bail!("label {LABEL_ACCEPTS} lists no source release");
        }
        Ok(Some(Self {
            image: get(LABEL_IMAGE)?.to_string(),
            target,
            accepts,
            protocol,
            plan: labels.get(LABEL_PLAN).cloned(),
        }))
    }

    /// Whether the image can upgrade the system `source` describes (by `ID`
    /// or `ID_LIKE`, and `VERSION_ID`).
    pub(crate) fn accepts(&self, source: &crate::core::release::OsRelease) -> bool {
        self.accepts.iter().any(|p| p.matches_os(source))
    }

    /// The accepted releases as a human list.
    pub(crate) fn accepts_list(&self) -> String {
        self.accepts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An image definition compiled into the binary.
#[derive(Debug)]
pub(crate) struct EmbeddedImage {
    /// Name of the definition (directory name under `images/`).
    pub(crate) name: &'static str,
    /// The Containerfile.
    pub(crate) containerfile: &'static [u8],
    /// Files of `images/<name>/`, by path relative to that directory.
    pub(crate) files: &'static [(&'static str, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/embedded_images.rs"));

impl EmbeddedImage {
    /// Looks an embedded definition up by name.
    pub(crate) fn find(name: &str) -> Option<&'static EmbeddedImage> {
        EMBEDDED.iter().find(|i| i.name == name)
    }

    /// Names of all embedded definitions.
    pub(crate) fn names() -> Vec<&'static str> {
        EMBEDDED.iter().map(|i| i.name).collect()
    }
}

/// An image definition to build from: one compiled into the binary, or a
/// directory with `image.toml`, `plan.toml`, a `Containerfile` and any other
/// files the Containerfile copies from `image/`.
#[derive(Clone, Debug)]
pub(crate) struct DefinitionSource {
    /// Name of the definition (the directory's name).
    pub(crate) name: String,
    /// Where it comes from, for messages (`images/debian-13`, a path).
    pub(crate) origin: String,
    /// The Containerfile.
    pub(crate) containerfile: Vec<u8>,
    /// The other files, by path relative to the definition.
    pub(crate) files: Vec<(String, Vec<u8>)>,
}

impl DefinitionSource {
    /// A built-in definition.
    pub(crate) fn embedded(img: &EmbeddedImage) -> Self {
        Self {
            name: img.name.to_string(),
            origin: format!("images/{}", img.name),
            containerfile: img.containerfile.to_vec(),
            files: img
                .files
                .iter()
                .map(|(p, b)| ((*p).to_string(), b.to_vec()))
                .collect(),
        }
    }

    /// A definition in a directory.
    pub(crate) fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let name = dir
            .canonicalize()
            .with_context(|| format!("{}", dir.display()))?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| format!("{} has no usable name", dir.display()))?;
        let containerfile = std::fs::read(dir.join("Containerfile"))
            .with_context(|| format!("reading {}", dir.join("Containerfile").display()))?;
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in
                std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                if rel != "Containerfile" {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    files.push((rel, bytes));
                }
            }
        }
        files.sort();
        Ok(Self {
            name,
            origin: dir.display().to_string(),
            containerfile,
            files,
        })
    }

    /// A file of the definition as text.
    fn text(&self, file: &str) -> Result<&str> {
        let (_, bytes) = self
            .files
            .iter()
            .find(|(p, _)| p == file)
            .with_context(|| format!("{} has no {file}", self.origin))?;
        std::str::from_utf8(bytes).with_context(|| format!("{}/{file} is not UTF-8", self.origin))
    }

    /// The parsed `image.toml`.
    pub(crate) fn definition(&self) -> Result<ImageDefinition> {
        ImageDefinition::parse(
            self.text("image.toml")?,
            &format!("{}/image.toml", self.origin),
        )
    }

    /// The default plan, `plan.toml`.
    pub(crate) fn plan(&self) -> Result<crate::core::plan::PlanSource> {
        Ok(crate::core::plan::PlanSource {
            name: format!("{}/plan.toml", self.origin),
            text: self.text("plan.toml")?.to_string(),
        })
    }
}

/// The embedded image definition whose image accepts `source`, if any.
pub(crate) fn default_image_for(
    source: &crate::core::release::OsRelease,
) -> Option<(&'static EmbeddedImage, ImageDefinition)> {
    EMBEDDED.iter().find_map(|img| {
        let def = DefinitionSource::embedded(img).definition().ok()?;
        let accepted = def.accepted().ok()?;
        accepted
            .iter()
            .any(|p| p.matches_os(source))
            .then_some((img, def))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEF: &str = r#"
description = "Upgrades Debian 12 to 13"
default_tag = "localhost/migrate/debian-13:latest"
accepts = ["debian:12"]
[target]
id = "debian"
version_id = "13"
codename = "trixie"
"#;

    #[test]
    fn labels_roundtrip_through_an_oci_config() {
        let def = ImageDefinition::parse(DEF, "image.toml").unwrap();
        let labels: HashMap<String, String> = def
            .labels("debian-13", "[[step]]\n")
            .unwrap()
            .into_iter()
            .collect();
        let config: oci_spec::image::Config =
            serde_json::from_value(serde_json::json!({ "Labels": labels })).unwrap();
        let parsed = ImageLabels::from_config(&config).unwrap().unwrap();
        assert_eq!(parsed.image, "debian-13");
        assert_eq!(parsed.target.to_string(), "debian:13");
        assert_eq!(parsed.protocol, PROTOCOL_VERSION);
        let os = |t: &str| crate::core::release::OsRelease::parse(t);
        assert!(parsed.accepts(&os("ID=debian\nVERSION_ID=12\n")));
        assert!(!parsed.accepts(&os("ID=debian\nVERSION_ID=11\n")));
        assert!(!parsed.accepts(&os("ID=ubuntu\nVERSION_ID=12\n")));
        assert_eq!(parsed.plan.as_deref(), Some("[[step]]\n"));
    }

    #[test]
    fn an_image_without_labels_is_not_a_migration_image() {
        let config: oci_spec::image::Config = serde_json::from_str("{}").unwrap();
        assert!(ImageLabels::from_config(&config).unwrap().is_none());
        let labels = HashMap::from([("maintainer".to_string(), "x".to_string())]);
        assert!(ImageLabels::from_labels(&labels).unwrap().is_none());
    }

    #[test]
    fn broken_labels_are_an_error() {
        let mut labels = HashMap::from([
            (LABEL_PROTOCOL.to_string(), "1".to_string()),
            (LABEL_IMAGE.to_string(), "x".to_string()),
            (LABEL_TARGET.to_string(), "debian:13".to_string()),
        ]);
        let err = ImageLabels::from_labels(&labels).unwrap_err();
        assert!(format!("{err:#}").contains(LABEL_ACCEPTS), "{err:#}");
        labels.insert(LABEL_ACCEPTS.to_string(), "debian".to_string());
        assert!(ImageLabels::from_labels(&labels).is_err());
        labels.insert(LABEL_ACCEPTS.to_string(), "debian:12".to_string());
        labels.insert(LABEL_PROTOCOL.to_string(), "one".to_string());
        assert!(ImageLabels::from_labels(&labels).is_err());
    }

    #[test]
    fn unknown_keys_in_image_toml_are_rejected() {
        let err = ImageDefinition::parse(&format!("{DEF}\nfoo = 1\n"), "image.toml").unwrap_err();
        assert!(format!("{err:#}").contains("foo"), "{err:#}");
    }

    #[test]
    fn the_embedded_definitions_accept_debian_12_and_ubuntu_22_04() {
        let img = EmbeddedImage::find("debian-13").expect("debian-13 is embedded");
        let def = DefinitionSource::embedded(img).definition().unwrap();
        assert_eq!(def.target_release().unwrap().to_string(), "debian:13");
        let os = |t: &str| crate::core::release::OsRelease::parse(t);
        let (found, _) = default_image_for(&os("ID=debian\nVERSION_ID=12\n")).unwrap();
        assert_eq!(found.name, "debian-13");
        let (found, _) = default_image_for(&os("ID=debian\nVERSION_ID=11\n")).unwrap();
        assert_eq!(found.name, "debian-12");
        let (found, def) = default_image_for(&os("ID=ubuntu\nVERSION_ID=22.04\n")).unwrap();
        assert_eq!(found.name, "ubuntu-24.04");
        assert_eq!(def.target_release().unwrap().to_string(), "ubuntu:24.04");
        assert!(default_image_for(&os("ID=ubuntu\nVERSION_ID=20.04\n")).is_none());
    }

    #[test]
    fn a_definition_directory_reads_like_an_embedded_one() {
        let dir = tempfile::tempdir().unwrap();
        let def = dir.path().join("my-image");
        std::fs::create_dir_all(def.join("files")).unwrap();
        std::fs::write(def.join("image.toml"), DEF).unwrap();
        std::fs::write(def.join("plan.toml"), "description = \"x\"\n").unwrap();
        std::fs::write(def.join("Containerfile"), "FROM scratch\n").unwrap();
        std::fs::write(def.join("files/extra.conf"), "x").unwrap();
        let src = DefinitionSource::from_dir(&def).unwrap();
        assert_eq!(src.name, "my-image");
        assert_eq!(src.containerfile, b"FROM scratch\n");
        let names: Vec<&str> = src.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["files/extra.conf", "image.toml", "plan.toml"]);
        assert_eq!(src.definition().unwrap().target.id, "debian");
        assert!(DefinitionSource::from_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn every_embedded_definition_has_a_valid_plan() {
        for img in EMBEDDED {
            let source = DefinitionSource::embedded(img);
            source
                .definition()
                .unwrap_or_else(|e| panic!("{}: {e:#}", img.name));
            crate::core::plan::resolve(&source.plan().unwrap(), &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", img.name));
        }
    }

    #[test]
    fn docs_images_md_lists_every_key_of_image_toml() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/images.md"),
        )
        .unwrap();
        let schema = schemars::schema_for!(ImageDefinition);
        let root = schema.as_value();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.get("properties")
                .and_then(serde_json::Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default()
        };
        let mut documented = keys(root);
        documented.retain(|k| k != "target");
        let target = &root["$defs"]["TargetRelease"];
        documented.extend(keys(target).into_iter().map(|k| format!("target.{k}")));
        assert!(documented.len() >= 6, "{documented:?}");
        for key in documented {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/images.md lacks {key}"
            );
        }
    }

    #[test]
    fn image_references_are_checked_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("m.tar");
        std::fs::write(&archive, "x").unwrap();
        for good in [
            "localhost/migrate/debian-13:latest",
            "registry.example:5000/migrate/debian-13@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "docker://registry.example/m:1",
            "0123456789ab",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker-archive:{}:localhost/m:1", archive.display()),
            &format!(
                "oci-archive:{}@sha256:{}",
                archive.display(),
                "ab".repeat(32)
            ),
            &format!("registry.example:5000/m:stable@sha256:{}", "0".repeat(64)),
        ] {
            check_reference(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            ("", "must not be empty"),
            ("!!x", "invalid reference format"),
            ("a\nb", "control characters"),
            ("my image", "spaces"),
            ("Upper/Case", "invalid reference format"),
            ("oci-archive:/nonexistent.tar", "no such file"),
            ("docker-archive:/", "not a regular file"),
            ("registry.example/m:1@sha256:abc", "invalid"),
        ] {
            let e = check_reference(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_digest_pin_is_split_from_what_names_the_image() {
        let d = format!("sha256:{}", "0a".repeat(32));
        let pinned = format!("quay.example:5000/m/debian-13:stable@{d}");
        assert_eq!(
            split_pin(&pinned),
            ("quay.example:5000/m/debian-13:stable", Some(d.as_str()))
        );
        assert_eq!(
            tag_of("quay.example:5000/m/debian-13:stable"),
            Some("stable")
        );
        let by_digest = format!("quay.example:5000/m/debian-13@{d}");
        assert_eq!(split_pin(&by_digest).0, "quay.example:5000/m/debian-13");
        assert_eq!(
            tag_of("quay.example:5000/m/debian-13"),
            None,
            "the port is no tag"
        );
        let archive = format!("oci-archive:/srv/m.tar@{d}");
        assert_eq!(
            split_pin(&archive),
            ("oci-archive:/srv/m.tar", Some(d.as_str()))
        );
        for whole in [
            "quay.example/m:1",
            "quay.example/m@sha256:short",
            "@sha256:x",
        ] {
            assert_eq!(split_pin(whole), (whole, None));
        }
    }
}

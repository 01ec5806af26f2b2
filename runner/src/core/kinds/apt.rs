//! Options of `apt-sources`: what the distribution's sources are, and what
//! becomes of the others (third-party repositories) in the cutover.

use serde::{Deserialize, Serialize};

use super::KindOptions;

/// What becomes of a third-party source that no vendor map and no `keep` or
/// `disable` of the plan names.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ThirdPartyPolicy {
    /// Switched to the target release when it has the target's suite,
    /// disabled otherwise.
    #[default]
    Decide,
    /// An inhibitor: the run stops before anything changes, naming the
    /// sources.
    Inhibit,
}

/// Where a vendor's repository goes for the target release: one entry of a
/// vendor map (a `[[repository]]` of a file in the image's
/// `/usr/share/migrate/vendors/`, or of the plan's `vendors`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VendorRepo {
    /// The vendor's name, for messages (in a vendor map file: the file's
    /// `vendor`, unless the entry names another).
    #[serde(default)]
    pub(crate) vendor: String,
    /// The sources it maps: their URI starts with this (a trailing `/`
    /// does not matter).
    #[serde(rename = "match")]
    pub(crate) matches: String,
    /// Only sources of this suite (default: any suite of the source release).
    #[serde(default)]
    pub(crate) from_suite: Option<String>,
    /// The target release's URI (default: the source's own).
    #[serde(default)]
    pub(crate) uri: Option<String>,
    /// The target release's suite.
    pub(crate) suite: String,
    /// The key file in the root that signs the target repository (default:
    /// the source's own `signed-by`).
    #[serde(default)]
    pub(crate) signed_by: Option<String>,
}

impl VendorRepo {
    /// Whether it maps a source at `uri` of suite `suite`.
    pub(crate) fn maps(&self, uri: &str, suite: &str) -> bool {
        url_matches(&self.matches, uri) && self.from_suite.as_deref().is_none_or(|s| s == suite)
    }

    fn check(&self) -> Result<(), String> {
        if self.matches.trim().is_empty() || self.suite.trim().is_empty() {
            return Err("a vendor map entry needs `match` and `suite`".into());
        }
        if let Some(k) = &self.signed_by
            && !k.starts_with('/')
        {
            return Err(format!(
                "vendor map {:?}: `signed_by` must be an absolute path in the root, not {k:?}",
                self.matches
            ));
        }
        Ok(())
    }
}

/// A vendor map file: `vendor = "NAME"` and its `[[repository]]` entries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VendorFile {
    /// The vendor's name.
    pub(crate) vendor: String,
    /// Its repositories.
    #[serde(default)]
    pub(crate) repository: Vec<VendorRepo>,
}

impl VendorFile {
    /// Parses a vendor map file; the error is one line.
    pub(crate) fn parse(text: &str) -> Result<Vec<VendorRepo>, String> {
        let file: VendorFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        file.repository
            .into_iter()
            .map(|mut r| {
                if r.vendor.is_empty() {
                    r.vendor.clone_from(&file.vendor);
                }
                r.check().map(|()| r)
            })
            .collect()
    }
}

/// Whether `uri` is `prefix` or below it, a trailing `/` aside.
pub(crate) fn url_matches(prefix: &str, uri: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    let u = uri.trim_end_matches('/');
    !p.is_empty() && (u == p || u.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// Options of `apt-sources`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AptSourcesOptions {
    /// The distribution's release origins (the `Origin` or `Label` of a
    /// source's Release file, e.g. "Debian"). A source whose Release file
    /// says another is third-party. Empty: every source is taken as the
    /// distribution's and switched.
    #[serde(default)]
    pub(crate) origins: Vec<String>,
    /// Keyrings in the root that sign the distribution's Release files
    /// (those that exist are used). A source whose Release file none of them
    /// verifies is third-party, whatever its Origin says.
    #[serde(default)]
    pub(crate) keyrings: Vec<String>,
    /// decide (default: a third-party source is switched when it has the
    /// target's suite, else disabled) or inhibit (any third-party source
    /// that no vendor map, `keep` or `disable` names stops the run before
    /// anything changes).
    #[serde(default)]
    pub(crate) third_party: ThirdPartyPolicy,
    /// URI prefixes of sources kept exactly as they are.
    #[serde(default)]
    pub(crate) keep: Vec<String>,
    /// URI prefixes of sources disabled in the cutover (commented out, a
    /// note naming the migration beside them).
    #[serde(default)]
    pub(crate) disable: Vec<String>,
    /// Vendor maps of the plan's own (vendor, match, from_suite, uri, suite,
    /// signed_by), tried before the image's.
    #[serde(default)]
    pub(crate) vendors: Vec<VendorRepo>,
}

impl KindOptions for AptSourcesOptions {
    fn check(&self) -> Result<(), String> {
        for k in &self.keyrings {
            if !k.starts_with('/') {
                return Err(format!(
                    "`keyrings`: {k:?} is not an absolute path in the root"
                ));
            }
        }
        for (key, list) in [("keep", &self.keep), ("disable", &self.disable)] {
            if let Some(p) = list.iter().find(|p| p.trim_end_matches('/').is_empty()) {
                return Err(format!("`{key}`: {p:?} matches no URI"));
            }
        }
        self.vendors.iter().try_for_each(VendorRepo::check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_match_by_prefix_on_a_path_boundary() {
        assert!(url_matches("http://v.example/apt/", "http://v.example/apt"));
        assert!(url_matches(
            "http://v.example/apt",
            "http://v.example/apt/debian/"
        ));
        assert!(!url_matches(
            "http://v.example/apt",
            "http://v.example/apt-old/"
        ));
        assert!(!url_matches("/", "http://v.example/"));
    }

    #[test]
    fn a_vendor_map_file_names_its_vendor_on_each_entry() {
        let maps = VendorFile::parse(
            "vendor = \"Docker\"\n[[repository]]\nmatch = \"https://download.docker.com/linux/debian\"\nsuite = \"trixie\"\n",
        )
        .unwrap();
        assert_eq!(maps[0].vendor, "Docker");
        assert!(maps[0].maps("https://download.docker.com/linux/debian/", "bookworm"));
        let e = VendorFile::parse("vendor = \"X\"\n[[repository]]\nmatch = \"\"\nsuite = \"a\"\n")
            .unwrap_err();
        assert!(e.contains("needs `match`"), "{e}");
        let e = VendorFile::parse("vendor = 1\n").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn the_built_in_images_vendor_maps_are_valid() {
        let mut maps = 0;
        for name in crate::core::image::EmbeddedImage::names() {
            let img = crate::core::image::EmbeddedImage::find(name).unwrap();
            for (path, bytes) in img.files {
                if path.starts_with("vendors/") {
                    let text = std::str::from_utf8(bytes).unwrap();
                    let parsed = VendorFile::parse(text)
                        .unwrap_or_else(|e| panic!("images/{name}/{path}: {e}"));
                    assert!(!parsed.is_empty(), "images/{name}/{path} maps nothing");
                    maps += 1;
                }
            }
        }
        assert!(maps >= 4, "{maps} vendor maps");
    }
}

//! Options of the RPM package managers' upgrade kinds, `zypper` and `dnf`,
//! and the repository changes both take.

use serde::{Deserialize, Serialize};

use super::{KindOptions, yes};

/// What a repository change does.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RepoAction {
    /// A new repository.
    Add,
    /// A new URL for a configured repository.
    #[default]
    Replace,
    /// Disable a configured repository.
    Disable,
}

impl RepoAction {
    /// The name in plans.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RepoAction::Add => "add",
            RepoAction::Replace => "replace",
            RepoAction::Disable => "disable",
        }
    }
}

/// One change a plan makes to the repositories.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepoChange {
    /// Repository id (zypper: alias).
    pub(crate) id: String,
    /// add, replace (default) or disable.
    #[serde(default)]
    pub(crate) action: RepoAction,
    /// New base URL (add, replace).
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// Display name (add; replace keeps the old one unless given).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Whether packages must be signed (add: default true).
    #[serde(default)]
    pub(crate) gpgcheck: Option<bool>,
}

impl RepoChange {
    /// Checks the change is complete; errors name the repository.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.action != RepoAction::Disable && self.url.is_none() {
            return Err(format!(
                "repository {:?}: `{}` needs a `url`",
                self.id,
                self.action.name()
            ));
        }
        Ok(())
    }
}

/// How zypper upgrades.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ZypperMode {
    /// `zypper dup` against the plan's repositories.
    #[default]
    Dup,
    /// `zypper migration` to a registered product.
    Migration,
}

/// Options of a `zypper` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ZypperOptions {
    /// dup (default) or migration.
    #[serde(default)]
    pub(crate) mode: ZypperMode,
    /// The target product of migration mode, e.g. SLES/15.6/x86_64.
    #[serde(default)]
    pub(crate) product: Option<String>,
    /// zypper --releasever, for repository URLs using $releasever.
    #[serde(default)]
    pub(crate) releasever: Option<String>,
    /// Repository changes: id, action (add, replace, disable), url, name,
    /// gpgcheck.
    #[serde(default)]
    pub(crate) repositories: Vec<RepoChange>,
    /// Repository signing keys to trust besides those already in the root's
    /// rpm database: fingerprint and key file in the image. zypper imports
    /// no other key.
    #[serde(default)]
    pub(crate) trusted_keys: Vec<TrustedKey>,
    /// The keys that sign the distribution's repositories: fingerprints,
    /// or key files of the migration image (an absolute path, `*` allowed
    /// in the file name).
    /// A repository is the distribution's when `repositories` names it or
    /// its `gpgkey` file holds one of these keys; the others are
    /// third-party: moved by a vendor map, switched when they answer for
    /// the target release, disabled otherwise. Empty, with no
    /// `repositories`: every repository is left to the release version.
    #[serde(default)]
    pub(crate) distribution_keys: Vec<String>,
    /// decide (default) or inhibit: a third-party repository no vendor map
    /// or `keep` decides stops the run before anything changes.
    #[serde(default)]
    pub(crate) third_party: super::apt::ThirdPartyPolicy,
    /// Ids (or URL prefixes) of third-party repositories kept as they are.
    #[serde(default)]
    pub(crate) keep: Vec<String>,
    /// Vendor maps: `vendor`, `match` (URL prefix), `url` (the target
    /// release's base URL).
    #[serde(default)]
    pub(crate) vendors: Vec<RpmVendorRepo>,
}

impl KindOptions for ZypperOptions {
    fn check(&self) -> Result<(), String> {
        if self.mode == ZypperMode::Migration && self.product.is_none() {
            return Err("option `product` is required in migration mode".into());
        }
        self.trusted_keys.iter().try_for_each(TrustedKey::check)?;
        self.repositories.iter().try_for_each(RepoChange::check)
    }
}

/// A repository signing key a plan trusts.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedKey {
    /// The key's fingerprint: 40 hexadecimal digits (spaces allowed).
    pub(crate) fingerprint: String,
    /// The ASCII-armored key file in the migration image: absolute, or
    /// relative to /usr/share/migrate (where a definition's files go).
    pub(crate) file: String,
}

impl TrustedKey {
    /// The fingerprint as gpg prints it: upper case, no spaces.
    pub(crate) fn normalized(&self) -> String {
        self.fingerprint
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase()
    }

    fn check(&self) -> Result<(), String> {
        let fpr = self.normalized();
        if fpr.len() != 40 || !fpr.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "trusted key {:?}: a fingerprint is 40 hexadecimal digits",
                self.fingerprint
            ));
        }
        if self.file.is_empty() {
            return Err(format!("trusted key {fpr}: `file` is empty"));
        }
        Ok(())
    }
}

/// Options of a `dnf` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnfOptions {
    /// The target release (dnf --releasever).
    pub(crate) releasever: String,
    /// Repository changes: id, action (add, replace, disable), url, name,
    /// gpgcheck.
    #[serde(default)]
    pub(crate) repositories: Vec<RepoChange>,
    /// Let the solver remove packages that block the upgrade
    /// (--allowerasing, default true).
    #[serde(default = "yes")]
    pub(crate) allow_erasing: bool,
    /// Installed packages the upgrade may remove (names; a trailing `*`
    /// matches a prefix). Any other removal stops the step before anything
    /// changes.
    #[serde(default)]
    pub(crate) allow_removal: Vec<String>,
    /// The keys that sign the distribution's repositories: fingerprints,
    /// or key files of the migration image (an absolute path, `*` allowed
    /// in the file name).
    /// A repository is the distribution's when `repositories` names it or
    /// its `gpgkey` file holds one of these keys; the others are
    /// third-party: moved by a vendor map, switched when they answer for
    /// the target release, disabled otherwise. Empty, with no
    /// `repositories`: every repository is left to the release version.
    #[serde(default)]
    pub(crate) distribution_keys: Vec<String>,
    /// decide (default) or inhibit: a third-party repository no vendor map
    /// or `keep` decides stops the run before anything changes.
    #[serde(default)]
    pub(crate) third_party: super::apt::ThirdPartyPolicy,
    /// Ids (or URL prefixes) of third-party repositories kept as they are.
    #[serde(default)]
    pub(crate) keep: Vec<String>,
    /// Vendor maps: `vendor`, `match` (URL prefix), `url` (the target
    /// release's base URL).
    #[serde(default)]
    pub(crate) vendors: Vec<RpmVendorRepo>,
}

impl KindOptions for DnfOptions {
    fn check(&self) -> Result<(), String> {
        if self.releasever.trim().is_empty() {
            return Err("option `releasever` must not be empty".into());
        }
        self.repositories.iter().try_for_each(RepoChange::check)
    }
}

/// Where a vendor's RPM repository goes for the target release.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RpmVendorRepo {
    /// The vendor's name, for messages.
    pub(crate) vendor: String,
    /// The repositories it maps: their base URL starts with this.
    #[serde(rename = "match")]
    pub(crate) matches: String,
    /// The target release's base URL.
    pub(crate) url: String,
}

/// Options of `verify-release`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyReleaseOptions {
    /// Remove the installed packages no repository of the target release
    /// has (default false: they are listed only). A package is removed only
    /// when removing it takes nothing else along; an old PostgreSQL major
    /// version whose cluster is still on disk is never removed.
    #[serde(default)]
    pub(crate) remove_obsolete: bool,
    /// Package names never removed by `remove_obsolete`.
    #[serde(default)]
    pub(crate) keep: Vec<String>,
}

impl KindOptions for VerifyReleaseOptions {}

//! Options of the check kinds that take some.

use serde::Deserialize;

use super::KindOptions;

/// Options of `check-disk-space`.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiskSpaceOptions {
    /// Free space to keep beyond the estimate, per file system, in MB
    /// (default 100).
    #[serde(default = "default_margin")]
    pub(crate) margin_mb: u64,
}

fn default_margin() -> u64 {
    100
}

impl KindOptions for DiskSpaceOptions {}

/// Options of `check-third-party`.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThirdPartyOptions {
    /// Release origins that belong to the distribution (apt: the Origin
    /// field, e.g. "Debian").
    #[serde(default)]
    pub(crate) origins: Vec<String>,
}

impl KindOptions for ThirdPartyOptions {}

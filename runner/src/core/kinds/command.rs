//! Options of `command`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::KindOptions;

/// Options of a `command` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandOptions {
    /// Program and arguments.
    pub(crate) command: Vec<String>,
    /// Run chrooted in the root instead of in the image (default false).
    #[serde(default)]
    pub(crate) chroot: bool,
    /// Environment variables.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// Kill the command after this many seconds.
    #[serde(default)]
    pub(crate) timeout_s: Option<u64>,
    /// Exit codes that count as success (default [0]).
    #[serde(default)]
    pub(crate) ok_exit_codes: Vec<i32>,
}

impl KindOptions for CommandOptions {
    fn check(&self) -> Result<(), String> {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err("option `command` must name a program".into());
        }
        Ok(())
    }
}

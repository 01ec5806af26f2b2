//! Options of `config`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::KindOptions;

/// Options of a `config` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigOptions {
    /// The old configuration, a YAML file in the root.
    pub(crate) source: String,
    /// Old key = new key, or old key = { to, transform, values }.
    pub(crate) mapping: BTreeMap<String, Mapping>,
    /// Write the new configuration to this file in the root (`.json` for
    /// JSON, otherwise YAML).
    #[serde(default)]
    pub(crate) output: Option<String>,
    /// Or apply it to this snap through snapd.
    #[serde(default)]
    pub(crate) snap: Option<String>,
    /// snapd's socket, a path in the root (default /run/snapd.socket).
    #[serde(default)]
    pub(crate) snapd_socket: Option<String>,
}

/// How one old key becomes a new one.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub(crate) enum Mapping {
    /// Just a new name.
    Rename(String),
    /// A new name and a change of the value.
    Transform {
        /// The new key.
        to: String,
        /// How the value changes.
        #[serde(default)]
        transform: Option<Transform>,
        /// Old value (as text) -> new value.
        #[serde(default)]
        values: BTreeMap<String, Value>,
    },
}

impl Mapping {
    /// The new key.
    pub(crate) fn to(&self) -> &str {
        match self {
            Mapping::Rename(to) | Mapping::Transform { to, .. } => to,
        }
    }
}

/// How a value changes on its way to the new configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Transform {
    /// To text.
    String,
    /// To an integer.
    Int,
    /// To a boolean (true/yes/on/1, false/no/off/0).
    Bool,
    /// To lower-case text.
    Lowercase,
    /// To upper-case text.
    Uppercase,
}

impl KindOptions for ConfigOptions {
    fn check(&self) -> Result<(), String> {
        match (&self.output, &self.snap) {
            (None, None) => {
                return Err("set `output` (a file) or `snap` (a snap to configure)".into());
            }
            (Some(_), Some(_)) => return Err("set either `output` or `snap`, not both".into()),
            _ => {}
        }
        for (old, m) in &self.mapping {
            if m.to().trim().is_empty() {
                return Err(format!(
                    "option `mapping`: key {old:?} maps to an empty name"
                ));
            }
        }
        Ok(())
    }
}

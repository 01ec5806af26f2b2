//! Options of `config`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::KindOptions;
use crate::core::config_edit::{Format, check_set};

/// Options of a `config` step: either keys mapped from an old
/// configuration (`source`, `mapping`, then `output` or `snap`), or keys of
/// one file edited in place (`edit`, `set`).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigOptions {
    /// The old configuration, a YAML file in the root.
    #[serde(default)]
    pub(crate) source: Option<String>,
    /// Old key = new key, or old key = { to, transform, values }.
    #[serde(default)]
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
    /// Or edit this configuration file in the root in place.
    #[serde(default)]
    pub(crate) edit: Option<String>,
    /// The edited file's format (default: from its name).
    #[serde(default)]
    pub(crate) format: Option<Format>,
    /// Dotted key = new value, for `edit`.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, Value>,
}

impl ConfigOptions {
    /// The file to edit, its format and the keys to set, for a step that
    /// edits in place.
    pub(crate) fn edit(&self) -> Option<(&str, Format, &BTreeMap<String, Value>)> {
        let file = self.edit.as_deref()?;
        let format = Format::of(file, self.format).ok()?;
        Some((file, format, &self.set))
    }
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
        if let Some(file) = &self.edit {
            let others = [
                ("source", self.source.is_some()),
                ("mapping", !self.mapping.is_empty()),
                ("output", self.output.is_some()),
                ("snap", self.snap.is_some()),
            ];
            if let Some((name, _)) = others.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "`edit` changes a file in place: `{name}` belongs to the other form (source, mapping, output or snap)"
                ));
            }
            Format::of(file, self.format)?;
            return check_set(&self.set);
        }
        if self.source.is_none() {
            return Err(
                "set `source` and `mapping` (keys from an old configuration) or `edit` and `set` (a file changed in place)"
                    .into(),
            );
        }
        if !self.set.is_empty() || self.format.is_some() {
            return Err("`set` and `format` go with `edit`".into());
        }
        match (&self.output, &self.snap) {
            (None, None) => {
                return Err("set `output` (a file) or `snap` (a snap to configure)".into());
            }
            (Some(_), Some(_)) => return Err("set either `output` or `snap`, not both".into()),
            _ => {}
        }
        if self.mapping.is_empty() {
            return Err("option `mapping` maps no key".into());
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

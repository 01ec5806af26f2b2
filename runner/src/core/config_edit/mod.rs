//! Editing keys of a configuration file in place: TOML, INI or YAML, the
//! rest of the file kept byte for byte (comments, order, spacing).
//!
//! A key is a dotted path (`database.url`: key `url` of table, section or
//! mapping `database`); values are scalars (text, numbers, booleans). Every
//! edit is checked after it is made: the file is parsed again (TOML, YAML)
//! and must hold exactly what it held before with the new values, else the
//! edit is refused, never written. Where a format's structure cannot be
//! edited that faithfully (YAML beyond block mappings of scalars, an INI key
//! given twice or continued on the next line), the error says why.
//!
//! Used by the `config` step to edit the file and by the host to try the
//! edit before anything runs (a file that cannot be edited is bad input).

mod ini;
mod toml;
mod yaml;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use yaml::{flatten, load as load_yaml, yaml_to_json};

/// A configuration file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    /// TOML.
    Toml,
    /// INI: `[section]` headers, `key = value` (or `key: value`) lines,
    /// `#` and `;` comments.
    Ini,
    /// YAML block mappings of scalars.
    Yaml,
}

impl Format {
    /// `given`, else the format `path`'s extension says.
    pub(crate) fn of(path: &str, given: Option<Format>) -> Result<Format, String> {
        if let Some(f) = given {
            return Ok(f);
        }
        let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match ext {
            "toml" => Ok(Format::Toml),
            "ini" | "conf" | "cfg" | "cnf" => Ok(Format::Ini),
            "yaml" | "yml" => Ok(Format::Yaml),
            _ => Err(format!(
                "cannot tell the format of {path} from its name: set `format` (toml, ini or yaml)"
            )),
        }
    }
}

/// Checks the keys and values of an edit before any file is read.
pub(crate) fn check_set(set: &BTreeMap<String, Value>) -> Result<(), String> {
    if set.is_empty() {
        return Err("option `set` names no key".into());
    }
    for (key, value) in set {
        if key.split('.').any(|part| part.trim().is_empty()) {
            return Err(format!("option `set`: key {key:?} has an empty part"));
        }
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(format!(
                "option `set`: key {key:?} must be set to text, a number or a boolean"
            ));
        }
    }
    Ok(())
}

/// `text` with the keys of `set` given their values; the error is one line.
pub(crate) fn edit(
    format: Format,
    text: &str,
    set: &BTreeMap<String, Value>,
) -> Result<String, String> {
    check_set(set)?;
    match format {
        Format::Toml => toml::edit(text, set),
        Format::Ini => ini::edit(text, set),
        Format::Yaml => yaml::edit(text, set),
    }
}

/// The keys `set` changes in a file with `text`, as `key: old -> new`
/// lines (for dry runs); `None` for a key the file does not have yet.
pub(crate) fn changes(
    format: Format,
    text: &str,
    set: &BTreeMap<String, Value>,
) -> Result<Vec<(String, Option<String>, String)>, String> {
    let current = match format {
        Format::Toml => toml::values(text)?,
        Format::Ini => ini::values(text)?,
        Format::Yaml => yaml::values(text)?,
    };
    Ok(set
        .iter()
        .map(|(k, v)| (k.clone(), current.get(k).cloned(), scalar_text(v)))
        .collect())
}

/// The largest configuration file read for editing.
pub(crate) const MAX_SIZE: u64 = 16 << 20;

/// Reads a configuration file for editing: a regular file (not a FIFO or a
/// device, which could block or never end) of at most 16 MiB, UTF-8.
/// `Ok(None)` if there is none.
pub(crate) fn read(path: &std::path::Path, shown: &str) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > MAX_SIZE {
        return Err(format!(
            "{shown} is {} bytes, more than a configuration file this editor reads ({MAX_SIZE})",
            meta.len()
        ));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("{shown}: {e}"))
}

/// A scalar as plain text (a string without quotes).
pub(crate) fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits a dotted key into its parts.
fn parts(key: &str) -> Vec<&str> {
    key.split('.').map(str::trim).collect()
}

/// The line ending `text` uses.
fn newline(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

#[cfg(test)]
mod tests;

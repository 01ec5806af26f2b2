//! TOML, through `toml_edit`, which keeps a document's formatting.

use std::collections::BTreeMap;

use serde_json::Value;
use toml_edit::{DocumentMut, Item, Table};

use super::parts;

pub(super) fn edit(text: &str, set: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| invalid(&e))?;
    for (key, value) in set {
        let parts = parts(key);
        let Some((last, tables)) = parts.split_last() else {
            continue;
        };
        let mut table: &mut Table = doc.as_table_mut();
        for t in tables {
            table = table
                .entry(t)
                .or_insert_with(toml_edit::table)
                .as_table_mut()
                .ok_or_else(|| {
                    format!("key {key}: {t} is not a table of its own (a value or an inline table)")
                })?;
        }
        let new = to_toml(value);
        match table.get_mut(last) {
            Some(Item::Value(old)) => {
                if old.is_array() || old.is_inline_table() {
                    return Err(format!("key {key} holds an array or a table, not a value"));
                }
                let decor = old.decor().clone();
                *old = new;
                *old.decor_mut() = decor;
            }
            Some(_) => return Err(format!("key {key} is a table, not a value")),
            None => {
                table.insert(last, Item::Value(new));
            }
        }
    }
    let out = doc.to_string();
    // What the file holds afterwards must be what it held with the new
    // values, nothing else.
    let mut expected = json(text)?;
    for (key, value) in set {
        let typed = match value {
            Value::Number(n) if n.is_f64() => Value::from(n.as_f64()),
            v => v.clone(),
        };
        super::yaml::put(&mut expected, &parts(key), typed);
    }
    if json(&out)? != expected {
        return Err("the edited TOML would not read back as the old file with the new values; refusing to write it".into());
    }
    Ok(out)
}

/// Every scalar of the document by dotted key, as text.
pub(super) fn values(text: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(super::yaml::flatten_text(&json(text)?))
}

fn json(text: &str) -> Result<Value, String> {
    let v: toml::Value = toml::from_str(text).map_err(|e| invalid(&e))?;
    serde_json::to_value(v).map_err(|e| format!("reading TOML: {e}"))
}

fn to_toml(value: &Value) -> toml_edit::Value {
    match value {
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) => f.into(),
            _ => n.to_string().into(),
        },
        other => super::scalar_text(other).into(),
    }
}

fn invalid(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    format!(
        "not valid TOML: {}",
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

//! YAML block mappings of scalars, edited line by line: the key's line is
//! found by indentation, only its value is replaced (its quotes and a
//! trailing comment kept), a missing key is added at the end of its
//! mapping. A value that is not a plain or quoted scalar (a flow
//! collection, a block scalar, an anchor, alias or tag) is refused.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{newline, parts, scalar_text};

pub(super) fn edit(text: &str, set: &BTreeMap<String, Value>) -> Result<String, String> {
    let before = document(text)?;
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let nl = newline(text);
    for (key, value) in set {
        let path = parts(key);
        match find(&lines, &path)? {
            Place::Found(i) => {
                let line = &lines[i];
                let (value_at, value_end) = value_span(line)
                    .ok_or_else(|| format!("key {key}: its line is not `KEY: VALUE`"))?;
                let old = &line[value_at..value_end];
                if old.is_empty() {
                    return Err(format!("key {key} holds a mapping or nothing, not a value"));
                }
                if let Some(what) = unsupported(old) {
                    return Err(format!(
                        "key {key} holds a {what}, which this editor cannot change faithfully; change it with a `command` step"
                    ));
                }
                let new = render(value, old.chars().next());
                lines[i] = format!("{}{new}{}", &line[..value_at], &line[value_end..]);
            }
            Place::Missing { at, indent } => {
                let name = path.last().copied().unwrap_or_default();
                if !plain_key(name) {
                    return Err(format!(
                        "key {key}: {name:?} would need quoting to be added"
                    ));
                }
                if at > 0 && !lines[at - 1].ends_with('\n') {
                    lines[at - 1].push_str(nl);
                }
                let line = format!("{}{name}: {}{nl}", " ".repeat(indent), render(value, None));
                lines.insert(at, line);
            }
        }
    }
    let out = lines.concat();
    let mut expected = before;
    for (key, value) in set {
        put(&mut expected, &parts(key), value.clone());
    }
    if document(&out)? != expected {
        return Err("the edited YAML would not read back as the old file with the new values; refusing to write it".into());
    }
    Ok(out)
}

/// Every scalar of the document by dotted key, as text.
pub(super) fn values(text: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(flatten_text(&document(text)?))
}

/// What kind of value the editor cannot change, if `value` is one.
fn unsupported(value: &str) -> Option<&'static str> {
    match value.as_bytes().first()? {
        b'|' | b'>' => Some("block scalar"),
        b'[' | b'{' => Some("flow collection"),
        b'&' | b'*' | b'!' => Some("anchored, aliased or tagged value"),
        _ => None,
    }
}

/// Where a key's line is.
enum Place {
    /// On this line.
    Found(usize),
    /// Missing: would go before line `at`, indented by `indent`.
    Missing { at: usize, indent: usize },
}

/// Finds the line of `path` by indentation.
fn find(lines: &[String], path: &[&str]) -> Result<Place, String> {
    let (mut start, mut end) = (0, lines.len());
    for (depth, part) in path.iter().enumerate() {
        let parent = || {
            if depth == 0 {
                "the file".to_string()
            } else {
                path[..depth].join(".")
            }
        };
        let content: Vec<usize> = (start..end).filter(|&i| is_content(&lines[i])).collect();
        let Some(&first) = content.first() else {
            if depth == 0 {
                return Ok(Place::Missing { at: end, indent: 0 });
            }
            return Err(format!("{} holds no mapping to add {part} to", parent()));
        };
        let indent = indent_of(&lines[first]);
        let is_key_line =
            |i: usize| indent_of(&lines[i]) == indent && !lines[i].trim_start().starts_with('-');
        let found = content
            .iter()
            .copied()
            .find(|&i| is_key_line(i) && key_of(&lines[i]).as_deref() == Some(*part));
        let Some(i) = found else {
            if depth + 1 < path.len() {
                return Err(format!(
                    "{} has no mapping {part}; add it with its keys first",
                    parent()
                ));
            }
            let last = content.last().copied().unwrap_or(start);
            return Ok(Place::Missing {
                at: last + 1,
                indent,
            });
        };
        if depth + 1 == path.len() {
            return Ok(Place::Found(i));
        }
        if value_span(&lines[i]).is_some_and(|(a, b)| a < b) {
            return Err(format!(
                "{} is a value, not a mapping",
                path[..=depth].join(".")
            ));
        }
        // The key's block: the lines after it, up to the next one as far
        // left as it (a sequence item at its indentation belongs to it).
        end = content
            .iter()
            .copied()
            .filter(|&j| j > i)
            .find(|&j| indent_of(&lines[j]) < indent || is_key_line(j))
            .unwrap_or(end);
        start = i + 1;
    }
    Err("an empty key".into())
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The key of a `KEY: ...` line, unquoted.
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start().trim_end_matches(['\n', '\r']);
    if let Some(q @ ('"' | '\'')) = t.chars().next() {
        let end = t[1..].find(q)? + 1;
        return t[end + 1..].starts_with(':').then(|| t[1..end].to_string());
    }
    let colon = t
        .find(": ")
        .or_else(|| t.trim_end().strip_suffix(':').map(str::len))?;
    Some(t[..colon].trim_end().to_string())
}

/// Byte range of the value on a `KEY: VALUE  # comment` line (empty for
/// `KEY:`), without surrounding blanks or the comment.
fn value_span(line: &str) -> Option<(usize, usize)> {
    let content_end = line.trim_end_matches(['\n', '\r']).len();
    let lead = indent_of(line);
    let t = &line[lead..content_end];
    let colon = match t.chars().next() {
        Some(q @ ('"' | '\'')) => t[1..].find(q)? + 2,
        _ => t
            .find(": ")
            .or_else(|| t.trim_end().strip_suffix(':').map(str::len))?,
    };
    if !t[colon..].starts_with(':') {
        return None;
    }
    let after = lead + colon + 1;
    let rest = &line[after..content_end];
    let start = after + (rest.len() - rest.trim_start().len());
    let value = &line.as_bytes()[start..content_end];
    // A comment starts at ` #` outside quotes.
    let mut quote = None;
    let mut end = value.len();
    for (i, &b) in value.iter().enumerate() {
        match quote {
            None if i == 0 && (b == b'"' || b == b'\'') => quote = Some(b),
            Some(q) if b == q && i > 0 => quote = None,
            None if b == b'#' && i > 0 && value[i - 1] == b' ' => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let trimmed = std::str::from_utf8(&value[..end]).ok()?.trim_end().len();
    Some((start, start + trimmed))
}

fn plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// A scalar as YAML text, in the quoting the old value used (`quote`), or
/// plain where that reads back as the same text.
fn render(value: &Value, quote: Option<char>) -> String {
    let Value::String(s) = value else {
        return scalar_text(value);
    };
    match quote {
        Some('\'') => format!("'{}'", s.replace('\'', "''")),
        Some('"') => value.to_string(),
        _ => {
            let reads_back = document(&format!("k: {s}\n"))
                .ok()
                .is_some_and(|d| d.get("k") == Some(value));
            // YAML 1.1 readers (PyYAML among them) take these for booleans.
            let ambiguous = matches!(
                s.to_ascii_lowercase().as_str(),
                "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "~" | ""
            ) || s.parse::<f64>().is_ok();
            if reads_back && !ambiguous && !s.contains(" #") && !s.contains('\n') {
                s.clone()
            } else {
                value.to_string()
            }
        }
    }
}

/// Parses YAML, refusing aliases (`*name`) before anything is built: the
/// loader copies the anchored node for every alias, so a few hundred bytes
/// of nested aliases would expand into gigabytes (files read here may come
/// from a hostile root).
pub(crate) fn load(text: &str) -> Result<Vec<yaml_rust2::Yaml>, String> {
    struct Aliases(bool);
    impl yaml_rust2::parser::MarkedEventReceiver for Aliases {
        fn on_event(&mut self, ev: yaml_rust2::parser::Event, _mark: yaml_rust2::scanner::Marker) {
            if matches!(ev, yaml_rust2::parser::Event::Alias(_)) {
                self.0 = true;
            }
        }
    }
    let mut aliases = Aliases(false);
    yaml_rust2::parser::Parser::new_from_str(text)
        .load(&mut aliases, true)
        .map_err(|e| format!("not valid YAML: {e}"))?;
    if aliases.0 {
        return Err("the YAML file uses aliases (*name), which migrate does not read".into());
    }
    yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))
}

/// The document as JSON: one mapping (an empty file is an empty mapping).
fn document(text: &str) -> Result<Value, String> {
    let docs = load(text)?;
    match docs.as_slice() {
        [] => Ok(Value::Object(serde_json::Map::new())),
        [one] => match yaml_to_json(one) {
            v @ Value::Object(_) => Ok(v),
            Value::Null => Ok(Value::Object(serde_json::Map::new())),
            _ => Err("the YAML document is not a mapping".into()),
        },
        _ => Err("the YAML file holds several documents".into()),
    }
}

/// Sets `path` in a JSON object tree, making the objects on the way.
pub(super) fn put(tree: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for p in parents {
        if !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    if let Value::Object(map) = node {
        map.insert(last.to_string(), value);
    }
}

/// Every leaf of a JSON tree (a value, or an empty mapping) by its
/// dotted key: nested keys joined with dots.
pub(crate) fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// Every leaf of a JSON tree by dotted key, as text.
pub(super) fn flatten_text(tree: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten("", tree, &mut out);
    out.into_iter().map(|(k, v)| (k, scalar_text(&v))).collect()
}

/// A YAML node as JSON (aliases and bad values as null).
pub(crate) fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::String(r.clone())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => yaml_to_json(other)
                            .to_string()
                            .trim_matches('"')
                            .to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

//! INI files, edited line by line: `[section]` headers, `key = value` or
//! `key: value` lines, `#` and `;` comments. `section.key` names key `key`
//! of section `section` (the section is everything before the last dot); a
//! key without a dot is one before the first header. The key's line keeps
//! its name, delimiter and spacing, and a value in double quotes stays in
//! them; a missing key is added after the last key of its section, a
//! missing section at the end of the file.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{newline, scalar_text};

pub(super) fn edit(text: &str, set: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let nl = newline(text);
    for (key, value) in set {
        let (section, name) = split(key);
        let new = scalar_text(value);
        if new.contains(['\n', '\r']) {
            return Err(format!("key {key}: an INI value cannot span lines"));
        }
        let parsed = parse(&lines)?;
        let found: Vec<&Entry> = parsed
            .entries
            .iter()
            .filter(|e| e.section == section && e.key == name)
            .collect();
        match found.as_slice() {
            [one] => {
                if one.continued {
                    return Err(format!(
                        "key {key} continues on the next line; this editor changes one-line values only"
                    ));
                }
                let line = &lines[one.line];
                let body_end = line.trim_end().len().max(one.value_at);
                let old = &line[one.value_at..body_end];
                let quoted = old.len() >= 2 && old.starts_with('"') && old.ends_with('"');
                let shown = if quoted { format!("\"{new}\"") } else { new };
                lines[one.line] = format!("{}{shown}{}", &line[..one.value_at], &line[body_end..]);
            }
            [] => {
                let line = format!("{name} = {new}{nl}");
                let at = match parsed.sections.iter().find(|s| s.name == section) {
                    Some(s) => s.last_entry + 1,
                    None if section.is_empty() => parsed
                        .entries
                        .iter()
                        .rfind(|e| e.section.is_empty())
                        .map_or(0, |e| e.line + 1),
                    None => {
                        if lines.last().is_some_and(|l| !l.ends_with('\n')) {
                            if let Some(l) = lines.last_mut() {
                                l.push_str(nl);
                            }
                        }
                        if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                            lines.push(nl.to_string());
                        }
                        lines.push(format!("[{section}]{nl}"));
                        lines.len()
                    }
                };
                if at > 0 && lines.get(at - 1).is_some_and(|l| !l.ends_with('\n')) {
                    lines[at - 1].push_str(nl);
                }
                lines.insert(at, line);
            }
            _ => {
                return Err(format!(
                    "key {key} is given {} times; which one counts depends on the program reading it",
                    found.len()
                ));
            }
        }
    }
    Ok(lines.concat())
}

/// Every key by `section.key`, its value as text (quotes removed).
pub(super) fn values(text: &str) -> Result<BTreeMap<String, String>, String> {
    let lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let parsed = parse(&lines)?;
    Ok(parsed
        .entries
        .iter()
        .map(|e| {
            let line = &lines[e.line];
            let v = line[e.value_at..].trim_end();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            let key = if e.section.is_empty() {
                e.key.clone()
            } else {
                format!("{}.{}", e.section, e.key)
            };
            (key, v.to_string())
        })
        .collect())
}

/// `section.key` -> (section, key).
fn split(key: &str) -> (&str, &str) {
    match key.rsplit_once('.') {
        Some((section, name)) => (section.trim(), name.trim()),
        None => ("", key.trim()),
    }
}

struct Entry {
    section: String,
    key: String,
    line: usize,
    /// Where the value starts on the line.
    value_at: usize,
    /// How far the key's line is indented.
    indent: usize,
    /// Whether lines indented deeper continue the value.
    continued: bool,
}

struct Section {
    name: String,
    /// The line of its last key (or its header).
    last_entry: usize,
}

struct Parsed {
    entries: Vec<Entry>,
    sections: Vec<Section>,
}

fn parse(lines: &[String]) -> Result<Parsed, String> {
    let mut p = Parsed {
        entries: Vec::new(),
        sections: Vec::new(),
    };
    let mut section = String::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        let lead = line.len() - line.trim_start().len();
        // A line indented deeper than the key before it continues its value.
        if let Some(e) = p.entries.last_mut()
            && lead > e.indent
            && (e.line + 1 == i || e.continued)
        {
            e.continued = true;
            if let Some(s) = p.sections.last_mut() {
                s.last_entry = i;
            }
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_string();
            if p.sections.iter().any(|s| s.name == section) {
                return Err(format!(
                    "line {}: section [{section}] is given twice",
                    i + 1
                ));
            }
            p.sections.push(Section {
                name: section.clone(),
                last_entry: i,
            });
            continue;
        }
        let Some(at) = t.find(['=', ':']) else {
            return Err(format!(
                "line {}: neither a section, a comment nor KEY = VALUE",
                i + 1
            ));
        };
        let after = lead + at + 1;
        let rest = &line[after..];
        let value_at = after + (rest.len() - rest.trim_start_matches([' ', '\t']).len());
        p.entries.push(Entry {
            section: section.clone(),
            key: t[..at].trim().to_string(),
            line: i,
            value_at: value_at.min(line.trim_end_matches(['\n', '\r']).len()),
            indent: lead,
            continued: false,
        });
        if let Some(s) = p.sections.last_mut() {
            s.last_entry = i;
        }
    }
    Ok(p)
}

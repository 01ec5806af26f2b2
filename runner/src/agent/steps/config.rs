//! `config`: migrates configuration keys from an old format to a new one,
//! or edits keys of one configuration file in place.
//!
//! Migrating: reads the old configuration (YAML: a plain mapping, or the
//! `settings: KEY: value:` shape that `juju config` prints), maps each key
//! through the plan's table (new name, optional value transform), skips empty
//! values so that the new defaults survive, and writes the result to a file
//! (YAML or JSON) or applies it to a snap through snapd's REST API.
//!
//! Editing (`edit`, `set`): the file (TOML, INI or YAML) keeps every byte
//! but the values it changes ([`crate::core::config_edit`]); the file as it
//! was is copied to the step's backup directory first, once, so that a
//! resumed step still holds the original.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::{StepContext, StepKind};
use crate::core::config_edit::{self, Format, flatten, yaml_to_json};
use crate::core::event::StepStatus;
use crate::core::fsutil::write_atomic;
use crate::core::kinds::config::{ConfigOptions, Mapping, Transform};

/// The `config` step.
pub(crate) struct ConfigStep {
    opts: ConfigOptions,
}

impl ConfigStep {
    /// From the step's options.
    pub(crate) fn new(opts: ConfigOptions) -> Self {
        Self { opts }
    }

    /// The new configuration, from the old one in the root.
    fn migrate(&self, ctx: &StepContext<'_>) -> Result<(Map<String, Value>, Vec<String>)> {
        let source = self.opts.source.as_deref().unwrap_or_default();
        let path = ctx.path(source)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the old configuration {source}"))?;
        let old = read_settings(&text).with_context(|| format!("parsing {source}"))?;
        map_settings(&old, &self.opts.mapping)
    }

    /// Edits `file` in place; the original goes to the backup directory.
    fn edit_in_place(
        &self,
        ctx: &StepContext<'_>,
        file: &str,
        format: Format,
        set: &BTreeMap<String, Value>,
    ) -> Result<StepStatus> {
        let path = ctx.path(file)?;
        let text = config_edit::read(&path, file)
            .map_err(anyhow::Error::msg)?
            .with_context(|| format!("{file} does not exist"))?;
        let new =
            config_edit::edit(format, &text, set).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        if new == text {
            ctx.say(format!("{file} already holds every value the plan sets"));
            return Ok(StepStatus::Succeeded);
        }
        let name = path
            .file_name()
            .with_context(|| format!("{file} names no file"))?;
        let backup = ctx.backup_dir()?.join(name);
        if !backup.exists() {
            write_atomic(&backup, text.as_bytes()).with_context(|| format!("backing up {file}"))?;
        }
        let meta = std::fs::metadata(&path)?;
        write_atomic(&path, new.as_bytes()).with_context(|| format!("writing {file}"))?;
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("keeping the owner of {file}"))?;
        let shown = backup
            .strip_prefix(&ctx.run.pristine)
            .unwrap_or(&backup)
            .display()
            .to_string();
        ctx.say(format!(
            "{} keys set in {file}; the file as it was: /{shown}",
            set.len()
        ));
        Ok(StepStatus::Succeeded)
    }
}

impl StepKind for ConfigStep {
    fn describe(&self) -> String {
        let source = self.opts.source.as_deref().unwrap_or_default();
        match (&self.opts.edit, &self.opts.output, &self.opts.snap) {
            (Some(file), _, _) => format!(
                "Set {} in {file}",
                self.opts.set.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            (_, _, Some(snap)) => format!("Migrate configuration from {source} to snap {snap}"),
            (_, Some(out), _) => format!("Migrate configuration from {source} to {out}"),
            _ => "Migrate configuration".into(),
        }
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        if let Some((file, format, set)) = self.opts.edit() {
            return self.edit_in_place(ctx, file, format, set);
        }
        let (new, notes) = self.migrate(ctx)?;
        for n in notes {
            ctx.say(n);
        }
        if let Some(out) = &self.opts.output {
            let path = ctx.path(out)?;
            let text = if out.ends_with(".json") {
                serde_json::to_string_pretty(&Value::Object(new.clone()))? + "\n"
            } else {
                to_yaml(&new)?
            };
            write_atomic(&path, text.as_bytes())?;
            ctx.say(format!("{} keys written to {out}", new.len()));
        }
        if let Some(snap) = &self.opts.snap {
            let socket = self
                .opts
                .snapd_socket
                .as_deref()
                .unwrap_or("/run/snapd.socket");
            // The root's own /run (the agent mounts a tmpfs over it in its view).
            let socket = crate::core::rootfs::resolve(&ctx.run.pristine, socket)?;
            super::snapd::set_conf(&socket, snap, &new)?;
            ctx.say(format!(
                "{} keys set on snap {snap} through snapd",
                new.len()
            ));
        }
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        if let Some((file, format, set)) = self.opts.edit() {
            let text = config_edit::read(&ctx.path(file)?, file)
                .map_err(anyhow::Error::msg)?
                .with_context(|| format!("{file} does not exist (yet)"))?;
            config_edit::edit(format, &text, set).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let changes = config_edit::changes(format, &text, set)
                .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            for (key, old, new) in changes {
                match old {
                    Some(old) => ctx.say(format!("{file}: {key}: {old} -> {new}")),
                    None => ctx.say(format!("{file}: {key}: (not set) -> {new}")),
                }
            }
            return Ok(());
        }
        let (new, notes) = self.migrate(ctx)?;
        for n in notes {
            ctx.say(n);
        }
        ctx.say(format!(
            "the new configuration, for {}:",
            self.opts
                .snap
                .as_deref()
                .map(|s| format!("snap {s}"))
                .or_else(|| self.opts.output.clone())
                .unwrap_or_default()
        ));
        for line in to_yaml(&new)?.lines() {
            ctx.say(format!("  {line}"));
        }
        Ok(())
    }
}

/// The settings of a YAML configuration as a flat key -> value map. The
/// `juju config` shape (`settings: KEY: {value: ...}`) gives each setting's
/// value; a plain mapping gives its keys, nested ones joined with dots.
pub(crate) fn read_settings(text: &str) -> Result<BTreeMap<String, Value>> {
    let docs = crate::core::config_edit::load_yaml(text).map_err(anyhow::Error::msg)?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok(BTreeMap::new());
    };
    let value = yaml_to_json(&doc);
    let Value::Object(top) = value else {
        bail!("the configuration is not a mapping");
    };
    let mut out = BTreeMap::new();
    if let Some(Value::Object(settings)) = top.get("settings") {
        for (key, setting) in settings {
            let value = setting.get("value").cloned().unwrap_or(Value::Null);
            out.insert(key.clone(), value);
        }
        return Ok(out);
    }
    flatten("", &Value::Object(top), &mut out);
    Ok(out)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Applies the mapping: mapped keys with non-empty values, in the mapping's
/// order. Returns the new configuration and a note per key left out.
pub(crate) fn map_settings(
    old: &BTreeMap<String, Value>,
    mapping: &BTreeMap<String, Mapping>,
) -> Result<(Map<String, Value>, Vec<String>)> {
    let mut new = Map::new();
    let mut notes = Vec::new();
    for (key, m) in mapping {
        match old.get(key) {
            None => notes.push(format!(
                "{key}: not in the old configuration; the new default stays"
            )),
            Some(v) if is_empty(v) => notes.push(format!("{key}: empty; the new default stays")),
            Some(v) => {
                let value = transform(key, v, m)?;
                new.insert(m.to().to_string(), value);
            }
        }
    }
    for key in old.keys().filter(|k| !mapping.contains_key(*k)) {
        notes.push(format!("{key}: not in the mapping; not migrated"));
    }
    Ok((new, notes))
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn transform(key: &str, v: &Value, m: &Mapping) -> Result<Value> {
    let Mapping::Transform {
        transform, values, ..
    } = m
    else {
        return Ok(v.clone());
    };
    if let Some(mapped) = values.get(&as_text(v)) {
        return Ok(mapped.clone());
    }
    let text = as_text(v);
    Ok(match transform {
        None => v.clone(),
        Some(Transform::String) => Value::String(text),
        Some(Transform::Lowercase) => Value::String(text.to_lowercase()),
        Some(Transform::Uppercase) => Value::String(text.to_uppercase()),
        Some(Transform::Int) => Value::from(
            text.trim()
                .parse::<i64>()
                .with_context(|| format!("{key}: {text:?} is not an integer"))?,
        ),
        Some(Transform::Bool) => Value::Bool(match text.trim().to_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true,
            "false" | "no" | "off" | "0" => false,
            _ => bail!("{key}: {text:?} is not a boolean"),
        }),
    })
}

fn to_yaml(map: &Map<String, Value>) -> Result<String> {
    let mut out = String::new();
    let yaml = json_to_yaml(&Value::Object(map.clone()));
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&yaml)
        .map_err(|e| anyhow::anyhow!("writing YAML: {e}"))?;
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    Ok(format!("{body}\n"))
}

fn json_to_yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(json_to_yaml).collect()),
        Value::Object(o) => Yaml::Hash(
            o.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), json_to_yaml(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::kinds::KindOptions;

    const JUJU: &str = r#"
application: livepatch
charm: canonical-livepatch-server
settings:
  auth_sso_enabled:
    default: false
    description: Enable SSO
    source: user
    type: boolean
    value: true
  db_pool_size:
    default: 10
    source: user
    type: int
    value: "25"
  contracts_url:
    default: ""
    source: default
    type: string
    value: ""
  patch_storage_type:
    source: user
    type: string
    value: Filesystem
  unmapped_key:
    value: x
"#;

    fn mapping() -> BTreeMap<String, Mapping> {
        let toml = r#"
auth_sso_enabled = "auth.sso.enabled"
contracts_url = "contracts.url"
db_pool_size = { to = "database.connection-pool-max", transform = "int" }
patch_storage_type = { to = "patch-storage.type", transform = "lowercase", values = { Swift = "swift-store" } }
missing_key = "new.missing"
"#;
        let table: toml::Table = toml::from_str(toml).unwrap();
        serde_json::from_value(serde_json::to_value(table).unwrap()).unwrap()
    }

    #[test]
    fn juju_settings_are_read_by_value() {
        let s = read_settings(JUJU).unwrap();
        assert_eq!(s["auth_sso_enabled"], Value::Bool(true));
        assert_eq!(s["db_pool_size"], Value::String("25".into()));
        assert_eq!(s["contracts_url"], Value::String(String::new()));
        assert!(!s.contains_key("application"));
    }

    #[test]
    fn plain_yaml_is_flattened_with_dots() {
        let s = read_settings("server:\n  port: 8080\n  tls: {enabled: true}\nname: x\n").unwrap();
        assert_eq!(s["server.port"], Value::from(8080));
        assert_eq!(s["server.tls.enabled"], Value::Bool(true));
        assert_eq!(s["name"], Value::String("x".into()));
    }

    #[test]
    fn keys_are_mapped_transformed_and_empty_ones_skipped() {
        let (new, notes) = map_settings(&read_settings(JUJU).unwrap(), &mapping()).unwrap();
        assert_eq!(
            Value::Object(new),
            serde_json::json!({
                "auth.sso.enabled": true,
                "database.connection-pool-max": 25,
                "patch-storage.type": "filesystem",
            })
        );
        assert!(notes.iter().any(|n| n.starts_with("contracts_url: empty")));
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("missing_key: not in the old"))
        );
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("unmapped_key: not in the mapping"))
        );
    }

    #[test]
    fn bad_values_and_options_are_refused() {
        let mut m = mapping();
        m.insert(
            "auth_sso_enabled".into(),
            Mapping::Transform {
                to: "x".into(),
                transform: Some(Transform::Int),
                values: BTreeMap::new(),
            },
        );
        assert!(map_settings(&read_settings(JUJU).unwrap(), &m).is_err());
        let opts = ConfigOptions {
            source: Some("/x.yaml".into()),
            mapping: mapping(),
            output: None,
            snap: None,
            snapd_socket: None,
            edit: None,
            format: None,
            set: BTreeMap::new(),
        };
        assert!(opts.check().is_err(), "needs output or snap");
        let bad = serde_json::json!({
            "source": "/x.yaml",
            "output": "/y.yaml",
            "mapping": {"k": {"to": "k2", "transform": "rot13"}},
        });
        assert!(crate::core::kinds::check::<ConfigOptions>(bad).is_err());
    }

    #[test]
    fn the_new_configuration_is_written_as_yaml() {
        let (new, _) = map_settings(&read_settings(JUJU).unwrap(), &mapping()).unwrap();
        let y = to_yaml(&new).unwrap();
        assert!(y.contains("auth.sso.enabled: true\n"), "{y}");
        assert_eq!(
            read_settings(&y).unwrap()["database.connection-pool-max"],
            Value::from(25)
        );
    }
}

//! The step kinds as plans name them: the registry.
//!
//! Each kind is one line of [`kinds!`] below: its name in plans, the phases
//! it may run in and its typed options (a serde struct, unknown keys denied,
//! whose doc comments are the options' documentation). Plan validation on
//! the host, the agent's constructors (an exhaustive `match` on [`Kind`] in
//! `agent/steps/mod.rs`) and the docs test all work from this one
//! declaration: the JSON Schema of the options type says which keys exist,
//! which are required and what type each takes, and serde decides the rest.
//!
//! The options types live here, in the core, because the host validates a
//! plan before any container starts; what a step *does* lives with the agent.

pub(crate) mod apt;
pub(crate) mod backup;
pub(crate) mod checks;
pub(crate) mod command;
pub(crate) mod config;
pub(crate) mod packages;
pub(crate) mod postgres;
pub(crate) mod rsync;
pub(crate) mod service;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::phase::Phase;

/// The options of a step kind.
pub(crate) trait KindOptions: DeserializeOwned + schemars::JsonSchema {
    /// Checks what the types cannot say (values that must fit together,
    /// names that must be well-formed); the error is one line.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The options of a kind that takes none.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoOptions {}

impl KindOptions for NoOptions {}

/// Declares [`Kind`]: one line per step kind.
macro_rules! kinds {
    ($( $variant:ident = $name:literal, [$($phase:ident),+], $options:ty; )+) => {
        /// A step kind.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub(crate) enum Kind {
            $(
                #[doc = concat!("`", $name, "`")]
                #[serde(rename = $name)]
                $variant,
            )+
        }

        impl Kind {
            /// Every kind, in the order of the docs.
            pub(crate) const ALL: &[Kind] = &[$(Kind::$variant),+];

            /// The name in plans.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)+
                }
            }

            /// The phases a step of this kind may be in.
            pub(crate) fn phases(self) -> &'static [Phase] {
                match self {
                    $(Kind::$variant => &[$(Phase::$phase),+],)+
                }
            }

            /// The JSON Schema of the options.
            pub(crate) fn schema(self) -> schemars::Schema {
                match self {
                    $(Kind::$variant => schemars::schema_for!($options),)+
                }
            }

            /// Deserializes and checks options of this kind.
            pub(crate) fn check_options(self, options: Value) -> Result<(), OptionsError> {
                match self {
                    $(Kind::$variant => check::<$options>(options).map(|_| ()),)+
                }
            }
        }
    };
}

kinds! {
    CheckRelease = "check-release", [Check], NoOptions;
    CheckPackageDb = "check-package-db", [Check], NoOptions;
    CheckRepositories = "check-repositories", [Check], NoOptions;
    CheckDiskSpace = "check-disk-space", [Check], checks::DiskSpaceOptions;
    CheckHeldPackages = "check-held-packages", [Check], NoOptions;
    CheckThirdParty = "check-third-party", [Check], checks::ThirdPartyOptions;
    Prefetch = "prefetch", [Sync], NoOptions;
    AptSources = "apt-sources", [Cutover], apt::AptSourcesOptions;
    Apt = "apt", [Cutover], NoOptions;
    Zypper = "zypper", [Cutover], packages::ZypperOptions;
    Dnf = "dnf", [Cutover], packages::DnfOptions;
    Bootloader = "bootloader", [Cutover, Post], NoOptions;
    VerifyRelease = "verify-release", [Cutover, Post], packages::VerifyReleaseOptions;
    SafetyBackup = "safety-backup", [Cutover], backup::BackupOptions;
    Postgres = "postgres", [Sync, Cutover], postgres::PostgresOptions;
    PostgresqlClusters = "postgresql-clusters", [Check, Cutover], postgres::ClustersOptions;
    Rsync = "rsync", [Sync, Cutover], rsync::RsyncOptions;
    VerifyCopy = "verify-copy", [Cutover, Post], rsync::VerifyCopyOptions;
    Config = "config", [Sync, Cutover, Post], config::ConfigOptions;
    Service = "service", [Sync, Cutover, Post, Rollback], service::ServiceOptions;
    Command = "command", [Check, Sync, Cutover, Post, Rollback], command::CommandOptions;
}

impl Kind {
    /// Whether a step of this kind runs a package transaction on the root.
    pub(crate) fn changes_packages(self) -> bool {
        matches!(self, Kind::Apt | Kind::Zypper | Kind::Dnf)
    }

    /// The kind named `name` in a plan.
    pub(crate) fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The options a step of this kind takes, from its schema.
    pub(crate) fn options(self) -> Vec<OptionInfo> {
        let schema = self.schema();
        let root = schema.as_value();
        let required: Vec<&str> = root
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(props) = root.get("properties").and_then(Value::as_object) else {
            return Vec::new();
        };
        props
            .iter()
            .map(|(key, prop)| OptionInfo {
                key: key.clone(),
                required: required.contains(&key.as_str()),
                ty: ValueType::of(root, prop),
                doc: prop
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One option of a kind, as its schema describes it.
#[derive(Clone, Debug)]
pub(crate) struct OptionInfo {
    /// The key in the plan.
    pub(crate) key: String,
    /// Whether a step of the kind must set it.
    pub(crate) required: bool,
    /// The TOML types it accepts.
    pub(crate) ty: ValueType,
    /// What it means (the doc comment of the field).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) doc: String,
}

/// The types a value may have, as a JSON Schema says them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ValueType {
    /// JSON Schema type names (`string`, `integer`, `number`, `boolean`,
    /// `object`, `array`).
    names: Vec<String>,
    /// For arrays: the types of the items.
    items: Option<Box<ValueType>>,
}

impl ValueType {
    /// The types `schema` (a node of `root`) allows, `$ref`s and `anyOf`s
    /// followed, `null` left out (an option may always be omitted instead).
    fn of(root: &Value, schema: &Value) -> ValueType {
        let schema = resolve(root, schema);
        let mut names: Vec<String> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let mut items = None;
        for branch in ["anyOf", "oneOf"] {
            for b in schema
                .get(branch)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let t = ValueType::of(root, b);
                names.extend(t.names);
                items = items.or(t.items);
            }
        }
        if names.is_empty() && (schema.get("enum").is_some() || schema.get("const").is_some()) {
            names.push("string".into());
        }
        names.retain(|n| n != "null");
        names.sort();
        names.dedup();
        if names.iter().any(|n| n == "array") {
            items = items.or_else(|| {
                schema
                    .get("items")
                    .map(|i| Box::new(ValueType::of(root, i)))
            });
        }
        ValueType { names, items }
    }

    /// Whether a TOML value has one of these types.
    pub(crate) fn accepts(&self, v: &toml::Value) -> bool {
        if self.names.is_empty() {
            return true;
        }
        self.names.iter().any(|n| match (n.as_str(), v) {
            ("string", toml::Value::String(_))
            | ("integer", toml::Value::Integer(_))
            | ("number", toml::Value::Integer(_) | toml::Value::Float(_))
            | ("boolean", toml::Value::Boolean(_))
            | ("object", toml::Value::Table(_)) => true,
            ("array", toml::Value::Array(values)) => self
                .items
                .as_ref()
                .is_none_or(|i| values.iter().all(|x| i.accepts(x))),
            _ => false,
        })
    }

    /// "an integer", "an array of strings", "a string or a table".
    pub(crate) fn describe(&self) -> String {
        let one = |n: &str, plural: bool| -> String {
            let (a, many) = match n {
                "string" => ("a string", "strings"),
                "integer" => ("an integer", "integers"),
                "number" => ("a number", "numbers"),
                "boolean" => ("a boolean", "booleans"),
                "object" => ("a table", "tables"),
                "array" => ("an array", "arrays"),
                _ => ("a value", "values"),
            };
            if plural { many.into() } else { a.into() }
        };
        let parts: Vec<String> = self
            .names
            .iter()
            .map(|n| match (n.as_str(), &self.items) {
                ("array", Some(items)) if items.names.len() == 1 => {
                    format!("an array of {}", one(&items.names[0], true))
                }
                (n, _) => one(n, false),
            })
            .collect();
        if parts.is_empty() {
            "a value".into()
        } else {
            parts.join(" or ")
        }
    }

    /// The table of docs/plans.md's type column: "integer", "array of strings".
    #[cfg(test)]
    pub(crate) fn doc_name(&self) -> String {
        let d = self.describe();
        d.strip_prefix("an ")
            .or_else(|| d.strip_prefix("a "))
            .unwrap_or(&d)
            .to_string()
    }
}

/// `$ref` followed to its definition in `root`.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
        return schema;
    };
    let mut node = root;
    for part in r.trim_start_matches("#/").split('/') {
        match node.get(part) {
            Some(n) => node = n,
            None => return schema,
        }
    }
    resolve(root, node)
}

/// Why options do not fit their kind.
#[derive(Debug)]
pub(crate) enum OptionsError {
    /// A value at `path` (`key`, `key.sub`, `key[0]`) is of the wrong shape.
    At {
        /// Where, from the option's key.
        path: String,
        /// What serde says.
        message: String,
    },
    /// The options do not fit together ([`KindOptions::check`]).
    Check(String),
}

/// Deserializes `options` into `T`, then checks them.
pub(crate) fn check<T: KindOptions>(options: Value) -> Result<T, OptionsError> {
    let parsed: T = serde_path_to_error::deserialize(options).map_err(|e| OptionsError::At {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    parsed.check().map_err(OptionsError::Check)?;
    Ok(parsed)
}

/// The value of a `serde(default = ...)` that is true.
pub(crate) fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialize_as_in_plans() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(*kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::String(kind.name().into())
            );
        }
        assert_eq!(Kind::from_name("yum"), None);
    }

    #[test]
    fn option_types_come_from_the_schema() {
        let ty = |kind: Kind, key: &str| {
            kind.options()
                .into_iter()
                .find(|o| o.key == key)
                .unwrap_or_else(|| panic!("{kind}: no option {key}"))
        };
        assert_eq!(
            ty(Kind::CheckDiskSpace, "margin_mb").ty.describe(),
            "an integer"
        );
        assert!(!ty(Kind::CheckDiskSpace, "margin_mb").required);
        assert_eq!(ty(Kind::Dnf, "releasever").ty.describe(), "a string");
        assert!(ty(Kind::Dnf, "releasever").required);
        assert_eq!(
            ty(Kind::Dnf, "allow_removal").ty.describe(),
            "an array of strings"
        );
        assert_eq!(
            ty(Kind::Command, "ok_exit_codes").ty.describe(),
            "an array of integers"
        );
        assert_eq!(ty(Kind::Postgres, "source").ty.describe(), "a table");
        assert_eq!(
            ty(Kind::Zypper, "repositories").ty.describe(),
            "an array of tables"
        );
        assert_eq!(ty(Kind::Service, "action").ty.describe(), "a string");
        assert!(Kind::Apt.options().is_empty());
    }

    /// A `### `kind` (phases)` section of docs/plans.md: name, phases, and
    /// the option table's rows (key, type).
    type Section = (String, Vec<String>, Vec<(String, String)>);

    fn documented() -> Vec<Section> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plans.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let kinds = &doc[doc.find("## Step kinds").expect("a Step kinds section")..];
        let kinds = &kinds[..kinds[3..].find("\n## ").map_or(kinds.len(), |e| e + 3)];
        kinds
            .split("\n### ")
            .skip(1)
            .map(|section| {
                let heading = section.lines().next().unwrap();
                let name = heading.split('`').nth(1).unwrap().to_string();
                let phases = heading
                    .split_once('(')
                    .and_then(|(_, p)| p.split_once(')'))
                    .map(|(p, _)| p.split(", ").map(str::to_string).collect())
                    .unwrap_or_default();
                let rows = section
                    .lines()
                    .filter(|l| l.starts_with("| `"))
                    .map(|l| {
                        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                        (cells[1].trim_matches('`').to_string(), cells[2].to_string())
                    })
                    .collect();
                (name, phases, rows)
            })
            .collect()
    }

    #[test]
    fn docs_plans_md_documents_every_kind_and_option_and_nothing_else() {
        let documented = documented();
        for kind in Kind::ALL {
            assert!(
                documented.iter().any(|(n, _, _)| n == kind.name()),
                "{kind} is not documented in docs/plans.md"
            );
        }
        for (name, phases, rows) in &documented {
            let kind = Kind::from_name(name)
                .unwrap_or_else(|| panic!("docs/plans.md documents {name}, which is no kind"));
            let expected: Vec<&str> = kind.phases().iter().map(|p| p.name()).collect();
            assert_eq!(phases, &expected, "{kind}: the phases in the heading");
            let options = kind.options();
            for (key, ty) in rows {
                let option = options.iter().find(|o| &o.key == key).unwrap_or_else(|| {
                    panic!("docs/plans.md: {kind} has no option {key}, but it is documented")
                });
                let name = option.ty.doc_name();
                assert!(
                    ty == &name || ty.starts_with(&format!("{name} ")),
                    "{kind}: docs/plans.md says {key} is {ty:?}, the type is {name:?}"
                );
            }
            for o in &options {
                assert!(
                    rows.iter().any(|(k, _)| k == &o.key),
                    "{kind}: option {} is not documented in docs/plans.md",
                    o.key
                );
            }
        }
    }

    #[test]
    fn every_option_has_a_description() {
        for kind in Kind::ALL {
            for o in kind.options() {
                assert!(!o.doc.is_empty(), "{kind}: option {} has no doc", o.key);
            }
        }
    }
}

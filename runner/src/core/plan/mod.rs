//! Plans: which steps a migration runs, in which phase, with which options.
//!
//! A plan is TOML. The image ships one (`/usr/share/migrate/plan.toml`, also
//! carried in the image's `io.migrate.plan` label so that the host can validate
//! it before anything runs); `--plan FILE` replaces it; drop-ins in
//! `ROOT/etc/migrate/plan.d/*.toml` are merged on top, in name order, by step id.
//!
//! ```toml
//! description = "Debian 12 -> 13"
//!
//! [[step]]
//! id = "disk-space"          # unique; letters, digits, '-', '_', '.'
//! kind = "check-disk-space"  # see docs/plans.md
//! phase = "check"            # check, sync, cutover, post or rollback
//! margin_mb = 200            # options of the kind
//! ```
//!
//! A step may belong to an application (`app = "NAME"`): a plan with
//! applications moves them one at a time (`migrate sync|run|rollback --app
//! NAME`), and its `rollback` steps are an application's step back.
//!
//! A drop-in step with an existing id overrides that step's keys
//! (`enabled = false` removes it); a new id adds a step at the end of its phase.
//! A `[health]` table ([`health`]) names what the first boot must find.
//! Every error names the file, the line and the key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::kinds::{Kind, OptionsError};
pub(crate) use super::phase::Phase;

pub(crate) mod health;
pub(crate) use health::Health;

/// The largest plan file read.
pub(crate) const PLAN_LIMIT: u64 = 1 << 20;

/// Drop-in directory, relative to the migrated root.
pub(crate) const DROPIN_DIR: &str = crate::core::root_paths::RootPath::PlanDropins.rel();
/// Kind and id of the safety backup inserted before the first cutover step.
pub(crate) const SAFETY_BACKUP: &str = "safety-backup";

/// A resolved, validated plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// What the plan does.
    pub(crate) description: String,
    /// Steps in the order they run (phases ascending).
    pub(crate) steps: Vec<PlanStep>,
    /// What the first boot after the migration must find (`[health]`).
    /// Not part of [`Plan::hash`]: it changes nothing that runs.
    #[serde(default, skip_serializing_if = "Health::is_unset")]
    pub(crate) health: Health,
}

/// One step of a resolved plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PlanStep {
    /// Unique id.
    pub(crate) id: String,
    /// Step kind.
    pub(crate) kind: Kind,
    /// Phase.
    pub(crate) phase: Phase,
    /// Description override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    /// The application the step belongs to (`app`); none: the whole root's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) app: Option<String>,
    /// Kind-specific options, validated against the kind's schema.
    #[serde(default)]
    pub(crate) options: serde_json::Map<String, serde_json::Value>,
    /// Where the step was defined (`FILE:LINE`).
    pub(crate) defined_at: String,
}

impl Plan {
    /// A stable hash of the plan (what runs, not where it was written), so
    /// that a resumed run can tell it is running the same plan.
    pub(crate) fn hash(&self) -> String {
        // A step's application joins its record only when it has one, so
        // that the plans written before applications keep their hash.
        let canonical: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut record =
                    serde_json::json!([&s.id, &s.kind, s.phase, &s.description, &s.options]);
                if let (Some(app), Some(list)) = (&s.app, record.as_array_mut()) {
                    list.push(serde_json::Value::from(app.as_str()));
                }
                record
            })
            .collect();
        let json = serde_json::to_vec(&canonical).unwrap_or_default();
        format!("sha256:{:x}", Sha256::digest(json))
    }

    /// The steps of some phases, in order.
    pub(crate) fn steps_in<'a>(
        &'a self,
        phases: &'a [Phase],
    ) -> impl Iterator<Item = &'a PlanStep> + 'a {
        self.steps.iter().filter(move |s| phases.contains(&s.phase))
    }

    /// The applications the plan's steps belong to, in name order.
    pub(crate) fn apps(&self) -> Vec<&str> {
        let names: std::collections::BTreeSet<&str> =
            self.steps.iter().filter_map(|s| s.app.as_deref()).collect();
        names.into_iter().collect()
    }

    /// Whether a run of `verb` may go with `app`: a plan with applications
    /// moves one at a time (`--app` for the verbs that change the root),
    /// and `--app` names one of them. The error is one line.
    pub(crate) fn check_app(
        &self,
        verb: crate::core::event::Verb,
        app: Option<&str>,
    ) -> Result<(), String> {
        use crate::core::event::Verb;
        let apps = self.apps();
        match app {
            Some(name) if apps.contains(&name) => Ok(()),
            Some(name) if apps.is_empty() => Err(format!(
                "--app {name}: the plan ({}) has no applications (no step with `app`)",
                self.description
            )),
            Some(name) => Err(format!(
                "--app {name}: the plan has no application {name:?} (it has: {})",
                apps.join(", ")
            )),
            None if !apps.is_empty()
                && matches!(verb, Verb::Sync | Verb::Run | Verb::DryRun | Verb::StepBack) =>
            {
                Err(format!(
                    "this plan moves applications one at a time ({}): name one with --app",
                    apps.join(", ")
                ))
            }
            None => Ok(()),
        }
    }

    /// The steps a run of `app` acts on: its own and the root's (none: the
    /// root's and every application's).
    pub(crate) fn in_scope(step: &PlanStep, app: Option<&str>) -> bool {
        match (app, step.app.as_deref()) {
            (Some(wanted), Some(own)) => wanted == own,
            _ => true,
        }
    }

    /// The first step of one of `kinds`.
    pub(crate) fn first_of_kind(&self, kinds: &[Kind]) -> Option<&PlanStep> {
        self.steps.iter().find(|s| kinds.contains(&s.kind))
    }
}

impl PlanStep {
    /// The step's options as its kind's typed struct.
    pub(crate) fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(serde_json::Value::Object(self.options.clone()))
            .with_context(|| format!("options of step {} ({})", self.id, self.defined_at))
    }
}

/// A plan file's text and the name it is shown by in errors.
#[derive(Clone, Debug)]
pub(crate) struct PlanSource {
    /// Shown in errors (a path, or `image REF`).
    pub(crate) name: String,
    /// The TOML text.
    pub(crate) text: String,
}

impl PlanSource {
    /// Reads a plan file.
    /// Reads a plan file: a regular file of at most [`PLAN_LIMIT`] bytes
    /// (a FIFO or `/dev/zero` is refused, not read).
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = crate::core::fsutil::read_text_limited(path, PLAN_LIMIT)?
            .ok_or_else(|| anyhow::anyhow!("{}: no such file", path.display()))?;
        Ok(Self {
            name: path.display().to_string(),
            text,
        })
    }
}

/// Where a plan file is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PlanFile {
    /// A path of the host: `--plan`, or named by `--config` or by the
    /// running host's own configuration.
    Host(PathBuf),
    /// A path named by a root directory's own configuration: read inside
    /// that root (`root`, then the path as the root sees it), so that a root
    /// cannot make the host read one of its files.
    InRoot(PathBuf, PathBuf),
}

impl PlanFile {
    /// Reads the plan; errors name where it came from.
    pub(crate) fn read(&self) -> Result<PlanSource> {
        match self {
            Self::Host(path) => PlanSource::read(path).map_err(|e| anyhow::anyhow!("--plan {e:#}")),
            Self::InRoot(root, path) => {
                let rel = path.to_string_lossy();
                let rel = rel.trim_start_matches('/');
                let shown = root.join(rel).display().to_string();
                let bytes = crate::core::rootfs::confined::read(root, rel, PLAN_LIMIT)
                    .map_err(|e| anyhow::anyhow!("plan of the root's configuration: {e:#}"))?
                    .ok_or_else(|| {
                        anyhow::anyhow!("plan of the root's configuration: {shown}: no such file")
                    })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    anyhow::anyhow!("plan of the root's configuration: {shown}: not UTF-8 text")
                })?;
                Ok(PlanSource { name: shown, text })
            }
        }
    }
}

/// The drop-ins of a root (`ROOT/etc/migrate/plan.d/*.toml`), in name order.
/// They are read inside the root: a drop-in that is a symlink to a host
/// file reads the root's file of that name, not the host's.
pub(crate) fn read_dropins(root: &Path) -> Result<Vec<PlanSource>> {
    crate::core::rootfs::confined::list(root, DROPIN_DIR)?
        .into_iter()
        .filter(|name| name.ends_with(".toml"))
        .map(|name| {
            let rel = format!("{DROPIN_DIR}/{name}");
            let shown = root.join(&rel).display().to_string();
            let bytes = crate::core::rootfs::confined::read(root, &rel, PLAN_LIMIT)?
                .ok_or_else(|| anyhow::anyhow!("{shown}: no such file"))?;
            let text =
                String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{shown}: not UTF-8 text"))?;
            Ok(PlanSource { name: shown, text })
        })
        .collect()
}

/// Where a key was written.
#[derive(Clone, Debug)]
struct At {
    file: String,
    line: usize,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A step as written, keys with their positions, before validation.
#[derive(Clone, Debug)]
struct RawStep {
    at: At,
    id: String,
    keys: BTreeMap<String, (toml::Value, At)>,
}

type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The `[[step]]` tables of a file, each key with its position.
#[derive(Deserialize)]
struct StepTables {
    #[serde(default)]
    step: Vec<Spanned<SpannedTable>>,
}

/// A TOML error as one line: `FILE:LINE: message`.
pub(crate) fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    let message: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    anyhow::anyhow!("{file}:{line}: {}", message.join("; "))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses one plan file into raw steps; checks its syntax, top-level keys,
/// ids (present, well-formed, unique in the file) and phase order.
fn parse_file(src: &PlanSource) -> Result<(Option<String>, Vec<RawStep>, Health)> {
    let syntax = |e: toml::de::Error| toml_error(&src.name, &src.text, &e);
    let at = |offset: usize| At {
        file: src.name.clone(),
        line: line_of(&src.text, offset),
    };
    let top: SpannedTable = toml::from_str(&src.text).map_err(syntax)?;
    let mut description = None;
    let mut health = Health::default();
    for (key, value) in &top {
        let here = at(key.span().start);
        match (key.get_ref().as_str(), value.get_ref()) {
            ("description", toml::Value::String(s)) => description = Some(s.clone()),
            ("description", other) => bail!(
                "{here}: key `description`: expected a string, found {}",
                type_name(other)
            ),
            ("step", toml::Value::Array(items))
                if items.iter().all(|i| matches!(i, toml::Value::Table(_))) => {}
            ("step", _) => bail!("{here}: `step` must be an array of tables ([[step]])"),
            ("health", toml::Value::Table(t)) => {
                health = Health::deserialize(toml::Value::Table(t.clone()))
                    .map_err(|e| anyhow::anyhow!("{here}: [health]: {}", e.message()))?;
                health
                    .validate()
                    .map_err(|e| anyhow::anyhow!("{here}: [health]: {e}"))?;
            }
            ("health", _) => bail!("{here}: `health` must be a table ([health])"),
            (other, _) => bail!(
                "{here}: unknown key `{other}` (a plan has `description`, [health] and [[step]] tables)"
            ),
        }
    }
    let tables: StepTables = toml::from_str(&src.text).map_err(syntax)?;
    let mut steps = Vec::new();
    for table in tables.step {
        let step_at = at(table.span().start);
        let mut keys = BTreeMap::new();
        for (k, v) in table.into_inner() {
            keys.insert(
                k.get_ref().clone(),
                (v.get_ref().clone(), at(k.span().start)),
            );
        }
        let id = match keys.get("id") {
            Some((toml::Value::String(id), id_at)) => {
                check_id(id).map_err(|e| anyhow::anyhow!("{id_at}: key `id`: {e}"))?;
                id.clone()
            }
            Some((other, id_at)) => bail!(
                "{id_at}: key `id`: expected a string, found {}",
                type_name(other)
            ),
            None => bail!("{step_at}: a step has no `id`"),
        };
        steps.push(RawStep {
            at: step_at,
            id,
            keys,
        });
    }
    let mut seen = HashSet::new();
    for s in &steps {
        if !seen.insert(s.id.clone()) {
            bail!(
                "{}: key `id`: duplicate step id {:?} in this file",
                s.keys["id"].1,
                s.id
            );
        }
    }
    Ok((description, steps, health))
}

fn check_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid step id (1-64 letters, digits, '-', '_', '.', starting with a letter or digit)"
        ))
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Resolves a plan: `base` (the image's plan or `--plan`), then each drop-in
/// merged on top; validates every step; inserts the safety backup before the
/// first cutover step.
pub(crate) fn resolve(base: &PlanSource, dropins: &[PlanSource]) -> Result<Plan> {
    let (description, base_steps, mut health) = parse_file(base)?;
    check_phase_order(&base_steps)?;
    let mut merged: Vec<RawStep> = Vec::new();
    for s in base_steps {
        require_new_step_keys(&s)?;
        merged.push(s);
    }
    for dropin in dropins {
        let (_, steps, more_health) = parse_file(dropin)?;
        health.merge(more_health);
        check_phase_order(
            steps
                .iter()
                .filter(|s| !merged.iter().any(|m| m.id == s.id)),
        )?;
        for s in steps {
            match merged.iter_mut().find(|m| m.id == s.id) {
                Some(existing) => {
                    if let Some((kind, at)) = s.keys.get("kind")
                        && existing.keys.get("kind").map(|k| &k.0) != Some(kind)
                    {
                        bail!(
                            "{at}: key `kind`: cannot change the kind of step {:?} (defined at {})",
                            s.id,
                            existing.at
                        );
                    }
                    for (k, v) in s.keys {
                        existing.keys.insert(k, v);
                    }
                }
                None => {
                    require_new_step_keys(&s)?;
                    merged.push(s);
                }
            }
        }
    }

    // A plan that names a safety backup, even a disabled one, decides itself.
    let names_backup = merged.iter().any(
        |s| matches!(s.keys.get("kind"), Some((toml::Value::String(k), _)) if k == SAFETY_BACKUP),
    );
    let mut steps = Vec::new();
    for raw in merged {
        if let Some(step) = validate(raw)? {
            steps.push(step);
        }
    }
    // Stable: steps keep their order within a phase; added steps come last.
    steps.sort_by_key(|s| s.phase);
    if !names_backup && let Some(first) = steps.iter().position(|s| s.phase == Phase::Cutover) {
        steps.insert(
            first,
            PlanStep {
                id: SAFETY_BACKUP.to_string(),
                kind: Kind::SafetyBackup,
                phase: Phase::Cutover,
                description: None,
                app: None,
                options: serde_json::Map::new(),
                defined_at: "(inserted before the first cutover step)".to_string(),
            },
        );
    }
    let mut ids = HashSet::new();
    for (i, s) in steps.iter().enumerate() {
        if !ids.insert(&s.id) {
            bail!("{}: step id {:?} is used twice", s.defined_at, s.id);
        }
        if s.kind == Kind::VerifyCopy {
            let opts: crate::core::kinds::rsync::VerifyCopyOptions = s.options()?;
            if !steps[..i]
                .iter()
                .any(|e| e.id == opts.of && e.kind == Kind::Rsync)
            {
                bail!(
                    "{}: key `of`: step {:?} names no rsync step before it ({:?})",
                    s.defined_at,
                    s.id,
                    opts.of
                );
            }
        }
    }
    Ok(Plan {
        description: description.unwrap_or_else(|| "migration plan".to_string()),
        steps,
        health,
    })
}

fn require_new_step_keys(s: &RawStep) -> Result<()> {
    for key in ["kind", "phase"] {
        if !s.keys.contains_key(key) {
            bail!("{}: step {:?}: missing key `{key}`", s.at, s.id);
        }
    }
    Ok(())
}

fn phase_of(s: &RawStep) -> Option<Phase> {
    match s.keys.get("phase") {
        Some((toml::Value::String(p), _)) => Phase::parse(p),
        _ => None,
    }
}

fn check_phase_order<'a>(steps: impl IntoIterator<Item = &'a RawStep>) -> Result<()> {
    let mut last: Option<(Phase, &RawStep)> = None;
    for s in steps {
        let Some(phase) = phase_of(s) else { continue };
        if let Some((prev, prev_step)) = last
            && phase < prev
        {
            bail!(
                "{}: key `phase`: step {:?} ({phase}) comes after step {:?} ({prev}); phases must be in the order check, sync, cutover, post, rollback",
                s.keys["phase"].1,
                s.id,
                prev_step.id
            );
        }
        last = Some((phase, s));
    }
    Ok(())
}

/// Validates a merged step against its kind's schema; `None` if disabled.
fn validate(raw: RawStep) -> Result<Option<PlanStep>> {
    let RawStep { at, id, mut keys } = raw;
    let (kind, kind_at) = match keys.remove("kind") {
        Some((toml::Value::String(k), a)) => (k, a),
        Some((other, a)) => bail!(
            "{a}: key `kind`: expected a string, found {}",
            type_name(&other)
        ),
        None => bail!("{at}: step {id:?}: missing key `kind`"),
    };
    let spec = Kind::from_name(&kind).ok_or_else(|| {
        anyhow::anyhow!(
            "{kind_at}: key `kind`: unknown step kind {kind:?} (known: {})",
            Kind::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let phase = match keys.remove("phase") {
        Some((toml::Value::String(p), a)) => {
            let phase = Phase::parse(&p).ok_or_else(|| {
                anyhow::anyhow!(
                    "{a}: key `phase`: unknown phase {p:?} (check, sync, cutover, post, rollback)"
                )
            })?;
            if !spec.phases().contains(&phase) {
                bail!(
                    "{a}: key `phase`: a {kind} step cannot run in the {phase} phase (allowed: {})",
                    spec.phases()
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            phase
        }
        Some((other, a)) => bail!(
            "{a}: key `phase`: expected a string, found {}",
            type_name(&other)
        ),
        None => bail!("{at}: step {id:?}: missing key `phase`"),
    };
    keys.remove("id");
    let enabled = match keys.remove("enabled") {
        Some((toml::Value::Boolean(b), _)) => b,
        Some((other, a)) => bail!(
            "{a}: key `enabled`: expected a boolean, found {}",
            type_name(&other)
        ),
        None => true,
    };
    let description = match keys.remove("description") {
        Some((toml::Value::String(d), _)) => Some(d),
        Some((other, a)) => {
            bail!(
                "{a}: key `description`: expected a string, found {}",
                type_name(&other)
            )
        }
        None => None,
    };
    let app = match keys.remove("app") {
        Some((toml::Value::String(name), a)) => {
            if !valid_app_name(&name) {
                bail!(
                    "{a}: key `app`: {name:?} is no application name (lower-case letters, digits, '-', '_', '.', at most 63, starting with a letter or digit)"
                );
            }
            Some(name)
        }
        Some((other, a)) => bail!(
            "{a}: key `app`: expected a string, found {}",
            type_name(&other)
        ),
        None if phase == Phase::Rollback => bail!(
            "{at}: step {id:?}: a rollback step belongs to an application (key `app`): `migrate rollback --app NAME` runs it"
        ),
        None => None,
    };
    let known = spec.options();
    let mut options = serde_json::Map::new();
    let mut positions = BTreeMap::new();
    for (key, (value, key_at)) in keys {
        let Some(opt) = known.iter().find(|o| o.key == key) else {
            let names: Vec<&str> = known.iter().map(|o| o.key.as_str()).collect();
            bail!(
                "{key_at}: key `{key}`: unknown option for a {kind} step ({})",
                if names.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("it takes: {}", names.join(", "))
                }
            );
        };
        if !opt.ty.accepts(&value) {
            bail!(
                "{key_at}: key `{key}`: expected {}, found {}",
                opt.ty.describe(),
                type_name(&value)
            );
        }
        options.insert(key.clone(), toml_to_json(value));
        positions.insert(key, key_at);
    }
    for opt in known.iter().filter(|o| o.required) {
        if !options.contains_key(&opt.key) {
            bail!(
                "{at}: step {id:?}: missing option `{}` ({} step)",
                opt.key,
                kind
            );
        }
    }
    // The types are right; serde and the kind's own checks decide the rest.
    match spec.check_options(serde_json::Value::Object(options.clone())) {
        Ok(()) => {}
        Err(OptionsError::At { path, message }) => {
            let top = path.split(['.', '[']).next().unwrap_or_default();
            let where_ = positions.get(top).unwrap_or(&at);
            bail!("{where_}: key `{path}`: {message} (in the options of step {id})");
        }
        Err(OptionsError::Check(message)) => bail!("{at}: step {id:?}: {message}"),
    }
    if !enabled {
        return Ok(None);
    }
    Ok(Some(PlanStep {
        id,
        kind: spec,
        phase,
        description,
        app,
        options,
        defined_at: at.to_string(),
    }))
}

/// An application's name: what `--app` takes and status shows.
fn valid_app_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Value::from(f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(toml_to_json).collect())
        }
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests;

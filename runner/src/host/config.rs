//! The host configuration of unattended runs: `/etc/migrate/config.toml`
//! (or `--config FILE`) and drop-ins in `/etc/migrate/config.d/*.toml`,
//! merged in name order, each key overriding the earlier ones.
//!
//! ```toml
//! enabled = true                         # unattended runs do something at all
//! mode = "check"                         # check (default): only the checks; run: migrate
//! image = "localhost/migrate/debian-13:latest"
//! plan = "/etc/migrate/plan.toml"        # replaces the image's plan
//! reboot = true                          # reboot into the new release afterwards
//! maintenance_window = "Sat,Sun 02:00-05:00"  # when that reboot may happen (local time)
//! metrics_dir = "/var/lib/prometheus/node-exporter"  # Prometheus textfile metrics of every run
//! fleetlock_url = "http://airlock.example:3333"  # take a reboot slot before the cutover
//! fleetlock_group = "workers"            # the host's reboot group (default: "default")
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{Datelike, Timelike};
use serde::Deserialize;

/// The main configuration file, relative to the root.
pub(crate) const CONFIG_PATH: &str = crate::core::root_paths::RootPath::Config.rel();
/// The drop-in directory, relative to the root.
pub(crate) const DROPIN_DIR: &str = crate::core::root_paths::RootPath::ConfigDropins.rel();

/// One file's settings; every key optional so that files merge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragment {
    enabled: Option<bool>,
    mode: Option<String>,
    image: Option<String>,
    plan: Option<String>,
    reboot: Option<bool>,
    maintenance_window: Option<String>,
    metrics_dir: Option<String>,
    on_failed_boot: Option<String>,
    fleetlock_url: Option<String>,
    fleetlock_group: Option<String>,
    fleetlock_id: Option<String>,
}

/// What an unattended run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Run the checks and record the outcome.
    Check,
    /// Migrate.
    Run,
}

/// What the first boot does when it finds the new release unhealthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum OnFailedBoot {
    /// Record the failed verdict; the host stays on the new release.
    #[default]
    Keep,
    /// Roll back to the pre-migration snapshot and reboot into it (where
    /// the safety backup is a snapshot; otherwise as `Keep`, saying so).
    Revert,
}

/// The merged, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    /// Whether unattended runs do anything.
    pub(crate) enabled: bool,
    /// What they do.
    pub(crate) mode: Mode,
    /// The migration image.
    pub(crate) image: Option<String>,
    /// A plan replacing the image's.
    pub(crate) plan: Option<crate::core::plan::PlanFile>,
    /// Reboot into the new release after a migration.
    pub(crate) reboot: bool,
    /// When that reboot may happen.
    pub(crate) window: Option<MaintenanceWindow>,
    /// Where every recorded run writes its Prometheus textfile metrics (a
    /// directory in the root).
    pub(crate) metrics_dir: Option<String>,
    /// What a failed first boot does.
    pub(crate) on_failed_boot: OnFailedBoot,
    /// The FleetLock server that hands out reboot slots, if the host
    /// coordinates its cutover and reboot with a fleet.
    pub(crate) fleetlock: Option<FleetLockConfig>,
}

/// Where the host takes its reboot slot, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FleetLockConfig {
    /// The server's base URL (`http://HOST[:PORT][/PATH]`).
    pub(crate) url: String,
    /// The reboot group.
    pub(crate) group: String,
    /// The host's id, if configured; otherwise derived from the machine id.
    pub(crate) id: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: Mode::Check,
            image: None,
            plan: None,
            reboot: false,
            window: None,
            metrics_dir: None,
            on_failed_boot: OnFailedBoot::Keep,
            fleetlock: None,
        }
    }
}

/// Loads the configuration of `root`: `explicit` (`--config`) or the main
/// file if it exists, then the drop-ins. No file at all gives the defaults
/// (disabled).
pub(crate) fn load(root: &Path, explicit: Option<&Path>) -> Result<Config> {
    // (name shown in errors, text): --config from the host, the rest inside
    // the root (its symlinks cannot point at host files).
    let limit = crate::core::plan::PLAN_LIMIT;
    let confined = |rel: &str| -> Result<Option<(PathBuf, String)>> {
        let shown = root.join(rel);
        crate::core::rootfs::confined::read(root, rel, limit)?
            .map(|b| {
                String::from_utf8(b)
                    .map(|t| (shown.clone(), t))
                    .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", shown.display()))
            })
            .transpose()
    };
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match explicit {
        Some(p) => {
            let text = crate::core::fsutil::read_text_limited(p, limit)
                .map_err(|e| anyhow::anyhow!("--config {e:#}"))?
                .ok_or_else(|| anyhow::anyhow!("--config {}: no such file", p.display()))?;
            files.push((p.to_path_buf(), text));
        }
        None if root.is_dir() => files.extend(confined(CONFIG_PATH)?),
        // No root to read: what is wrong with it is said where it is
        // inspected, in the words of the root checks.
        None => {}
    }
    if root.is_dir() {
        for name in crate::core::rootfs::confined::list(root, DROPIN_DIR)? {
            if name.ends_with(".toml") {
                files.extend(confined(&format!("{DROPIN_DIR}/{name}"))?);
            }
        }
    }
    let mut merged = Fragment::default();
    for (file, text) in &files {
        let f: Fragment = toml::from_str(text)
            .map_err(|e| crate::core::plan::toml_error(&file.display().to_string(), text, &e))?;
        validate(&f).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
        merged = Fragment {
            enabled: f.enabled.or(merged.enabled),
            mode: f.mode.or(merged.mode),
            image: f.image.or(merged.image),
            plan: f.plan.or(merged.plan),
            reboot: f.reboot.or(merged.reboot),
            maintenance_window: f.maintenance_window.or(merged.maintenance_window),
            metrics_dir: f.metrics_dir.or(merged.metrics_dir),
            on_failed_boot: f.on_failed_boot.or(merged.on_failed_boot),
            fleetlock_url: f.fleetlock_url.or(merged.fleetlock_url),
            fleetlock_group: f.fleetlock_group.or(merged.fleetlock_group),
            fleetlock_id: f.fleetlock_id.or(merged.fleetlock_id),
        };
    }
    let (mode, window) = validate(&merged)?;
    let fleetlock = match (
        merged.fleetlock_url,
        &merged.fleetlock_group,
        &merged.fleetlock_id,
    ) {
        (Some(url), group, id) => Some(FleetLockConfig {
            url: url.trim_end_matches('/').to_string(),
            group: group.clone().unwrap_or_else(|| "default".to_string()),
            id: id.clone(),
        }),
        (None, None, None) => None,
        (None, _, _) => bail!(
            "keys `fleetlock_group` and `fleetlock_id` need `fleetlock_url`, the FleetLock server that hands out reboot slots"
        ),
    };
    let on_failed_boot = match merged.on_failed_boot.as_deref() {
        Some("revert") => OnFailedBoot::Revert,
        _ => OnFailedBoot::Keep,
    };
    Ok(Config {
        enabled: merged.enabled.unwrap_or(false),
        mode,
        image: merged.image,
        // A root directory's own configuration names a plan inside it.
        plan: merged.plan.map(|p| {
            if explicit.is_none() && root != Path::new("/") {
                crate::core::plan::PlanFile::InRoot(root.to_path_buf(), PathBuf::from(p))
            } else {
                crate::core::plan::PlanFile::Host(PathBuf::from(p))
            }
        }),
        reboot: merged.reboot.unwrap_or(false),
        window,
        metrics_dir: merged.metrics_dir,
        on_failed_boot,
        fleetlock,
    })
}

/// The values of one file (or the merge) that need more than a type check.
fn validate(f: &Fragment) -> Result<(Mode, Option<MaintenanceWindow>)> {
    if let Some(image) = &f.image {
        crate::core::image::check_reference(image)
            .map_err(|e| anyhow::anyhow!("key `image`: {e}"))?;
    }
    if let Some(dir) = &f.metrics_dir
        && !dir.starts_with('/')
    {
        bail!("key `metrics_dir`: {dir:?} is not an absolute path");
    }
    if let Some(v) = f.on_failed_boot.as_deref()
        && !["keep", "revert"].contains(&v)
    {
        bail!("key `on_failed_boot`: unknown value {v:?} (keep, revert)");
    }
    if let Some(url) = &f.fleetlock_url {
        crate::host::fleetlock::check_url(url).context("key `fleetlock_url`")?;
    }
    if let Some(group) = &f.fleetlock_group {
        crate::host::fleetlock::check_group(group).context("key `fleetlock_group`")?;
    }
    if let Some(id) = &f.fleetlock_id {
        crate::host::fleetlock::check_id(id).context("key `fleetlock_id`")?;
    }
    let mode = match f.mode.as_deref() {
        None | Some("check") => Mode::Check,
        Some("run") => Mode::Run,
        Some(other) => bail!("key `mode`: unknown mode {other:?} (check, run)"),
    };
    let window = f
        .maintenance_window
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("key `maintenance_window`")?;
    Ok((mode, window))
}

/// When a reboot may happen: some days (none listed: every day) between two
/// times of day, local time; an end before the start wraps past midnight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MaintenanceWindow {
    days: Vec<chrono::Weekday>,
    start: u32,
    end: u32,
}

impl std::str::FromStr for MaintenanceWindow {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (days, times) = match s.trim().rsplit_once(' ') {
            Some((d, t)) => (d, t),
            None => ("", s.trim()),
        };
        let days = days
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.parse::<chrono::Weekday>()
                    .map_err(|_| anyhow::anyhow!("{d:?} is not a day (Mon .. Sun)"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (start, end) = times.split_once('-').with_context(|| {
            format!("{s:?}: expected [DAYS] HH:MM-HH:MM, e.g. \"Sat,Sun 02:00-05:00\"")
        })?;
        let minutes = |t: &str| -> Result<u32> {
            let (h, m) = t
                .trim()
                .split_once(':')
                .with_context(|| format!("{t:?} is not HH:MM"))?;
            let (h, m): (u32, u32) = (h.parse()?, m.parse()?);
            if h > 23 || m > 59 {
                bail!("{t:?} is not a time of day");
            }
            Ok(h * 60 + m)
        };
        let (start, end) = (minutes(start)?, minutes(end)?);
        if start == end {
            bail!("{s:?}: the window is empty (start and end are the same time)");
        }
        Ok(Self { days, start, end })
    }
}

impl std::fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.days.is_empty() {
            let days: Vec<String> = self.days.iter().map(ToString::to_string).collect();
            write!(f, "{} ", days.join(","))?;
        }
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl MaintenanceWindow {
    /// Whether `now` is inside the window.
    pub(crate) fn contains<T: Datelike + Timelike>(&self, now: &T) -> bool {
        let minute = now.hour() * 60 + now.minute();
        let day_ok = |d: chrono::Weekday| self.days.is_empty() || self.days.contains(&d);
        if self.start <= self.end {
            day_ok(now.weekday()) && (self.start..self.end).contains(&minute)
        } else if minute >= self.start {
            // Before midnight: the window opened today.
            day_ok(now.weekday())
        } else if minute < self.end {
            // After midnight: it opened yesterday.
            day_ok(now.weekday().pred())
        } else {
            false
        }
    }

    /// Whether the window is open now (local time).
    pub(crate) fn open_now(&self) -> bool {
        self.contains(&chrono::Local::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> chrono::NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    }

    #[test]
    fn windows_by_day_and_time_wrap_past_midnight() {
        let w: MaintenanceWindow = "Sat,Sun 02:00-05:00".parse().unwrap();
        assert!(w.contains(&at(2026, 11, 21, 3, 0)), "Saturday 03:00");
        assert!(!w.contains(&at(2026, 11, 21, 5, 0)), "the end is excluded");
        assert!(!w.contains(&at(2026, 11, 20, 3, 0)), "Friday");
        let night: MaintenanceWindow = "Fri 23:00-02:00".parse().unwrap();
        assert!(night.contains(&at(2026, 11, 20, 23, 30)), "Friday night");
        assert!(
            night.contains(&at(2026, 11, 21, 1, 30)),
            "Saturday early, opened Friday"
        );
        assert!(
            !night.contains(&at(2026, 11, 22, 1, 30)),
            "Sunday early, Saturday is not listed"
        );
        let daily: MaintenanceWindow = "01:00-02:00".parse().unwrap();
        assert!(daily.contains(&at(2026, 11, 24, 1, 15)));
        for bad in [
            "Someday 01:00-02:00",
            "25:00-26:00",
            "01:00",
            "Mon 1-2",
            "02:00-02:00",
        ] {
            assert!(bad.parse::<MaintenanceWindow>().is_err(), "{bad}");
        }
        assert_eq!(w.to_string(), "Sat,Sun 02:00-05:00");
        assert_eq!(daily.to_string(), "01:00-02:00");
    }

    #[test]
    fn dropins_override_the_main_file_and_errors_name_the_line() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(load(root.path(), None).unwrap(), Config::default());
        std::fs::create_dir_all(root.path().join(DROPIN_DIR)).unwrap();
        std::fs::write(
            root.path().join(CONFIG_PATH),
            "enabled = true\nmode = \"run\"\nimage = \"img:1\"\nreboot = true\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join(DROPIN_DIR).join("50-site.toml"),
            "image = \"img:2\"\nmaintenance_window = \"02:00-04:00\"\n",
        )
        .unwrap();
        let c = load(root.path(), None).unwrap();
        assert!(c.enabled && c.reboot);
        assert_eq!(c.mode, Mode::Run);
        assert_eq!(c.image.as_deref(), Some("img:2"));
        assert!(c.window.is_some());
        std::fs::write(
            root.path().join(DROPIN_DIR).join("60-bad.toml"),
            "\nenabled = \"yes\"\n",
        )
        .unwrap();
        let e = format!("{:#}", load(root.path(), None).unwrap_err());
        assert!(e.contains("60-bad.toml:2:"), "{e}");
        std::fs::write(
            root.path().join(DROPIN_DIR).join("60-bad.toml"),
            "mode = \"sometimes\"\n",
        )
        .unwrap();
        let e = format!("{:#}", load(root.path(), None).unwrap_err());
        assert!(e.contains("60-bad.toml: key `mode`: unknown mode"), "{e}");
        let explicit = root.path().join("missing.toml");
        assert!(load(root.path(), Some(&explicit)).is_err());
    }

    #[test]
    fn a_bad_image_reference_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "image = \"my image\"\n").unwrap();
        let e = format!("{:#}", load(dir.path(), Some(&file)).unwrap_err());
        assert!(
            e.contains("config.toml: key `image`: image reference"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
        let pinned = format!(
            "reg.example:5000/m/debian-13:stable@sha256:{}",
            "a".repeat(64)
        );
        std::fs::write(&file, format!("image = \"{pinned}\"\n")).unwrap();
        assert_eq!(
            load(dir.path(), Some(&file)).unwrap().image,
            Some(pinned),
            "a channel pinned to its digest"
        );
    }

    #[test]
    fn on_failed_boot_is_keep_unless_revert_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        assert_eq!(
            load(dir.path(), None).unwrap().on_failed_boot,
            OnFailedBoot::Keep
        );
        std::fs::write(&file, "on_failed_boot = \"revert\"\n").unwrap();
        assert_eq!(
            load(dir.path(), Some(&file)).unwrap().on_failed_boot,
            OnFailedBoot::Revert
        );
        std::fs::write(&file, "on_failed_boot = \"rollback\"\n").unwrap();
        let e = format!("{:#}", load(dir.path(), Some(&file)).unwrap_err());
        assert!(
            e.contains(
                "config.toml: key `on_failed_boot`: unknown value \"rollback\" (keep, revert)"
            ),
            "{e}"
        );
    }

    #[test]
    fn fleetlock_keys_are_checked_and_the_group_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        assert_eq!(load(dir.path(), None).unwrap().fleetlock, None);
        std::fs::write(&file, "fleetlock_url = \"http://airlock.example:3333/\"\n").unwrap();
        assert_eq!(
            load(dir.path(), Some(&file)).unwrap().fleetlock,
            Some(FleetLockConfig {
                url: "http://airlock.example:3333".into(),
                group: "default".into(),
                id: None,
            })
        );
        for (text, error) in [
            (
                "fleetlock_group = \"workers\"\n",
                "keys `fleetlock_group` and `fleetlock_id` need `fleetlock_url`",
            ),
            (
                "fleetlock_url = \"https://airlock.example\"\n",
                "key `fleetlock_url`: \"https://airlock.example\": https is not supported",
            ),
            (
                "fleetlock_url = \"http://a\"\nfleetlock_group = \"eu west\"\n",
                "key `fleetlock_group`: \"eu west\" is not a group label",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = format!("{:#}", load(dir.path(), Some(&file)).unwrap_err());
            assert!(e.contains(error), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}

//! The marker of a migration that waits for its reboot,
//! `ROOT/var/lib/migrate/reboot-pending`.
//!
//! `migrate run` writes it when a migration finished its cutover; it says
//! which migration, which image and plan (for the post phase), and when.
//! `migrate-cleanup.service` starts only when it exists
//! (`ConditionPathExists=`), and `migrate cleanup` removes it once it has
//! checked the first boot, so the cleanup runs exactly once.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::core::plan::Plan;
use crate::core::release::Release;
use crate::core::report::ImageInfo;

/// Marker location relative to the root.
pub(crate) const MARKER_PATH: &str = crate::core::root_paths::RootPath::Marker.rel();

/// What the marker records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PendingReboot {
    /// The migration (its journal's id).
    #[serde(deserialize_with = "crate::core::ids::deserialize")]
    pub(crate) migration_id: String,
    /// The run that finished it (its report is the one to finalize).
    #[serde(deserialize_with = "crate::core::ids::deserialize")]
    pub(crate) run_id: String,
    /// When that run finished.
    pub(crate) finished_at: String,
    /// The release the root was migrated to.
    pub(crate) target: Release,
    /// `PRETTY_NAME` of that release, for messages.
    pub(crate) target_name: String,
    /// The migration image (for the post phase, and to remove it if migrate
    /// pulled it).
    pub(crate) image: ImageInfo,
    /// The plan (its post phase runs after the reboot).
    pub(crate) plan: Plan,
    /// Whether the root was the running host (`--root /`).
    pub(crate) live: bool,
    /// Units that had already failed before the reboot (live hosts only):
    /// they are not the migration's fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failed_units_before: Option<Vec<String>>,
}

impl PendingReboot {
    /// Reads the marker of `root`; `Ok(None)` when there is none.
    pub(crate) fn read(root: &Path) -> Result<Option<Self>> {
        crate::core::fsutil::read_json_if_exists(root, MARKER_PATH, "a migrate reboot marker")
    }

    /// Writes the marker atomically.
    pub(crate) fn write(&self, root: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("encoding the reboot marker")?;
        crate::core::rootfs::confined::write_atomic(root, MARKER_PATH, &json)
    }

    /// Removes the marker (and is content when it is already gone).
    pub(crate) fn remove(root: &Path) -> Result<()> {
        crate::core::rootfs::confined::remove(root, MARKER_PATH)
    }

    /// Whether the system booted after the migration finished: the init
    /// process (PID 1 of this PID namespace) started later. The kernel's
    /// boot id cannot tell, because a container's boot shares it.
    pub(crate) fn rebooted_since(&self) -> Result<bool> {
        let finished = humantime::parse_rfc3339(&self.finished_at)
            .with_context(|| format!("reboot marker: bad time {:?}", self.finished_at))?;
        Ok(started_after(init_started()?, finished))
    }
}

/// How much earlier than it was [`init_started`] can say PID 1 started:
/// the kernel's `btime` is whole seconds, truncated.
const INIT_START_RESOLUTION: Duration = Duration::from_secs(1);

/// Whether PID 1, started at `init` as [`init_started`] tells it, started
/// after `finished`. A boot right after the migration finished (a container
/// booted within the second) reads as up to a second earlier; no host
/// finishes a migration within a second of its own boot, so the resolution
/// is given to the boot.
fn started_after(init: SystemTime, finished: SystemTime) -> bool {
    init + INIT_START_RESOLUTION > finished
}

/// When PID 1 started: the boot time (`btime` of `/proc/stat`) plus its
/// start time in clock ticks (field 22 of `/proc/1/stat`).
pub(crate) fn init_started() -> Result<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let pid1 = std::fs::read_to_string("/proc/1/stat").context("reading /proc/1/stat")?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    started_from(&stat, &pid1, ticks).context("reading when PID 1 started")
}

fn started_from(stat: &str, pid1: &str, ticks_per_second: u64) -> Option<SystemTime> {
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_comm = &pid1[pid1.rfind(')')? + 1..];
    // Fields from 3 on; starttime is field 22.
    let start: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
    let since_boot = Duration::from_millis(start.saturating_mul(1000) / ticks_per_second);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(btime) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_start_time_comes_from_btime_and_the_start_ticks() {
        let stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let pid1 = "1 (systemd (x)) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 250 1000 10";
        let t = started_from(stat, pid1, 100).unwrap();
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_002_500)
        );
        assert!(started_from("cpu 1\n", pid1, 100).is_none());
        assert!(started_from(stat, "1 (init) S", 100).is_none());
    }

    #[test]
    fn a_boot_within_the_second_after_the_migration_counts_as_a_reboot() {
        let finished = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_025_727);
        // btime 1700000025 (truncated) + 0.2 s: really 25.9 s, after finished.
        let init = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_025_200);
        assert!(started_after(init, finished));
        // An init that started minutes before: no reboot.
        let long_before = finished - Duration::from_secs(600);
        assert!(!started_after(long_before, finished));
        assert!(!started_after(finished - Duration::from_secs(2), finished));
    }

    #[test]
    fn this_machine_has_an_init_start_time_in_the_past() {
        assert!(init_started().unwrap() <= SystemTime::now());
    }

    #[test]
    fn the_marker_round_trips_and_removal_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        assert!(PendingReboot::read(root.path()).unwrap().is_none());
        let marker = PendingReboot {
            migration_id: "m".into(),
            run_id: "r".into(),
            finished_at: "2000-01-01T00:00:00Z".into(),
            target: "debian:13".parse().unwrap(),
            target_name: "Debian GNU/Linux 13 (trixie)".into(),
            image: ImageInfo::default(),
            plan: Plan {
                description: "p".into(),
                steps: Vec::new(),
                health: Default::default(),
            },
            live: false,
            failed_units_before: None,
        };
        marker.write(root.path()).unwrap();
        assert_eq!(
            PendingReboot::read(root.path()).unwrap(),
            Some(marker.clone())
        );
        assert!(marker.rebooted_since().unwrap());
        let future = PendingReboot {
            finished_at: "2999-01-01T00:00:00Z".into(),
            ..marker.clone()
        };
        assert!(!future.rebooted_since().unwrap());
        PendingReboot::remove(root.path()).unwrap();
        PendingReboot::remove(root.path()).unwrap();
        std::fs::write(root.path().join(MARKER_PATH), "junk").unwrap();
        assert!(PendingReboot::read(root.path()).is_err());
    }
}

//! Every path under a root that the host side of `migrate` reads or writes.
//! Each is reached only through [`crate::core::rootfs::confined`] (resolved
//! inside the root, regular files only, bounded). The README's trust-model
//! table lists them (a unit test keeps the two equal) and the hostile-root
//! test suite attacks each one it lists, so a new path gets its cases.

/// A path of the root the host touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RootPath {
    /// The release of the root.
    OsRelease,
    /// Its fallback.
    UsrOsRelease,
    /// The host configuration of unattended runs.
    Config,
    /// Its drop-ins.
    ConfigDropins,
    /// Plan drop-ins.
    PlanDropins,
    /// migrate's state directory.
    StateDir,
    /// The state journal.
    State,
    /// Who holds the root (pid and verb of a running `migrate`).
    Lock,
    /// The reboot marker of a finished migration.
    Marker,
    /// migrate's log directory.
    LogDir,
    /// The run log.
    Log,
    /// The last run's report.
    Report,
}

impl RootPath {
    /// Every path, in the README's order.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 12] = [
        Self::OsRelease,
        Self::UsrOsRelease,
        Self::Config,
        Self::ConfigDropins,
        Self::PlanDropins,
        Self::StateDir,
        Self::State,
        Self::Lock,
        Self::Marker,
        Self::LogDir,
        Self::Log,
        Self::Report,
    ];

    /// The directories the host creates: each must be missing or a
    /// directory before a run starts.
    pub(crate) const CREATED: [Self; 2] = [Self::StateDir, Self::LogDir];

    /// The files the host writes: each must be missing or a regular file
    /// before a run starts.
    pub(crate) const WRITTEN: [Self; 5] = [
        Self::State,
        Self::Lock,
        Self::Marker,
        Self::Log,
        Self::Report,
    ];

    /// The path, relative to the root.
    pub(crate) const fn rel(self) -> &'static str {
        match self {
            Self::OsRelease => "etc/os-release",
            Self::UsrOsRelease => "usr/lib/os-release",
            Self::Config => "etc/migrate/config.toml",
            Self::ConfigDropins => "etc/migrate/config.d",
            Self::PlanDropins => "etc/migrate/plan.d",
            Self::StateDir => "var/lib/migrate",
            Self::State => "var/lib/migrate/state.json",
            Self::Lock => "var/lib/migrate/lock",
            Self::Marker => "var/lib/migrate/reboot-pending",
            Self::LogDir => "var/log/migrate",
            Self::Log => "var/log/migrate/migrate.log",
            Self::Report => "var/log/migrate/report.json",
        }
    }

    /// What the host does with it, in the README's words.
    #[cfg(test)]
    pub(crate) const fn access(self) -> &'static str {
        match self {
            Self::OsRelease | Self::UsrOsRelease | Self::Config => "read",
            Self::ConfigDropins | Self::PlanDropins => "list, read *.toml",
            Self::State => "read, write, rename to state-ID.json",
            Self::StateDir | Self::LogDir => "create",
            Self::Lock => "read, write",
            Self::Marker => "read, write, remove",
            Self::Log => "append",
            Self::Report => "read, write, rename to report-ID.json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the README's table of root paths.
    fn readme_rows() -> Vec<(String, String)> {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("<!-- root-paths -->")
            .nth(1)
            .expect("the README marks its table of root paths");
        table
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].trim_matches('`').to_string(), cells[1].to_string())
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_root_path_the_host_touches() {
        let code: Vec<(String, String)> = RootPath::ALL
            .iter()
            .map(|p| (p.rel().to_string(), p.access().to_string()))
            .collect();
        assert_eq!(readme_rows(), code);
    }
}

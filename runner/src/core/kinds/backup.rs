//! Options of `safety-backup`.

use serde::{Deserialize, Serialize};

use super::KindOptions;

/// How to back up.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Method {
    /// A snapshot where the file system can take one, else tar.
    #[default]
    Auto,
    /// A tarball of /etc and the package selection.
    Tar,
    /// A btrfs read-only snapshot of the root subvolume.
    Btrfs,
    /// A snapper snapshot (the root's snapper configuration `root`).
    Snapper,
}

/// Options of `safety-backup`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupOptions {
    /// auto (default: a snapshot where the file system can, else tar),
    /// snapper, btrfs or tar.
    #[serde(default)]
    pub(crate) method: Method,
}

impl KindOptions for BackupOptions {}

impl Method {
    /// The name in plans and in the journal.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Tar => "tar",
            Method::Btrfs => "btrfs",
            Method::Snapper => "snapper",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the running host's rollback puts the writable copy of the
/// migration's pre-cutover snapshot, in the root: the default subvolume of
/// the next boot.
pub(crate) fn restored_copy(migration: &str) -> String {
    format!("/.snapshots/migrate-{migration}-restored")
}

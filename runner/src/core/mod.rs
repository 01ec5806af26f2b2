//! What the host and the agent share. Nothing here imports `host` or
//! `agent`: `scripts/check-layers.sh` fails the build on such an import.

pub(crate) mod cmd;
pub(crate) mod config_edit;
pub(crate) mod event;
pub(crate) mod exit;
pub(crate) mod fsutil;
pub(crate) mod ids;
pub(crate) mod image;
pub(crate) mod journal;
pub(crate) mod kinds;
pub(crate) mod lifecycle;
pub(crate) mod phase;
pub(crate) mod plan;
pub(crate) mod reference;
pub(crate) mod release;
pub(crate) mod report;
pub(crate) mod root_paths;
pub(crate) mod rootfs;

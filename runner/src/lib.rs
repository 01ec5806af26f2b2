//! `migrate`: upgrades Linux hosts and their services to a new release from
//! inside a container built from the target release.
//!
//! - [`host`]: the `migrate` binary's side (checks, podman, rendering, report).
//! - [`agent`]: the `migrate-agent` binary inside the migration image.
//! - [`steps`]: the step kinds the agent runs, one module per kind.
//! - [`event`]: the agent -> host protocol; [`report`]: the run report.

pub mod agent;
pub mod cli;
pub mod cmd;
pub mod event;
pub mod exit;
pub mod fsutil;
pub mod host;
pub mod image;
pub mod plan;
pub mod release;
pub mod report;
pub mod rootfs;
pub mod steps;

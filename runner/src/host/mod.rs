//! The host side: everything `migrate` does outside the migration container.

pub mod cleanup;
pub mod config;
pub mod image_cmd;
pub mod journald;
pub mod launch;
pub mod lock;
pub mod pending;
pub mod podman;
pub mod preflight;
pub mod reboot;
pub mod render;
pub mod runlog;
pub mod status;
pub mod systemd;
pub mod unattended;

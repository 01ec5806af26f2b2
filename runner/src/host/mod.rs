//! The host side: everything `migrate` does outside the migration container.

pub mod image_cmd;
pub mod launch;
pub mod lock;
pub mod podman;
pub mod preflight;
pub mod render;
pub mod runlog;
pub mod status;

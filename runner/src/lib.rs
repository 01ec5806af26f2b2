//! `migrate`: upgrades Linux hosts and their services to a new release from
//! inside a container built from the target release.
//!
//! Three layers, importing one way (docs/architecture.md):
//! - `core`: what both sides share (plan model and step-kind registry,
//!   event protocol, report and state journal, releases, exit codes, the
//!   command runner). It imports neither side.
//! - `host`: the `migrate` binary (checks, podman, rendering, report).
//! - `agent`: the `migrate-agent` binary inside the migration image, with
//!   the step kinds under `agent/steps/`.
//!
//! The binaries call [`host_main`] and [`agent_main`]; everything else is
//! private to the crate.

mod agent;
mod core;
mod host;

/// The `migrate` command.
pub fn host_main() -> std::process::ExitCode {
    host::main()
}

/// The `migrate-agent` command, inside the migration image.
pub fn agent_main() -> std::process::ExitCode {
    let code = agent::main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

//! The host side: everything `migrate` does outside the migration container.
//! It imports `core`, never `agent`.

pub(crate) mod bootable;
pub(crate) mod cleanup;
pub(crate) mod cli;
pub(crate) mod config;
pub(crate) mod docs;
pub(crate) mod fleetlock;
pub(crate) mod health;
pub(crate) mod image_cmd;
pub(crate) mod journald;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod pending;
pub(crate) mod podman;
pub(crate) mod preflight;
pub(crate) mod reboot;
pub(crate) mod render;
pub(crate) mod run;
pub(crate) mod runlog;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod systemd;
pub(crate) mod unattended;

use crate::core::exit::exit_code_of;

/// `migrate`: parses the command line, runs the verb, prints the error chain
/// on one line and exits with the error's code.
pub(crate) fn main() -> std::process::ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let filter = match cli.verbose() {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIGRATE_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::from(4);
        }
    };
    let result = runtime.block_on(cli.exec());
    journald::linger();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render::printable(&format!("{e:#}")));
            let code = exit_code_of(&e).code();
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

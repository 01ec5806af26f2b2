//! `migrate`: the host command. All logic lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = migrate::cli::Cli::parse();
    let filter = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
    match runtime.block_on(cli.exec()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = migrate::exit::exit_code_of(&e).code();
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

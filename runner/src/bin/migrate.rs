//! `migrate`: the host command. All logic lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match migrate::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's own message is several.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid usage").trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see migrate --help)");
            return std::process::ExitCode::from(2);
        }
    };
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

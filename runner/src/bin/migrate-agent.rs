//! `migrate-agent`: the entry point inside the migration image.

fn main() -> std::process::ExitCode {
    let code = migrate::agent::main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

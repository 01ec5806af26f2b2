//! `migrate-agent`: the entry point inside the migration image.

fn main() -> std::process::ExitCode {
    migrate::agent_main()
}

//! `migrate`: the host command. All logic lives in the library.

fn main() -> std::process::ExitCode {
    migrate::host_main()
}

//! Exit codes (a contract, see DESIGN.md) and the error type that carries one.
//!
//! Most errors are plain `anyhow` errors with context. Where a failure must end the
//! program with a specific exit code, it is wrapped in [`Failure`]; `main` looks for
//! the first `Failure` in the error chain and otherwise exits with
//! [`ExitCode::StepFailed`].

use std::fmt;

/// The process exit codes of `migrate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExitCode {
    /// Everything succeeded.
    Succeeded = 0,
    /// A step failed (or the run failed for a reason not classified otherwise).
    StepFailed = 1,
    /// Bad usage or bad input: config, plan, image labels, an incompatible root.
    BadInput = 2,
    /// An inhibitor found by a check stopped the run.
    Inhibited = 3,
    /// The environment is not usable: no podman, not root, lock held.
    Environment = 4,
}

impl ExitCode {
    /// The numeric code given to the operating system.
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// An error that decides the exit code of the program.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code this failure ends the program with.
    pub(crate) code: ExitCode,
    inner: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.inner)
    }
}

impl std::error::Error for Failure {}

/// Builds an error that ends the program with `code`.
pub(crate) fn fail(code: ExitCode, message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        inner: anyhow::anyhow!("{message}"),
    })
}

/// Attaches an exit code to the errors of a `Result`.
pub(crate) trait WithExitCode<T> {
    /// On error, wrap it so that it ends the program with `code`.
    fn exit_code(self, code: ExitCode) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> WithExitCode<T> for Result<T, E> {
    fn exit_code(self, code: ExitCode) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(Failure {
                code,
                inner: e.into(),
            })
        })
    }
}

/// The exit code an error ends the program with.
pub(crate) fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(ExitCode::StepFailed, |f| f.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_survives_added_context() {
        let err = Err::<(), _>(fail(ExitCode::Environment, "lock held"))
            .context("starting the run")
            .unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::Environment);
        assert_eq!(format!("{err:#}"), "starting the run: lock held");
    }

    #[test]
    fn unclassified_errors_are_step_failures() {
        assert_eq!(exit_code_of(&anyhow::anyhow!("boom")), ExitCode::StepFailed);
    }

    #[test]
    fn wrapping_keeps_the_whole_message() {
        let err = Err::<(), _>(std::io::Error::other("disk gone"))
            .context("reading plan.toml")
            .exit_code(ExitCode::BadInput)
            .unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::BadInput);
        assert_eq!(format!("{err:#}"), "reading plan.toml: disk gone");
    }
}

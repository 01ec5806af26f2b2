//! What the session needs of a container engine: run one container to its
//! end, handing over every line it prints. Podman is the real one; the
//! session's unit tests drive it with a recorded event stream instead.

use std::future::Future;

use anyhow::Result;

use crate::core::event::OutputStream;
use crate::host::podman::{ContainerOutcome, ContainerSpec, Podman};

/// Runs migration containers.
pub(crate) trait ContainerRuntime {
    /// Creates the container of `spec`, runs it to its end and removes it;
    /// every line of its output goes to `output`. When `cancel` completes
    /// first, the container is stopped in order and the outcome says so.
    fn run(
        &self,
        spec: &ContainerSpec,
        output: impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<ContainerOutcome>>;

    /// Follows a container that is already running (started by a
    /// `migrate` that died) from its first line to its end, then removes
    /// it; `cancel` as in [`ContainerRuntime::run`].
    fn reattach(
        &self,
        name: &str,
        output: impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<ContainerOutcome>>;

    /// Where the containers run, for the log.
    fn describe(&self) -> String;
}

impl ContainerRuntime for Podman {
    fn run(
        &self,
        spec: &ContainerSpec,
        output: impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<ContainerOutcome>> {
        Podman::run(self, spec, output, cancel)
    }

    fn reattach(
        &self,
        name: &str,
        output: impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<ContainerOutcome>> {
        Podman::reattach(self, name, output, cancel)
    }

    fn describe(&self) -> String {
        format!(
            "podman socket {}{}",
            self.socket().display(),
            if self.is_private_service() {
                " (private service)"
            } else {
                ""
            }
        )
    }
}

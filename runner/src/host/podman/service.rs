//! Finding podman's REST socket, or starting a private `podman system service`
//! for the duration of a run when none is listening.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::core::exit::{ExitCode, WithExitCode, fail};

/// The system-wide rootful socket.
pub(crate) const SYSTEM_SOCKET: &str = "/run/podman/podman.sock";

/// How long a private service may take to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `podman system service` started by us; stopped by [`PrivateService::stop`].
#[derive(Debug)]
pub(crate) struct PrivateService {
    child: Child,
    dir: PathBuf,
}

/// Where to talk to podman.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The socket path.
    pub(crate) socket: PathBuf,
    /// The private service behind it, if we started one.
    pub(crate) service: Option<PrivateService>,
}

/// Which podman service a run may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// `CONTAINER_HOST`, else the system socket, else a private service.
    Any,
    /// `CONTAINER_HOST`, else a private service: never the system's
    /// socket-activated `podman.service`, which the upgrade of the running
    /// host's podman package stops in the middle of the run (its prerm
    /// stops `podman.service` and `podman.socket`), taking the run's API
    /// connection with it. A private service is migrate's child, in
    /// migrate's cgroup, and outlives the package's replacement.
    OwnOnLiveHost,
}

/// Finds a listening socket: `CONTAINER_HOST` (unix:// only), then (with
/// [`Use::Any`]) the system socket; starts a private service if neither
/// listens.
pub(crate) async fn find_or_start(usage: Use) -> Result<Endpoint> {
    let mut tried = Vec::new();
    if let Some(host) = std::env::var_os("CONTAINER_HOST") {
        let host = host.to_string_lossy().into_owned();
        let path = parse_container_host(&host).exit_code(ExitCode::Environment)?;
        if listening(&path).await {
            return Ok(Endpoint {
                socket: path,
                service: None,
            });
        }
        tried.push(format!("CONTAINER_HOST={host}"));
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    if usage == Use::OwnOnLiveHost {
        tracing::info!(
            "the running host's podman package may be upgraded by this run: starting a private podman system service instead of using {SYSTEM_SOCKET}"
        );
    } else if listening(&system).await {
        return Ok(Endpoint {
            socket: system,
            service: None,
        });
    } else {
        tried.push(SYSTEM_SOCKET.to_string());
        tracing::info!(
            "no podman socket is listening ({}); starting a private podman system service",
            tried.join(", ")
        );
    }
    let service = PrivateService::start().await?;
    Ok(Endpoint {
        socket: service.socket(),
        service: Some(service),
    })
}

/// The socket path of a `CONTAINER_HOST` value.
pub(crate) fn parse_container_host(value: &str) -> Result<PathBuf> {
    match value.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => bail!(
            "CONTAINER_HOST={value:?} is not supported: migrate talks to a local podman over a unix:///path socket"
        ),
    }
}

/// Resource limits of the process that serves `socket` (from its peer
/// credentials and `/proc/PID/limits`), by podman's names (`nofile`, ...).
/// Empty when they cannot be read.
pub(crate) async fn peer_limits(socket: &Path) -> HashMap<String, (u64, u64)> {
    let Ok(stream) = UnixStream::connect(socket).await else {
        return HashMap::new();
    };
    let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) else {
        return HashMap::new();
    };
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .map(|t| parse_proc_limits(&t))
        .unwrap_or_default()
}

/// Parses `/proc/PID/limits`.
pub(crate) fn parse_proc_limits(text: &str) -> HashMap<String, (u64, u64)> {
    const NAMES: [(&str, &str); 7] = [
        ("Max open files", "nofile"),
        ("Max processes", "nproc"),
        ("Max core file size", "core"),
        ("Max locked memory", "memlock"),
        ("Max stack size", "stack"),
        ("Max pending signals", "sigpending"),
        ("Max msgqueue size", "msgqueue"),
    ];
    let value = |v: &str| match v {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    let mut out = HashMap::new();
    for line in text.lines() {
        for (label, name) in NAMES {
            if let Some(rest) = line.strip_prefix(label) {
                let mut fields = rest.split_whitespace();
                if let (Some(soft), Some(hard)) =
                    (fields.next().and_then(value), fields.next().and_then(value))
                {
                    out.insert(name.to_string(), (soft, hard));
                }
            }
        }
    }
    out
}

/// Whether `program` is in PATH.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The environment variables the podman service is given.
fn podman_needs(name: &std::ffi::OsStr) -> bool {
    const KEEP: [&str; 13] = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "TZ",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "REGISTRY_AUTH_FILE",
        "DOCKER_CONFIG",
    ];
    let name = name.to_string_lossy();
    KEEP.contains(&name.as_ref())
        || ["CONTAINERS_", "XDG_", "PODMAN_", "STORAGE_"]
            .iter()
            .any(|p| name.starts_with(p))
        || ["http_proxy", "https_proxy", "no_proxy"].contains(&name.as_ref())
}

async fn listening(path: &Path) -> bool {
    UnixStream::connect(path).await.is_ok()
}

impl PrivateService {
    async fn start() -> Result<Self> {
        let dir = PathBuf::from(format!("/run/migrate/podman-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {}", dir.display()))
            .exit_code(ExitCode::Environment)?;
        let socket = dir.join("podman.sock");
        let _ = std::fs::remove_file(&socket);
        if !which("podman") {
            return Err(fail(
                ExitCode::Environment,
                "podman is not installed (no `podman` in PATH) and no podman socket is listening",
            ));
        }
        // With setpriv (util-linux), the service gets SIGTERM when migrate
        // dies, however it dies: it does not outlive it.
        let mut command = if which("setpriv") {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "TERM", "--", "podman"]);
            c
        } else {
            Command::new("podman")
        };
        let mut child = command
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            // Only what podman needs: migrate's environment may hold the
            // passwords a plan names, and the service and every container
            // it starts would inherit them.
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| podman_needs(k)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    fail(
                        ExitCode::Environment,
                        "podman is not installed (no `podman` in PATH) and no podman socket is listening",
                    )
                } else {
                    fail(
                        ExitCode::Environment,
                        format!("starting `podman system service`: {e}"),
                    )
                }
            })?;
        let started = Instant::now();
        loop {
            if listening(&socket).await {
                tracing::debug!(socket = %socket.display(), "private podman service is up");
                return Ok(Self { child, dir });
            }
            if let Some(status) = child.try_wait().context("polling podman system service")? {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr).await;
                }
                let _ = std::fs::remove_dir_all(&dir);
                return Err(fail(
                    ExitCode::Environment,
                    format!(
                        "`podman system service` exited ({status}){}",
                        crate::core::cmd::stderr_tail(&stderr)
                    ),
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(fail(
                    ExitCode::Environment,
                    format!(
                        "`podman system service` did not listen on {} within {}s",
                        socket.display(),
                        START_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("podman.sock")
    }

    /// Stops the service (SIGTERM, then SIGKILL after 10 s) and removes its
    /// socket directory.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_limits_are_parsed_by_podman_name() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max stack size            8388608              unlimited            bytes\n\
                    Max processes             32768                32768                processes\n\
                    Max open files            20000                20000                files\n";
        let l = parse_proc_limits(text);
        assert_eq!(l["nproc"], (32768, 32768));
        assert_eq!(l["nofile"], (20000, 20000));
        assert_eq!(l["stack"], (8_388_608, u64::MAX));
    }

    #[tokio::test]
    async fn the_limits_of_a_socket_peer_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let limits = peer_limits(&path).await;
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limits["nofile"], (soft, hard));
    }

    #[test]
    fn container_host_must_be_a_unix_socket() {
        assert_eq!(
            parse_container_host("unix:///run/podman/podman.sock").unwrap(),
            PathBuf::from("/run/podman/podman.sock")
        );
        for bad in [
            "tcp://localhost:8080",
            "ssh://x/run/podman.sock",
            "unix://relative",
            "/run/x.sock",
        ] {
            assert!(parse_container_host(bad).is_err(), "{bad}");
        }
    }
}

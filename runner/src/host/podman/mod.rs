//! The one place that talks to podman. Everything else in the host uses the
//! small API below; the `podman-api` crate's gaps are handled here:
//!
//! - its `wait()` discards the exit code, and its `inspect()` has podman
//!   compute the container's size first (about 50 ms), so the code is read
//!   from the container list; its `attach()` makes that inspect too, so the
//!   attach is a request of our own ([`http::attach`]);
//! - it targets libpod API 4.x, so the server's version is checked on connect
//!   and requests use the lower of the two versions;
//! - its image build takes only a directory, so builds go through
//!   [`build::build`] with a tar stream we assemble ourselves; its image load
//!   wants the archive in memory, so archives are streamed from their file
//!   through [`http::post`] (the pull endpoint speaks only the registry
//!   transport);
//! - containers are started by the podman service process, which may run with
//!   lower resource limits than we do (podman lowers its own `nproc`), so the
//!   limits asked for are clamped to that process's (found through the
//!   socket's peer credentials): asking for more fails where limits cannot be
//!   raised.

mod auth;
pub(crate) mod build;
mod http;
pub(crate) mod service;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts,
    ContainerLogsOpts, ContainerStopOpts, ImageListFilter, ImageListOpts, ImagesRemoveOpts,
    PullOpts,
};
use podman_api::{ApiVersion, conn::TtyChunk, models};

use crate::core::event::OutputStream;
use crate::core::exit::{ExitCode, WithExitCode, fail};
pub(crate) use build::BuildRequest;

/// Oldest libpod API this adapter works with.
const MIN_API_MAJOR: usize = 4;

/// A connection to podman, and the private service behind it if we started one.
pub(crate) struct Podman {
    api: podman_api::Podman,
    endpoint: service::Endpoint,
    api_version: String,
    /// Limits of the process serving the socket, by podman's names.
    service_limits: HashMap<String, (u64, u64)>,
}

/// What `migrate` needs to know about an image.
#[derive(Clone, Debug)]
pub(crate) struct ImageDetails {
    /// Full image id.
    pub(crate) id: String,
    /// Manifest digest.
    pub(crate) digest: Option<String>,
    /// Tags.
    pub(crate) names: Vec<String>,
    /// `repository@digest` of every manifest podman fetched it by.
    pub(crate) repo_digests: Vec<String>,
    /// The OCI image configuration (labels among it).
    pub(crate) config: oci_spec::image::Config,
}

/// A resource limit given to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rlimit {
    /// Name as podman takes it (`nofile`; podman adds the `RLIMIT_` prefix).
    pub(crate) name: String,
    /// Soft limit.
    pub(crate) soft: u64,
    /// Hard limit.
    pub(crate) hard: u64,
}

/// The container to run.
#[derive(Clone, Debug)]
pub(crate) struct ContainerSpec {
    /// Container name.
    pub(crate) name: String,
    /// Image reference or id.
    pub(crate) image: String,
    /// Command (arguments to the image's entry point).
    pub(crate) command: Vec<String>,
    /// Environment variables.
    pub(crate) env: BTreeMap<String, String>,
    /// Labels identifying the container.
    pub(crate) labels: BTreeMap<String, String>,
    /// Host directories recursively bind-mounted.
    pub(crate) binds: Vec<Bind>,
    /// Resource limits.
    pub(crate) rlimits: Vec<Rlimit>,
    /// Share the host's PID namespace (the running host's own migration);
    /// a root directory's container gets a namespace of its own, so that its
    /// scripts see no host process and no `/proc/1/root` of the host.
    pub(crate) host_pid: bool,
}

/// A host directory recursively bind-mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bind {
    /// The directory on the host.
    pub(crate) source: PathBuf,
    /// Where it appears in the container.
    pub(crate) destination: String,
    /// Whether the container may not write it.
    pub(crate) read_only: bool,
}

/// How a container run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ContainerOutcome {
    /// Exit code of the container's process.
    pub(crate) exit_code: i32,
    /// Whether we stopped it because of `cancel`.
    pub(crate) cancelled: bool,
}

impl Podman {
    /// Connects to podman (see [`service::find_or_start`]) and checks its API
    /// version.
    pub(crate) async fn connect() -> Result<Self> {
        Self::connect_with(service::Use::Any).await
    }

    /// Connects for a run on `root`: on the running host (`/`) through a
    /// service of migrate's own (see [`service::Use::OwnOnLiveHost`]).
    pub(crate) async fn connect_for(root: &std::path::Path) -> Result<Self> {
        Self::connect_with(if root == std::path::Path::new("/") {
            service::Use::OwnOnLiveHost
        } else {
            service::Use::Any
        })
        .await
    }

    async fn connect_with(usage: service::Use) -> Result<Self> {
        let mut endpoint = service::find_or_start(usage).await?;
        match Self::handshake(&endpoint).await {
            Ok((api, api_version, service_limits)) => Ok(Self {
                api,
                endpoint,
                api_version,
                service_limits,
            }),
            Err(e) => {
                if let Some(service) = endpoint.service.take() {
                    service.stop().await;
                }
                Err(e)
            }
        }
    }

    async fn handshake(
        endpoint: &service::Endpoint,
    ) -> Result<(podman_api::Podman, String, HashMap<String, (u64, u64)>)> {
        let probe = podman_api::Podman::unix(&endpoint.socket);
        // `_ping`, not `version`: podman answers `version` by running conmon
        // and the OCI runtime to ask theirs (a third of a second per call).
        let ping = probe
            .ping()
            .await
            .with_context(|| format!("pinging podman at {}", endpoint.socket.display()))
            .exit_code(ExitCode::Environment)?;
        let server = parse_api_version(&ping.libpod_api_version);
        let Some(server) = server.filter(|v| v.major() >= MIN_API_MAJOR) else {
            return Err(fail(
                ExitCode::Environment,
                format!(
                    "podman at {} speaks libpod API {:?}: migrate needs {MIN_API_MAJOR}.0 or newer",
                    endpoint.socket.display(),
                    ping.libpod_api_version,
                ),
            ));
        };
        // Speak the older of the two versions: the server's, or the one the
        // crate was written against.
        let api_version = if server < podman_api::LATEST_API_VERSION {
            server
        } else {
            podman_api::LATEST_API_VERSION
        };
        let api = podman_api::Podman::unix_versioned(&endpoint.socket, api_version);
        let service_limits = service::peer_limits(&endpoint.socket).await;
        tracing::debug!(socket = %endpoint.socket.display(), %api_version, ?service_limits, "connected to podman");
        Ok((api, api_version.to_string(), service_limits))
    }

    /// The socket in use.
    pub(crate) fn socket(&self) -> &Path {
        &self.endpoint.socket
    }

    /// Whether we started a private service for this run.
    pub(crate) fn is_private_service(&self) -> bool {
        self.endpoint.service.is_some()
    }

    /// Disconnects, stopping the private service if we started one.
    pub(crate) async fn shutdown(self) {
        if let Some(service) = self.endpoint.service {
            service.stop().await;
        }
    }

    /// Looks an image up; `Ok(None)` if podman has no such image.
    pub(crate) async fn image(&self, reference: &str) -> Result<Option<ImageDetails>> {
        let image = self.api.images().get(reference);
        let data = match image.inspect().await {
            Ok(d) => d,
            Err(podman_api::Error::Fault { code, .. }) if code.as_u16() == 404 => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("inspecting image {reference}")),
        };
        let config = match &data.config {
            Some(c) => {
                let json = serde_json::to_value(c).context("re-encoding the image config")?;
                serde_json::from_value(json).context("reading the image config")?
            }
            None => oci_spec::image::Config::default(),
        };
        Ok(Some(ImageDetails {
            id: data.id.unwrap_or_default(),
            digest: data.digest,
            names: data.repo_tags.unwrap_or_default(),
            repo_digests: data.repo_digests.unwrap_or_default(),
            config,
        }))
    }

    /// Images carrying `label` (any value).
    pub(crate) async fn images_with_label(&self, label: &str) -> Result<Vec<ImageDetails>> {
        let opts = ImageListOpts::builder()
            .filter([ImageListFilter::LabelKey(label.to_string())])
            .build();
        let list = self
            .api
            .images()
            .list(&opts)
            .await
            .context("listing images")?;
        let mut out = Vec::new();
        for summary in list {
            if let Some(id) = summary.id
                && let Some(d) = self.image(&id).await?
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Builds an image; `progress` gets each line of build output.
    pub(crate) async fn build(
        &self,
        req: &BuildRequest<'_>,
        progress: impl FnMut(&str),
    ) -> Result<Option<String>> {
        build::build(&self.endpoint.socket, &self.api_version, req, progress).await
    }

    /// Containers carrying label `key=value`: all of them, or the running.
    async fn labelled(
        &self,
        key: &str,
        value: &str,
        all: bool,
    ) -> Result<Vec<models::ListContainer>> {
        let opts = ContainerListOpts::builder()
            .all(all)
            .filter([ContainerListFilter::LabelKeyVal(key.into(), value.into())])
            .build();
        self.api
            .containers()
            .list(&opts)
            .await
            .context("listing containers")
    }

    /// Names of containers carrying label `key=value`.
    pub(crate) async fn containers_with_label(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>> {
        Ok(self
            .labelled(key, value, true)
            .await?
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()).or(c.id))
            .collect())
    }

    /// Pulls `reference` from a registry (`docker://` optional), or loads an
    /// archive (`oci-archive:PATH` or `docker-archive:PATH`, an optional
    /// `:NAME` after the path ignored: the archive's own names are kept);
    /// `progress` gets podman's progress lines. Returns the image id.
    pub(crate) async fn pull(&self, reference: &str, progress: impl FnMut(&str)) -> Result<String> {
        match archive_path(reference) {
            Some(path) => self.load(reference, &path).await,
            None => {
                let name = reference.strip_prefix("docker://").unwrap_or(reference);
                self.pull_from_registry(name, progress).await
            }
        }
    }

    async fn pull_from_registry(
        &self,
        reference: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<String> {
        let mut opts = PullOpts::builder().reference(reference).quiet(false);
        if let Some(credentials) = auth::from_env(reference)? {
            opts.auth(credentials);
        }
        let opts = opts.build();
        let images = self.api.images();
        let mut stream = images.pull(&opts);
        let mut id = None;
        while let Some(item) = stream.next().await {
            let report = item.with_context(|| format!("pulling {reference}"))?;
            if let Some(e) = report.error {
                bail!("pulling {reference}: {}", e.trim());
            }
            for line in report.stream.iter().flat_map(|s| s.lines()) {
                if !line.trim().is_empty() {
                    progress(line.trim());
                }
            }
            if let Some(i) = report
                .id
                .or_else(|| report.images.and_then(|v| v.into_iter().next()))
            {
                id = Some(i);
            }
        }
        id.with_context(|| format!("pulling {reference}: podman reported no image"))
    }

    /// `POST /libpod/images/load` with the archive streamed from its file.
    async fn load(&self, reference: &str, path: &Path) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct LoadReport {
            #[serde(rename = "Names", default)]
            names: Vec<String>,
        }
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("loading {reference}: opening {}", path.display()))?;
        let len = file.metadata().await?.len();
        let mut response = http::post(
            &self.endpoint.socket,
            &format!("/v{}/libpod/images/load", self.api_version),
            "application/x-tar",
            file,
            len,
        )
        .await
        .with_context(|| format!("loading {reference}"))?;
        if response.status != 200 {
            let status = response.status;
            bail!(
                "loading {reference}: podman refused it (HTTP {status}): {}",
                response.error_text().await?
            );
        }
        let body = response.text().await?;
        let report: LoadReport = serde_json::from_slice(&body).with_context(|| {
            format!(
                "loading {reference}: unexpected answer {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        let name = report
            .names
            .into_iter()
            .next()
            .with_context(|| format!("loading {reference}: podman reported no image"))?;
        let image = self
            .image(&name)
            .await?
            .with_context(|| format!("loading {reference}: podman has no image {name}"))?;
        Ok(image.id)
    }

    /// Removes a container (stopping it first if it still runs).
    pub(crate) async fn remove_container(&self, name: &str) -> Result<()> {
        self.api
            .containers()
            .get(name)
            .delete(
                &ContainerDeleteOpts::builder()
                    .force(true)
                    .volumes(true)
                    .build(),
            )
            .await
            .with_context(|| format!("removing container {name}"))
    }

    /// Removes one image by id, without force: podman refuses while a
    /// container uses it (the crate's `Image::remove` always forces, which
    /// would remove those containers too).
    pub(crate) async fn remove_image(&self, id: &str) -> Result<()> {
        let report = self
            .api
            .images()
            .remove(
                &ImagesRemoveOpts::builder()
                    .images([id])
                    .force(false)
                    .build(),
            )
            .await
            .with_context(|| format!("removing image {id}"))?;
        match report.errors.unwrap_or_default().first() {
            Some(e) => bail!("removing image {id}: {e}"),
            None => Ok(()),
        }
    }

    /// Creates the container, streams its output line by line to `output`
    /// while it runs, reads its exit code and removes it. When `cancel`
    /// completes first, the container is stopped (SIGTERM, then SIGKILL after
    /// 10 s) and the outcome says so. The container is removed whatever
    /// happens after it was created.
    pub(crate) async fn run(
        &self,
        spec: &ContainerSpec,
        mut output: impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> Result<ContainerOutcome> {
        let mut spec = spec.clone();
        clamp_limits(&mut spec.rlimits, &self.service_limits);
        let spec = &spec;
        let created = self
            .api
            .containers()
            .create(&create_opts(spec))
            .await
            .with_context(|| format!("creating container {} from {}", spec.name, spec.image))?;
        let container = self.api.containers().get(&created.id);
        let result = async {
            let frames = http::attach(
                &self.endpoint.socket,
                &format!(
                    "/v{}/libpod/containers/{}/attach?stdout=true&stderr=true&stream=true",
                    self.api_version, created.id
                ),
            )
            .await
            .context("attaching to the container")?;
            container
                .start(None)
                .await
                .context("starting the container")?;
            tracing::debug!(container = %spec.name, "started");
            let reader = futures_util::stream::unfold(frames, |mut frames| async move {
                let chunk = match frames.next().await {
                    Ok(Some((2, bytes))) => Ok(TtyChunk::StdErr(bytes)),
                    Ok(Some((0, bytes))) => Ok(TtyChunk::StdIn(bytes)),
                    Ok(Some((_, bytes))) => Ok(TtyChunk::StdOut(bytes)),
                    Ok(None) => return None,
                    Err(e) => Err(e),
                };
                Some((chunk, frames))
            });
            self.follow(&container, &spec.name, reader, &mut output, cancel)
                .await
        }
        .await;
        both(result, self.remove_container(&spec.name).await)
    }

    /// A migration container of `root` that is still running (its host
    /// process died): its name and run id.
    pub(crate) async fn running_for_root(
        &self,
        label_root: &str,
        root: &str,
        label_run_id: &str,
    ) -> Result<Option<(String, String)>> {
        let running = self.labelled(label_root, root, false).await?;
        Ok(running.into_iter().find_map(|c| {
            let name = c.names.and_then(|n| n.into_iter().next()).or(c.id)?;
            let run_id = c.labels.and_then(|l| l.get(label_run_id).cloned())?;
            Some((name, run_id))
        }))
    }

    /// Follows a running container's whole output from its start (podman
    /// keeps it), to its end, then removes it: how a new `migrate`
    /// re-attaches to a migration whose host process died.
    pub(crate) async fn reattach(
        &self,
        name: &str,
        mut output: impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> Result<ContainerOutcome> {
        let container = self.api.containers().get(name);
        let result = async {
            let logs = container.logs(
                &ContainerLogsOpts::builder()
                    .follow(true)
                    .stdout(true)
                    .stderr(true)
                    .build(),
            );
            self.follow(&container, name, logs, &mut output, cancel)
                .await
        }
        .await;
        both(result, self.remove_container(name).await)
    }

    /// Reads a container's output stream to its end (stopping the container
    /// in order when `cancel` completes first), then its exit code.
    async fn follow<S, E>(
        &self,
        container: &podman_api::api::Container,
        name: &str,
        reader: S,
        output: &mut impl FnMut(OutputStream, &str),
        cancel: impl Future<Output = ()>,
    ) -> Result<ContainerOutcome>
    where
        S: futures_util::Stream<Item = std::result::Result<TtyChunk, E>>,
        E: std::fmt::Display,
    {
        {
            let mut reader = std::pin::pin!(reader);
            let mut lines = LineSplitter::default();
            let mut cancelled = false;
            let mut output = |s: OutputStream, l: &str| output(s, l);
            tokio::pin!(cancel);
            loop {
                tokio::select! {
                    chunk = reader.next() => match chunk {
                        Some(Ok(TtyChunk::StdOut(b))) => lines.push(OutputStream::Stdout, &b, &mut output),
                        Some(Ok(TtyChunk::StdErr(b))) => lines.push(OutputStream::Stderr, &b, &mut output),
                        Some(Ok(TtyChunk::StdIn(_))) => {}
                        Some(Err(e)) => {
                            tracing::warn!("reading container output: {e}");
                            break;
                        }
                        None => break,
                    },
                    () = &mut cancel, if !cancelled => {
                        cancelled = true;
                        let _ = container
                            .stop(&ContainerStopOpts::builder().timeout(10).build())
                            .await;
                    }
                }
            }
            lines.flush(&mut output);
            tracing::debug!(container = %name, "output ended");
            let exit_code = self.exit_code(container).await?;
            tracing::debug!(container = %name, exit_code, "exited");
            Ok(ContainerOutcome {
                exit_code,
                cancelled,
            })
        }
    }

    /// The exit code of a container whose output ended: waits (up to a minute)
    /// for podman to record that it exited, then reads the code. Asked again
    /// after 10 ms, then less often (every 100 ms at most): it usually exits
    /// right after its output ends. Asked through the container list, which
    /// has the code: podman-api's inspect has podman compute the container's
    /// size first (about 50 ms).
    async fn exit_code(&self, container: &podman_api::api::Container) -> Result<i32> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        // The container as it was asked for: by id (a new run) or by name
        // (a re-attached one; podman matches names as patterns, so the
        // name must be the container's own).
        let wanted = container.id().to_string();
        let by_id = wanted.len() == 64 && wanted.bytes().all(|b| b.is_ascii_hexdigit());
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([if by_id {
                ContainerListFilter::Id(container.id().clone())
            } else {
                ContainerListFilter::Name(wanted.clone())
            }])
            .build();
        while started.elapsed() < Duration::from_secs(60) {
            let listed = self
                .api
                .containers()
                .list(&opts)
                .await
                .context("asking podman for the container's state")?;
            let Some(c) = listed.into_iter().find(|c| {
                c.id.as_deref() == Some(wanted.as_str())
                    || c.names.as_ref().is_some_and(|n| n.contains(&wanted))
            }) else {
                bail!("podman has no container {wanted} any more");
            };
            // `stopped`: the process exited; `exited`: and podman cleaned up.
            if matches!(c.state.as_deref(), Some("exited" | "stopped")) {
                return c
                    .exit_code
                    .context("podman reported no exit code for the container");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        bail!("the container's output ended but it did not exit within a minute")
    }
}

/// Lowers each limit's hard value to the service process's hard limit (what
/// it can grant without privilege), and the soft value to the hard one.
/// A container's outcome, unless it or its removal failed (both said).
fn both(result: Result<ContainerOutcome>, removed: Result<()>) -> Result<ContainerOutcome> {
    match (result, removed) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Ok(_), Err(e)) | (Err(e), Ok(())) => Err(e),
        (Err(e), Err(r)) => Err(e.context(format!("also: {r:#}"))),
    }
}

fn clamp_limits(limits: &mut [Rlimit], service: &HashMap<String, (u64, u64)>) {
    for limit in limits {
        if let Some((_, hard)) = service.get(&limit.name) {
            limit.hard = limit.hard.min(*hard);
            limit.soft = limit.soft.min(limit.hard);
        }
    }
}

/// A libpod API version as podman reports it (the `Libpod-API-Version`
/// header of `_ping`). Not the `API-Version` header or the `ApiVersion` of the
/// version response: those are the Docker-compatible API's (e.g. 1.41), which
/// is why the crate's own `adjust_api_version` must not be used.
/// The file of an `oci-archive:` or `docker-archive:` reference: the text
/// after the transport, or its shortest prefix before a `:` that is a file
/// (`oci-archive:PATH:NAME`, where NAME may hold `:` too).
fn archive_path(reference: &str) -> Option<PathBuf> {
    let rest = ["oci-archive:", "docker-archive:"]
        .iter()
        .find_map(|t| reference.strip_prefix(t))?;
    let file = rest
        .match_indices(':')
        .map(|(i, _)| Path::new(&rest[..i]))
        .find(|p| p.is_file())
        .unwrap_or(Path::new(rest));
    Some(file.to_path_buf())
}

fn parse_api_version(text: &str) -> Option<ApiVersion> {
    text.trim().parse().ok()
}

fn create_opts(spec: &ContainerSpec) -> ContainerCreateOpts {
    let ns = |mode: &str| models::Namespace {
        nsmode: Some(mode.into()),
        value: None,
    };
    ContainerCreateOpts::builder()
        .name(&spec.name)
        .image(&spec.image)
        .command(&spec.command)
        .env(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .labels(spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .privileged(true)
        .net_namespace(ns("host"))
        .pid_namespace(ns(if spec.host_pid { "host" } else { "private" }))
        .terminal(false)
        .stdin(false)
        .mounts(spec.binds.iter().map(|b| models::ContainerMount {
            destination: Some(b.destination.clone()),
            source: Some(b.source.display().to_string()),
            _type: Some("bind".into()),
            options: Some(vec![
                "rbind".into(),
                if b.read_only { "ro" } else { "rw" }.into(),
            ]),
            uid_mappings: None,
            gid_mappings: None,
        }))
        .r_limits(spec.rlimits.iter().map(|r| models::PosixRlimit {
            type_: Some(r.name.clone()),
            soft: Some(r.soft),
            hard: Some(r.hard),
        }))
        .build()
}

/// Reassembles lines from the chunks of two output streams.
#[derive(Default)]
struct LineSplitter {
    pending: HashMap<&'static str, Vec<u8>>,
}

impl LineSplitter {
    fn key(stream: OutputStream) -> &'static str {
        match stream {
            OutputStream::Stdout => "out",
            OutputStream::Stderr => "err",
        }
    }

    fn push(
        &mut self,
        stream: OutputStream,
        bytes: &[u8],
        out: &mut impl FnMut(OutputStream, &str),
    ) {
        let buf = self.pending.entry(Self::key(stream)).or_default();
        buf.extend_from_slice(bytes);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out(
                stream,
                String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']),
            );
        }
    }

    fn flush(&mut self, out: &mut impl FnMut(OutputStream, &str)) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            if let Some(buf) = self.pending.remove(Self::key(stream))
                && !buf.is_empty()
            {
                out(stream, &String::from_utf8_lossy(&buf));
            }
        }
    }
}

#[cfg(test)]
mod tests;

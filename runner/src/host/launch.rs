//! `migrate run`: from the checks on the host to the report, with the agent
//! doing the work inside the migration container.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use nix::sys::resource::{Resource, getrlimit};

use super::lock::RootLock;
use super::podman::{ContainerSpec, Podman, Rlimit};
use super::preflight;
use super::render::{OutputFormat, Renderer};
use super::runlog::RunLog;
use crate::event::{DecodeError, Envelope, Event, OutputStream};
use crate::exit::{ExitCode, WithExitCode, fail};
use crate::image::ImageLabels;
use crate::release::OsRelease;
use crate::report::{ImageInfo, Report, RunResult, SourceInfo};

/// Where the root is mounted in the migration container.
pub const CONTAINER_ROOT: &str = "/system-root";
/// Label on the migration container: the run id.
pub const LABEL_RUN_ID: &str = "io.migrate.run-id";
/// Label on the migration container: the migrated root.
pub const LABEL_ROOT: &str = "io.migrate.root";

/// Options of `migrate run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The root to migrate.
    pub root: PathBuf,
    /// `--image`.
    pub image: Option<String>,
    /// `--output`.
    pub output: OutputFormat,
    /// `-v` count.
    pub verbose: u8,
}

/// Runs a migration. Returns on success; every failure is an error carrying
/// its exit code.
pub async fn run(opts: &RunOptions) -> Result<()> {
    preflight::require_root()?;
    let (root, source) = preflight::inspect_root(&opts.root)?;
    let reference = preflight::image_reference(opts.image.as_deref(), &source)?;
    let podman = Podman::connect().await?;
    let result = run_with(&podman, opts, &root, &reference).await;
    podman.shutdown().await;
    result
}

async fn run_with(podman: &Podman, opts: &RunOptions, root: &Path, reference: &str) -> Result<()> {
    let (image, labels) = preflight::inspect_image(podman, reference).await?;
    let source = OsRelease::read_from_root(root).exit_code(ExitCode::BadInput)?;
    preflight::check_compatible(&labels, reference, &source)?;

    // Nothing in the root has been touched up to here.
    let _lock = RootLock::acquire(root)?;
    // Another run may have finished between our checks and the lock.
    let source = OsRelease::read_from_root(root).exit_code(ExitCode::BadInput)?;
    preflight::check_compatible(&labels, reference, &source)?;

    let run_id = new_run_id();
    let report = Report::new(
        &run_id,
        root,
        ImageInfo {
            reference: reference.to_string(),
            id: image.id.clone(),
            digest: image.digest.clone(),
        },
        SourceInfo {
            release: source.release(),
            pretty_name: source.pretty_name(),
        },
        labels.target.clone(),
    );
    report.write(root).exit_code(ExitCode::Environment)?;
    let mut log = RunLog::open(root).exit_code(ExitCode::Environment)?;
    log.host(&format!(
        "run {run_id} started: root {} ({}), image {reference} ({}), podman socket {}{}",
        root.display(),
        source.pretty_name(),
        image.id,
        podman.socket().display(),
        if podman.is_private_service() {
            " (private service)"
        } else {
            ""
        }
    ));

    let mut renderer = Renderer::new(opts.output, opts.verbose, std::io::stdout().is_terminal());
    renderer.note(&format!(
        "migrating {} ({}) to {} with {reference}",
        root.display(),
        source.pretty_name(),
        labels.target
    ));

    let spec = container_spec(&run_id, root, reference, &labels, opts.verbose);
    let session = Mutex::new(Session {
        root,
        renderer,
        log,
        report,
        finished: false,
        protocol_error: None,
    });
    let ticker = async {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            lock(&session).renderer.tick();
        }
    };
    let outcome = tokio::select! {
        o = podman.run(&spec, |stream, line| lock(&session).line(stream, line), shutdown_signal()) => o,
        () = ticker => unreachable!("the ticker never ends"),
    };
    let mut session = session.into_inner().unwrap_or_else(|p| p.into_inner());
    session.renderer.finish();

    let (result, code, message) = match outcome {
        Err(e) => (
            RunResult::Failed,
            ExitCode::Environment,
            Some(format!("running the migration container: {e:#}")),
        ),
        Ok(o) if o.cancelled => (
            RunResult::Interrupted,
            ExitCode::StepFailed,
            Some("interrupted by a signal; run `migrate run` again to continue".to_string()),
        ),
        Ok(o) => interpret_exit(
            o.exit_code,
            session.finished,
            session.report.message.clone(),
        ),
    };
    let message = message.or(session.protocol_error.take());
    session.report.finish(result, code.code(), message.clone());
    session.log.host(&format!(
        "run {run_id} ended: {result:?}, exit code {}{}",
        code.code(),
        message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ));
    session
        .report
        .write(root)
        .exit_code(ExitCode::Environment)?;
    if opts.output == OutputFormat::Human {
        print!("{}", session.report.summary());
        println!(
            "report: {}\nlog:    {}",
            root.join(crate::report::REPORT_PATH).display(),
            session.log.path().display()
        );
    }
    match result {
        RunResult::Succeeded => Ok(()),
        _ => Err(fail(
            code,
            format!(
                "{} (log: {})",
                message.unwrap_or_else(|| "the run failed".into()),
                session.log.path().display()
            ),
        )),
    }
}

/// What the agent's exit code means for the run.
fn interpret_exit(
    exit_code: i32,
    finished: bool,
    agent_message: Option<String>,
) -> (RunResult, ExitCode, Option<String>) {
    match exit_code {
        0 if finished => (RunResult::Succeeded, ExitCode::Succeeded, None),
        0 => (
            RunResult::Failed,
            ExitCode::StepFailed,
            Some("the agent exited without finishing the run".into()),
        ),
        1 => (RunResult::Failed, ExitCode::StepFailed, agent_message),
        2 => (RunResult::Failed, ExitCode::BadInput, agent_message),
        3 => (RunResult::Failed, ExitCode::Inhibited, agent_message),
        4 => (RunResult::Failed, ExitCode::Environment, agent_message),
        125..=127 => (
            RunResult::Failed,
            ExitCode::Environment,
            Some(format!(
                "the migration container could not run its agent (exit code {exit_code})"
            )),
        ),
        n if n > 128 => (
            RunResult::Failed,
            ExitCode::StepFailed,
            Some(format!("the agent was killed by signal {}", n - 128)),
        ),
        n => (
            RunResult::Failed,
            ExitCode::StepFailed,
            Some(agent_message.unwrap_or_else(|| format!("the agent exited with code {n}"))),
        ),
    }
}

/// Everything that reacts to the container's output.
struct Session<'a> {
    root: &'a Path,
    renderer: Renderer,
    log: RunLog,
    report: Report,
    finished: bool,
    protocol_error: Option<String>,
}

impl Session<'_> {
    fn line(&mut self, stream: OutputStream, line: &str) {
        if stream == OutputStream::Stdout {
            match Envelope::decode(line) {
                Ok(env) => return self.event(&env),
                Err(DecodeError::NotAnEvent) => {}
                Err(e) => {
                    if self.protocol_error.is_none() {
                        self.protocol_error = Some(e.to_string());
                    }
                }
            }
        }
        self.log.raw(stream, line);
        self.renderer.raw(stream, line);
    }

    fn event(&mut self, env: &Envelope) {
        self.log.event(env);
        self.renderer.event(env);
        self.report.apply(env);
        match env.event {
            Event::RunFinished { .. } => self.finished = true,
            Event::Output { .. } | Event::Progress { .. } => return,
            _ => {}
        }
        if let Err(e) = self.report.write(self.root) {
            self.log
                .host(&format!("could not update the report: {e:#}"));
        }
    }
}

fn lock<'m, T>(m: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn container_spec(
    run_id: &str,
    root: &Path,
    reference: &str,
    labels: &ImageLabels,
    verbose: u8,
) -> ContainerSpec {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    ContainerSpec {
        name: format!("migrate-{run_id}"),
        image: reference.to_string(),
        command: vec![
            "run".into(),
            "--root".into(),
            CONTAINER_ROOT.into(),
            "--run-id".into(),
            run_id.into(),
        ],
        env: BTreeMap::from([("MIGRATE_LOG".to_string(), level.to_string())]),
        labels: BTreeMap::from([
            (LABEL_RUN_ID.to_string(), run_id.to_string()),
            (LABEL_ROOT.to_string(), root.display().to_string()),
            (crate::image::LABEL_IMAGE.to_string(), labels.image.clone()),
        ]),
        binds: vec![(root.to_path_buf(), CONTAINER_ROOT.to_string())],
        rlimits: own_rlimits(),
    }
}

/// The limits this process runs under, for the container: a container asking
/// for more than its caller has fails to start where raising limits is not
/// permitted.
fn own_rlimits() -> Vec<Rlimit> {
    [
        (Resource::RLIMIT_NOFILE, "nofile"),
        (Resource::RLIMIT_NPROC, "nproc"),
        (Resource::RLIMIT_CORE, "core"),
        (Resource::RLIMIT_MEMLOCK, "memlock"),
        (Resource::RLIMIT_STACK, "stack"),
        (Resource::RLIMIT_SIGPENDING, "sigpending"),
        (Resource::RLIMIT_MSGQUEUE, "msgqueue"),
    ]
    .into_iter()
    .filter_map(|(res, name)| {
        getrlimit(res).ok().map(|(soft, hard)| Rlimit {
            name: name.to_string(),
            soft,
            hard,
        })
    })
    .collect()
}

/// A run id: UTC time plus a few bits that differ between processes.
fn new_run_id() -> String {
    let now = std::time::SystemTime::now();
    let stamp: String = crate::event::timestamp(now)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{stamp}-{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_exit_codes_map_to_run_results() {
        assert_eq!(interpret_exit(0, true, None).1, ExitCode::Succeeded);
        assert_eq!(interpret_exit(0, false, None).1, ExitCode::StepFailed);
        assert_eq!(interpret_exit(2, true, None).1, ExitCode::BadInput);
        assert_eq!(interpret_exit(3, true, None).1, ExitCode::Inhibited);
        assert_eq!(interpret_exit(127, false, None).1, ExitCode::Environment);
        let (r, c, m) = interpret_exit(137, false, None);
        assert_eq!((r, c), (RunResult::Failed, ExitCode::StepFailed));
        assert!(m.unwrap().contains("signal 9"));
    }

    #[test]
    fn run_ids_are_timestamped() {
        let id = new_run_id();
        assert_eq!(id.len(), 19, "{id}");
        assert!(id.starts_with("20"), "{id}");
    }

    #[test]
    fn the_container_gets_our_own_limits() {
        let limits = own_rlimits();
        let nofile = limits.iter().find(|l| l.name == "nofile").unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((nofile.soft, nofile.hard), (soft, hard));
    }
}

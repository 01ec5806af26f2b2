//! The session with the migration container: everything that reacts to
//! what the agent prints (rendering, the run log, the report) while the
//! container runs, behind [`ContainerRuntime`], so that unit tests drive it
//! with recorded event streams.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use super::runtime::ContainerRuntime;
use super::{LaunchOptions, Prepared, Record, outcome, prepare};
use crate::core::event::{DecodeError, Envelope, Event, OutputStream, Verb};
use crate::core::phase::Phase;
use crate::core::plan::Plan;
use crate::core::report::{ImageInfo, Report, SourceInfo};
use crate::host::journald::{self, Priority};
use crate::host::lock::RootLock;
use crate::host::render::{self, OutputFormat, Renderer};
use crate::host::runlog::RunLog;

/// Which container the session follows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start<'a> {
    /// A new one, for a new run.
    New,
    /// One still running for this root, whose host process died: its whole
    /// output is followed from the start, so the report and the log are
    /// completed as if nothing had happened.
    Reattach {
        /// The container.
        name: &'a str,
        /// Its run.
        run_id: &'a str,
    },
}

/// The ids of the plan's cutover `service` steps that stop services, and of
/// those that start or restart them (for the report's downtime).
fn service_steps(plan: &crate::core::plan::Plan) -> (Vec<String>, Vec<String>) {
    use crate::core::kinds::service::{Action, ServiceOptions};
    let mut out = (Vec::new(), Vec::new());
    for s in plan.steps.iter().filter(|s| {
        s.kind == crate::core::kinds::Kind::Service && s.phase == crate::core::phase::Phase::Cutover
    }) {
        match s.options::<ServiceOptions>().map(|o| o.action) {
            Ok(Action::Stop) => out.0.push(s.id.clone()),
            Ok(Action::Start | Action::Restart) => out.1.push(s.id.clone()),
            _ => {}
        }
    }
    out
}

/// Runs the agent in the migration container and renders, logs and
/// reports what it does. Returns the run's report and its outcome.
pub(crate) async fn run(
    runtime: &impl ContainerRuntime,
    opts: &LaunchOptions,
    p: &Prepared,
    lock: Option<&RootLock>,
    start: Start<'_>,
) -> (Report, Result<()>) {
    let root = p.root.as_path();
    let run_id = match start {
        Start::New => prepare::new_run_id(),
        Start::Reattach { run_id, .. } => run_id.to_string(),
    };
    let image_info = ImageInfo {
        reference: p.reference.clone(),
        id: p.image.id.clone(),
        digest: p.image.digest.clone(),
        pulled: p.pulled,
    };
    let report = Report::new(
        &run_id,
        opts.verb,
        root,
        image_info,
        SourceInfo {
            release: p.source.release(),
            pretty_name: p.source.pretty_name(),
        },
        p.target.clone(),
    );
    // The secrets directory lives until the container ended. A container
    // re-attached to has its spec already.
    let (spec, _secrets) = match start {
        Start::New => match prepare::container_spec(opts, p, &run_id) {
            Ok((spec, secrets)) => (Some(spec), secrets),
            Err(e) => return (report, Err(e)),
        },
        Start::Reattach { .. } => (None, None),
    };
    let mut log = RunLog::new(root);
    log.host(&format!(
        "{} {run_id} started: root {} ({}), image {} ({}), {}",
        opts.verb.name(),
        root.display(),
        p.source.pretty_name(),
        p.reference,
        p.image.id,
        runtime.describe()
    ));
    journald::send(
        Priority::Info,
        journald::ids::STARTED,
        &format!(
            "migrate {} {run_id} started: {} ({}) -> {} with {}",
            opts.verb.name(),
            root.display(),
            p.source.pretty_name(),
            p.target,
            p.reference
        ),
        &outcome::journal_fields(&run_id, opts.verb, root, &[]),
    );
    // A check's JSON output is one report document at the end, not events.
    let check_json = opts.verb == Verb::Check && opts.output == OutputFormat::Json;
    let mut renderer = Renderer::new(
        if check_json {
            OutputFormat::Json
        } else {
            opts.output
        },
        opts.verbose,
        std::io::stdout().is_terminal(),
    );
    if check_json {
        renderer = renderer.quiet();
    }
    renderer.note(&format!(
        "{} {} ({}) -> {} with {}{}",
        match opts.verb {
            Verb::Check => "checking",
            Verb::DryRun => "dry run of",
            Verb::Sync => "syncing",
            Verb::Rollback => "rolling back",
            Verb::Cleanup => "post phase of",
            Verb::Run => "migrating",
            Verb::StepBack => "stepping back an application of",
        },
        root.display(),
        p.source.pretty_name(),
        p.target,
        render::image_shown(&p.reference, p.image.digest.as_deref()),
        if p.resuming {
            " (continuing the unfinished migration)"
        } else {
            ""
        }
    ));
    if let Some(note) = &opts.note {
        renderer.note(note);
        log.host(note);
    }
    if opts.verb == Verb::DryRun
        && let Some(plan) = &p.plan
    {
        show_plan(&mut renderer, plan, opts.output);
    }
    // While the run changes the system, logind must not shut it down.
    let inhibitor = if opts.verb.changes_root() {
        match crate::host::systemd::inhibit(&format!(
            "migrating {} to {} (run {run_id})",
            root.display(),
            p.target
        )) {
            Ok(i) => {
                log.host("holding a logind inhibitor lock (shutdown, sleep) for the run");
                Some(i)
            }
            Err(e) => {
                let line = format!(
                    "no logind inhibitor lock ({e:#}): nothing stops a shutdown during the run"
                );
                if root == Path::new("/") {
                    renderer.note(&format!("warning: {line}"));
                }
                log.host(&line);
                None
            }
        }
    } else {
        None
    };

    let session = Mutex::new(Session {
        root,
        verb: opts.verb,
        record: opts.record,
        renderer,
        log,
        report,
        lock,
        phases: BTreeMap::new(),
        finished: false,
        protocol_error: None,
        write_error: None,
        service_steps: p.plan.as_ref().map(service_steps).unwrap_or_default(),
    });
    // A rollback changes the root from its start; one on a snapshot's copy
    // once its first step starts, after the agent copied the migration's
    // records (and so its log) into the copy.
    if opts.verb == Verb::Rollback && p.restored_from.is_none() {
        guard(&session).begin_changes();
    }
    if let Start::Reattach { name, .. } = start {
        let line = format!(
            "re-attached to {name}: run {run_id} goes on without the migrate that started it; its whole output follows"
        );
        let mut s = guard(&session);
        s.renderer.note(&line);
        s.log.host(&line);
    }
    let ticker = async {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        // A dropped terminal does not stop the migration: SIGHUP is noted,
        // not obeyed.
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = every.tick() => guard(&session).renderer.tick(),
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    guard(&session).log.host(
                        "the terminal hung up; the migration goes on (`migrate run` on this root re-attaches to it)",
                    );
                }
            }
        }
    };
    let output = |stream, line: &str| guard(&session).line(stream, line);
    let container = async {
        match (start, &spec) {
            (Start::Reattach { name, .. }, _) => {
                runtime.reattach(name, output, shutdown_signal()).await
            }
            (Start::New, Some(spec)) => runtime.run(spec, output, shutdown_signal()).await,
            (Start::New, None) => unreachable!("a new run has its spec"),
        }
    };
    let outcome = tokio::select! {
        o = container => o,
        () = ticker => unreachable!("the ticker never ends"),
    };
    drop(inhibitor);
    let mut session = session.into_inner().unwrap_or_else(|e| e.into_inner());
    session.renderer.finish();
    session.conclude(opts, outcome, check_json)
}

/// Prints the resolved plan (for `--dry-run`).
fn show_plan(renderer: &mut Renderer, plan: &Plan, output: OutputFormat) {
    if output == OutputFormat::Json {
        let json = serde_json::json!({ "v": crate::core::event::PROTOCOL_VERSION, "event": "plan", "plan": plan });
        println!("{json}");
        return;
    }
    renderer.note(&format!(
        "plan: {} (hash {})",
        plan.description,
        plan.hash()
    ));
    for s in &plan.steps {
        let options = if s.options.is_empty() {
            String::new()
        } else {
            format!(" {}", serde_json::Value::Object(s.options.clone()))
        };
        renderer.note(&format!(
            "  {:<8} {:<20} {:<20}{options}  [{}]",
            s.phase, s.id, s.kind, s.defined_at
        ));
    }
}

/// Everything that reacts to the container's output.
pub(crate) struct Session<'a> {
    pub(crate) root: &'a Path,
    pub(crate) verb: Verb,
    pub(crate) record: Record,
    pub(crate) renderer: Renderer,
    pub(crate) log: RunLog,
    pub(crate) report: Report,
    pub(crate) lock: Option<&'a RootLock>,
    pub(crate) phases: BTreeMap<String, Phase>,
    pub(crate) finished: bool,
    pub(crate) protocol_error: Option<String>,
    pub(crate) write_error: Option<String>,
    /// The plan's cutover steps that stop services, and that start them.
    pub(crate) service_steps: (Vec<String>, Vec<String>),
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
        match &env.event {
            Event::RunStarted { steps, .. } => {
                self.phases = steps.iter().map(|s| (s.id.clone(), s.phase)).collect();
            }
            Event::StepStarted { step }
                if self.verb.changes_root()
                    && self.phases.get(step).is_some_and(|p| *p != Phase::Check) =>
            {
                self.begin_changes();
            }
            _ => {}
        }
        self.log.event(env);
        self.renderer.event(env);
        self.report.apply(env);
        match env.event {
            Event::RunFinished { .. } => self.finished = true,
            Event::Output { .. } | Event::Progress { .. } => return,
            _ => {}
        }
        if self.log.writing()
            && self.record != Record::LogOnly
            && let Err(e) = self.report.write(self.root)
        {
            self.log
                .host(&format!("could not update the report: {e:#}"));
        }
    }

    /// The run starts changing the root: from now on the log, the report and
    /// the lock holder are written there.
    pub(crate) fn begin_changes(&mut self) {
        if self.log.writing() {
            return;
        }
        let result = (|| -> Result<()> {
            if let Some(lock) = self.lock {
                lock.record_holder()?;
            }
            self.log.start_writing()?;
            if self.record == Record::LogOnly {
                return Ok(());
            }
            Report::keep_previous(self.root, &self.report.run_id)?;
            self.report.write(self.root)
        })();
        if let Err(e) = result {
            self.write_error.get_or_insert(format!("{e:#}"));
        }
    }
}

fn guard<'m, T>(m: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    use std::future::Future;
    use std::path::PathBuf;

    use super::*;
    use crate::core::event::{PlannedStep, RunStatus, StepStatus};
    use crate::core::exit::{ExitCode, exit_code_of};
    use crate::core::plan::PlanSource;
    use crate::core::release::OsRelease;
    use crate::core::report::RunResult;
    use crate::host::podman::{ContainerOutcome, ContainerSpec, ImageDetails};

    /// A container engine that replays what an agent printed.
    struct Recorded {
        lines: Vec<(OutputStream, String)>,
        exit_code: i32,
    }

    impl Recorded {
        fn replay(&self, mut output: impl FnMut(OutputStream, &str)) -> ContainerOutcome {
            for (stream, line) in &self.lines {
                output(*stream, line);
            }
            ContainerOutcome {
                exit_code: self.exit_code,
                cancelled: false,
            }
        }
    }

    impl ContainerRuntime for Recorded {
        async fn run(
            &self,
            _spec: &ContainerSpec,
            output: impl FnMut(OutputStream, &str),
            _cancel: impl Future<Output = ()>,
        ) -> anyhow::Result<ContainerOutcome> {
            Ok(self.replay(output))
        }

        async fn reattach(
            &self,
            _name: &str,
            output: impl FnMut(OutputStream, &str),
            cancel: impl Future<Output = ()>,
        ) -> anyhow::Result<ContainerOutcome> {
            // The whole output again, as podman's log has it.
            drop(cancel);
            Ok(self.replay(output))
        }

        fn describe(&self) -> String {
            "a recorded event stream".into()
        }
    }

    const PLAN: &str = "[[step]]\nid = \"release\"\nkind = \"check-release\"\nphase = \"check\"\n\n[[step]]\nid = \"upgrade\"\nkind = \"apt\"\nphase = \"cutover\"\n";

    /// A root directory and what `prepare` would have decided for it.
    fn prepared() -> (tempfile::TempDir, Prepared) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        let os = "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        std::fs::write(dir.path().join("etc/os-release"), os).unwrap();
        let plan = crate::core::plan::resolve(
            &PlanSource {
                name: "plan.toml".into(),
                text: PLAN.into(),
            },
            &[],
        )
        .unwrap();
        let p = Prepared {
            root: dir.path().to_path_buf(),
            reference: "localhost/migrate/debian-13:latest".into(),
            image: ImageDetails {
                id: "0123456789abcdef".into(),
                digest: None,
                names: Vec::new(),
                repo_digests: Vec::new(),
                config: oci_spec::image::Config::default(),
            },
            plan: Some(plan),
            source: OsRelease::parse(os),
            target: "debian:13".parse().unwrap(),
            resuming: false,
            pulled: false,
            restored_from: None,
        };
        (dir, p)
    }

    fn event(e: Event) -> (OutputStream, String) {
        (OutputStream::Stdout, Envelope::now(e).encode())
    }

    fn started() -> (OutputStream, String) {
        event(Event::RunStarted {
            run_id: "r".into(),
            verb: Verb::Run,
            resumed: false,
            source: "debian:12".parse().unwrap(),
            target: "debian:13".parse().unwrap(),
            steps: [("release", Phase::Check), ("upgrade", Phase::Cutover)]
                .into_iter()
                .map(|(id, phase)| PlannedStep {
                    id: id.into(),
                    kind: "apt".into(),
                    phase,
                    description: id.into(),
                })
                .collect(),
        })
    }

    fn step(id: &str, status: StepStatus, message: Option<&str>) -> Vec<(OutputStream, String)> {
        vec![
            event(Event::StepStarted { step: id.into() }),
            event(Event::Output {
                step: Some(id.into()),
                stream: OutputStream::Stdout,
                line: format!("working on {id}"),
            }),
            event(Event::StepFinished {
                step: id.into(),
                status,
                duration_ms: 5,
                message: message.map(str::to_string),
                backups: Vec::new(),
            }),
        ]
    }

    fn finished(status: RunStatus, message: Option<&str>) -> (OutputStream, String) {
        event(Event::RunFinished {
            status,
            message: message.map(str::to_string),
            peak_rss_kb: None,
        })
    }

    /// Runs a session over `lines` ending with `exit_code`.
    fn session(
        lines: Vec<(OutputStream, String)>,
        exit_code: i32,
    ) -> (tempfile::TempDir, Report, anyhow::Result<()>) {
        let (dir, p) = prepared();
        let mut opts = LaunchOptions::new(Verb::Run, p.root.clone());
        opts.output = OutputFormat::Json;
        let runtime = Recorded { lines, exit_code };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (report, result) = rt.block_on(run(&runtime, &opts, &p, None, Start::New));
        (dir, report, result)
    }

    fn written(root: &Path) -> serde_json::Value {
        let path: PathBuf = root.join(crate::core::report::REPORT_PATH);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn log(root: &Path) -> String {
        std::fs::read_to_string(root.join("var/log/migrate/migrate.log")).unwrap()
    }

    #[test]
    fn a_normal_run_succeeds_with_its_report_and_log_in_the_root() {
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        lines.extend(step("upgrade", StepStatus::Succeeded, None));
        lines.push(finished(RunStatus::Succeeded, None));
        let (dir, report, result) = session(lines, 0);
        result.unwrap();
        assert_eq!(report.result, RunResult::Succeeded);
        assert_eq!(report.exit_code, Some(0));
        assert_eq!(written(dir.path())["result"], "succeeded");
        assert_eq!(written(dir.path())["steps"].as_array().unwrap().len(), 2);
        assert!(log(dir.path()).contains("working on upgrade"));
    }

    #[test]
    fn a_failed_step_is_exit_code_1_naming_the_step_and_the_log() {
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        lines.extend(step("upgrade", StepStatus::Failed, Some("apt-get failed")));
        lines.push(finished(
            RunStatus::Failed,
            Some("step upgrade failed: apt-get failed"),
        ));
        let (dir, report, result) = session(lines, 1);
        let err = result.unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::StepFailed);
        let line = format!("{err:#}");
        assert!(
            line.starts_with("step upgrade failed: apt-get failed (log: "),
            "{line}"
        );
        assert_eq!(report.result, RunResult::Failed);
        assert_eq!(written(dir.path())["result"], "failed");
        assert_eq!(written(dir.path())["steps"][1]["status"], "failed");
    }

    #[test]
    fn an_agent_killed_mid_step_fails_the_run_and_says_so() {
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        lines.push(event(Event::StepStarted {
            step: "upgrade".into(),
        }));
        let (dir, report, result) = session(lines, 137);
        let err = result.unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::StepFailed);
        assert!(format!("{err:#}").contains("killed by signal 9"), "{err:#}");
        assert_eq!(report.result, RunResult::Failed);
        assert_eq!(written(dir.path())["result"], "failed");
    }

    #[test]
    fn a_stream_that_ends_without_run_finished_is_a_failure_even_with_exit_code_0() {
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        let (_dir, report, result) = session(lines, 0);
        let err = result.unwrap_err();
        assert_eq!(exit_code_of(&err), ExitCode::StepFailed);
        assert!(
            format!("{err:#}").contains("exited without finishing the run"),
            "{err:#}"
        );
        assert_eq!(report.result, RunResult::Failed);
    }

    #[test]
    fn a_reattached_session_completes_the_report_of_the_run_it_follows() {
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        lines.extend(step("upgrade", StepStatus::Succeeded, None));
        lines.push(finished(RunStatus::Succeeded, None));
        let (dir, p) = prepared();
        let opts = LaunchOptions::new(Verb::Run, p.root.clone());
        let runtime = Recorded {
            lines,
            exit_code: 0,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Start::Reattach {
            name: "migrate-20261201000000-abcd",
            run_id: "20261201000000-abcd",
        };
        let (report, result) = rt.block_on(run(&runtime, &opts, &p, None, start));
        result.unwrap();
        assert_eq!(report.run_id, "20261201000000-abcd");
        assert_eq!(written(dir.path())["run_id"], "20261201000000-abcd");
        assert_eq!(written(dir.path())["result"], "succeeded");
        assert!(log(dir.path()).contains("re-attached to migrate-20261201000000-abcd"));
    }

    #[test]
    fn a_check_only_run_stopped_early_leaves_the_root_untouched() {
        // The agent dies in the check phase: nothing was changed, so the run
        // writes neither log nor report into the root.
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        let (dir, _report, result) = session(lines, 137);
        assert!(result.is_err());
        assert!(!dir.path().join("var").exists());
    }

    #[test]
    fn malformed_lines_are_logged_as_they_came_and_named_when_nothing_else_explains_the_failure() {
        let mut lines = vec![started()];
        lines.extend(step("release", StepStatus::Succeeded, None));
        lines.push(event(Event::StepStarted {
            step: "upgrade".into(),
        }));
        lines.push((OutputStream::Stdout, "plain text from a tool".into()));
        lines.push((
            OutputStream::Stdout,
            "{\"v\":1,\"ts\":\"x\",\"event\":\"step_finished\"}".into(),
        ));
        lines.push((OutputStream::Stderr, "{not json at all".into()));
        let (dir, report, result) = session(lines, 1);
        let err = format!("{:#}", result.unwrap_err());
        assert!(
            err.contains("step_finished") || err.contains("missing field"),
            "{err}"
        );
        assert_eq!(report.result, RunResult::Failed);
        let log = log(dir.path());
        assert!(log.contains("plain text from a tool"), "{log}");
        assert!(log.contains("{not json at all"), "{log}");
        assert!(log.contains("\"event\":\"step_finished\""), "{log}");
    }
}

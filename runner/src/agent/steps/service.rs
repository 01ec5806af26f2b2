//! `service`: stops, starts, enables, disables, masks or unmasks systemd units.
//!
//! - Live (the migrated root is the running host, or the plan names the
//!   system bus socket): through systemd's D-Bus API, on the root's bus
//!   socket; start and stop wait until the unit is active or inactive.
//! - Offline (a root in a directory): by editing the unit symlinks in the
//!   root as `systemctl --root` does; nothing runs there to start or stop.
//!
//! What a plan stops, disables or masks is recorded in the state journal, so
//! that `migrate rollback` can step the services back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{StepContext, StepKind};
use crate::core::event::StepStatus;
use crate::core::journal::ServiceChange;
use crate::core::kinds::service::{Action, ServiceOptions};

/// The system bus socket of a running root.
pub(crate) const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// A `service` step.
pub(crate) struct ServiceStep {
    opts: ServiceOptions,
}

impl ServiceStep {
    /// From the step's options.
    pub(crate) fn new(opts: ServiceOptions) -> Self {
        Self { opts }
    }

    /// The bus socket (root-relative) when the step talks to a running
    /// systemd.
    fn bus(&self, ctx: &StepContext<'_>) -> Option<String> {
        self.opts
            .bus
            .clone()
            .or_else(|| ctx.run.live.then(|| SYSTEM_BUS.to_string()))
    }
}

impl StepKind for ServiceStep {
    fn describe(&self) -> String {
        format!(
            "{} {}",
            capitalized(self.opts.action.name()),
            self.opts.units.join(", ")
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let timeout = Duration::from_secs(self.opts.timeout_s.unwrap_or(90));
        let mut skipped = true;
        for unit in &self.opts.units {
            let (before, after) = match self.bus(ctx) {
                Some(bus) => {
                    let systemd = Systemd::connect(&ctx.run.pristine, &bus)?;
                    let before = systemd.state(unit)?;
                    systemd.act(self.opts.action, unit, timeout)?;
                    (before, systemd.state(unit)?)
                }
                None => {
                    let offline = Offline::new(&ctx.run.pristine);
                    let before = offline.state(unit)?;
                    if !offline.act(self.opts.action, unit)? {
                        ctx.say(format!(
                            "{unit}: the root does not run ({}); nothing to {}",
                            ctx.root().display(),
                            self.opts.action.name()
                        ));
                        continue;
                    }
                    (before, offline.state(unit)?)
                }
            };
            skipped = false;
            ctx.say(format!(
                "{unit}: {} -> {}",
                before.describe(),
                after.describe()
            ));
            record(ctx, unit, self.opts.action, &before, self.bus(ctx));
        }
        Ok(if skipped {
            StepStatus::Skipped
        } else {
            StepStatus::Succeeded
        })
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        for unit in &self.opts.units {
            let state = match self.bus(ctx) {
                Some(bus) => Systemd::connect(&ctx.run.pristine, &bus)?.state(unit)?,
                None => Offline::new(&ctx.run.pristine).state(unit)?,
            };
            ctx.say(format!(
                "would {} {unit} (now {})",
                self.opts.action.name(),
                state.describe()
            ));
        }
        Ok(())
    }
}

/// Records in the state journal what stopping, disabling or masking `unit`
/// changed, so that `migrate rollback` steps it back.
fn record(
    ctx: &StepContext<'_>,
    unit: &str,
    action: Action,
    before: &UnitState,
    bus: Option<String>,
) {
    if matches!(action, Action::Stop | Action::Disable | Action::Mask)
        && let Some(j) = ctx.run.journal.borrow_mut().as_mut()
    {
        j.services.push(ServiceChange {
            unit: unit.to_string(),
            action,
            was_active: before.active == "active",
            was_enabled: before.enabled == "enabled",
            bus,
            app: ctx.step.app.clone(),
        });
    }
}

/// Starts or stops `unit` through the running host's systemd (the root's
/// system bus), for steps of other kinds that must stop a service on a live
/// host (a stop is recorded for `migrate rollback`, as a `service` step's
/// is). Returns the unit's state before.
pub(crate) fn act_live(
    ctx: &StepContext<'_>,
    action: Action,
    unit: &str,
    timeout: Duration,
) -> Result<UnitState> {
    let systemd = Systemd::connect(&ctx.run.pristine, SYSTEM_BUS)?;
    let before = systemd.state(unit)?;
    systemd.act(action, unit, timeout)?;
    record(ctx, unit, action, &before, Some(SYSTEM_BUS.to_string()));
    Ok(before)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// What systemd says about a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnitState {
    /// `active`, `inactive`, `failed`, ... (offline: `not running`).
    pub(crate) active: String,
    /// `enabled`, `disabled`, `masked`, `static`, ...
    pub(crate) enabled: String,
}

impl UnitState {
    fn describe(&self) -> String {
        format!("{}, {}", self.active, self.enabled)
    }
}

/// Steps back what `changes` did (in reverse order): units that were
/// enabled are enabled again, running ones started again, masks removed.
/// Returns one line per action.
pub(crate) fn step_back(pristine: &Path, changes: &[ServiceChange]) -> Result<Vec<String>> {
    let mut said = Vec::new();
    for c in changes.iter().rev() {
        let mut actions = Vec::new();
        if c.action == Action::Mask {
            actions.push(Action::Unmask);
        }
        if c.was_enabled && matches!(c.action, Action::Disable | Action::Mask) {
            actions.push(Action::Enable);
        }
        if c.was_active {
            actions.push(Action::Start);
        }
        for action in actions {
            match &c.bus {
                Some(bus) => Systemd::connect(pristine, bus)?.act(
                    action,
                    &c.unit,
                    Duration::from_secs(90),
                )?,
                None => {
                    Offline::new(pristine).act(action, &c.unit)?;
                }
            }
            let did = match c.action {
                Action::Stop => "stopped",
                Action::Disable => "disabled",
                _ => "masked",
            };
            said.push(format!(
                "{}: {} (the migration had {did} it)",
                c.unit,
                action.name()
            ));
        }
    }
    Ok(said)
}

/// A running systemd, over D-Bus.
struct Systemd {
    conn: zbus::blocking::Connection,
}

const DEST: &str = "org.freedesktop.systemd1";

impl Systemd {
    fn connect(pristine: &Path, bus: &str) -> Result<Self> {
        let socket = crate::core::rootfs::resolve(pristine, bus)?;
        let conn = zbus::blocking::connection::Builder::address(
            format!("unix:path={}", socket.display()).as_str(),
        )?
        .build()
        .with_context(|| format!("connecting to the system bus at {bus} in the root"))?;
        Ok(Self { conn })
    }

    fn manager(&self) -> Result<zbus::blocking::Proxy<'_>> {
        Ok(zbus::blocking::Proxy::new(
            &self.conn,
            DEST,
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )?)
    }

    fn state(&self, unit: &str) -> Result<UnitState> {
        let manager = self.manager()?;
        let path: zbus::zvariant::OwnedObjectPath = manager
            .call("LoadUnit", &(unit,))
            .with_context(|| format!("loading {unit}"))?;
        let props =
            zbus::blocking::Proxy::new(&self.conn, DEST, path, "org.freedesktop.systemd1.Unit")?;
        let active: String = props.get_property("ActiveState")?;
        let enabled: String = props.get_property("UnitFileState")?;
        Ok(UnitState { active, enabled })
    }

    fn act(&self, action: Action, unit: &str, timeout: Duration) -> Result<()> {
        let manager = self.manager()?;
        let units = vec![unit];
        let what = || format!("{action} {unit}");
        match action {
            Action::Start | Action::Stop | Action::Restart => {
                let method = match action {
                    Action::Start => "StartUnit",
                    Action::Stop => "StopUnit",
                    _ => "RestartUnit",
                };
                let _job: zbus::zvariant::OwnedObjectPath = manager
                    .call(method, &(unit, "replace"))
                    .with_context(what)?;
                let want = if action == Action::Stop {
                    "inactive"
                } else {
                    "active"
                };
                self.wait_for(unit, want, timeout)?;
            }
            Action::Enable => {
                let _: (bool, Vec<(String, String, String)>) = manager
                    .call("EnableUnitFiles", &(units, false, true))
                    .with_context(what)?;
                manager.call::<_, _, ()>("Reload", &()).with_context(what)?;
            }
            Action::Disable => {
                let _: Vec<(String, String, String)> = manager
                    .call("DisableUnitFiles", &(units, false))
                    .with_context(what)?;
                manager.call::<_, _, ()>("Reload", &()).with_context(what)?;
            }
            Action::Mask => {
                let _: Vec<(String, String, String)> = manager
                    .call("MaskUnitFiles", &(units, false, true))
                    .with_context(what)?;
                manager.call::<_, _, ()>("Reload", &()).with_context(what)?;
            }
            Action::Unmask => {
                let _: Vec<(String, String, String)> = manager
                    .call("UnmaskUnitFiles", &(units, false))
                    .with_context(what)?;
                manager.call::<_, _, ()>("Reload", &()).with_context(what)?;
            }
        }
        Ok(())
    }

    fn wait_for(&self, unit: &str, want: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let state = self.state(unit)?;
            if state.active == want || (want == "inactive" && state.active == "failed") {
                return Ok(());
            }
            if want == "active" && state.active == "failed" {
                bail!("{unit} failed to start");
            }
            if started.elapsed() > timeout {
                bail!(
                    "{unit} is still {} after {}s",
                    state.active,
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A root that does not run: units are enabled, disabled and masked by their
/// symlinks, as `systemctl --root` does.
struct Offline<'a> {
    root: &'a Path,
}

/// Where unit files live, most specific first.
const UNIT_DIRS: [&str; 4] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
    "usr/local/lib/systemd/system",
];

impl<'a> Offline<'a> {
    fn new(root: &'a Path) -> Self {
        Self { root }
    }

    fn etc(&self) -> PathBuf {
        self.root.join("etc/systemd/system")
    }

    /// The unit file (its path in the root, and as an absolute path inside it).
    fn unit_file(&self, unit: &str) -> Result<(PathBuf, String)> {
        for dir in UNIT_DIRS {
            let p = self.root.join(dir).join(unit);
            let meta = std::fs::symlink_metadata(&p);
            // In /etc, a symlink is a mask or an alias, not the unit itself.
            if meta.is_ok_and(|m| m.is_file()) {
                return Ok((p, format!("/{dir}/{unit}")));
            }
        }
        bail!("no unit file {unit} in the root ({})", UNIT_DIRS.join(", "))
    }

    fn install_section(&self, unit: &str) -> Result<Vec<(String, String)>> {
        let (path, _) = self.unit_file(unit)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(parse_install(&text))
    }

    fn links(&self, unit: &str) -> Result<Vec<PathBuf>> {
        let mut links = Vec::new();
        for (key, value) in self.install_section(unit)? {
            let dir = match key.as_str() {
                "WantedBy" => ".wants",
                "RequiredBy" => ".requires",
                "Alias" => {
                    links.push(self.etc().join(&value));
                    continue;
                }
                _ => continue,
            };
            links.push(self.etc().join(format!("{value}{dir}")).join(unit));
        }
        Ok(links)
    }

    fn masked(&self, unit: &str) -> bool {
        std::fs::read_link(self.etc().join(unit)).is_ok_and(|t| t == Path::new("/dev/null"))
    }

    fn state(&self, unit: &str) -> Result<UnitState> {
        let enabled = if self.masked(unit) {
            "masked".to_string()
        } else {
            let links = self.links(unit)?;
            if links.is_empty() {
                "static".to_string()
            } else if links.iter().any(|l| std::fs::symlink_metadata(l).is_ok()) {
                "enabled".to_string()
            } else {
                "disabled".to_string()
            }
        };
        Ok(UnitState {
            active: "not running".into(),
            enabled,
        })
    }

    /// Does `action`; `false` for start/stop, which have nothing to act on.
    fn act(&self, action: Action, unit: &str) -> Result<bool> {
        match action {
            Action::Enable => {
                let (_, target) = self.unit_file(unit)?;
                for link in self.links(unit)? {
                    if let Some(dir) = link.parent() {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("creating {}", dir.display()))?;
                    }
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&target, &link)
                        .with_context(|| format!("linking {}", link.display()))?;
                }
            }
            Action::Disable => {
                for link in self.links(unit)? {
                    match std::fs::remove_file(&link) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("removing {}", link.display()));
                        }
                    }
                }
            }
            Action::Mask => {
                let path = self.etc().join(unit);
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                    bail!("{unit} has a unit file in /etc/systemd/system; it cannot be masked");
                }
                std::fs::create_dir_all(self.etc())?;
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink("/dev/null", &path)
                    .with_context(|| format!("masking {unit}"))?;
            }
            Action::Unmask => {
                if self.masked(unit) {
                    std::fs::remove_file(self.etc().join(unit))
                        .with_context(|| format!("unmasking {unit}"))?;
                }
            }
            Action::Start | Action::Stop | Action::Restart => return Ok(false),
        }
        Ok(true)
    }
}

/// `[Install]` keys of a unit file, one entry per listed value.
fn parse_install(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_install = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            for value in v.split_whitespace() {
                out.push((k.trim().to_string(), value.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with_unit() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("app.service"),
            "[Unit]\nDescription=App\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nAlias=application.service\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn offline_enable_disable_mask_edit_the_symlinks_like_systemctl_root() {
        let root = root_with_unit();
        let o = Offline::new(root.path());
        assert_eq!(o.state("app.service").unwrap().enabled, "disabled");
        assert!(o.act(Action::Enable, "app.service").unwrap());
        let wants = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants/app.service");
        assert_eq!(
            std::fs::read_link(&wants).unwrap(),
            Path::new("/usr/lib/systemd/system/app.service")
        );
        assert!(
            std::fs::read_link(root.path().join("etc/systemd/system/application.service")).is_ok()
        );
        assert_eq!(o.state("app.service").unwrap().enabled, "enabled");
        assert!(o.act(Action::Disable, "app.service").unwrap());
        assert!(std::fs::symlink_metadata(&wants).is_err());
        assert_eq!(o.state("app.service").unwrap().enabled, "disabled");
        assert!(o.act(Action::Mask, "app.service").unwrap());
        assert_eq!(o.state("app.service").unwrap().enabled, "masked");
        assert!(o.act(Action::Unmask, "app.service").unwrap());
        assert_eq!(o.state("app.service").unwrap().enabled, "disabled");
        assert!(
            !o.act(Action::Stop, "app.service").unwrap(),
            "nothing runs in an offline root"
        );
    }

    #[test]
    fn stepping_back_re_enables_what_was_enabled() {
        let root = root_with_unit();
        let o = Offline::new(root.path());
        o.act(Action::Enable, "app.service").unwrap();
        o.act(Action::Disable, "app.service").unwrap();
        let said = step_back(
            root.path(),
            &[ServiceChange {
                unit: "app.service".into(),
                action: Action::Disable,
                was_active: false,
                was_enabled: true,
                bus: None,
                app: None,
            }],
        )
        .unwrap();
        assert_eq!(
            o.state("app.service").unwrap().enabled,
            "enabled",
            "{said:?}"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let opts = |action: &str, units: &[&str]| {
            crate::core::kinds::check::<ServiceOptions>(
                serde_json::json!({"action": action, "units": units}),
            )
        };
        assert!(opts("reboot", &["a.service"]).is_err());
        assert!(opts("stop", &[]).is_err());
        assert!(opts("stop", &["nodot"]).is_err());
        assert!(opts("stop", &["app.service"]).is_ok());
    }
}

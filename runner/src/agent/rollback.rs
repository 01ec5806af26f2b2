//! `migrate rollback`: returns the root to its safety backup and says
//! honestly what could not be returned.
//!
//! - tar backup: `/etc` is restored exactly (removed files come back, added
//!   ones go, owners, modes and mtimes as they were); packages upgraded since
//!   the backup are listed: they cannot be downgraded without a snapshot.
//! - btrfs/snapper snapshot of a root directory: the host has made a
//!   writable copy of the pre-cutover snapshot and runs the rollback on it
//!   (`--restored-from` names the migrated root): the migration's journal,
//!   report and logs are copied over from the migrated root, so that the
//!   evidence survives, and the journal says the migration was rolled back.
//!   The host then puts the copy in the root's place.
//! - btrfs/snapper snapshot of the running host: a writable copy of the
//!   snapshot, with the migration's records, becomes the default subvolume;
//!   the next boot starts it (`--revert`: the automatic revert after a
//!   failed first boot, recorded as `reverted`).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::core::cmd::CommandExt;
use anyhow::{Context, Result};

use super::mounts;
use super::sink::EventSink;
use crate::agent::steps::backup::{ETC_ARCHIVE, PACKAGES_FILE, restore_etc};
use crate::core::event::{Event, Finding, PlannedStep, Severity, StepStatus, Verb};
use crate::core::exit::{ExitCode, WithExitCode, fail};
use crate::core::journal::Journal;
use crate::core::kinds::backup::Method;
use crate::core::lifecycle::{State, Transition};
use crate::core::phase::Phase;

/// How the host asked for the rollback.
pub(crate) struct How<'a> {
    /// `--etc-only`.
    pub(crate) etc_only: bool,
    /// The root is a snapshot's copy; the migrated root is here.
    pub(crate) restored_from: Option<&'a std::path::Path>,
    /// The root is the running host.
    pub(crate) live: bool,
    /// The automatic revert after a failed first boot.
    pub(crate) revert: bool,
}

impl How<'_> {
    /// The journal's transition when the rollback is done.
    fn transition(&self, complete: bool) -> Transition {
        if self.revert {
            Transition::Revert
        } else {
            Transition::RollBack { complete }
        }
    }
}

/// Rolls the root back. The caller has entered the private mount namespace.
pub(crate) fn rollback(
    root: &std::path::Path,
    run_id: &str,
    how: &How<'_>,
    sink: &EventSink,
) -> Result<()> {
    let (etc_only, restored_from) = (how.etc_only, how.restored_from);
    if let Some(migrated) = restored_from {
        // The snapshot predates the cutover: its journal and logs are
        // older than the migration's own, which replace them.
        copy_evidence(migrated, root).exit_code(ExitCode::Environment)?;
    }
    let mut journal = Journal::load(root)
        .exit_code(ExitCode::BadInput)?
        .ok_or_else(|| {
            fail(
                ExitCode::BadInput,
                "no migration is recorded on this root (no var/lib/migrate/state.json); nothing to roll back",
            )
        })?;
    if journal.state() == State::RolledBack {
        return Err(fail(
            ExitCode::BadInput,
            format!("migration {} was already rolled back", journal.migration_id),
        ));
    }
    // Refused before anything is restored: the lifecycle says whether a
    // rollback may happen now.
    journal
        .state()
        .next(how.transition(true))
        .map_err(|e| fail(ExitCode::BadInput, e))?;
    let backup = journal.backup.clone().ok_or_else(|| {
        fail(
            ExitCode::BadInput,
            format!(
                "migration {} has no safety backup (its cutover never started): nothing was changed that a rollback could undo",
                journal.migration_id
            ),
        )
    })?;
    let snapshot = backup.method != Method::Tar;
    // A root directory's snapshot is put in its place by the host, which
    // then runs this on the copy (`--restored-from`).
    if snapshot && !how.live && restored_from.is_none() {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "migration {}'s safety backup is the {} snapshot {}: a root directory is rolled back from it by `migrate rollback` on the host",
                journal.migration_id, backup.method, backup.location
            ),
        ));
    }
    if restored_from.is_some() && !snapshot {
        return Err(fail(
            ExitCode::BadInput,
            format!(
                "migration {}'s safety backup is a tar of /etc, not a snapshot",
                journal.migration_id
            ),
        ));
    }
    // Without a snapshot, once packages changed, /etc alone would put the
    // old release's configuration over the new release's programs: refused
    // unless asked for by name, and then partial.
    if let Some(at) = journal.packages_changed_at.as_deref().filter(|_| !snapshot) {
        if !etc_only {
            return Err(fail(
                ExitCode::Inhibited,
                format!(
                    "migration {} began changing packages at {at}, and its safety backup is a tar of /etc, not a snapshot: restoring /etc alone would put {}'s configuration over {}'s packages. Continue forward with `migrate run` (it resumes the migration), or restore the system from a full backup; `migrate rollback --etc-only` restores /etc alone and records the rollback as partial. Nothing was changed",
                    journal.migration_id,
                    journal.source.release(),
                    journal.target
                ),
            ));
        }
    }
    // A snapshot is booted back into, not restored here; a tar backup leaves
    // the packages as they are: either makes the rollback partial.
    let partial_by_request = journal.packages_changed_at.is_some() && !snapshot;
    let complete = std::cell::Cell::new(
        restored_from.is_some() || (snapshot && how.live) || (!snapshot && !partial_by_request),
    );
    let mut steps = vec![PlannedStep {
        id: if snapshot { "snapshot" } else { "restore-etc" }.into(),
        kind: "rollback".into(),
        phase: Phase::Cutover,
        description: if restored_from.is_some() {
            format!(
                "Make the root a copy of the {} snapshot {} again",
                backup.method, backup.location
            )
        } else if snapshot && how.live {
            format!(
                "Make a writable copy of the {} snapshot {} the default subvolume for the next boot",
                backup.method, backup.location
            )
        } else {
            "Restore /etc from the safety backup".into()
        },
    }];
    let has_selection = backup.package_manager.is_some();
    if !snapshot && has_selection {
        steps.push(PlannedStep {
            id: "compare-packages".into(),
            kind: "rollback".into(),
            phase: Phase::Cutover,
            description: "Compare the installed packages with the backup".into(),
        });
    }
    // A snapshot's copy has the services as they were before the cutover.
    if !journal.services.is_empty() && !snapshot {
        steps.push(PlannedStep {
            id: "step-back-services".into(),
            kind: "rollback".into(),
            phase: Phase::Cutover,
            description: "Enable and start again the services the migration stopped or disabled"
                .into(),
        });
    }
    sink.emit(Event::RunStarted {
        run_id: run_id.to_string(),
        verb: Verb::Rollback,
        resumed: false,
        source: journal.target.clone(),
        target: journal.source.release(),
        steps,
    });
    let pristine = mounts::pristine_view(root).exit_code(ExitCode::Environment)?;
    mounts::prepare(root).exit_code(ExitCode::Environment)?;

    if restored_from.is_some() {
        step(sink, "snapshot", || {
            say(
                sink,
                "snapshot",
                format!(
                    "the root is a writable copy of the {} snapshot {}, taken before the cutover: every package and file as they were then; the migration's journal, report and logs were copied from the migrated root",
                    backup.method, backup.location
                ),
            );
            Ok(StepStatus::Succeeded)
        })?;
    } else if snapshot && how.live {
        step(sink, "snapshot", || {
            let copy = live_restore(root, &pristine, &journal, how.transition(true))?;
            say(
                sink,
                "snapshot",
                format!(
                    "{copy} is a writable copy of the {} snapshot {} (the system before migration {}), with the migration's journal, report and log; it is the default subvolume now: the next boot starts it",
                    backup.method, backup.location, journal.migration_id
                ),
            );
            finding(
                sink,
                "snapshot",
                Severity::Warning,
                format!(
                    "this system runs {} until it reboots into {copy}",
                    journal.target
                ),
                "reboot to return to the system as it was (`systemctl reboot`)",
            );
            Ok(StepStatus::Succeeded)
        })?;
    } else {
        let dir = pristine.join(&backup.location);
        step(sink, "restore-etc", || {
            let restored = restore_etc(&pristine, &dir.join(ETC_ARCHIVE))?;
            say(
                sink,
                "restore-etc",
                format!(
                    "/etc restored from {}: {} entries written, {} removed that the backup did not have",
                    backup.location,
                    restored.restored,
                    restored.removed.len()
                ),
            );
            for r in restored.removed.iter().take(50) {
                say(sink, "restore-etc", format!("removed {r}"));
            }
            Ok(StepStatus::Succeeded)
        })?;
        if has_selection {
            step(sink, "compare-packages", || {
                let before = std::fs::read_to_string(dir.join(PACKAGES_FILE))
                    .with_context(|| format!("reading {}", dir.join(PACKAGES_FILE).display()))?;
                let manager = backup.package_manager.as_deref().unwrap_or("apt");
                let now = crate::agent::steps::packages::selection_command(manager, root)
                    .run_unchecked()?;
                let changed = package_changes(&before, &String::from_utf8_lossy(&now.stdout));
                if changed.is_empty() {
                    say(
                        sink,
                        "compare-packages",
                        "every package is as it was at the backup".to_string(),
                    );
                } else {
                    complete.set(false);
                    for c in &changed {
                        say(sink, "compare-packages", c.clone());
                    }
                    finding(
                        sink,
                        "compare-packages",
                        Severity::Warning,
                        format!(
                            "{} packages changed since the backup and were not restored (a tar backup holds /etc and the package list, not the packages): {}",
                            changed.len(),
                            changed
                                .iter()
                                .take(10)
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        "reinstall the listed versions from the source release's repositories, or restore the system from a full backup",
                    );
                }
                Ok(StepStatus::Succeeded)
            })?;
        }
    }
    if !journal.services.is_empty() && !snapshot {
        step(sink, "step-back-services", || {
            for line in crate::agent::steps::service::step_back(&pristine, &journal.services)? {
                say(sink, "step-back-services", line);
            }
            Ok(StepStatus::Succeeded)
        })?;
    }
    journal
        .advance(how.transition(complete.get()))
        .map_err(|e| fail(ExitCode::BadInput, e))?;
    journal.save(&pristine).exit_code(ExitCode::Environment)?;
    if partial_by_request {
        return Err(fail(
            ExitCode::StepFailed,
            format!(
                "partial rollback: /etc is {}'s again, the packages stay as the migration left them (see compare-packages); the journal records the migration as partly rolled back",
                journal.source.release()
            ),
        ));
    }
    Ok(())
}

/// The running host's rollback from its snapshot: a writable copy of the
/// pre-cutover snapshot under `/.snapshots`, the migration's records copied
/// into it (its journal saying rolled back, no reboot marker), then made
/// the default subvolume, last, so that a failure before leaves the next
/// boot as it was. Refused, with the copy left ready, where fstab or the
/// kernel command line names the root's subvolume: then the default would
/// not decide the boot. Returns the copy's path in the root.
fn live_restore(
    root: &std::path::Path,
    pristine: &std::path::Path,
    journal: &Journal,
    transition: Transition,
) -> Result<String> {
    let backup = journal.backup.as_ref().context("no safety backup")?;
    let pre = match backup.method {
        Method::Btrfs => backup.location.clone(),
        Method::Snapper => format!("/.snapshots/{}/snapshot", backup.location),
        Method::Tar | Method::Auto => anyhow::bail!("the safety backup is not a snapshot"),
    };
    let pre_rel = pre.trim_start_matches('/');
    if !crate::core::fsutil::is_subvolume(&pristine.join(pre_rel)) {
        anyhow::bail!("the {} snapshot {pre} is gone", backup.method);
    }
    let copy = crate::core::kinds::backup::restored_copy(&journal.migration_id);
    let copy_rel = copy.trim_start_matches('/');
    let btrfs = || crate::agent::steps::chroot(root, "btrfs");
    if std::fs::symlink_metadata(pristine.join(copy_rel)).is_ok() {
        // Left by an earlier attempt: made again from the snapshot.
        btrfs()
            .args(["subvolume", "delete", &copy])
            .run_captured()?;
    }
    btrfs()
        .args(["subvolume", "snapshot", &pre, &copy])
        .run_captured()?;
    let copied = pristine.join(copy_rel);
    // The snapshot holds an empty placeholder where the root has its
    // snapshots subvolume, and nothing can be made in one: a subvolume of
    // its own takes its place, for the restored system's next migration
    // (the snapshots themselves stay in the migrated root's).
    let placeholder = copied.join(".snapshots");
    if std::fs::symlink_metadata(&placeholder).is_ok_and(|m| m.is_dir())
        && !crate::core::fsutil::is_subvolume(&placeholder)
        && std::fs::read_dir(&placeholder).is_ok_and(|mut d| d.next().is_none())
    {
        std::fs::remove_dir(&placeholder)
            .with_context(|| format!("removing {}", placeholder.display()))?;
        btrfs()
            .args(["subvolume", "create", &format!("{copy}/.snapshots")])
            .run_captured()?;
    }
    copy_evidence(pristine, &copied)?;
    let marker = copied.join(crate::core::root_paths::RootPath::Marker.rel());
    if std::fs::symlink_metadata(&marker).is_ok() {
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    }
    let mut restored = journal.clone();
    restored
        .advance(transition)
        .map_err(|e| anyhow::anyhow!(e))?;
    restored.save(&copied)?;
    let fstab = crate::core::fsutil::read_text_limited(&pristine.join("etc/fstab"), 1 << 20)
        .ok()
        .flatten()
        .unwrap_or_default();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(named) = explicit_root_subvolume(&fstab, &cmdline) {
        anyhow::bail!(
            "{copy} is ready (a writable copy of {pre}), but {named}, so the default subvolume does not decide the next boot: point that at {copy} (or remove it), then reboot"
        );
    }
    btrfs()
        .args(["subvolume", "set-default", &copy])
        .run_captured()?;
    Ok(copy)
}

/// What a migration leaves for the record, relative to the root.
const EVIDENCE: [&str; 2] = ["var/lib/migrate", "var/log/migrate"];

/// Replaces the root's journal, reports and logs with the migrated root's.
fn copy_evidence(migrated: &std::path::Path, root: &std::path::Path) -> Result<()> {
    for rel in EVIDENCE {
        let (from, to) = (migrated.join(rel), root.join(rel));
        if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if std::fs::symlink_metadata(&to).is_ok() {
            std::fs::remove_dir_all(&to).with_context(|| format!("removing {}", to.display()))?;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::process::Command::new("cp")
            .args(["-a", "--no-target-directory"])
            .arg(&from)
            .arg(&to)
            .run_captured()
            .with_context(|| format!("copying {rel} from the migrated root"))?;
    }
    Ok(())
}

fn say(sink: &EventSink, step: &str, line: String) {
    sink.output(step, crate::core::event::OutputStream::Stdout, line);
}

fn finding(sink: &EventSink, step: &str, severity: Severity, message: String, hint: &str) {
    sink.emit(Event::Finding {
        step: step.to_string(),
        finding: Finding {
            id: step.to_string(),
            severity,
            message,
            hint: hint.to_string(),
        },
    });
}

fn step(sink: &EventSink, id: &str, f: impl FnOnce() -> Result<StepStatus>) -> Result<()> {
    sink.emit(Event::StepStarted {
        step: id.to_string(),
    });
    let started = Instant::now();
    let result = f();
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, message) = match &result {
        Ok(s) => (*s, None),
        Err(e) => (StepStatus::Failed, Some(format!("{e:#}"))),
    };
    sink.emit(Event::StepFinished {
        step: id.to_string(),
        status,
        duration_ms,
        message: message.clone(),
        backups: Vec::new(),
    });
    match message {
        Some(m) => Err(fail(
            ExitCode::StepFailed,
            format!("rollback step {id} failed: {m}"),
        )),
        None => Ok(()),
    }
}

/// What names the root file system's subvolume explicitly (a `subvol=` or
/// `subvolid=` option of `/` in fstab, or `rootflags=` on the kernel command
/// line), in words; `None` when the default subvolume decides the boot.
fn explicit_root_subvolume(fstab: &str, cmdline: &str) -> Option<String> {
    let names = |opts: &str| {
        opts.split(',')
            .find(|o| o.starts_with("subvol=") || o.starts_with("subvolid="))
            .map(str::to_string)
    };
    for line in fstab.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, "/", _, opts, ..] = fields.as_slice()
            && let Some(o) = names(opts)
        {
            return Some(format!("/etc/fstab mounts / with {o}"));
        }
    }
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("rootflags="))
        .find_map(names)
        .map(|o| format!("the kernel command line mounts / with rootflags={o}"))
}

/// Packages whose version or presence differs: "libc6 2.36-9 -> 2.41-12".
fn package_changes(before: &str, now: &str) -> Vec<String> {
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (name, version, status) = (f.next()?, f.next()?, f.next().unwrap_or("ii"));
                status
                    .starts_with('i')
                    .then(|| (name.to_string(), version.to_string()))
            })
            .collect()
    };
    let (a, b) = (parse(before), parse(now));
    let mut out = Vec::new();
    for (name, old) in &a {
        match b.get(name) {
            Some(new) if new != old => out.push(format!("{name} {old} -> {new}")),
            None => out.push(format!("{name} {old} -> removed")),
            _ => {}
        }
    }
    for (name, new) in &b {
        if !a.contains_key(name) {
            out.push(format!("{name} new {new}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicitly_named_root_subvolume_is_found_in_fstab_or_the_kernel_command_line() {
        let fstab = "# / was on /dev/sda2\nUUID=1 / btrfs defaults,subvol=@ 0 0\nUUID=1 /home btrfs subvol=@home 0 0\n";
        assert_eq!(
            explicit_root_subvolume(fstab, "").as_deref(),
            Some("/etc/fstab mounts / with subvol=@")
        );
        assert_eq!(
            explicit_root_subvolume(
                "UUID=1 / btrfs defaults 0 0\n#UUID=1 / btrfs subvol=@ 0 0\n",
                "ro quiet"
            )
            .as_deref(),
            None
        );
        assert_eq!(
            explicit_root_subvolume(
                "",
                "BOOT_IMAGE=/vmlinuz root=UUID=1 rootflags=subvolid=256,compress=zstd"
            )
            .as_deref(),
            Some("the kernel command line mounts / with rootflags=subvolid=256")
        );
    }

    #[test]
    fn package_changes_list_upgrades_removals_and_additions() {
        let before = "libc6\t2.36-9\tii \nlibdb5.3\t5.3.28\tii \nbash\t5.2\tii \n";
        let now = "libc6\t2.41-12\tii \nbash\t5.2\tii \nlibdb5.3t64\t5.3.28+t64\tii \n";
        assert_eq!(
            package_changes(before, now),
            vec![
                "libc6 2.36-9 -> 2.41-12".to_string(),
                "libdb5.3 5.3.28 -> removed".to_string(),
                "libdb5.3t64 new 5.3.28+t64".to_string(),
            ]
        );
    }
}

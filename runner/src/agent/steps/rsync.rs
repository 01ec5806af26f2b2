//! `rsync`: copies application data, from and to paths in the migrated root
//! or a remote host over ssh, keeping ACLs, extended attributes, hard links
//! and numeric owners.
//!
//! In the `sync` phase it is a repeatable pre-copy while the services run; in
//! the `cutover` phase, after the services are stopped, the final pass with
//! `--delete`, which then only moves what changed since the last pre-copy.
//! A pass can be verified afterwards by a checksum comparison that must find
//! no difference.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::core::cmd::{CommandExt, ToolOutput};
use anyhow::{Context, Result, bail};

use sha2::{Digest, Sha256};

use super::delta::Delta;
use super::{StepContext, StepKind, manifest};
use crate::agent::exec::{Streaming, run_streaming_with};
use crate::core::event::{Finding, Severity, StepStatus};
use crate::core::kinds::Kind;
use crate::core::kinds::rsync::{RsyncOptions, VerifyCopyOptions, is_remote};
use crate::core::phase::Phase;

/// Where ssh looks for identities and known hosts in the root: root's own.
const ROOT_SSH_DIR: &str = "root/.ssh";
/// The identities ssh would try by default, in its order.
const DEFAULT_IDENTITIES: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];

/// An `rsync` step.
pub(crate) struct RsyncStep {
    opts: RsyncOptions,
    phase: Phase,
}

/// The flags that keep everything: permissions, times, owners by number,
/// hard links, ACLs, extended attributes; and modification times compared
/// to the nanosecond (`--modify-window=-1`): by default rsync compares
/// whole seconds, and a file a service rewrote within the second of the
/// last copy, at the same size, would pass its quick check uncopied (found
/// by a cutover's verification after a writer's last second).
const KEEP_ALL: [&str; 6] = [
    "-a",
    "-H",
    "-A",
    "-X",
    "--numeric-ids",
    "--modify-window=-1",
];

impl RsyncStep {
    /// From the step's options and phase.
    pub(crate) fn new(opts: RsyncOptions, phase: Phase) -> Self {
        Self { opts, phase }
    }

    fn delete(&self) -> bool {
        self.opts.delete.unwrap_or(self.phase >= Phase::Cutover)
    }

    fn verify(&self) -> bool {
        self.opts.verify.unwrap_or(self.phase >= Phase::Cutover)
    }

    /// An endpoint as rsync sees it: a path under the root, or the remote.
    fn endpoint(&self, ctx: &StepContext<'_>, value: &str) -> String {
        if is_remote(value) {
            return value.to_string();
        }
        let mut path = ctx
            .root()
            .join(value.trim_start_matches('/'))
            .display()
            .to_string();
        // rsync's trailing-slash rule: "dir/" copies the contents of dir.
        if value.ends_with('/') && !path.ends_with('/') {
            path.push('/');
        }
        path
    }

    fn command(&self, ctx: &StepContext<'_>) -> Command {
        let mut cmd = Command::new("rsync");
        cmd.args(KEEP_ALL);
        for e in &self.opts.exclude {
            cmd.arg(format!("--exclude={e}"));
        }
        if is_remote(&self.opts.source) || is_remote(&self.opts.destination) {
            cmd.arg("-e").arg(self.ssh_command(ctx.root()));
        }
        cmd
    }

    /// The ssh command rsync runs for a remote: the root's identity and
    /// known hosts (the image has none of its own), never a prompt. A host
    /// seen for the first time is added to the root's known hosts; a changed
    /// host key fails.
    fn ssh_command(&self, root: &Path) -> String {
        let ssh_dir = root.join(ROOT_SSH_DIR);
        let keys: Vec<PathBuf> = match &self.opts.ssh_key {
            Some(key) => vec![root.join(key.trim_start_matches('/'))],
            None => DEFAULT_IDENTITIES
                .iter()
                .map(|name| ssh_dir.join(name))
                .filter(|p| p.is_file())
                .collect(),
        };
        // rsync splits this string itself; single quotes keep a path whole.
        let mut ssh = format!(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile='{}'",
            ssh_dir.join("known_hosts").display()
        );
        if let Some(port) = self.opts.ssh_port {
            ssh.push_str(&format!(" -p {port}"));
        }
        if !keys.is_empty() {
            ssh.push_str(" -o IdentitiesOnly=yes");
        }
        for key in keys {
            ssh.push_str(&format!(" -i '{}'", key.display()));
        }
        ssh
    }
}

/// Whether an rsync endpoint names a remote (`host:path`, not `/path`).
/// Parses rsync's `--info=progress2` lines
/// (`  1,234,567  45%   12.34MB/s    0:00:10 (xfr#10, to-chk=100/5000)`).
pub(crate) fn progress(line: &str) -> Option<(f32, String)> {
    let mut words = line.split_whitespace();
    let bytes = words.next()?;
    if !bytes.chars().all(|c| c.is_ascii_digit() || c == ',') {
        return None;
    }
    let percent: f32 = words.next()?.strip_suffix('%')?.parse().ok()?;
    let rate = words.next().unwrap_or("");
    let eta = words.next().unwrap_or("");
    Some((percent, format!("{bytes} bytes, {rate}, {eta} left")))
}

/// Runs an rsync copy, its `--info=progress2` lines as the step's progress.
fn copy(ctx: &StepContext<'_>, cmd: &mut Command) -> Result<()> {
    run_streaming_with(
        cmd,
        &ctx.run.sink,
        &ctx.step.id,
        &Streaming {
            progress: Some(&progress),
            ..Streaming::default()
        },
    )
    .map(drop)
}

impl StepKind for RsyncStep {
    fn tools(&self) -> Vec<String> {
        vec!["rsync".into()]
    }

    fn describe(&self) -> String {
        format!(
            "{} {} to {} with rsync",
            if self.phase >= Phase::Cutover {
                "Final copy of"
            } else {
                "Pre-copy"
            },
            self.opts.source,
            self.opts.destination
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let (src, dst) = (
            self.endpoint(ctx, &self.opts.source),
            self.endpoint(ctx, &self.opts.destination),
        );
        if !is_remote(&self.opts.source) && !std::path::Path::new(&src).exists() {
            bail!("the source {} does not exist in the root", self.opts.source);
        }
        if !is_remote(&self.opts.destination) {
            let parent = std::path::Path::new(dst.trim_end_matches('/'))
                .parent()
                .map(std::path::Path::to_path_buf);
            if let Some(p) = parent {
                std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
            }
        }
        if self.phase >= Phase::Cutover && self.verify() && self.delete() {
            if let Some((s, d)) = self.trees(&src, &dst) {
                if self.final_pass(ctx, &s, &d)? {
                    return Ok(StepStatus::Succeeded);
                }
            }
        }
        let mut cmd = self.command(ctx);
        cmd.args(["--info=progress2", "--no-inc-recursive"]);
        if self.delete() {
            cmd.arg("--delete");
        }
        cmd.arg(&src).arg(&dst);
        copy(ctx, &mut cmd)?;
        match self.trees(&src, &dst) {
            // Both trees here: a manifest after every pre-copy, and a
            // verified pass checked against it (an unverified final pass
            // reads nothing more inside the downtime).
            Some((s, d)) if self.verify() || self.phase == Phase::Sync => {
                self.manifest_pass(ctx, &s, &d)?;
            }
            Some(_) => {}
            None if self.verify() => self.check_identical(ctx, &src, &dst)?,
            None => {}
        }
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        let mut cmd = self.command(ctx);
        cmd.args(["--dry-run", "--itemize-changes", "--stats"]);
        if self.delete() {
            cmd.arg("--delete");
        }
        cmd.arg(self.endpoint(ctx, &self.opts.source))
            .arg(self.endpoint(ctx, &self.opts.destination));
        ctx.run(&mut cmd)
    }
}

impl RsyncStep {
    /// The two trees a pass made alike, when both are directories in the
    /// root and nothing is excluded (rsync's patterns are rsync's to
    /// interpret: with exclusions the comparison is rsync's own).
    fn trees(&self, src: &str, dst: &str) -> Option<(PathBuf, PathBuf)> {
        if is_remote(&self.opts.source)
            || is_remote(&self.opts.destination)
            || !self.opts.exclude.is_empty()
        {
            return None;
        }
        let s = PathBuf::from(src.trim_end_matches('/'));
        if !s.is_dir() {
            return None;
        }
        // rsync's trailing-slash rule: "dir/" copies the contents of dir,
        // "dir" copies dir into the destination.
        let d = if src.ends_with('/') {
            PathBuf::from(dst.trim_end_matches('/'))
        } else {
            PathBuf::from(dst.trim_end_matches('/')).join(s.file_name()?)
        };
        d.is_dir().then_some((s, d))
    }

    /// Where this copy's manifest is kept: with the migration, keyed by the
    /// source and destination (the pre-copies and the final pass are
    /// different steps of the same copy).
    fn manifest_path(&self, ctx: &StepContext<'_>) -> Result<PathBuf> {
        let step_dir = ctx.backup_path();
        let migration = step_dir.parent().unwrap_or(&step_dir);
        let dir = migration.join("manifests");
        for d in [migration, dir.as_path()] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .with_context(|| format!("restricting {}", d.display()))?;
        }
        let key = Sha256::digest(format!("{}\0{}", self.opts.source, self.opts.destination));
        let name: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(dir.join(format!("{name}.json")))
    }

    /// The verified final pass at the cost of what moved since the last
    /// pass ([`Delta`]): one walk of both trees, rsync given only the names
    /// that moved, only those read. False when that cannot show the trees
    /// alike (no manifest yet, a name that is not UTF-8, a difference left):
    /// then the whole-tree pass decides.
    fn final_pass(&self, ctx: &StepContext<'_>, src: &Path, dst: &Path) -> Result<bool> {
        let path = self.manifest_path(ctx)?;
        let Some(known) = ctx.run.manifests.take(&path) else {
            ctx.say("no manifest of an earlier pass: copying and comparing the whole trees");
            return Ok(false);
        };
        let (s, d) = manifest::walk_both(src, dst)?;
        if s.keys()
            .chain(d.keys())
            .any(|p| p.contains(char::REPLACEMENT_CHARACTER))
        {
            ctx.run.manifests.keep(&path, known);
            ctx.say("a name that is not UTF-8: copying and comparing the whole trees");
            return Ok(false);
        }
        let delta = Delta::of(&s, &d, Some(known));
        let (copied, deleted) = (delta.transfer.len(), delta.delete.len());
        if !delta.nothing_to_copy() || super::delta::top_differs(src, dst) {
            let list = path.with_extension("files");
            std::fs::write(&list, delta.files_from())
                .with_context(|| format!("writing {}", list.display()))?;
            let mut cmd = self.command(ctx);
            cmd.args([
                "--info=progress2",
                "--from0",
                "--delete-missing-args",
                "--force",
            ])
            .arg(format!("--files-from={}", list.display()))
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", dst.display()));
            let copied = copy(ctx, &mut cmd);
            let _ = std::fs::remove_file(&list);
            copied?;
        }
        let v = delta.verify(src, dst, &s, d);
        if !v.differences.is_empty() {
            ctx.say(format!(
                "after copying what moved, {} differences (e.g. {}): copying and comparing the whole trees",
                v.differences.len(),
                v.differences[0]
            ));
            ctx.run.manifests.keep(&path, v.now);
            return Ok(false);
        }
        let summary = format!(
            "{}; rsync copied {copied} and deleted {deleted} names",
            Self::verified_summary(&v)
        );
        ctx.say(format!("verified: {summary}"));
        self.record_verified(ctx, "copy-verified", "in the cutover", &summary);
        ctx.run.manifests.put_later(&path, v.now);
        Ok(true)
    }

    fn verified_summary(v: &manifest::Verified) -> String {
        format!(
            "{} entries identical by metadata against the manifest, {} files compared by content ({} MB read)",
            v.by_metadata,
            v.by_content,
            v.bytes_read / 1_000_000
        )
    }

    /// Compares the trees against the last manifest (reading only what
    /// moved since), records the new one, and in a verified pass fails on
    /// any difference.
    fn manifest_pass(&self, ctx: &StepContext<'_>, src: &Path, dst: &Path) -> Result<()> {
        let path = self.manifest_path(ctx)?;
        let known = ctx.run.manifests.take(&path);
        let mut v = manifest::compare(src, dst, known)?;
        let summary = Self::verified_summary(&v);
        let differences = std::mem::take(&mut v.differences);
        if !self.verify() {
            ctx.run.manifests.put(&path, v.now)?;
            ctx.say(format!(
                "manifest of the copy recorded: {summary}; {} still changing",
                differences.len()
            ));
            return Ok(());
        }
        // Inside the downtime: the record is written after it.
        ctx.run.manifests.put_later(&path, v.now);
        if !differences.is_empty() {
            bail!(
                "the copy differs from the source in {} places, e.g. {}",
                differences.len(),
                differences
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        ctx.say(format!("verified: {summary}"));
        self.record_verified(ctx, "copy-verified", "in the cutover", &summary);
        Ok(())
    }

    /// What a verification found, as an info finding `ID.STEP` for the
    /// report.
    fn record_verified(&self, ctx: &StepContext<'_>, id: &str, when: &str, summary: &str) {
        ctx.finding(Finding {
            id: format!("{id}.{}", ctx.step.id),
            severity: Severity::Info,
            message: format!(
                "{} to {} verified {when}: {summary}",
                self.opts.source, self.opts.destination
            ),
            hint: String::new(),
        });
    }

    /// Fails unless a checksum comparison finds no difference.
    fn check_identical(&self, ctx: &StepContext<'_>, src: &str, dst: &str) -> Result<()> {
        let out = self
            .command(ctx)
            .args(["--checksum", "--dry-run", "--itemize-changes", "--delete"])
            .arg(src)
            .arg(dst)
            .run_unchecked()?;
        if !out.status.success() {
            bail!("verifying the copy failed: rsync {}", out.failure());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let differences: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !differences.is_empty() {
            bail!(
                "the copy differs from the source in {} places, e.g. {}",
                differences.len(),
                differences
                    .iter()
                    .take(3)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        ctx.say("verified: a checksum comparison finds no difference");
        Ok(())
    }
}

/// A `verify-copy` step: after the service started on the copy, every file
/// the service has not touched since the cutover is compared by content with
/// its source, at idle I/O priority (outside the downtime). A difference
/// fails the step, naming the paths; `migrate rollback` then steps the
/// service back.
pub(crate) struct VerifyCopyStep {
    opts: VerifyCopyOptions,
}

impl VerifyCopyStep {
    /// From the step's options.
    pub(crate) fn new(opts: VerifyCopyOptions) -> Self {
        Self { opts }
    }
}

impl StepKind for VerifyCopyStep {
    fn describe(&self) -> String {
        format!(
            "Verify the copy of step {} by content, at idle I/O priority",
            self.opts.of
        )
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let copy = ctx
            .run
            .plan
            .steps
            .iter()
            .find(|s| s.id == self.opts.of && s.kind == Kind::Rsync)
            .with_context(|| format!("no rsync step {:?} in the plan", self.opts.of))?;
        let rsync = RsyncStep::new(copy.options()?, copy.phase);
        let _idle = IdlePriority::set(ctx);
        rsync.verify_after_start(ctx)?;
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        ctx.say(format!(
            "would compare the copy of step {} with its source by content",
            self.opts.of
        ));
        Ok(())
    }
}

/// The agent's I/O priority set to idle (`ionice -c 3`) while it lives, and
/// back to best-effort after: the tools it starts meanwhile inherit it.
struct IdlePriority(bool);

impl IdlePriority {
    fn set(ctx: &StepContext<'_>) -> Self {
        let pid = std::process::id().to_string();
        let ok = Command::new("ionice")
            .args(["-c", "3", "-p", &pid])
            .run_unchecked()
            .is_ok_and(|o| o.status.success());
        if !ok {
            ctx.say("ionice is not available: verifying at normal I/O priority".to_string());
        }
        Self(ok)
    }
}

impl Drop for IdlePriority {
    fn drop(&mut self) {
        if self.0 {
            let pid = std::process::id().to_string();
            let _ = Command::new("ionice")
                .args(["-c", "2", "-n", "4", "-p", &pid])
                .run_unchecked();
        }
    }
}

impl RsyncStep {
    /// Compares every file of the copy that the started service has not
    /// touched since the final pass (its ctime and inode are the manifest's)
    /// with its source, by content.
    fn verify_after_start(&self, ctx: &StepContext<'_>) -> Result<()> {
        let (src, dst) = (
            self.endpoint(ctx, &self.opts.source),
            self.endpoint(ctx, &self.opts.destination),
        );
        let Some((s, d)) = self.trees(&src, &dst) else {
            // A remote or exclusions: rsync's own full comparison.
            return self.check_identical(ctx, &src, &dst);
        };
        let record = self.manifest_path(ctx)?;
        let m = ctx.run.manifests.take(&record).with_context(|| {
            format!(
                "no record of the copy of {} to {}: its final pass has not run",
                self.opts.source, self.opts.destination
            )
        })?;
        let (now_s, now_d) = manifest::walk_both(&s, &d)?;
        let (mut compared, mut touched, mut bytes) = (0usize, 0usize, 0u64);
        let mut differ = Vec::new();
        for (path, pair) in m.entries.iter().filter(|(_, p)| p.s.kind() == 'f') {
            // Untouched: its lstat (ctime, inode) is what the final pass
            // recorded, on both sides.
            if now_d.get(path) != Some(&pair.d) || now_s.get(path) != Some(&pair.s) {
                touched += 1;
                continue;
            }
            compared += 1;
            bytes += pair.s.size() * 2;
            let (a, b) = (
                manifest::hash_file(&s.join(path))?,
                manifest::hash_file(&d.join(path))?,
            );
            if a != b || pair.h.as_deref().is_some_and(|sum| sum != b) {
                differ.push(path.clone());
            }
        }
        ctx.run.manifests.keep(&record, m);
        if !differ.is_empty() {
            bail!(
                "after the start, {} files of the copy differ from the source: {}",
                differ.len(),
                differ
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let summary = format!(
            "identical by content: {compared} files ({} MB read); {touched} touched by the service since the cutover, not compared",
            bytes / 1_000_000
        );
        ctx.say(summary.clone());
        self.record_verified(
            ctx,
            "copy-verified-after-start",
            "after the start",
            &summary,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_use_the_roots_ssh_identity_and_known_hosts() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("root/.ssh")).unwrap();
        std::fs::write(root.path().join("root/.ssh/id_rsa"), "").unwrap();
        let step = |key: Option<&str>, port: Option<u16>| {
            let opts = crate::core::kinds::check::<RsyncOptions>(serde_json::json!({
                "source": "/srv/data/",
                "destination": "backup@db2:/srv/data/",
                "ssh_key": key,
                "ssh_port": port,
            }));
            opts.map(|o| RsyncStep::new(o, Phase::Cutover))
        };
        let r = root.path().display();
        assert_eq!(
            step(None, Some(2222)).unwrap().ssh_command(root.path()),
            format!(
                "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new \
                 -o UserKnownHostsFile='{r}/root/.ssh/known_hosts' -p 2222 \
                 -o IdentitiesOnly=yes -i '{r}/root/.ssh/id_rsa'"
            )
        );
        assert!(
            step(Some("/etc/app/key"), None)
                .unwrap()
                .ssh_command(root.path())
                .ends_with(&format!(" -i '{r}/etc/app/key'"))
        );
        let err = format!("{:?}", step(Some("etc/key"), None).err().unwrap());
        assert!(err.contains("ssh_key"), "{err}");
        let err = format!("{:?}", step(Some("/etc/it's"), None).err().unwrap());
        assert!(err.contains("without quotes"), "{err}");
    }

    #[test]
    fn progress2_lines_become_progress() {
        assert_eq!(
            progress("    123,456,789  45%   12.34MB/s    0:00:10 (xfr#10, to-chk=100/5000)"),
            Some((45.0, "123,456,789 bytes, 12.34MB/s, 0:00:10 left".into()))
        );
        assert_eq!(progress("sending incremental file list"), None);
        assert_eq!(progress("file.txt"), None);
    }

    #[test]
    fn the_cutover_pass_deletes_and_verifies_by_default() {
        let opts = RsyncOptions {
            source: "/srv/a/".into(),
            destination: "/srv/b/".into(),
            delete: None,
            verify: None,
            exclude: vec![],
            ssh_key: None,
            ssh_port: None,
        };
        let sync = RsyncStep::new(opts.clone(), Phase::Sync);
        assert!(!sync.delete() && !sync.verify());
        let cutover = RsyncStep::new(opts.clone(), Phase::Cutover);
        assert!(cutover.delete() && cutover.verify());
        let bad = RsyncOptions {
            source: "relative".into(),
            ..opts.clone()
        };
        assert!(crate::core::kinds::KindOptions::check(&bad).is_err());
        let two_remotes = RsyncOptions {
            source: "a:/x".into(),
            destination: "b:/y".into(),
            ..opts
        };
        assert!(crate::core::kinds::KindOptions::check(&two_remotes).is_err());
    }
}

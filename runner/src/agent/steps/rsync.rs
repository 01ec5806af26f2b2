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

use super::{StepContext, StepKind};
use crate::agent::exec::{Streaming, run_streaming_with};
use crate::core::event::StepStatus;
use crate::core::kinds::rsync::{RsyncOptions, is_remote};
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
/// hard links, ACLs, extended attributes.
const KEEP_ALL: [&str; 5] = ["-a", "-H", "-A", "-X", "--numeric-ids"];

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

impl StepKind for RsyncStep {
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
        let mut cmd = self.command(ctx);
        cmd.args(["--info=progress2", "--no-inc-recursive"]);
        if self.delete() {
            cmd.arg("--delete");
        }
        cmd.arg(&src).arg(&dst);
        run_streaming_with(
            &mut cmd,
            &ctx.run.sink,
            &ctx.step.id,
            &Streaming {
                progress: Some(&progress),
                ..Streaming::default()
            },
        )?;
        if self.verify() {
            self.check_identical(ctx, &src, &dst)?;
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

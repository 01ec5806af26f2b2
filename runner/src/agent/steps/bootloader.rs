//! `bootloader`: GRUB brought up to date after the package upgrade, as its
//! packages would have done on a host upgraded in place.
//!
//! Debian's GRUB packages skip `grub-install` and `update-grub` when they
//! find themselves in a container (`systemd-detect-virt --container`), and
//! the migration container is one: without this step the new kernel is
//! installed but the bootloader still names the old one, and GRUB's boot
//! code and modules stay at the old version. So, on the running host (the
//! only root whose disks are this machine's): `grub-install DEVICE` for
//! each device of grub-pc's debconf `grub-pc/install_devices` that the
//! container sees as a block device (one it does not see is a warning
//! naming it), then `update-grub`; either failing is a warning, not a
//! failed migration (the packages are upgraded, and the bootability check
//! before the reboot holds it while `grub.cfg` does not name the new
//! kernel). A root directory is left alone (its
//! devices are not this machine's); so is a root without
//! `/boot/grub/grub.cfg` (another bootloader, or none).

use anyhow::{Context, Result};

use super::{StepContext, StepKind};
use crate::core::cmd::CommandExt;
use crate::core::event::{Finding, Severity, StepStatus};

/// The `bootloader` step.
pub(crate) struct Bootloader;

/// The devices of `debconf-show grub-pc`'s `grub-pc/install_devices` line
/// (`* grub-pc/install_devices: /dev/sda, /dev/sdb`).
fn install_devices(debconf_show: &str) -> Vec<String> {
    debconf_show
        .lines()
        .filter_map(|l| {
            l.trim_start_matches(['*', ' '])
                .strip_prefix("grub-pc/install_devices:")
        })
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `package` is installed in the root, by its dpkg status.
fn installed(ctx: &StepContext<'_>, package: &str) -> Result<bool> {
    let out = ctx
        .chroot("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .run_unchecked()?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed"))
}

impl StepKind for Bootloader {
    fn describe(&self) -> String {
        "Bring GRUB up to date for the new kernel (grub-install onto its devices, update-grub)"
            .into()
    }

    fn run(&self, ctx: &StepContext<'_>) -> Result<StepStatus> {
        let config = ctx.path("/boot/grub/grub.cfg")?;
        if !config.is_file() || !ctx.path("/usr/sbin/update-grub")?.is_file() {
            ctx.say("no GRUB in the root (/boot/grub/grub.cfg, update-grub): another bootloader, or none; nothing to do");
            return Ok(StepStatus::Skipped);
        }
        if !ctx.run.live {
            ctx.say("a root directory, not the running host: its disks are not this machine's; run update-grub (and grub-install) on the host it belongs to");
            return Ok(StepStatus::Skipped);
        }
        if installed(ctx, "grub-pc")? {
            let shown = ctx
                .chroot("debconf-show")
                .arg("grub-pc")
                .run_get_string()
                .context("reading grub-pc's install devices (debconf-show grub-pc)")?;
            let devices = install_devices(&shown);
            if devices.is_empty() {
                ctx.finding(Finding {
                    id: "bootloader.devices".into(),
                    severity: Severity::Warning,
                    message: "grub-pc names no install device (grub-pc/install_devices): GRUB's boot code was not reinstalled".into(),
                    hint: "dpkg-reconfigure grub-pc on the host, choosing the disk it boots from".into(),
                });
            }
            for device in devices {
                let seen = ctx
                    .path(&device)
                    .ok()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .is_some_and(|m| {
                        use std::os::unix::fs::FileTypeExt;
                        m.file_type().is_block_device()
                    });
                if !seen {
                    ctx.finding(Finding {
                        id: format!("bootloader.{device}"),
                        severity: Severity::Warning,
                        message: format!("grub-pc's install device {device} is no block device the migration container sees: GRUB's boot code there was not reinstalled"),
                        hint: format!("grub-install {device} on the host before it reboots"),
                    });
                    continue;
                }
                match ctx.run(ctx.chroot("grub-install").arg(&device)) {
                    Ok(()) => ctx.say(format!("GRUB's boot code reinstalled on {device}")),
                    Err(e) => ctx.finding(Finding {
                        id: format!("bootloader.{device}"),
                        severity: Severity::Warning,
                        message: format!("grub-install {device} failed: {e:#}"),
                        hint: format!(
                            "run grub-install {device} on the host before it reboots (the log has GRUB's output)"
                        ),
                    }),
                }
            }
        }
        // A configuration that cannot be regenerated leaves the old one,
        // which names the old kernel: the bootability check before the
        // reboot holds it, naming the kernel; the packages stay upgraded.
        match ctx.run(&mut ctx.chroot("update-grub")) {
            Ok(()) => ctx.say(
                "/boot/grub/grub.cfg regenerated for the installed kernels (update-grub)",
            ),
            Err(e) => ctx.finding(Finding {
                id: "bootloader.config".into(),
                severity: Severity::Warning,
                message: format!("update-grub failed: {e:#}; /boot/grub/grub.cfg is as it was"),
                hint: "run update-grub on the host before it reboots (the log has GRUB's output); migrate run --reboot holds the reboot until grub.cfg names the new kernel".into(),
            }),
        }
        Ok(StepStatus::Succeeded)
    }

    fn dry_run(&self, ctx: &StepContext<'_>) -> Result<()> {
        let config = ctx.path("/boot/grub/grub.cfg")?;
        ctx.say(if !config.is_file() {
            "would do nothing: no /boot/grub/grub.cfg in the root"
        } else if ctx.run.live {
            "would reinstall GRUB onto grub-pc's install devices and run update-grub after the upgrade"
        } else {
            "would do nothing: a root directory's disks are not this machine's"
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_devices_are_read_from_debconf_show() {
        let shown = "  grub-pc/timeout: 5\n* grub-pc/install_devices: /dev/disk/by-id/ata-X, /dev/sdb\n  grub-pc/install_devices_empty: false\n";
        assert_eq!(
            install_devices(shown),
            vec!["/dev/disk/by-id/ata-X".to_string(), "/dev/sdb".to_string()]
        );
        assert!(install_devices("* grub-pc/install_devices:\n").is_empty());
        assert!(install_devices("").is_empty());
    }
}

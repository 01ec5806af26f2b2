//! Whether a finished migration's root can boot, checked before migrate
//! reboots into it: the newest kernel in `/boot` has its initrd and the
//! bootloader configuration names both, every `/etc/fstab` entry the boot
//! needs resolves (on the running host, whose devices they are), and dpkg
//! has no package half-installed or half-configured, and the services'
//! own configuration checks pass (`sshd -t`, `nginx -t`; on the running
//! host only: a root directory's programs run only inside its migration
//! container, never on the machine). A problem holds the
//! reboot (exit 3, the migration stays completed and waits for it); it does
//! not fail the migration.
//!
//! Everything is read inside the root (symlinks resolved within it), each
//! file bounded.

use std::cmp::Ordering;
use std::path::Path;

use anyhow::Result;

use crate::core::fsutil::read_text_limited;
use crate::core::report::Bootability;
use crate::core::rootfs;

/// The largest configuration file read (grub.cfg, fstab, dpkg's status).
const LIMIT: u64 = 64 << 20;

/// Checks the root; `live`: it is the running host (fstab's devices are
/// this machine's).
/// `extra`: the plan's own checks (`[health] before_reboot`), run like the
/// built-in ones.
pub(crate) fn check(root: &Path, live: bool, extra: &[Vec<String>]) -> Result<Bootability> {
    let mut b = Bootability {
        checked_at: crate::core::event::timestamp(std::time::SystemTime::now()),
        ..Bootability::default()
    };
    kernel(root, &mut b)?;
    if live {
        fstab(root, &mut b)?;
    } else {
        b.notes.push(
            "fstab: not checked (its devices are those of the machine the root boots on)".into(),
        );
    }
    packages(root, &mut b)?;
    if live {
        service_configs(root, &mut b);
        plan_checks(extra, &mut b);
    } else {
        b.notes.push(
            "service configuration checks: not run (a root directory's programs run only in its container)".into(),
        );
    }
    Ok(b)
}

/// The services' configuration checks: (name, program in the root, its
/// check's arguments).
const SERVICE_CHECKS: [(&str, &str, &[&str]); 2] = [
    ("sshd", "usr/sbin/sshd", &["-t"]),
    ("nginx", "usr/sbin/nginx", &["-t", "-q"]),
];

/// Runs each installed service's own configuration check (`root` is the
/// running host's `/`); a failure is a problem, with what the check said.
fn service_configs(root: &Path, b: &mut Bootability) {
    for (name, program, args) in SERVICE_CHECKS {
        if !root.join(program).is_file() {
            continue;
        }
        let shown = format!("{name} {}", args.join(" "));
        let out = std::process::Command::new(root.join(program))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output();
        judge(&shown, out, b);
    }
}

/// The plan's own checks (`[health] before_reboot`), run on the running
/// host as the plan wrote them; one that cannot run is a problem too.
fn plan_checks(commands: &[Vec<String>], b: &mut Bootability) {
    for command in commands {
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        let shown = command.join(" ");
        match std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Err(e) => b.problems.push(format!("{shown}: could not run: {e}")),
            out => judge(&shown, out, b),
        }
    }
}

/// A configuration check's outcome (`shown`: how it is named): a note when
/// it passed, a problem with the first lines it said when it failed.
fn judge(shown: &str, out: std::io::Result<std::process::Output>, b: &mut Bootability) {
    match out {
        Ok(o) if o.status.success() => b.notes.push(format!("{shown}: the configuration is valid")),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            // Its first lines name the problem (sshd's last one only says it
            // is terminating).
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(3)
                .collect();
            let said = if lines.is_empty() {
                "it failed and said nothing".to_string()
            } else {
                lines.join("; ")
            };
            // Made by the service's unit when it starts: not a fault of the
            // configuration.
            if said.contains("Missing privilege separation directory") {
                b.notes.push(format!("{shown}: not checked ({said})"));
            } else {
                b.problems.push(format!("{shown}: {said}"));
            }
        }
        Err(e) => b.notes.push(format!("{shown}: could not run: {e}")),
    }
}

/// The newest kernel, its initrd, and the bootloader configuration.
fn kernel(root: &Path, b: &mut Bootability) -> Result<()> {
    let boot = rootfs::resolve(root, "boot")?;
    let mut kernels: Vec<String> = std::fs::read_dir(&boot)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    kernels.sort_by(|a, b| natural_cmp(a, b));
    let Some(newest) = kernels.pop() else {
        b.notes
            .push("kernel: none in /boot (the root is booted otherwise): not checked".into());
        return Ok(());
    };
    b.kernel = Some(newest.clone());
    let initrd = format!("initrd.img-{newest}");
    let has_initrd = std::fs::symlink_metadata(rootfs::resolve(root, format!("boot/{initrd}"))?)
        .is_ok_and(|m| m.is_file() && m.len() > 0);
    if !has_initrd {
        b.problems.push(format!(
            "/boot/{initrd} is missing or empty: the kernel {newest} has no initrd (update-initramfs -c -k {newest})"
        ));
    }
    let grub = rootfs::resolve(root, "boot/grub/grub.cfg")?;
    match read_text_limited(&grub, LIMIT)? {
        Some(cfg) => {
            for file in [format!("vmlinuz-{newest}"), initrd] {
                if !cfg.contains(&format!("/{file}")) {
                    b.problems.push(format!(
                        "/boot/grub/grub.cfg does not name {file}: the bootloader would not start the new kernel (update-grub)"
                    ));
                }
            }
        }
        None => b.notes.push(
            "bootloader: no /boot/grub/grub.cfg (another bootloader, or none): not checked".into(),
        ),
    }
    Ok(())
}

/// The entries of `/etc/fstab` a boot waits for, each resolving to a device
/// of this machine.
fn fstab(root: &Path, b: &mut Bootability) -> Result<()> {
    let path = rootfs::resolve(root, "etc/fstab")?;
    let Some(text) = read_text_limited(&path, LIMIT)? else {
        return Ok(());
    };
    for (spec, mountpoint) in needed_entries(&text) {
        let device = match spec.split_once('=') {
            Some(("UUID", v)) => format!("/dev/disk/by-uuid/{v}"),
            Some(("LABEL", v)) => format!("/dev/disk/by-label/{v}"),
            Some(("PARTUUID", v)) => format!("/dev/disk/by-partuuid/{v}"),
            Some(("PARTLABEL", v)) => format!("/dev/disk/by-partlabel/{v}"),
            _ if spec.starts_with("/dev/") => spec.to_string(),
            _ => continue,
        };
        if !Path::new(&device).exists() {
            b.problems.push(format!(
                "/etc/fstab: {spec} (for {mountpoint}) names no device of this machine ({device} does not exist): the boot would wait for it"
            ));
        }
    }
    Ok(())
}

/// (device, mount point) of the fstab entries a boot needs: not `noauto`,
/// not `nofail`, not a pseudo or network file system.
fn needed_entries(text: &str) -> Vec<(&str, &str)> {
    const NOT_DEVICES: [&str; 12] = [
        "proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "nfs", "nfs4", "cifs",
        "none", "overlay",
    ];
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (spec, mountpoint, fstype) = (*f.first()?, *f.get(1)?, *f.get(2)?);
            let options = f.get(3).copied().unwrap_or("defaults");
            let optional = options
                .split(',')
                .any(|o| matches!(o, "noauto" | "nofail" | "bind" | "_netdev"));
            (!optional && !NOT_DEVICES.contains(&fstype) && !fstype.starts_with("fuse"))
                .then_some((spec, mountpoint))
        })
        .collect()
}

/// dpkg's packages in a state a boot should not meet (half-installed,
/// unpacked, half-configured, waiting for triggers).
fn packages(root: &Path, b: &mut Bootability) -> Result<()> {
    let path = rootfs::resolve(root, "var/lib/dpkg/status")?;
    let Some(text) = read_text_limited(&path, LIMIT)? else {
        return Ok(());
    };
    let unfinished = unfinished_packages(&text);
    if !unfinished.is_empty() {
        b.problems.push(format!(
            "dpkg: {} packages are not fully installed: {} (dpkg --configure -a)",
            unfinished.len(),
            unfinished.join(", ")
        ));
    }
    Ok(())
}

fn unfinished_packages(status: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        let (Some(package), Some(state)) = (field("Package:"), field("Status:")) else {
            continue;
        };
        let current = state.rsplit(' ').next().unwrap_or_default();
        if matches!(
            current,
            "half-installed" | "unpacked" | "half-configured" | "triggers-awaited"
        ) {
            out.push(format!("{package} ({current})"));
        }
    }
    out
}

/// Orders version strings with their digit runs compared as numbers
/// (`6.12.0` after `6.1.0`).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let n = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let m = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (p, q) = (
                    std::str::from_utf8(&x[..n])
                        .unwrap_or("0")
                        .trim_start_matches('0'),
                    std::str::from_utf8(&y[..m])
                        .unwrap_or("0")
                        .trim_start_matches('0'),
                );
                let o = p.len().cmp(&q.len()).then_with(|| p.cmp(q));
                if o != Ordering::Equal {
                    return o;
                }
                (x, y) = (&x[n..], &y[m..]);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn the_newest_kernel_needs_its_initrd_and_the_bootloader_naming_both() {
        let grub = "menuentry 'Debian' {\n linux /boot/vmlinuz-6.12.0-1-amd64 root=UUID=x\n initrd /boot/initrd.img-6.12.0-1-amd64\n}\n";
        let good = root_with(&[
            ("boot/vmlinuz-6.1.0-18-amd64", "k"),
            ("boot/initrd.img-6.1.0-18-amd64", "i"),
            ("boot/vmlinuz-6.12.0-1-amd64", "k"),
            ("boot/initrd.img-6.12.0-1-amd64", "i"),
            ("boot/grub/grub.cfg", grub),
        ]);
        let b = check(good.path(), false, &[]).unwrap();
        assert_eq!(b.kernel.as_deref(), Some("6.12.0-1-amd64"));
        assert!(b.problems.is_empty(), "{:?}", b.problems);

        let stale = root_with(&[
            ("boot/vmlinuz-6.12.0-1-amd64", "k"),
            ("boot/grub/grub.cfg", &grub.replace("6.12.0-1", "6.1.0-18")),
        ]);
        let b = check(stale.path(), false, &[]).unwrap();
        assert_eq!(b.problems.len(), 3, "{:?}", b.problems);
        assert!(b.problems[0].starts_with("/boot/initrd.img-6.12.0-1-amd64 is missing"));
        assert!(b.problems[1].contains("does not name vmlinuz-6.12.0-1-amd64"));

        let container = root_with(&[("etc/os-release", "ID=debian\n")]);
        let b = check(container.path(), false, &[]).unwrap();
        assert!(b.problems.is_empty() && b.kernel.is_none());
        assert!(b.notes[0].starts_with("kernel: none in /boot"));
    }

    #[test]
    fn fstab_entries_a_boot_waits_for_must_name_a_device() {
        let fstab = "# comment\nUUID=0000-not-here / ext4 errors=remount-ro 0 1\n\
                     LABEL=backup /backup ext4 noauto 0 2\n\
                     UUID=also-missing /data xfs defaults,nofail 0 2\n\
                     proc /proc proc defaults 0 0\n\
                     tmpfs /tmp tmpfs defaults 0 0\n\
                     server:/export /mnt nfs defaults 0 0\n";
        assert_eq!(needed_entries(fstab), [("UUID=0000-not-here", "/")]);
        let root = root_with(&[("etc/fstab", fstab)]);
        let b = check(root.path(), true, &[]).unwrap();
        assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
        assert!(
            b.problems[0].starts_with("/etc/fstab: UUID=0000-not-here (for /) names no device")
        );
        let b = check(root.path(), false, &[]).unwrap();
        assert!(b.problems.is_empty());
    }

    #[test]
    fn half_configured_packages_hold_the_reboot() {
        let status = "Package: base-files\nStatus: install ok installed\n\n\
                      Package: linux-image-6.12.0-1-amd64\nStatus: install ok half-configured\n\n\
                      Package: old\nStatus: deinstall ok config-files\n";
        assert_eq!(
            unfinished_packages(status),
            ["linux-image-6.12.0-1-amd64 (half-configured)"]
        );
    }

    #[test]
    fn a_failing_service_configuration_check_is_a_problem() {
        use std::os::unix::fs::PermissionsExt;
        let root = root_with(&[
            (
                "usr/sbin/sshd",
                "#!/bin/sh\necho '/etc/ssh/sshd_config.d/x.conf line 1: Bad configuration option: NoSuchOption' >&2\nexit 255\n",
            ),
            ("usr/sbin/nginx", "#!/bin/sh\nexit 0\n"),
        ]);
        for p in ["usr/sbin/sshd", "usr/sbin/nginx"] {
            std::fs::set_permissions(root.path().join(p), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let mut b = Bootability::default();
        service_configs(root.path(), &mut b);
        assert_eq!(
            b.problems,
            [
                "sshd -t: /etc/ssh/sshd_config.d/x.conf line 1: Bad configuration option: NoSuchOption"
            ]
        );
        assert_eq!(b.notes, ["nginx -t -q: the configuration is valid"]);
        // The plan's own checks, beside them.
        let mut b = Bootability::default();
        let command = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        plan_checks(
            &[
                command(&["sh", "-c", "echo 'app.conf: unknown key' >&2; exit 1"]),
                command(&["true"]),
                command(&["/nonexistent/app-check"]),
            ],
            &mut b,
        );
        assert_eq!(b.problems.len(), 2, "{b:?}");
        assert_eq!(
            b.problems[0],
            "sh -c echo 'app.conf: unknown key' >&2; exit 1: app.conf: unknown key"
        );
        assert!(
            b.problems[1].starts_with("/nonexistent/app-check: could not run: "),
            "{b:?}"
        );
        assert_eq!(b.notes, ["true: the configuration is valid"]);
    }

    #[test]
    fn kernel_versions_sort_by_their_numbers() {
        let mut v = vec!["6.12.0-1-amd64", "6.1.0-18-amd64", "6.1.0-9-amd64"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-18-amd64", "6.12.0-1-amd64"]);
    }
}

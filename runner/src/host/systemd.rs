//! systemd over D-Bus, on a live host: logind's inhibitor lock held while a
//! migration changes the system (so it is not shut down or rebooted
//! half-way), the orderly reboot at the end (through logind and systemd's
//! reboot.target, never a forced one that skips init) announced with a wall
//! message, and the service manager's list of failed units and the state of
//! a unit for the health check after that reboot.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

fn system_bus() -> Result<zbus::blocking::Connection> {
    zbus::blocking::Connection::system().context("connecting to the system bus")
}

fn logind(conn: &zbus::blocking::Connection) -> Result<zbus::blocking::Proxy<'_>> {
    Ok(zbus::blocking::Proxy::new(
        conn,
        LOGIND,
        LOGIND_PATH,
        LOGIND_MANAGER,
    )?)
}

/// A held inhibitor lock; released when dropped.
#[derive(Debug)]
pub(crate) struct Inhibitor {
    _fd: OwnedFd,
}

/// Takes a blocking shutdown/sleep inhibitor lock for `why`, or fails when
/// logind is not there (the caller decides whether that matters).
pub(crate) fn inhibit(why: &str) -> Result<Inhibitor> {
    let conn = system_bus()?;
    let fd: zbus::zvariant::OwnedFd = logind(&conn)?
        .call("Inhibit", &("shutdown:sleep", "migrate", why, "block"))
        .context("asking logind for an inhibitor lock")?;
    Ok(Inhibitor { _fd: fd.into() })
}

/// Asks logind for an orderly reboot after telling logged-in users why.
pub(crate) fn reboot(wall: &str) -> Result<()> {
    let conn = system_bus()?;
    let m = logind(&conn)?;
    // The wall message is a courtesy; older logind versions lack the call.
    let _ = m.call::<_, _, ()>("SetWallMessage", &(wall, true));
    m.call::<_, _, ()>("Reboot", &(false,))
        .context("asking logind to reboot")?;
    Ok(())
}

/// One entry of the manager's `ListUnits` answer.
type UnitEntry = (
    String,
    String,
    String,
    String,
    String,
    String,
    zbus::zvariant::OwnedObjectPath,
    u32,
    String,
    zbus::zvariant::OwnedObjectPath,
);

/// The units systemd reports as failed, sorted.
pub(crate) fn failed_units() -> Result<Vec<String>> {
    let conn = system_bus()?;
    let manager = zbus::blocking::Proxy::new(&conn, SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER)?;
    let units: Vec<UnitEntry> = manager
        .call("ListUnitsFiltered", &(vec!["failed"],))
        .context("asking systemd for failed units")?;
    let mut names: Vec<String> = units.into_iter().map(|u| u.0).collect();
    names.sort();
    Ok(names)
}

/// A unit's `ActiveState` (`active`, `inactive`, `failed`, `activating`...);
/// a unit systemd does not know is `inactive`.
pub(crate) fn active_state(unit: &str) -> Result<String> {
    let conn = system_bus()?;
    let manager = zbus::blocking::Proxy::new(&conn, SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER)?;
    let path: zbus::zvariant::OwnedObjectPath = manager
        .call("LoadUnit", &(unit,))
        .with_context(|| format!("asking systemd for {unit}"))?;
    let proxy = zbus::blocking::Proxy::new(&conn, SYSTEMD, path, "org.freedesktop.systemd1.Unit")?;
    proxy
        .get_property::<String>("ActiveState")
        .with_context(|| format!("reading the state of {unit}"))
}

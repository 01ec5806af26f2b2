//! A plan's `[health]` table: what the first boot after the migration must
//! find besides the target release and no newly failed unit. Judged by
//! `migrate cleanup` on the running host, retried until the grace period
//! ends.
//!
//! ```toml
//! [health]
//! grace_seconds = 120                               # default 60
//! units = ["nginx.service"]                         # must be active
//! commands = [["curl", "-fsS", "http://localhost/"]] # must exit 0
//! ports = ["127.0.0.1:80"]                          # must accept a TCP connection
//! ```
//!
//! Drop-ins add to the lists; the longest grace period wins.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The grace period when a plan names none.
const DEFAULT_GRACE: u64 = 60;
/// The longest grace period a plan may ask for.
const MAX_GRACE: u64 = 3600;

/// The health checks of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Health {
    /// How long the checks may take to pass, in seconds from the start of
    /// the first boot's cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) grace_seconds: Option<u64>,
    /// systemd units that must be active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) units: Vec<String>,
    /// Commands (program and arguments, run on the host) that must exit 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) commands: Vec<Vec<String>>,
    /// `HOST:PORT` addresses that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) ports: Vec<String>,
    /// Commands run on the running host before migrate reboots into the
    /// new release (the services' own configuration checks, e.g.
    /// `["apachectl", "configtest"]`, beside the built-in `sshd -t` and
    /// `nginx -t`): one that fails holds the reboot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) before_reboot: Vec<Vec<String>>,
}

impl Health {
    /// Whether the plan declares no check of the first boot.
    pub(crate) fn is_empty(&self) -> bool {
        self.units.is_empty() && self.commands.is_empty() && self.ports.is_empty()
    }

    /// Whether the plan declares no check at all (none before the reboot
    /// either).
    pub(crate) fn is_unset(&self) -> bool {
        self.is_empty() && self.before_reboot.is_empty()
    }

    /// Adds a drop-in's checks.
    pub(crate) fn merge(&mut self, other: Health) {
        self.grace_seconds = match (self.grace_seconds, other.grace_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.units.extend(other.units);
        self.commands.extend(other.commands);
        self.ports.extend(other.ports);
        self.before_reboot.extend(other.before_reboot);
    }

    /// How long the checks may take to pass.
    pub(crate) fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_seconds.unwrap_or(DEFAULT_GRACE))
    }

    /// Checks what a plan file wrote; the message names the key.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(g) = self.grace_seconds
            && g > MAX_GRACE
        {
            return Err(format!(
                "key `grace_seconds`: {g} is more than {MAX_GRACE} seconds"
            ));
        }
        for unit in &self.units {
            let ok = !unit.is_empty()
                && unit.len() <= 256
                && unit.contains('.')
                && !unit.contains(['/', ' '])
                && !unit.chars().any(char::is_control);
            if !ok {
                return Err(format!(
                    "key `units`: {unit:?} is not a systemd unit name (e.g. \"nginx.service\")"
                ));
            }
        }
        for (key, commands) in [
            ("commands", &self.commands),
            ("before_reboot", &self.before_reboot),
        ] {
            if commands
                .iter()
                .any(|c| c.first().is_none_or(|p| p.is_empty()))
            {
                return Err(format!(
                    "key `{key}`: a command is an array of a program and its arguments, and not empty"
                ));
            }
        }
        for port in &self.ports {
            split_port(port).map_err(|e| format!("key `ports`: {e}"))?;
        }
        Ok(())
    }
}

/// `HOST:PORT` (`[V6]:PORT` for an IPv6 address) split, the port checked.
pub(crate) fn split_port(address: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{address:?} is not HOST:PORT (e.g. \"127.0.0.1:80\")");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_add_checks_and_the_longest_grace_wins() {
        let mut h = Health {
            grace_seconds: Some(30),
            units: vec!["a.service".into()],
            ..Health::default()
        };
        h.merge(Health {
            grace_seconds: Some(90),
            ports: vec!["127.0.0.1:80".into()],
            ..Health::default()
        });
        assert_eq!(h.grace(), Duration::from_secs(90));
        assert_eq!(h.units, ["a.service"]);
        assert_eq!(h.ports, ["127.0.0.1:80"]);
        assert_eq!(Health::default().grace(), Duration::from_secs(60));
    }

    #[test]
    fn bad_checks_are_named() {
        let bad = |h: Health| h.validate().unwrap_err();
        assert!(
            bad(Health {
                units: vec!["../etc/passwd".into()],
                ..Health::default()
            })
            .contains("key `units`")
        );
        assert!(
            bad(Health {
                commands: vec![vec![]],
                ..Health::default()
            })
            .contains("key `commands`")
        );
        for p in ["80", "host:", "host:0", "host:70000", ":80", "[::1]"] {
            assert!(
                bad(Health {
                    ports: vec![p.into()],
                    ..Health::default()
                })
                .contains("is not HOST:PORT"),
                "{p}"
            );
        }
        assert!(
            bad(Health {
                grace_seconds: Some(86400),
                ..Health::default()
            })
            .contains("grace_seconds")
        );
        assert_eq!(split_port("[::1]:8080"), Ok(("::1", 8080)));
    }
}

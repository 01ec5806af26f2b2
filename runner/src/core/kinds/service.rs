//! Options of `service`.

use serde::{Deserialize, Serialize};

use super::KindOptions;

/// What a `service` step does to its units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// Stop the units.
    Stop,
    /// Start the units.
    Start,
    /// Restart the units.
    Restart,
    /// Enable the units.
    Enable,
    /// Disable the units.
    Disable,
    /// Mask the units.
    Mask,
    /// Unmask the units.
    Unmask,
}

impl Action {
    /// The verb, as systemctl says it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Restart => "restart",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Mask => "mask",
            Action::Unmask => "unmask",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of a `service` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceOptions {
    /// stop, start, restart, enable, disable, mask or unmask.
    pub(crate) action: Action,
    /// Unit names.
    pub(crate) units: Vec<String>,
    /// The root's system bus socket (a path in the root): talk to its
    /// running systemd (default: only when the root is this host).
    #[serde(default)]
    pub(crate) bus: Option<String>,
    /// How long start and stop may take per unit, in seconds (default 90).
    #[serde(default)]
    pub(crate) timeout_s: Option<u64>,
}

impl KindOptions for ServiceOptions {
    fn check(&self) -> Result<(), String> {
        if self.units.is_empty() {
            return Err("option `units` names no unit".into());
        }
        for u in &self.units {
            if !u.contains('.') || u.contains('/') {
                return Err(format!(
                    "option `units`: {u:?} is not a unit name (e.g. app.service)"
                ));
            }
        }
        Ok(())
    }
}

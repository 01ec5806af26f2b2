//! Secrets from the host: the passwords a plan names by environment
//! variable, handed over in a file the agent reads once and deletes
//! ([`HOST_SECRETS_DIR`]), then keeps in memory only; they reach a tool only
//! through a file on the agent's own tmpfs ([`PRIVATE_DIR`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};

use crate::core::event::{HOST_SECRETS_DIR, SECRETS_FILE};

/// The agent's private tmpfs for files that carry secrets to tools
/// (PostgreSQL password files); mode 0700, gone with the container.
pub(crate) const PRIVATE_DIR: &str = "/run/migrate-secrets";

static SECRETS: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// Reads the host's secrets file, if there is one, and deletes it; mounts
/// the private tmpfs. Called once, at start, in the agent's own mount
/// namespace.
pub(crate) fn take_from_host() -> Result<()> {
    let dir = Path::new(PRIVATE_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {PRIVATE_DIR}"))?;
    crate::agent::mounts::tmpfs(
        dir,
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        "mode=0700,size=1m",
    )?;
    let file = Path::new(HOST_SECRETS_DIR).join(SECRETS_FILE);
    let secrets = match crate::core::fsutil::read_limited(&file, 1 << 20)? {
        Some(bytes) => {
            // Gone before anything else runs, whatever happens to the host.
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", file.display()))?
        }
        None => BTreeMap::new(),
    };
    let _ = SECRETS.set(secrets);
    Ok(())
}

/// The secret the host gave for `name`.
pub(crate) fn get(name: &str) -> Option<&'static str> {
    SECRETS.get()?.get(name).map(String::as_str)
}

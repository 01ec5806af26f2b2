//! Options of `rsync`.

use serde::Deserialize;

use super::KindOptions;

/// Options of an `rsync` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RsyncOptions {
    /// A path in the root, or `[user@]host:path` for a remote.
    pub(crate) source: String,
    /// A path in the root, or `[user@]host:path` for a remote.
    pub(crate) destination: String,
    /// Delete what the source does not have (default: in the cutover phase).
    #[serde(default)]
    pub(crate) delete: Option<bool>,
    /// Compare source and destination by checksum afterwards (default: in
    /// the cutover phase).
    #[serde(default)]
    pub(crate) verify: Option<bool>,
    /// Paths to leave out (rsync --exclude patterns).
    #[serde(default)]
    pub(crate) exclude: Vec<String>,
    /// ssh identity for remotes, a path in the root (default: the root's
    /// id_ed25519, id_ecdsa and id_rsa that exist).
    #[serde(default)]
    pub(crate) ssh_key: Option<String>,
    /// ssh port of the remote (default: 22).
    #[serde(default)]
    pub(crate) ssh_port: Option<u16>,
}

impl KindOptions for RsyncOptions {
    fn check(&self) -> Result<(), String> {
        for (name, value) in [("source", &self.source), ("destination", &self.destination)] {
            if value.trim().is_empty() {
                return Err(format!("option `{name}` must not be empty"));
            }
            if !is_remote(value) && !value.starts_with('/') {
                return Err(format!(
                    "option `{name}`: {value:?} must be an absolute path in the root, or host:path"
                ));
            }
        }
        if is_remote(&self.source) && is_remote(&self.destination) {
            return Err(
                "rsync cannot copy from one remote to another; one side must be in the root".into(),
            );
        }
        if let Some(key) = &self.ssh_key
            && (!key.starts_with('/') || key.contains(['\'', '"', '\\']))
        {
            return Err(format!(
                "option `ssh_key`: {key:?} must be an absolute path in the root without quotes"
            ));
        }
        Ok(())
    }
}

/// Options of a `verify-copy` step.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyCopyOptions {
    /// The id of the rsync step whose copy to verify by content (its final
    /// pass, earlier in the plan).
    pub(crate) of: String,
}

impl KindOptions for VerifyCopyOptions {}

/// Whether an rsync location is on another host (`host:path`, no `/`
/// before the colon).
pub(crate) fn is_remote(value: &str) -> bool {
    match value.find(':') {
        Some(colon) => !value[..colon].contains('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_have_a_host_before_the_colon() {
        assert!(is_remote("backup@host:/srv/data"));
        assert!(is_remote("host:data"));
        assert!(!is_remote("/srv/data"));
        assert!(!is_remote("/srv/odd:name"));
    }
}

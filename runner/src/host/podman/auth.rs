//! Registry credentials from `$REGISTRY_AUTH_FILE`, for pulls through the
//! podman service: the service reads its own default auth files (root's
//! `/run/containers/0/auth.json`, `$HOME/.config/containers/auth.json`) but
//! not the caller's `REGISTRY_AUTH_FILE`, so the entry for the image's
//! registry is handed to it with the pull (the `X-Registry-Auth` header),
//! as podman's own client does.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use podman_api::opts::RegistryAuth;
use serde::Deserialize;

/// The environment variable podman's tools read an auth file from.
pub(crate) const AUTH_FILE_ENV: &str = "REGISTRY_AUTH_FILE";

/// The largest auth file read.
const MAX_SIZE: u64 = 1 << 20;

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
}

/// The credentials `$REGISTRY_AUTH_FILE` holds for `reference` (a registry
/// reference without a transport), if it is set and has an entry for the
/// reference's registry or a namespace of it (the longest match wins, as in
/// containers-auth.json(5)).
pub(crate) fn from_env(reference: &str) -> Result<Option<RegistryAuth>> {
    let Some(path) = std::env::var_os(AUTH_FILE_ENV) else {
        return Ok(None);
    };
    let shown = path.to_string_lossy().into_owned();
    let meta = std::fs::metadata(&path).with_context(|| format!("{AUTH_FILE_ENV}={shown}"))?;
    if !meta.is_file() || meta.len() > MAX_SIZE {
        bail!("{AUTH_FILE_ENV}={shown}: not a regular file of at most {MAX_SIZE} bytes");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{AUTH_FILE_ENV}={shown}"))?;
    lookup(&text, reference).with_context(|| format!("{AUTH_FILE_ENV}={shown}"))
}

/// The entry of an auth file's `text` for `reference`.
pub(crate) fn lookup(text: &str, reference: &str) -> Result<Option<RegistryAuth>> {
    let file: AuthFile = serde_json::from_str(text).context("not an auth file")?;
    // `host/ns/repo:tag@digest` -> candidates host/ns/repo, host/ns, host.
    let name = reference.split('@').next().unwrap_or(reference);
    let name = match name.rsplit_once(':') {
        Some((n, tag)) if !tag.contains('/') => n,
        _ => name,
    };
    let parts: Vec<&str> = name.split('/').collect();
    let registry = parts.first().copied().unwrap_or_default();
    for n in (1..=parts.len()).rev() {
        let key = parts[..n].join("/");
        let Some(entry) = file.auths.get(&key) else {
            continue;
        };
        let Some(auth) = &entry.auth else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .context("an `auth` value is not base64")?;
        let decoded = String::from_utf8(decoded).context("an `auth` value is not UTF-8")?;
        let Some((user, password)) = decoded.split_once(':') else {
            bail!("the `auth` value for {key} is not USER:PASSWORD");
        };
        return Ok(Some(
            RegistryAuth::builder()
                .username(user)
                .password(password)
                .server_address(registry)
                .build(),
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_entry_gives_the_credentials() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            r#"{{"auths": {{"reg.example:5000": {{"auth": "{}"}}, "reg.example:5000/team": {{"auth": "{}"}}}}}}"#,
            b64("host:pw"),
            b64("team:secret:with:colons")
        );
        let user = |r: &str| match lookup(&text, r).unwrap() {
            Some(RegistryAuth::Password {
                username,
                password,
                server_address,
                ..
            }) => Some((username, password, server_address)),
            _ => None,
        };
        assert_eq!(
            user("reg.example:5000/other/m:1"),
            Some(("host".into(), "pw".into(), Some("reg.example:5000".into())))
        );
        assert_eq!(
            user("reg.example:5000/team/m:stable@sha256:00"),
            Some((
                "team".into(),
                "secret:with:colons".into(),
                Some("reg.example:5000".into())
            ))
        );
        assert_eq!(user("other.example/m:1"), None);
        assert!(lookup("{", "reg.example:5000/m").is_err());
        assert!(lookup(r#"{"auths": {"r.example": {"auth": "!!"}}}"#, "r.example/m").is_err());
    }
}

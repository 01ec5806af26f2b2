//! `POST /libpod/build` with a build context we stream ourselves.
//!
//! podman-api's `Images::build` only accepts a directory, which it tars and
//! gzips itself; we assemble the context in memory (Containerfile, image
//! definition, agent binary) with the `tar` crate and send it here, over
//! [`super::http`] on the same unix socket.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Deserialize;

use super::http::{self, percent_encode};

/// What to build.
#[derive(Debug)]
pub(crate) struct BuildRequest<'a> {
    /// The build context: an uncompressed tar archive.
    pub(crate) context: &'a [u8],
    /// Path of the Containerfile inside the context.
    pub(crate) containerfile: &'a str,
    /// The tag to give the image.
    pub(crate) tag: &'a str,
    /// `--build-arg`s.
    pub(crate) build_args: &'a BTreeMap<String, String>,
    /// Labels to set on the image.
    pub(crate) labels: &'a BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct BuildLine {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    aux: Option<Aux>,
}

#[derive(Debug, Deserialize)]
struct Aux {
    #[serde(rename = "ID", default)]
    id: Option<String>,
}

/// Sends the build; `progress` gets each line of build output. Returns the
/// id of the built image, if podman said it.
pub(crate) async fn build(
    socket: &Path,
    api_version: &str,
    req: &BuildRequest<'_>,
    mut progress: impl FnMut(&str),
) -> Result<Option<String>> {
    let query = [
        ("dockerfile", req.containerfile.to_string()),
        ("t", req.tag.to_string()),
        ("buildargs", serde_json::to_string(req.build_args)?),
        ("labels", serde_json::to_string(req.labels)?),
        ("rm", "true".to_string()),
        ("layers", "true".to_string()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", percent_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let path = format!("/v{api_version}/libpod/build?{query}");
    let mut response = http::post(
        socket,
        &path,
        "application/x-tar",
        req.context,
        req.context.len() as u64,
    )
    .await?;
    if response.status != 200 {
        let status = response.status;
        bail!(
            "podman refused the build (HTTP {status}): {}",
            response.error_text().await?
        );
    }
    let body = &mut response.body;

    let mut pending = Vec::new();
    let mut image_id = None;
    let mut failure = None;
    while let Some(chunk) = body.next_chunk().await? {
        pending.extend_from_slice(&chunk);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            handle_line(&line, &mut progress, &mut image_id, &mut failure);
        }
    }
    handle_line(&pending, &mut progress, &mut image_id, &mut failure);
    if let Some(err) = failure {
        bail!("the image build failed: {err}");
    }
    Ok(image_id)
}

fn handle_line(
    line: &[u8],
    progress: &mut impl FnMut(&str),
    image_id: &mut Option<String>,
    failure: &mut Option<String>,
) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str::<BuildLine>(text) {
        Ok(l) => {
            if let Some(s) = l.stream {
                for out in s.lines() {
                    progress(out);
                }
            }
            if let Some(e) = l.error {
                progress(&e);
                *failure = Some(e);
            }
            if let Some(id) = l.aux.and_then(|a| a.id) {
                *image_id = Some(id);
            }
        }
        Err(_) => progress(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_lines_report_output_errors_and_the_id() {
        let mut seen = Vec::new();
        let mut id = None;
        let mut failure = None;
        for line in [
            r#"{"stream":"STEP 1/3: FROM x\n"}"#,
            r#"{"aux":{"ID":"sha256:abc"}}"#,
            r#"{"error":"no such file","errorDetail":{"message":"no such file"}}"#,
            "not json",
        ] {
            handle_line(
                line.as_bytes(),
                &mut |l| seen.push(l.to_string()),
                &mut id,
                &mut failure,
            );
        }
        assert_eq!(seen, ["STEP 1/3: FROM x", "no such file", "not json"]);
        assert_eq!(id.as_deref(), Some("sha256:abc"));
        assert_eq!(failure.as_deref(), Some("no such file"));
    }
}

//! `POST /libpod/build` with a build context we stream ourselves.
//!
//! podman-api's `Images::build` only accepts a directory, which it tars and
//! gzips itself; we assemble the context in memory (Containerfile, image
//! definition, agent binary) with the `tar` crate and send it here, over a
//! minimal HTTP/1.1 exchange on the same unix socket.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// What to build.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    /// The build context: an uncompressed tar archive.
    pub context: &'a [u8],
    /// Path of the Containerfile inside the context.
    pub containerfile: &'a str,
    /// The tag to give the image.
    pub tag: &'a str,
    /// `--build-arg`s.
    pub build_args: &'a BTreeMap<String, String>,
    /// Labels to set on the image.
    pub labels: &'a BTreeMap<String, String>,
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
pub async fn build(
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
    let head = format!(
        "POST /v{api_version}/libpod/build?{query} HTTP/1.1\r\n\
         Host: podman\r\n\
         Content-Type: application/x-tar\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        req.context.len()
    );
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(req.context).await?;
    stream.flush().await?;

    let mut reader = BufReader::new(stream);
    let (status, chunked) = read_head(&mut reader).await?;
    let mut body = Body {
        reader,
        chunked,
        remaining: 0,
        done: false,
    };
    if status != 200 {
        let mut text = Vec::new();
        while let Some(chunk) = body.next_chunk().await? {
            text.extend_from_slice(&chunk);
        }
        bail!(
            "podman refused the build (HTTP {status}): {}",
            api_error(&text)
        );
    }

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

fn api_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        #[serde(default)]
        message: String,
        #[serde(default)]
        cause: String,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) if !e.message.is_empty() => e.message,
        Ok(e) => e.cause,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

async fn read_head(reader: &mut BufReader<UnixStream>) -> Result<(u16, bool)> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .context("reading the HTTP status")?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed HTTP status line {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("transfer-encoding")
            && value.trim().eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

/// A response body, chunked or read to the end of the connection.
struct Body {
    reader: BufReader<UnixStream>,
    chunked: bool,
    remaining: usize,
    done: bool,
}

impl Body {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if !self.chunked {
            let mut buf = vec![0; 8192];
            let n = self.reader.read(&mut buf).await?;
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            buf.truncate(n);
            return Ok(Some(buf));
        }
        if self.remaining == 0 {
            let mut size = String::new();
            if self.reader.read_line(&mut size).await? == 0 {
                self.done = true;
                return Ok(None);
            }
            let hex = size.trim().split(';').next().unwrap_or_default();
            self.remaining = usize::from_str_radix(hex, 16)
                .with_context(|| format!("malformed chunk size {size:?}"))?;
            if self.remaining == 0 {
                self.done = true;
                return Ok(None);
            }
        }
        let mut buf = vec![0; self.remaining.min(8192)];
        self.reader.read_exact(&mut buf).await?;
        self.remaining -= buf.len();
        if self.remaining == 0 {
            let mut crlf = [0; 2];
            self.reader.read_exact(&mut crlf).await?;
        }
        Ok(Some(buf))
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"a":"b c"}"#),
            "%7B%22a%22%3A%22b%20c%22%7D"
        );
        assert_eq!(percent_encode("localhost/x:1.0"), "localhost%2Fx%3A1.0");
    }

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

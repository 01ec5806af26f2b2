//! A minimal HTTP/1.1 client on podman's unix socket, for the requests
//! podman-api makes in a way that does not suit us: an image build context
//! and an image archive to load, whose bodies it wants whole in memory or as
//! a directory (here the body is streamed from any reader; the response body
//! is read chunk by chunk), and the attach to a container, which it precedes
//! with an inspect that has podman compute the container's size (50 ms at
//! each start of a migration container).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A response: its status and its body, not read yet.
pub(crate) struct Response {
    /// HTTP status code.
    pub(crate) status: u16,
    /// The body.
    pub(crate) body: Body,
}

impl Response {
    /// Reads the whole body (an error response is small).
    pub(crate) async fn text(&mut self) -> Result<Vec<u8>> {
        let mut text = Vec::new();
        while let Some(chunk) = self.body.next_chunk().await? {
            text.extend_from_slice(&chunk);
        }
        Ok(text)
    }

    /// The message of an error response.
    pub(crate) async fn error_text(&mut self) -> Result<String> {
        Ok(api_error(&self.text().await?))
    }
}

/// Sends `POST path` with `len` bytes from `body`.
pub(crate) async fn post(
    socket: &Path,
    path: &str,
    content_type: &str,
    mut body: impl AsyncRead + Unpin,
    len: u64,
) -> Result<Response> {
    let head = format!(
        "POST {path} HTTP/1.1\r\n\
         Host: podman\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    );
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.write_all(head.as_bytes()).await?;
    let sent = tokio::io::copy(&mut (&mut body).take(len), &mut stream).await?;
    if sent != len {
        anyhow::bail!("the request body ended after {sent} of {len} bytes");
    }
    stream.flush().await?;

    let mut reader = BufReader::new(stream);
    let (status, chunked) = read_head(&mut reader).await?;
    Ok(Response {
        status,
        body: Body {
            reader,
            chunked,
            remaining: 0,
            done: false,
        },
    })
}

/// `POST path` that podman answers by turning the connection into the
/// container's multiplexed output ([`Frames`]): libpod's attach.
pub(crate) async fn attach(socket: &Path, path: &str) -> Result<Frames> {
    let head = format!(
        "POST {path} HTTP/1.1\r\n\
         Host: podman\r\n\
         Content-Length: 0\r\n\
         Connection: Upgrade\r\n\
         Upgrade: tcp\r\n\r\n"
    );
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    let mut reader = BufReader::new(stream);
    let (status, chunked) = read_head(&mut reader).await?;
    if !matches!(status, 101 | 200) {
        let mut response = Response {
            status,
            body: Body {
                reader,
                chunked,
                remaining: 0,
                done: false,
            },
        };
        anyhow::bail!("podman answered {status}: {}", response.error_text().await?);
    }
    Ok(Frames { reader })
}

/// Longest frame accepted (podman sends at most a few kilobytes at once).
const MAX_FRAME: usize = 16 << 20;

/// A container's output as podman multiplexes it without a terminal: frames
/// of an 8-byte header (the stream: 1 stdout, 2 stderr; 3 bytes of zeros;
/// the length, big-endian) and that many bytes.
pub(crate) struct Frames {
    reader: BufReader<UnixStream>,
}

impl Frames {
    /// The next frame: its stream and its bytes; `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        let mut header = [0u8; 8];
        match self.reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e).context("reading the container's output"),
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_FRAME {
            anyhow::bail!("the container's output has a frame of {len} bytes");
        }
        let mut bytes = vec![0; len];
        self.reader
            .read_exact(&mut bytes)
            .await
            .context("reading the container's output")?;
        Ok(Some((header[0], bytes)))
    }
}

/// The message of a libpod error body (`{"cause":..,"message":..}`).
pub(crate) fn api_error(body: &[u8]) -> String {
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
pub(crate) struct Body {
    reader: BufReader<UnixStream>,
    chunked: bool,
    remaining: usize,
    done: bool,
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
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

/// Percent-encodes a query value.
pub(crate) fn percent_encode(s: &str) -> String {
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
    fn error_bodies_give_their_message() {
        assert_eq!(
            api_error(br#"{"cause":"x","message":"no such image","response":404}"#),
            "no such image"
        );
        assert_eq!(api_error(br#"{"cause":"only cause"}"#), "only cause");
        assert_eq!(api_error(b" plain text \n"), "plain text");
    }
}

//! A minimal client of snapd's REST API on its unix socket: setting a snap's
//! configuration (`PUT /v2/snaps/NAME/conf`) and waiting for the change snapd
//! starts for it (`GET /v2/changes/ID`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// How long a configuration change may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Sets `conf` on `snap` and waits until snapd reports the change done.
pub(crate) fn set_conf(
    socket: &Path,
    snap: &str,
    conf: &serde_json::Map<String, Value>,
) -> Result<()> {
    let body = serde_json::to_vec(conf)?;
    let reply = request(
        socket,
        "PUT",
        &format!("/v2/snaps/{snap}/conf"),
        Some(&body),
    )?;
    match reply.get("type").and_then(Value::as_str) {
        Some("async") => {
            let change = reply
                .get("change")
                .and_then(Value::as_str)
                .context("snapd's async reply names no change")?;
            wait_for_change(socket, change)
        }
        Some("sync") => Ok(()),
        _ => bail!(
            "snapd refused the configuration of {snap}: {}",
            describe(&reply)
        ),
    }
}

fn wait_for_change(socket: &Path, change: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let reply = request(socket, "GET", &format!("/v2/changes/{change}"), None)?;
        let result = reply
            .get("result")
            .context("snapd's change reply has no result")?;
        if result.get("ready").and_then(Value::as_bool) == Some(true) {
            return match result.get("status").and_then(Value::as_str) {
                Some("Done") => Ok(()),
                status => bail!(
                    "snapd change {change} ended {}: {}",
                    status.unwrap_or("?"),
                    result
                        .get("err")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                ),
            };
        }
        if started.elapsed() > CHANGE_TIMEOUT {
            bail!(
                "snapd change {change} did not finish within {}s",
                CHANGE_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn describe(reply: &Value) -> String {
    reply
        .pointer("/result/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| reply.to_string())
}

/// One HTTP/1.1 exchange over the socket; the reply body as JSON.
fn request(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to snapd at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: snapd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .context("reading snapd's reply")?;
    let mut chunked = false;
    let mut length = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                "content-length" => length = value.trim().parse::<usize>().ok(),
                _ => {}
            }
        }
    }
    let mut text = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).context("malformed chunk size")?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            text.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        text.resize(n, 0);
        reader.read_exact(&mut text)?;
    } else {
        reader.read_to_end(&mut text)?;
    }
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "snapd's reply to {method} {path} is not JSON ({}): {}",
            status.trim(),
            String::from_utf8_lossy(&text)
        )
    })
}

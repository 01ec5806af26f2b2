//! FleetLock: reboot slots from a fleet's lock server, the protocol Fedora
//! CoreOS's zincati speaks (and airlock serves). A host configured with
//! `fleetlock_url` takes a slot (`POST /v1/pre-reboot`) before an
//! unattended cutover, and gives it back (`POST /v1/steady-state`) once the
//! first boot confirmed the new release; a server that does not grant one,
//! or cannot be reached, means no cutover and no reboot, never one without
//! a slot.
//!
//! The requests are the protocol's: a JSON body
//! `{"client_params": {"id": ID, "group": GROUP}}`, the header
//! `fleet-lock-protocol: true`, 200 for success and anything else a
//! refusal (with `{"kind", "value"}` when the server says why). The host's
//! id is, as zincati's, an application-specific id derived from
//! `/etc/machine-id` (systemd's `sd_id128_get_machine_app_specific`), or
//! `fleetlock_id` from the configuration.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::core::event::timestamp;
use crate::core::journal::{FleetLockSlot, Journal, SlotState};
use crate::host::config::FleetLockConfig;

/// migrate's application id: the host's FleetLock id is
/// `systemd-id128 machine-id --app-specific=` this.
pub(crate) const APP_ID: &str = "9f47acada360ce6c4804121fa904cb59";

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The pauses between attempts of one operation.
const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// The most of a server's answer that is read.
const ANSWER_LIMIT: usize = 16 * 1024;

/// A base URL the client can speak to: plain HTTP, a host, no query.
pub(crate) fn check_url(url: &str) -> Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!(
            "{url:?}: https is not supported; FleetLock servers (airlock) serve plain HTTP on the fleet's network"
        ),
        _ => bail!("{url:?} is not an http:// URL"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{url:?} names no host");
    }
    if uri.query().is_some() {
        bail!("{url:?}: a base URL has no query");
    }
    Ok(())
}

/// A group label as the protocol allows it: `^[a-zA-Z0-9.-]+$`.
pub(crate) fn check_group(group: &str) -> Result<()> {
    if group.is_empty()
        || !group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        bail!("{group:?} is not a group label (letters, digits, `.` and `-`)");
    }
    Ok(())
}

/// A client id: printable ASCII without spaces, at most 128 characters.
pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
        bail!("{id:?} is not an id (1 to 128 printable characters, no spaces)");
    }
    Ok(())
}

/// The application-specific id of `machine_id` (32 hex digits) for
/// [`APP_ID`]: HMAC-SHA256 keyed with the machine id over the application
/// id, its first 16 bytes made a version-4 UUID, as systemd derives it.
pub(crate) fn app_specific_id(machine_id: &str) -> Result<String> {
    let key = id128(machine_id.trim()).context("/etc/machine-id")?;
    let app = id128(APP_ID)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).context("HMAC key")?;
    mac.update(&app);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// 16 bytes from 32 hex digits.
fn id128(hex: &str) -> Result<[u8; 16]> {
    let digits = hex.as_bytes();
    if digits.len() != 32 {
        bail!("{hex:?} is not a 128-bit id (32 hex digits)");
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).unwrap_or("");
        out[i] = u8::from_str_radix(text, 16)
            .map_err(|_| anyhow::anyhow!("{hex:?} is not a 128-bit id (32 hex digits)"))?;
    }
    Ok(out)
}

/// Why the server did not grant what was asked.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// It answered, with something other than 200.
    Answered {
        /// The HTTP status.
        status: u16,
        /// The protocol's error kind, if it sent one.
        kind: Option<String>,
        /// Its description, or the body as it came.
        value: String,
    },
    /// It could not be asked (connection, timeout, a broken answer).
    Unreachable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered {
                status,
                kind: Some(kind),
                value,
            } => write!(f, "HTTP {status}, {kind}: {value}"),
            Self::Answered { status, value, .. } if value.is_empty() => {
                write!(f, "HTTP {status}")
            }
            Self::Answered { status, value, .. } => write!(f, "HTTP {status}: {value}"),
            Self::Unreachable(e) => write!(f, "not reachable: {e}"),
        }
    }
}

/// The host's client of its FleetLock server.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    server: String,
    group: String,
    id: String,
}

impl Client {
    /// The client of `config` for the running host (`root` is `/`): its id
    /// from the configuration or its machine id.
    pub(crate) fn new(root: &Path, config: &FleetLockConfig) -> Result<Self> {
        let id = match &config.id {
            Some(id) => id.clone(),
            None => {
                let text =
                    crate::core::fsutil::read_text_limited(&root.join("etc/machine-id"), 4096)?
                        .unwrap_or_default();
                if text.trim().is_empty() {
                    bail!(
                        "{}: no machine id to derive the host's FleetLock id from; set `fleetlock_id` in the configuration",
                        root.join("etc/machine-id").display()
                    );
                }
                app_specific_id(&text)?
            }
        };
        Ok(Self {
            server: config.url.clone(),
            group: config.group.clone(),
            id,
        })
    }

    /// A record of the slot in `state`, now.
    pub(crate) fn slot(&self, state: SlotState, answer: Option<String>) -> FleetLockSlot {
        FleetLockSlot {
            server: self.server.clone(),
            group: self.group.clone(),
            id: self.id.clone(),
            state,
            since: timestamp(std::time::SystemTime::now()),
            answer,
        }
    }

    /// Takes a reboot slot (or confirms the one held: the protocol's locks
    /// are recursive), retrying with back-off.
    pub(crate) async fn lock(&self) -> Result<(), Refusal> {
        self.with_backoff("pre-reboot").await
    }

    /// Gives the slot back (a no-op for the server when none is held),
    /// retrying with back-off.
    pub(crate) async fn unlock(&self) -> Result<(), Refusal> {
        self.with_backoff("steady-state").await
    }

    /// Gives the slot back: the slot as it is now, released (with `note`),
    /// or still held with the server's answer, and then the refusal too.
    pub(crate) async fn give_back(
        &self,
        note: Option<String>,
    ) -> Result<FleetLockSlot, (FleetLockSlot, Refusal)> {
        match self.unlock().await {
            Ok(()) => Ok(self.slot(SlotState::Released, note)),
            Err(refusal) => Err((
                self.slot(SlotState::Held, Some(refusal.to_string())),
                refusal,
            )),
        }
    }

    async fn with_backoff(&self, endpoint: &str) -> Result<(), Refusal> {
        let mut attempt = 0;
        loop {
            match self.post(endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt == BACKOFF.len() => return Err(e),
                Err(e) => {
                    tracing::info!(
                        "FleetLock {endpoint} at {}: {e}; again in {:?}",
                        self.server,
                        BACKOFF[attempt]
                    );
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One request to `BASE/v1/ENDPOINT`.
    async fn post(&self, endpoint: &str) -> Result<(), Refusal> {
        let body = serde_json::json!({
            "client_params": {"id": self.id, "group": self.group}
        })
        .to_string();
        let request = hyper::Request::post(format!("{}/v1/{endpoint}", self.server))
            .header("fleet-lock-protocol", "true")
            .header("content-type", "application/json")
            .header("user-agent", concat!("migrate/", env!("CARGO_PKG_VERSION")))
            .body(hyper::Body::from(body))
            .map_err(|e| Refusal::Unreachable(format!("building the request: {e}")))?;
        let exchange = async {
            let response = hyper::Client::new()
                .request(request)
                .await
                .map_err(|e| Refusal::Unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let answer = read_limited(response.into_body())
                .await
                .map_err(|e| Refusal::Unreachable(format!("reading the answer: {e}")))?;
            Ok::<_, Refusal>((status, answer))
        };
        let (status, answer) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                Refusal::Unreachable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            })??;
        if status == 200 {
            return Ok(());
        }
        let error: Option<serde_json::Value> = serde_json::from_slice(&answer).ok();
        let field = |key: &str| {
            error
                .as_ref()
                .and_then(|e| e.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Err(Refusal::Answered {
            status,
            kind: field("kind"),
            value: field("value")
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string()),
        })
    }
}

/// The body, up to [`ANSWER_LIMIT`] bytes.
async fn read_limited(mut body: hyper::Body) -> Result<Vec<u8>, hyper::Error> {
    use hyper::body::HttpBody;
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let room = ANSWER_LIMIT.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= ANSWER_LIMIT {
            break;
        }
    }
    Ok(out)
}

/// Records the slot in the root's journal, if it has one (a failure to
/// write is logged: the report has the record too).
pub(crate) fn record(root: &Path, slot: &FleetLockSlot) {
    match Journal::load(root) {
        Ok(Some(mut journal)) => {
            journal.fleetlock = Some(slot.clone());
            if let Err(e) = journal.save(root) {
                tracing::warn!("recording the FleetLock slot in the journal: {e:#}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("recording the FleetLock slot in the journal: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_id_is_systemds_application_specific_machine_id() {
        // Computed independently with Python's hmac module from systemd's
        // definition (HMAC-SHA256(machine id, app id), first 16 bytes,
        // version 4, variant 1); the systemd suite checks it against
        // `systemd-id128 machine-id --app-specific=` on a booted host.
        assert_eq!(
            app_specific_id("0123456789abcdef0123456789abcdef\n").unwrap(),
            EXPECTED
        );
        for bad in ["", "0123", "0123456789abcdef0123456789abcdeg"] {
            assert!(app_specific_id(bad).is_err(), "{bad:?}");
        }
    }

    const EXPECTED: &str = "ebefae6935494fd194c6933cd5d776d6";

    #[test]
    fn urls_groups_and_ids_are_checked_before_anything_is_asked() {
        check_url("http://airlock.example:3333").unwrap();
        check_url("http://127.0.0.1:8080/base").unwrap();
        for bad in [
            "airlock.example",
            "https://airlock.example",
            "ftp://x",
            "http://",
            "http://a/?x=1",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        check_group("default").unwrap();
        check_group("workers-1.eu").unwrap();
        for bad in ["", "a b", "w/1", "ö"] {
            assert!(check_group(bad).is_err(), "{bad}");
        }
        check_id("node-1").unwrap();
        assert!(check_id("a b").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }

    /// A server on 127.0.0.1 that answers each connection with the next
    /// of `answers` (status, body) and hands back what it was sent.
    fn server(answers: Vec<(u16, &'static str)>) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/base", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body its Content-Length announces.
                loop {
                    let n = stream.read(&mut buf).unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if rest.len() >= length || n == 0 {
                            break;
                        }
                    }
                }
                tx.send(String::from_utf8_lossy(&request).to_string())
                    .unwrap();
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (url, rx)
    }

    fn client(url: &str) -> Client {
        Client::new(
            Path::new("/nonexistent"),
            &FleetLockConfig {
                url: url.to_string(),
                group: "workers".into(),
                id: Some("node-1".into()),
            },
        )
        .unwrap()
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn requests_are_the_protocols_and_refusals_carry_the_servers_reason() {
        let (url, sent) = server(vec![
            (200, ""),
            (
                409,
                r#"{"kind":"failed_lock_semaphore_full","value":"semaphore currently full"}"#,
            ),
            (500, "upstream down"),
        ]);
        let c = client(&url);
        block_on(c.post("pre-reboot")).unwrap();
        let request = sent.recv().unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /base/v1/pre-reboot HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nfleet-lock-protocol: true"),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"client_params": {"id": "node-1", "group": "workers"}})
        );
        let refusal = block_on(c.post("steady-state")).unwrap_err();
        assert!(
            sent.recv()
                .unwrap()
                .starts_with("POST /base/v1/steady-state ")
        );
        assert_eq!(
            refusal.to_string(),
            "HTTP 409, failed_lock_semaphore_full: semaphore currently full"
        );
        let refusal = block_on(c.post("pre-reboot")).unwrap_err();
        assert_eq!(refusal.to_string(), "HTTP 500: upstream down");
    }

    #[test]
    fn a_refused_or_unreachable_server_is_asked_again_with_back_off() {
        let (url, sent) = server(vec![(503, ""), (503, ""), (200, "")]);
        let started = std::time::Instant::now();
        block_on(client(&url).lock()).unwrap();
        assert_eq!(sent.try_iter().count(), 3);
        assert!(started.elapsed() >= BACKOFF[0] + BACKOFF[1]);
        // Nothing listens: four attempts, then the reason.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refusal = block_on(client(&format!("http://127.0.0.1:{port}")).unlock()).unwrap_err();
        assert!(
            refusal.to_string().starts_with("not reachable: "),
            "{refusal}"
        );
    }
}

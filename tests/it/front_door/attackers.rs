//! The front door's attack set, one attacker per finding of the security review, each a bounded
//! loop run by [`run`] until its stop token fires or its round budget is spent, each counting
//! what berth did to it in its [`Tally`]; and the real client they must not hurt ([`pull`]).
//! The single-finding tests in `front_door.rs` run one attacker; `flood.rs` runs them all at
//! once.
//!
//! Every attacker binds its sockets to its own loopback address (127.0.0.x), which is how berth
//! tells clients apart: `allow`, the per-client caps and the login throttle all key on it.
//!
//! To add an attack: a variant of [`Attack`], its loop in [`run`], and a line in the flood's
//! attack set (`flood.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::images::{Blob, Image};

/// One attacker of the front door.
#[derive(Debug, Clone)]
pub enum Attack {
    /// Keep-alive connections from an address outside `allow`, each sending `GET /v2/` every
    /// `pace` and connecting again whenever berth closes it: before allow was checked at
    /// accept, each held a connection slot for as long as it liked (a 403 kept it alive).
    DeniedHolders {
        from: IpAddr,
        sockets: usize,
        pace: Duration,
    },
    /// Requests with a path of `len` times `fill`, one per connection, every `pace`: their
    /// paths used to reach the log at WARN for every denied request.
    LongPaths {
        from: IpAddr,
        len: usize,
        fill: char,
        pace: Duration,
    },
    /// Waves of `per_wave` concurrent logins with distinct wrong passwords for `user`, over
    /// one HTTP/2 connection, a wave every `pace`: they used to queue without bound in front
    /// of the two bcrypt turns.
    WrongPasswords {
        from: IpAddr,
        user: String,
        per_wave: usize,
        pace: Duration,
    },
    /// HTTP/2 connections granting no flow-control window (initial stream window 0, never
    /// raised), each opening `streams` requests for `path` and holding the responses: such a
    /// stream used to be never idle. A connection berth closes is opened again.
    StalledH2 {
        from: IpAddr,
        connections: usize,
        streams: usize,
        path: String,
        basic: Option<(String, String)>,
    },
    /// Pulls whose `?ns=` is `len` bytes, with `basic` credentials so they reach the handler,
    /// one per connection, every `pace`: a client-chosen `?ns=` used to be kept whole in the
    /// pull record, the access log and the status page (3,000 of 60 KB: 479 MB of RSS).
    LongNs {
        from: IpAddr,
        len: usize,
        basic: Option<(String, String)>,
        pace: Duration,
    },
}

/// What berth did to one attacker.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests (or connections, for attacks that send nothing but their presence) tried.
    pub attempts: AtomicU64,
    /// Answers by status class: 2xx, 401, 403, 404, 429, other.
    pub ok: AtomicU64,
    pub unauthorized: AtomicU64,
    pub denied: AtomicU64,
    pub not_found: AtomicU64,
    pub too_many: AtomicU64,
    pub other_status: AtomicU64,
    /// Connections berth closed (or reset, even before `connect` returned) without an answer
    /// to the last request.
    pub closed: AtomicU64,
    /// Connections that could not be made (berth's accept queue full, the OS out of ports).
    pub connect_failed: AtomicU64,
    /// The last connect error, for the summary.
    pub connect_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn connect_failed(&self, error: &std::io::Error) {
        // Reset before `connect` returned: berth closed it at accept.
        if error.kind() == std::io::ErrorKind::ConnectionReset {
            self.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.connect_failed.fetch_add(1, Ordering::Relaxed);
        *self.connect_error.lock().unwrap() = Some(error.to_string());
    }

    fn status(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.ok,
            401 => &self.unauthorized,
            403 => &self.denied,
            404 => &self.not_found,
            429 => &self.too_many,
            _ => &self.other_status,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        format!(
            "attempts {} | 2xx {} 401 {} 403 {} 404 {} 429 {} other {} | closed {} connect-failed {} ({})",
            Self::get(&self.attempts),
            Self::get(&self.ok),
            Self::get(&self.unauthorized),
            Self::get(&self.denied),
            Self::get(&self.not_found),
            Self::get(&self.too_many),
            Self::get(&self.other_status),
            Self::get(&self.closed),
            Self::get(&self.connect_failed),
            self.connect_error.lock().unwrap().as_deref().unwrap_or("-"),
        )
    }
}

/// A TCP connection to `to` from `from` (≤ 10 s).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    match tokio::time::timeout(Duration::from_secs(10), socket.connect(to)).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The status of the HTTP/1 response starting `head`, if it is one.
fn status_of(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// Reads one answer's head (up to `\r\n\r\n`, ≤ 64 KiB) within 10 s: its status, or `None` when
/// berth closed the connection first. A body is read and dropped, when the head says its length.
async fn read_answer(stream: &mut TcpStream) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if got.len() > 64 * 1024 {
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    };
    let status = status_of(&got)?;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = got.len() - head_end;
    while body < length.min(1024 * 1024) {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => body += n,
            _ => break,
        }
    }
    Some(status)
}

/// Runs `attack` against `target` until `stop` fires or `rounds` rounds are done (a round: one
/// request per socket, one wave, one connection's life), counting into `tally`.
pub async fn run(
    attack: Attack,
    target: SocketAddr,
    rounds: usize,
    stop: CancellationToken,
    tally: Arc<Tally>,
) {
    match attack {
        Attack::DeniedHolders {
            from,
            sockets,
            pace,
        } => {
            let mut holders = tokio::task::JoinSet::new();
            for _ in 0..sockets {
                let (stop, tally) = (stop.clone(), tally.clone());
                holders.spawn(async move {
                    let mut stream: Option<TcpStream> = None;
                    for _ in 0..rounds {
                        if stop.is_cancelled() {
                            return;
                        }
                        let mut current = match stream.take() {
                            Some(s) => s,
                            None => match connect_from(from, target).await {
                                Ok(s) => s,
                                Err(e) => {
                                    tally.connect_failed(&e);
                                    pause(&stop, pace).await;
                                    continue;
                                }
                            },
                        };
                        tally.attempts.fetch_add(1, Ordering::Relaxed);
                        let sent = current
                            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
                            .await;
                        match sent.ok().and(read_answer(&mut current).await) {
                            Some(status) => {
                                tally.status(status);
                                stream = Some(current);
                            }
                            None => {
                                tally.closed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // The attacker's pace between requests: the attack itself.
                        pause(&stop, pace).await;
                    }
                });
            }
            while holders.join_next().await.is_some() {}
        }
        Attack::LongPaths {
            from,
            len,
            fill,
            pace,
        } => {
            let path = format!("/v2/{}/manifests/latest", fill.to_string().repeat(len));
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n");
            one_request_per_connection(&request, from, target, rounds, pace, &stop, &tally).await;
        }
        Attack::LongNs {
            from,
            len,
            basic,
            pace,
        } => {
            let authorization = basic.map_or(String::new(), |(user, password)| {
                format!("Authorization: {}\r\n", self::basic(&user, &password))
            });
            let request = format!(
                "GET /v2/library/app/manifests/1?ns={} HTTP/1.1\r\nHost: berth\r\n{authorization}Connection: close\r\n\r\n",
                "n".repeat(len)
            );
            one_request_per_connection(&request, from, target, rounds, pace, &stop, &tally).await;
        }
        Attack::WrongPasswords {
            from,
            user,
            per_wave,
            pace,
        } => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .local_address(from)
                .http2_prior_knowledge()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let url = format!("http://{target}/v2/");
            for wave in 0..rounds {
                if stop.is_cancelled() {
                    return;
                }
                let requests = (0..per_wave).map(|n| {
                    let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
                    let auth = basic(&user, &format!("guess-{wave}-{n}"));
                    async move {
                        tally.attempts.fetch_add(1, Ordering::Relaxed);
                        match client.get(&url).header("authorization", auth).send().await {
                            Ok(answer) => tally.status(answer.status().as_u16()),
                            Err(_) => {
                                tally.closed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
                futures::future::join_all(requests).await;
                pause(&stop, pace).await;
            }
        }
        Attack::StalledH2 {
            from,
            connections,
            streams,
            path,
            basic: credentials,
        } => {
            let mut stallers = tokio::task::JoinSet::new();
            for _ in 0..connections {
                let (stop, tally, path) = (stop.clone(), tally.clone(), path.clone());
                let auth = credentials.as_ref().map(|(u, p)| basic(u, p));
                stallers.spawn(async move {
                    for _ in 0..rounds {
                        if stop.is_cancelled() {
                            return;
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            closed = stalled_h2(from, target, &path, auth.as_deref(), streams, Duration::from_secs(120), &tally) => {
                                if closed.is_none() {
                                    pause(&stop, Duration::from_millis(100)).await;
                                }
                            }
                        }
                    }
                });
            }
            while stallers.join_next().await.is_some() {}
        }
    }
}

/// Waits `pace` or until `stop`.
/// `rounds` times, each on a fresh connection from `from`: send `request`, count the answer.
async fn one_request_per_connection(
    request: &str,
    from: IpAddr,
    target: SocketAddr,
    rounds: usize,
    pace: Duration,
    stop: &CancellationToken,
    tally: &Tally,
) {
    for _ in 0..rounds {
        if stop.is_cancelled() {
            return;
        }
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        match connect_from(from, target).await {
            Ok(mut stream) => {
                let sent = stream.write_all(request.as_bytes()).await;
                match sent.ok().and(read_answer(&mut stream).await) {
                    Some(status) => tally.status(status),
                    None => {
                        tally.closed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tally.connect_failed(&e),
        }
        pause(stop, pace).await;
    }
}

async fn pause(stop: &CancellationToken, pace: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(pace) => {}
    }
}

/// One HTTP/2 connection from `from` that grants no window: `streams` requests for `path`,
/// their responses held unread. Returns how long after the last response head berth closed the
/// connection (`Some`), or `None` if it could not be set up (counted as a failed connect);
/// waits at most `limit` for the close (then `Some(limit)`).
pub async fn stalled_h2(
    from: IpAddr,
    target: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    streams: usize,
    limit: Duration,
    tally: &Tally,
) -> Option<Duration> {
    let tcp = match connect_from(from, target).await {
        Ok(tcp) => tcp,
        Err(e) => {
            tally.connect_failed(&e);
            return None;
        }
    };
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tcp))
        .await;
    let (mut send, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => {
            tally.connect_failed(&std::io::Error::other(e));
            return None;
        }
    };
    let mut connection = tokio::spawn(connection);
    let mut held = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut request = http::Request::get(format!("http://{target}{path}"));
        if let Some(auth) = authorization {
            request = request.header(http::header::AUTHORIZATION, auth);
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout(Duration::from_secs(30), send.send_request(request));
        match sent.await {
            Ok(Ok(response)) => {
                tally.status(response.status().as_u16());
                // Held, never read: the window stays 0.
                held.push(response);
            }
            _ => {
                tally.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    let heads_done = std::time::Instant::now();
    let closed = tokio::time::timeout(limit, &mut connection).await;
    if closed.is_err() {
        connection.abort();
        return Some(limit);
    }
    tally.closed.fetch_add(1, Ordering::Relaxed);
    drop(held);
    Some(heads_done.elapsed())
}

/// A client whose connections come from `from`.
pub fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Pulls `image` (`repo:tag`) through berth at `base` as a registry client does: the manifest
/// by tag, then the config and every layer, each checked against its digest. `Err` says which
/// request failed and how. Returns the bytes received.
pub async fn pull(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    image: &Image,
    authorization: Option<&str>,
) -> Result<u64, String> {
    let get = |path: String, accept: &str| {
        let mut request = client
            .get(format!("{base}/v2/{repo}/{path}"))
            .header("accept", accept);
        if let Some(auth) = authorization {
            request = request.header("authorization", auth);
        }
        async move {
            let answer = request.send().await.map_err(|e| format!("{path}: {e}"))?;
            let status = answer.status();
            let body = answer
                .bytes()
                .await
                .map_err(|e| format!("{path}: body: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "{path}: {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(body)
        }
    };
    let manifest = get(format!("manifests/{tag}"), &image.manifest.media_type).await?;
    let mut received = manifest.len() as u64;
    check(&image.manifest, &manifest)?;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let body = get(format!("blobs/{}", blob.digest), "*/*").await?;
        received += body.len() as u64;
        check(blob, &body)?;
    }
    Ok(received)
}

fn check(blob: &Blob, body: &Bytes) -> Result<(), String> {
    let got = crate::support::images::sha256_digest(body);
    if got == blob.digest {
        Ok(())
    } else {
        Err(format!("{} came back as {got}", blob.digest))
    }
}

/// The resident memory of process `pid` (`VmRSS` in `/proc/<pid>/status`), in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

//! The front door: accepting connections and holding clients to the `[server]` limits.
//!
//! - [`serve`]: the accept loop. Right after `accept`, before a slot, TLS or HTTP: a client
//!   outside `allow`, or one already holding `max_connections_per_client` connections, is
//!   closed (refusals are logged as a count per reason every few seconds, never per
//!   connection). Then a connection cap (beyond it, new connections wait up to
//!   `header_timeout` for a slot, then are closed), optional TLS, hyper-util's auto (HTTP/1 +
//!   HTTP/2, with keep-alive pings) connection builder with a timer, graceful shutdown with a
//!   deadline.
//! - [`watchdog`]: per-connection deadlines (no request, slow head, idle, a stalled HTTP/2
//!   response body).
//! - [`tls`]: rustls with ALPN h2/http1.1, certificate and key re-read when the files change,
//!   client certificates checked against `client_ca_file`.
//! - [`users`]: the htpasswd (bcrypt) users for Basic authentication.
//!
//! This module knows sockets, TLS and HTTP connections, not axum: it serves any tower service,
//! handing each request the client's address as a [`PeerAddr`] extension.

pub mod tls;
pub mod users;
pub mod watchdog;
pub mod zero_copy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use watchdog::{Activity, RequestGuard, Watched};
use zero_copy::{FileSender, SendfileSocket};

/// The client's address, as an extension on every request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Bytes of one HTTP/1 request head (request line + headers) berth reads at most.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields per HTTP/1 request.
const MAX_HEADERS: usize = 100;
/// Streams an HTTP/2 client may run at once on one connection.
const MAX_STREAMS: u32 = 256;
/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`). The usual 128
/// is too few for a cluster's nodes all pulling at once after a rebuild: past it the kernel
/// drops the handshake's last ACK and the client, which believes it is connected, waits.
const ACCEPT_BACKLOG: u32 = 4096;
/// How long an HTTP/2 client has to answer a keep-alive ping, at most.
const MAX_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// The body of the 429 for a request past the client's share (an OCI error, as clients of a
/// registry expect; this module names no API types).
const TOO_MANY_REQUESTS: &[u8] = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"this client has server.max_connections_per_client requests in progress already; retry in 1 s"}]}"#;
/// Refusals of one kind are logged at most this often, as a count.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Listens on `addr` with [`ACCEPT_BACKLOG`] (and `SO_REUSEADDR`, so a restart does not wait
/// for the old sockets' TIME_WAIT).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Who may connect to one listener and the limits it holds them to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client networks that may connect; anyone else is closed right after `accept`. An
    /// IPv4-mapped IPv6 address counts as its IPv4 address (as in `ServerConfig::allows`).
    pub allow: Arc<[IpNet]>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Connections one client (see [`client_key`]) may have open or waiting for a slot.
    pub max_connections_per_client: usize,
    /// How long shutdown waits for running requests before closing their connections.
    pub shutdown_deadline: Duration,
}

/// What counts as one client for per-client limits: its IPv4 address, or the /64 of its IPv6
/// address (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Serves `service` on `listener` until `stop` is cancelled, then drains for at most
/// `limits.shutdown_deadline`.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    stop: CancellationToken,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own head timer, as a backstop: the watchdog enforces header_timeout from the
        // first byte of a head; hyper's runs from when it starts waiting for one.
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout))
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        // Body frames are queued, never copied into hyper's buffer: `zero_copy` relies on it.
        .writev(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // A client that vanished while its request waits for an upstream is found by a ping it
        // does not answer. Pinged only after more than idle_timeout without a frame from it, so
        // the pings never keep an idle connection open past the watchdog's idle_timeout.
        .keep_alive_interval(limits.idle_timeout + limits.idle_timeout / 2)
        .keep_alive_timeout(limits.idle_timeout.min(MAX_PING_TIMEOUT));
    let shared = Arc::new(Shared {
        builder,
        tls,
        slots: Semaphore::new(limits.max_connections),
        waiting: Semaphore::new(limits.max_connections),
        clients: Arc::new(ClientCounts::default()),
        requests: Arc::new(ClientCounts::default()),
        refused: RefusedLog::new(),
        stop: stop.clone(),
        limits: limits.clone(),
    });
    let mut connections = JoinSet::new();
    let mut accept_errors = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_errors = 0;
                    match shared.admit(peer) {
                        Ok(ticket) => {
                            connections.spawn(shared.clone().connection(stream, peer, ticket, service.clone()));
                        }
                        Err(refusal) => {
                            shared.refused.note(refusal, peer, &shared.limits);
                            // A reset, not a FIN: no TIME_WAIT left behind per refused connect.
                            let _ = stream.set_zero_linger();
                            drop(stream);
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    accept_errors = accept_errors.saturating_add(1);
                    if accept_errors == 1 || accept_errors.is_power_of_two() {
                        tracing::warn!(error = %e, repeated = accept_errors,
                            "cannot accept a connection (out of file descriptors? lower server.max_connections or raise the limit)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    shared.slots.close();
    shared.waiting.close();
    let open = connections.len();
    let drained = tokio::time::timeout(limits.shutdown_deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            of = open,
            deadline = ?limits.shutdown_deadline,
            "connections still busy at the shutdown deadline; closing them"
        );
        connections.shutdown().await;
    }
}

struct Shared {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    /// One per served connection.
    slots: Semaphore,
    /// One per connection waiting for a slot: at most as many waiting as served.
    waiting: Semaphore,
    /// Connections open or waiting, per client.
    clients: Arc<ClientCounts>,
    /// Requests in progress (HTTP/2 streams included), per client.
    requests: Arc<ClientCounts>,
    refused: RefusedLog,
    stop: CancellationToken,
}

/// Why a connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client's address is outside `allow`.
    Denied,
    /// The client holds `max_connections_per_client` connections already.
    PerClient,
    /// The client has `max_connections_per_client` requests in progress already (answered
    /// 429: on HTTP/2 one connection carries many).
    PerClientRequests,
    /// Every slot stayed busy for `header_timeout`.
    Busy,
}

impl Refusal {
    fn index(self) -> usize {
        match self {
            Refusal::Denied => 0,
            Refusal::PerClient => 1,
            Refusal::PerClientRequests => 2,
            Refusal::Busy => 3,
        }
    }
}

impl Shared {
    /// The checks made right after `accept`, before anything is spent on the connection: the
    /// client's address, then its share of connections. `Ok` holds its place in that share.
    fn admit(&self, peer: SocketAddr) -> Result<ClientTicket, Refusal> {
        let ip = peer.ip().to_canonical();
        if !self.limits.allow.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::Denied);
        }
        self.clients
            .enter(
                client_key(peer.ip()),
                self.limits.max_connections_per_client,
            )
            .ok_or(Refusal::PerClient)
    }

    async fn connection<S, B>(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        _ticket: ClientTicket,
        service: S,
    ) where
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let accepted = Instant::now();
        let Some(_slot) = self.slot().await else {
            self.refused.note(Refusal::Busy, peer, &self.limits);
            return;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new(accepted);
        let served = async {
            match &self.tls {
                Some(acceptor) => {
                    let stream = match acceptor.accept(stream).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        activity.set_http2();
                    }
                    self.http(
                        Watched::new(stream, activity.clone()),
                        peer,
                        &activity,
                        service,
                        None,
                    )
                    .await
                }
                None => {
                    let (socket, sender) = SendfileSocket::new(stream);
                    self.http(
                        Watched::new(socket, activity.clone()),
                        peer,
                        &activity,
                        service,
                        Some(sender),
                    )
                    .await
                }
            }
        };
        let limits = &self.limits;
        tokio::select! {
            () = served => {}
            expired = watchdog::watch(&activity, limits.header_timeout, limits.idle_timeout) => {
                tracing::debug!(client = %peer, reason = expired.as_str(), "closed the connection");
            }
        }
    }

    /// A slot now, or after waiting up to `header_timeout`; `None` = refuse the connection.
    async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Some(slot);
        }
        let _waiting = self.waiting.try_acquire().ok()?;
        tokio::time::timeout(self.limits.header_timeout, self.slots.acquire())
            .await
            .ok()?
            .ok()
    }

    async fn http<I, S, B>(
        self: &Arc<Self>,
        io: I,
        peer: SocketAddr,
        activity: &Arc<Activity>,
        service: S,
        file_sender: Option<FileSender>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = activity.clone();
        let shared = self.clone();
        let client = client_key(peer.ip());
        let handler = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let guard = activity.request_started();
            // HTTP/2 streams count against the client's share like connections do: one
            // client gets as many requests in progress over one connection as over many.
            let ticket = shared
                .requests
                .enter(client, shared.limits.max_connections_per_client);
            if ticket.is_none() {
                shared
                    .refused
                    .note(Refusal::PerClientRequests, peer, &shared.limits);
            }
            request.extensions_mut().insert(PeerAddr(peer));
            // HTTP/1 only: an HTTP/2 stream's bytes are framed, never the file's as they are.
            if let Some(sender) = &file_sender
                && request.version() <= http::Version::HTTP_11
            {
                request.extensions_mut().insert(sender.clone());
            }
            let service = service.clone();
            async move {
                let Some(ticket) = ticket else {
                    guard.response_ready();
                    let mut response = Response::new(Guarded {
                        body: Either::Right(Full::new(Bytes::from_static(TOO_MANY_REQUESTS))),
                        guard,
                        _ticket: None,
                    });
                    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                    let headers = response.headers_mut();
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    headers.insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                    return Ok::<_, Infallible>(response);
                };
                let response = service.oneshot(request).await?;
                guard.response_ready();
                Ok(response.map(|body| Guarded {
                    body: Either::Left(body),
                    guard,
                    _ticket: Some(ticket),
                }))
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), handler);
        tokio::pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.stop.cancelled(), if !stopping => {
                    // Finish the request in flight, take no new one.
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        }
    }
}

/// A response body that holds its request's [`RequestGuard`] (and its place in the client's
/// share) until it is done, and tells the guard when hyper asks for data (the body clock of
/// [`watchdog`]).
struct Guarded<B> {
    body: B,
    guard: RequestGuard,
    _ticket: Option<ClientTicket>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.guard.body_polled(&polled);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Connections open or waiting for a slot, per client; an entry lives while its client has
/// one, so the table never holds more entries than there are connections.
#[derive(Default)]
struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

impl ClientCounts {
    /// A place for one more connection of `client`, unless it has `cap` already.
    fn enter(self: &Arc<Self>, client: IpAddr, cap: usize) -> Option<ClientTicket> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientTicket {
            counts: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn open(&self, client: IpAddr) -> usize {
        let open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&client).copied().unwrap_or(0)
    }
}

/// One connection's place in its client's share; given back on drop (however the connection
/// task ends, an abort at shutdown included).
struct ClientTicket {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl Drop for ClientTicket {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Refused connections, logged as a count per reason at most every [`REFUSED_LOG_EVERY`] (a
/// flood must not flood the log): the first refusal of a kind is logged at once, later ones
/// are counted into the next line of their kind. A line names the client that triggered it
/// and nothing it sent.
struct RefusedLog {
    started: Instant,
    kinds: [RefusedTally; 4],
}

#[derive(Default)]
struct RefusedTally {
    /// Refusals since the last line.
    unlogged: AtomicU64,
    /// Milliseconds after `started` before which no line is written.
    quiet_until_ms: AtomicU64,
    /// Lines written (for tests).
    lines: AtomicU64,
}

impl RefusedLog {
    fn new() -> RefusedLog {
        RefusedLog {
            started: Instant::now(),
            kinds: Default::default(),
        }
    }

    fn note(&self, why: Refusal, peer: SocketAddr, limits: &Limits) {
        let tally = &self.kinds[why.index()];
        tally.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let quiet_until = tally.quiet_until_ms.load(Ordering::Relaxed);
        if now < quiet_until
            || tally
                .quiet_until_ms
                .compare_exchange(
                    quiet_until,
                    now + REFUSED_LOG_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let refused = tally.unlogged.swap(0, Ordering::Relaxed);
        tally.lines.fetch_add(1, Ordering::Relaxed);
        let client = peer.ip().to_canonical();
        let every = REFUSED_LOG_EVERY;
        match why {
            Refusal::Denied => tracing::warn!(%client, refused, ?every,
                "connections refused at accept: the client's address is outside [server] allow \
                 (refusals are counted, one line per interval)"),
            Refusal::PerClient => tracing::warn!(%client, refused, ?every,
                max_connections_per_client = limits.max_connections_per_client,
                "connections refused at accept: the client already has server.max_connections_per_client open \
                 (refusals are counted, one line per interval)"),
            Refusal::PerClientRequests => tracing::warn!(%client, refused, ?every,
                max_connections_per_client = limits.max_connections_per_client,
                "requests answered 429: the client has server.max_connections_per_client requests in progress \
                 (HTTP/2 streams count one each; refusals are counted, one line per interval)"),
            Refusal::Busy => tracing::warn!(%client, refused, ?every,
                max_connections = limits.max_connections,
                "connection refused: server.max_connections are busy and none freed up within header_timeout \
                 (refusals are counted, one line per interval)"),
        }
    }

    #[cfg(test)]
    fn lines(&self, why: Refusal) -> u64 {
        self.kinds[why.index()].lines.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn limits(allow: &str, per_client: usize) -> Limits {
        Limits {
            allow: vec![allow.parse::<IpNet>().unwrap()].into(),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 64,
            max_connections_per_client: per_client,
            shutdown_deadline: Duration::from_secs(1),
        }
    }

    /// `serve` with a service answering `ok` to everything; stopped when the token drops.
    async fn serving(limits: Limits) -> (SocketAddr, tokio_util::sync::DropGuard) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(|_request: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, service, None, limits, stop.clone()));
        (addr, stop.drop_guard())
    }

    /// `serve` with a service that answers `ok` once `gate` lets each request through,
    /// counting requests that reached it in `entered`.
    async fn gated(
        limits: Limits,
        gate: Arc<Semaphore>,
        entered: Arc<AtomicU64>,
    ) -> (SocketAddr, tokio_util::sync::DropGuard) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(move |_request: Request<Incoming>| {
            let (gate, entered) = (gate.clone(), entered.clone());
            async move {
                entered.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
            }
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, service, None, limits, stop.clone()));
        (addr, stop.drop_guard())
    }

    async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(local.parse().unwrap(), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Sends a request and reads until the connection closes or the answer's body (`ok`)
    /// arrives (≤ 10 s): what came back.
    async fn ask(stream: &mut TcpStream) -> String {
        let _ = stream
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
            .await;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                Ok(_) => break,
                Err(_) => panic!("neither an answer nor a close within 10 s"),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// One HTTP/2 connection carries many requests: they count against the client's share
    /// as connections do, and one past it is answered 429 at once; the share comes back as
    /// responses finish.
    #[tokio::test]
    async fn http2_requests_past_the_clients_share_are_answered_429() {
        let (gate, entered) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicU64::new(0)));
        let (addr, _stop) = gated(limits("127.0.0.0/8", 2), gate.clone(), entered.clone()).await;
        let tcp = connect_from("127.0.0.1", addr).await;
        let (mut send, connection) = hyper::client::conn::http2::handshake::<
            _,
            _,
            http_body_util::Empty<Bytes>,
        >(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = || {
            Request::get(format!("http://{addr}/v2/"))
                .body(http_body_util::Empty::new())
                .unwrap()
        };
        let first = tokio::spawn(send.send_request(request()));
        let second = tokio::spawn(send.send_request(request()));
        let in_service = tokio::time::timeout(Duration::from_secs(10), async {
            while entered.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        in_service.await.expect("two requests in the service");
        let third = send.send_request(request()).await.unwrap();
        assert_eq!(third.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.headers()[http::header::RETRY_AFTER], "1");
        let body = http_body_util::BodyExt::collect(third.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(body.starts_with(br#"{"errors":[{"code":"TOOMANYREQUESTS""#));
        assert_eq!(
            entered.load(Ordering::SeqCst),
            2,
            "the third reached the service"
        );
        gate.add_permits(3);
        for answer in [first, second] {
            let answer = answer.await.unwrap().unwrap();
            assert_eq!(answer.status(), 200);
            http_body_util::BodyExt::collect(answer.into_body())
                .await
                .unwrap();
        }
        // The places come back when the server drops the finished bodies (just after their
        // last frame): await that, a few tries at most.
        let mut statuses = Vec::new();
        for _ in 0..100 {
            let status = send.send_request(request()).await.unwrap().status();
            statuses.push(status);
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(statuses.last(), Some(&http::StatusCode::OK), "{statuses:?}");
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        let key = |ip: &str| client_key(ip.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(key("::ffff:10.0.0.7"), "10.0.0.7");
        assert_eq!(key("10.0.0.7"), "10.0.0.7");
    }

    #[test]
    fn a_client_past_its_share_is_refused_until_one_of_its_connections_ends() {
        let counts = Arc::new(ClientCounts::default());
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counts.enter(a, 2).unwrap();
        let _second = counts.enter(a, 2).unwrap();
        assert!(counts.enter(a, 2).is_none());
        // Another client is not held to a's share.
        let other = counts.enter(b, 2).unwrap();
        drop(first);
        let _third = counts.enter(a, 2).unwrap();
        assert_eq!(counts.open(a), 2);
        drop(other);
        // No entry outlives its client's last connection.
        assert_eq!(counts.0.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_one_line_per_reason_per_interval() {
        let log = RefusedLog::new();
        let limits = limits("127.0.0.1/32", 1);
        let peer: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        for _ in 0..500 {
            log.note(Refusal::Denied, peer, &limits);
        }
        log.note(Refusal::Busy, peer, &limits);
        assert_eq!(log.lines(Refusal::Denied), 1);
        assert_eq!(log.lines(Refusal::Busy), 1);
        tokio::time::advance(REFUSED_LOG_EVERY - Duration::from_millis(1)).await;
        log.note(Refusal::Denied, peer, &limits);
        assert_eq!(log.lines(Refusal::Denied), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        log.note(Refusal::Denied, peer, &limits);
        assert_eq!(log.lines(Refusal::Denied), 2);
        assert_eq!(
            log.kinds[Refusal::Denied.index()]
                .unlogged
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(log.lines(Refusal::PerClient), 0);
    }

    /// A denied client is closed before it can take a slot: a full house of denied sockets
    /// leaves every slot to allowed clients.
    #[tokio::test]
    async fn a_client_outside_allow_is_closed_at_accept_and_holds_no_slot() {
        let limits = Limits {
            max_connections: 2,
            ..limits("127.0.0.1/32", 64)
        };
        let (addr, _stop) = serving(limits).await;
        let mut denied = Vec::new();
        for _ in 0..8 {
            let mut stream = connect_from("127.0.0.2", addr).await;
            assert_eq!(ask(&mut stream).await, "", "a denied client got an answer");
            denied.push(stream);
        }
        let mut allowed = Vec::new();
        for _ in 0..2 {
            let mut stream = connect_from("127.0.0.1", addr).await;
            assert!(ask(&mut stream).await.starts_with("HTTP/1.1 200"));
            allowed.push(stream);
        }
    }

    #[tokio::test]
    async fn a_client_at_its_share_is_closed_at_accept_and_others_are_served() {
        let (addr, _stop) = serving(limits("127.0.0.0/8", 2)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = connect_from("127.0.0.1", addr).await;
            assert!(ask(&mut stream).await.starts_with("HTTP/1.1 200"));
            held.push(stream);
        }
        let mut third = connect_from("127.0.0.1", addr).await;
        assert_eq!(ask(&mut third).await, "", "served past the per-client cap");
        let mut other = connect_from("127.0.0.3", addr).await;
        assert!(ask(&mut other).await.starts_with("HTTP/1.1 200"));
    }

    /// Fails with the usual backlog of 128: past it the kernel drops the handshakes' last ACKs
    /// and those connections wait for a SYN-ACK retransmission (a second or more).
    #[tokio::test]
    async fn a_burst_of_connections_fits_the_accept_queue() {
        const BURST: usize = 300;
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts while the burst connects: the kernel's queue holds it. (Past a full
        // queue the kernel drops SYNs too: a connect then takes a second or more.)
        let mut clients = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            let connect = TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(client)) => clients.push(client),
                _ => break,
            }
        }
        assert_eq!(clients.len(), BURST, "connections the kernel kept waiting");
        let mut accepted = 0;
        while accepted < BURST {
            match tokio::time::timeout(Duration::from_millis(300), listener.accept()).await {
                Ok(Ok(_)) => accepted += 1,
                _ => break,
            }
        }
        assert_eq!(accepted, BURST, "connections the queue did not hold");
    }
}

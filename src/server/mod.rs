//! The front door: accepting connections and holding clients to the `[server]` limits.
//!
//! - [`serve`]: the accept loop. A connection cap (beyond it, new connections wait up to
//!   `header_timeout` for a slot, then are closed), optional TLS, hyper-util's auto (HTTP/1 +
//!   HTTP/2) connection builder with a timer, graceful shutdown with a deadline.
//! - [`watchdog`]: per-connection deadlines (no request, slow head, idle).
//! - [`tls`]: rustls with ALPN h2/http1.1, certificate and key re-read when the files change,
//!   client certificates checked against `client_ca_file`.
//! - [`users`]: the htpasswd (bcrypt) users for Basic authentication.
//!
//! This module knows sockets, TLS and HTTP connections, not axum: it serves any tower service,
//! handing each request the client's address as a [`PeerAddr`] extension.

pub mod tls;
pub mod users;
pub mod watchdog;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use watchdog::{Activity, RequestGuard, Watched};

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

/// The limits one listener holds its clients to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for running requests before closing their connections.
    pub shutdown_deadline: Duration,
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
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let shared = Arc::new(Shared {
        builder,
        tls,
        limits,
        slots: Semaphore::new(limits.max_connections),
        waiting: Semaphore::new(limits.max_connections),
        refused: RefusedLog::default(),
        stop: stop.clone(),
    });
    let mut connections = JoinSet::new();
    let mut accept_errors = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_errors = 0;
                    connections.spawn(shared.clone().connection(stream, peer, service.clone()));
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
    refused: RefusedLog,
    stop: CancellationToken,
}

impl Shared {
    async fn connection<S, B>(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, service: S)
    where
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
            self.refused.note(peer, self.limits.max_connections);
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
                    )
                    .await
                }
                None => {
                    self.http(
                        Watched::new(stream, activity.clone()),
                        peer,
                        &activity,
                        service,
                    )
                    .await
                }
            }
        };
        let limits = self.limits;
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

    async fn http<I, S, B>(&self, io: I, peer: SocketAddr, activity: &Arc<Activity>, service: S)
    where
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
        let handler = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let guard = activity.request_started();
            request.extensions_mut().insert(PeerAddr(peer));
            let response = service.clone().oneshot(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| Guarded {
                    body,
                    _guard: guard,
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

/// A response body that holds its request's [`RequestGuard`] until it is done.
struct Guarded<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Refused connections, logged at most every ten seconds (a flood must not flood the log).
#[derive(Default)]
struct RefusedLog {
    count: AtomicU64,
    last_logged_secs: AtomicU64,
}

impl RefusedLog {
    fn note(&self, peer: SocketAddr, cap: usize) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_logged_secs.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_logged_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(client = %peer, refused_so_far = count, max_connections = cap,
                "connection refused: server.max_connections are busy and none freed up within header_timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! berth's own TCP/TLS connector for upstream sockets.
//!
//! Built by hand (socket2 → tokio → rustls) because no HTTP client exposes `TCP_MAXSEG`:
//! clamping the MSS before `connect()` makes the upstream send segments small enough to
//! cross a path MTU black hole. Connect and TLS handshake get separate deadlines.
//!
//! Every address it dials has passed the [`AddressRule`] after DNS resolution; a connection the
//! proxy rules send through a proxy is tunnelled there ([`super::proxy`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::address_rule::AddressRule;
use super::black_hole::{self, BlackHoles};
use super::class::PhaseError;
use super::proxy::ProxyRules;
use crate::config::{IpPreference, Transport, Upstream};
use crate::failure::ErrorClass;
use crate::metrics::{Histograms, Metrics, UpstreamNameLabels};

/// How long sent data may stay unacknowledged before the kernel gives up on the socket.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// What a TLS socket is read by at once, below rustls (which asks for one record, ≤ 16 KiB,
/// per read): blob connections read big (64 thousand `recv`s per GiB become 4 thousand), the
/// others, mostly idle or carrying manifests, keep a small buffer.
const BLOB_READ_BUFFER: usize = 256 * 1024;
const READ_BUFFER: usize = 32 * 1024;

#[derive(Clone)]
pub struct Connector {
    transport: Transport,
    tls: Arc<rustls::ClientConfig>,
    addresses: Arc<AddressRule>,
    /// Where connect and handshake times go (`berth_upstream_connect_seconds`, ...).
    timings: Option<(Arc<Metrics>, String)>,
    /// Which hosts need a clamped MSS (PMTU black holes), shared with the upstream client.
    black_holes: Arc<BlackHoles>,
    /// The HTTP proxy connections go through, when one applies (`proxy.rs`).
    proxy: Option<Arc<ProxyRules>>,
    /// Bytes read from a TLS socket ahead of rustls at most.
    read_buffer: usize,
}

impl Connector {
    pub fn new(upstream: &Upstream, tls: Arc<rustls::ClientConfig>) -> Connector {
        Connector {
            transport: upstream.transport.clone(),
            tls,
            addresses: Arc::new(AddressRule::new(upstream)),
            timings: None,
            black_holes: Arc::new(BlackHoles::new(&upstream.transport)),
            proxy: None,
            read_buffer: READ_BUFFER,
        }
    }

    /// Connections to URIs the rules proxy go through a CONNECT tunnel (`proxy.rs`).
    pub fn with_proxy(mut self, rules: Option<ProxyRules>) -> Connector {
        self.proxy = rules.map(Arc::new);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>, upstream: &str) -> Connector {
        self.black_holes =
            Arc::new(BlackHoles::new(&self.transport).with_metrics(metrics.clone(), upstream));
        self.timings = Some((metrics, upstream.to_string()));
        self
    }

    /// The same connector (black-hole memory, proxy, address rule, metrics) for blob bodies:
    /// only HTTP/1.1 offered in the TLS handshake (`UpstreamClient::new` says why), and TLS
    /// sockets read [`BLOB_READ_BUFFER`] at a time.
    pub fn for_blobs(&self) -> Connector {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Connector {
            tls: Arc::new(tls),
            read_buffer: BLOB_READ_BUFFER,
            ..self.clone()
        }
    }

    /// The black-hole memory this connector dials by.
    pub fn black_holes(&self) -> Arc<BlackHoles> {
        self.black_holes.clone()
    }

    fn observe(&self, pick: fn(&Metrics) -> &Histograms<UpstreamNameLabels>, since: Instant) {
        if let Some((metrics, upstream)) = &self.timings {
            Metrics::upstream_histogram(pick(metrics), upstream, since.elapsed().as_secs_f64());
        }
    }
}

/// TLS client config: public web roots plus an optional extra CA file.
pub fn tls_config(
    extra_ca: Option<&std::path::Path>,
    http1_only: bool,
) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path)?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            roots.add(cert).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
}

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

/// How long each phase of one connection took, for `berth probe`'s timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
}

impl Connector {
    async fn connect(&self, uri: Uri) -> io::Result<Conn> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsupported scheme {other:?}"),
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });

        let key = black_hole::key(&host, port);
        let clamp = self.black_holes.current(&key);
        let started = Instant::now();
        // --- proxy hook (proxy.rs): through a CONNECT tunnel when a proxy applies to `uri`.
        let tunnel =
            (self.proxy.as_deref()).and_then(|rules| rules.route(&uri).map(|route| (rules, route)));
        if let Some((rules, route)) = tunnel {
            let dial = |addr| self.dial_addr(addr, clamp);
            let target = (host.as_str(), port);
            let tcp = route?
                .tunnel(rules, &self.addresses, &self.transport, target, dial)
                .await?;
            self.observe(|m| &m.upstream_connect_seconds, started);
            if !https {
                return Ok(Conn::plain(tcp));
            }
            // No clamped races through a tunnel: fresh connections would reach the proxy, and
            // the proxy's own segments to the upstream are beyond berth's MSS.
            let started = Instant::now();
            let conn = self.handshake(&host, port, tcp).await?;
            self.observe(|m| &m.upstream_tls_handshake_seconds, started);
            return Ok(conn);
        }
        // --- end of proxy hook
        let tcp = tokio::time::timeout(
            self.transport.connect_timeout,
            self.dial(&host, port, clamp),
        )
        .await
        .map_err(|_| connect_timed_out(&host, port))??;
        self.observe(|m| &m.upstream_connect_seconds, started);
        if !https {
            return Ok(Conn::plain(tcp));
        }
        let started = Instant::now();
        let conn = self
            .handshake_healing(&host, port, &key, tcp, clamp)
            .await?;
        self.observe(|m| &m.upstream_tls_handshake_seconds, started);
        Ok(conn)
    }

    /// The handshake, raced against clamped ones when it is slow: once a full-size handshake
    /// has taken a third of `tls_timeout`, the `mss_fallback` steps are tried in turn on fresh
    /// connections to the same address. A clamped handshake that completes first — or after the
    /// full-size one timed out — is the black-hole signature, and the clamp is remembered. A
    /// handshake that fails fast (refused, reset, bad certificate) is never raced: that is the
    /// server, not the path.
    async fn handshake_healing(
        &self,
        host: &str,
        port: u16,
        key: &str,
        tcp: TcpStream,
        from: Option<u32>,
    ) -> io::Result<Conn> {
        let steps = self.black_holes.steps_after(from);
        let addr = tcp.peer_addr();
        let (false, Ok(addr)) = (steps.is_empty(), addr) else {
            return self.handshake(host, port, tcp).await;
        };
        let first = self.handshake(host, port, tcp);
        tokio::pin!(first);
        let patience = self.transport.tls_timeout / 3;
        if let Ok(done) = tokio::time::timeout(patience, &mut first).await {
            return done;
        }
        let clamped = self.clamped_handshakes(host, addr, steps);
        tokio::pin!(clamped);
        let remember = |mss: u32, why: &str| {
            self.black_holes.clamped(key, &addr.to_string(), mss, why);
        };
        tokio::select! {
            done = &mut first => match done {
                Err(e) if e.kind() == io::ErrorKind::TimedOut => match clamped.await {
                    Ok((conn, mss)) => {
                        remember(mss, "the TLS handshake timed out at full size");
                        Ok(conn)
                    }
                    Err(_) => Err(e),
                },
                done => done,
            },
            done = &mut clamped => match done {
                Ok((conn, mss)) => {
                    remember(mss, "a clamped TLS handshake completed while the full-size one hung");
                    Ok(conn)
                }
                Err(_) => first.await,
            },
        }
    }

    /// Fresh connections to `addr` at each clamp in turn, until a handshake completes.
    async fn clamped_handshakes(
        &self,
        host: &str,
        addr: SocketAddr,
        steps: Vec<u32>,
    ) -> io::Result<(Conn, u32)> {
        let mut last = io::Error::other("no clamp to try");
        for mss in steps {
            let tcp = tokio::time::timeout(
                self.transport.connect_timeout,
                self.dial_addr(addr, Some(mss)),
            )
            .await
            .map_err(|_| connect_timed_out(host, addr.port()))?;
            match tcp {
                Ok(tcp) => match self.handshake(host, addr.port(), tcp).await {
                    Ok(conn) => return Ok((conn, mss)),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One connection to `addr`, which the caller resolved `host` to (no DNS here), with TLS
    /// for `https`, each phase timed into `times`: what `berth probe` measures. The address
    /// rule, the MSS clamp and the deadlines are the upstream client's own.
    pub async fn open(
        &self,
        host: &str,
        addr: SocketAddr,
        https: bool,
        times: &mut PhaseTimes,
    ) -> io::Result<Conn> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = *self
            .addresses
            .filter(host, vec![addr])?
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let started = Instant::now();
        let tcp = tokio::time::timeout(
            self.transport.connect_timeout,
            self.dial_addr(addr, self.transport.tcp_mss),
        )
        .await
        .map_err(|_| connect_timed_out(host, addr.port()))?
        .map_err(|e| PhaseError::wrap(ErrorClass::Connect, e))?;
        times.connect = Some(started.elapsed());
        if !https {
            return Ok(Conn::plain(tcp));
        }
        let started = Instant::now();
        let conn = self.handshake(host, addr.port(), tcp).await?;
        times.tls = Some(started.elapsed());
        Ok(conn)
    }

    /// The TLS handshake on a connected socket, within `tls_timeout`.
    async fn handshake(&self, host: &str, port: u16, tcp: TcpStream) -> io::Result<Conn> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            let e = io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}"));
            PhaseError::wrap(ErrorClass::TlsHandshake, e)
        })?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
        let stream = tokio::time::timeout(
            self.transport.tls_timeout,
            tls.connect(name, BufReader::with_capacity(self.read_buffer, tcp)),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake with {host}:{port} timed out (TCP connect was fine)"),
            )
        })
        .and_then(|r| r)
        .map_err(|e| PhaseError::wrap(ErrorClass::TlsHandshake, e))?;
        Ok(Conn::tls(stream))
    }

    /// Resolves and tries each address in turn, at `clamp` if the black-hole memory set one.
    async fn dial(&self, host: &str, port: u16, clamp: Option<u32>) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| PhaseError::wrap(ErrorClass::Dns, e))?
            .collect();
        // The address rule's refusal stays a plain PermissionDenied (class `refused`).
        let mut addrs = self.addresses.filter(host, addrs)?;
        match self.transport.ip_preference {
            IpPreference::Auto => {}
            IpPreference::Ipv4 => addrs.sort_by_key(|a| !a.is_ipv4()),
            IpPreference::Ipv6 => addrs.sort_by_key(|a| !a.is_ipv6()),
        }
        let mut last = PhaseError::wrap(
            ErrorClass::Dns,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolved to no address"),
            ),
        );
        for addr in addrs {
            match self.dial_addr(addr, clamp.or(self.transport.tcp_mss)).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = PhaseError::wrap(ErrorClass::Connect, e),
            }
        }
        Err(last)
    }

    async fn dial_addr(&self, addr: SocketAddr, mss: Option<u32>) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        if let Some(mss) = mss {
            // Before connect(): the clamp is then announced in our SYN, so the upstream's
            // segments toward us fit the narrow hop too.
            socket.set_mss(mss)?;
        }
        socket.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(TCP_KEEPALIVE)
                .with_interval(TCP_KEEPALIVE),
        )?;
        socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

fn connect_timed_out(host: &str, port: u16) -> io::Error {
    PhaseError::wrap(
        ErrorClass::Connect,
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TCP connect to {host}:{port} timed out"),
        ),
    )
}

/// A connected upstream socket, plain or TLS.
pub struct Conn {
    io: TokioIo<Stream>,
    h2: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

impl Conn {
    fn plain(tcp: TcpStream) -> Conn {
        Conn {
            io: TokioIo::new(Stream::Plain(tcp)),
            h2: false,
        }
    }

    fn tls(stream: TlsStream<BufReader<TcpStream>>) -> Conn {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Conn {
            io: TokioIo::new(Stream::Tls(Box::new(stream))),
            h2,
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tower::Service as _;

    /// The worst moment for the black-hole race: the full-size handshake and the first clamped
    /// one are both in flight when the caller gives up. Nothing is remembered and both sockets
    /// close with the future.
    #[tokio::test]
    async fn a_connect_cancelled_mid_race_leaves_no_clamp_and_no_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers: every handshake hangs, at every MSS.
        let (accepted, mut sockets) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = accepted.send(socket);
            }
        });
        let text = format!("[upstreams.\"r\"]\nurl = \"https://{addr}\"\ntls_timeout = \"3s\"\n");
        let config = crate::config::Config::from_toml(&text).unwrap();
        let tls = Arc::new(tls_config(None, true).unwrap());
        let mut connector = Connector::new(&config.upstreams["r"], tls);
        let uri: Uri = format!("https://{addr}/v2/").parse().unwrap();
        // A third of tls_timeout is 1 s: at 2 s both handshakes are waiting (the clamped one
        // until 4 s).
        let gave_up = tokio::time::timeout(Duration::from_secs(2), connector.call(uri)).await;
        assert!(gave_up.is_err(), "the handshakes hang");
        assert!(
            connector.black_holes().latest().is_none(),
            "nothing clamped"
        );
        for n in 0..2 {
            let mut socket = tokio::time::timeout(Duration::from_secs(5), sockets.recv())
                .await
                .unwrap_or_else(|_| panic!("connection {n} was opened"))
                .unwrap();
            let mut buf = [0u8; 4096];
            // The ClientHello, then the end of the connection.
            loop {
                let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("connection {n} is still open"));
                if !matches!(read, Ok(len) if len > 0) {
                    break;
                }
            }
        }
    }
}

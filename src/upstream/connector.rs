//! berth's own TCP/TLS connector for upstream sockets.
//!
//! Built by hand (socket2 → tokio → rustls) because no HTTP client exposes `TCP_MAXSEG`:
//! clamping the MSS before `connect()` makes the upstream send segments small enough to
//! cross a path MTU black hole. Connect and TLS handshake get separate deadlines.
//!
//! It is also where the address rule holds, after DNS resolution (so a rebinding name cannot
//! slip past): a host other than the upstream's own — a redirect target, a token realm — may
//! not lead into loopback, private, link-local, multicast or other non-public addresses,
//! unless the upstream itself lives in such a range or lists the host in `trusted_hosts`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::black_hole::{self, BlackHoles};
use super::class::PhaseError;
use super::proxy::ProxyRules;
use crate::config::{IpPreference, Transport, Upstream, host_key};
use crate::failure::ErrorClass;
use crate::metrics::{Histograms, Metrics, UpstreamNameLabels};

/// How long sent data may stay unacknowledged before the kernel gives up on the socket.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

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

/// Which addresses a host may be dialled at.
pub struct AddressRule {
    home_host: String,
    trusted_hosts: Vec<String>,
    /// The upstream is written as a non-public address (a literal, `localhost`): its
    /// redirects may lead into non-public ranges too.
    home_literal_private: bool,
    /// The upstream's own name resolved into a non-public range at its latest resolution:
    /// re-evaluated at every resolution, so one private answer (a rebinding) does not open
    /// the private network to its redirects for good.
    home_resolved_private: AtomicBool,
}

impl AddressRule {
    pub fn new(upstream: &Upstream) -> AddressRule {
        let home_host = host_key(upstream.url.host_str().unwrap_or(""));
        let literal_private = home_host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip));
        AddressRule {
            home_literal_private: literal_private || home_host == "localhost",
            home_resolved_private: AtomicBool::new(false),
            trusted_hosts: upstream.trusted_hosts.clone(),
            home_host,
        }
    }

    /// The addresses of `host` that may be dialled; an error naming the fix if none may.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
        let host = host_key(host);
        if host == self.home_host {
            let private = addrs.iter().any(|a| !is_public(a.ip()));
            self.home_resolved_private.store(private, Ordering::Relaxed);
            return Ok(addrs);
        }
        if self.trusted_hosts.contains(&host)
            || self.home_literal_private
            || self.home_resolved_private.load(Ordering::Relaxed)
        {
            return Ok(addrs);
        }
        let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
        if public.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{host} resolves only to non-public addresses; berth does not follow an upstream there \
                     unless the upstream lists it in trusted_hosts"
                ),
            ));
        }
        Ok(public)
    }
}

/// Globally routable, as far as berth is concerned: not loopback, private, link-local,
/// shared (CGNAT), benchmarking, documentation, reserved, multicast or unspecified; an IPv6
/// address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 0 && c == 2)
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits; the
            // local-use NAT64 prefix (64:ff9b:1::/48) is private by definition.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                return false;
            }
            // 6to4 (2002::/16) carries its IPv4 address in bits 16..48.
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
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
        let stream = tokio::time::timeout(self.transport.tls_timeout, tls.connect(name, tcp))
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
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn plain(tcp: TcpStream) -> Conn {
        Conn {
            io: TokioIo::new(Stream::Plain(tcp)),
            h2: false,
        }
    }

    fn tls(stream: TlsStream<TcpStream>) -> Conn {
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

    fn rule(url: &str, trusted: &str) -> AddressRule {
        let text = format!("[upstreams.\"r\"]\nurl = {url:?}\n{trusted}\n");
        let config = crate::config::Config::from_toml(&text).unwrap();
        AddressRule::new(&config.upstreams["r"])
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn non_public_ranges() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.2.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "140.82.112.34",
            "2606:4700::1111",
            "64:ff9b::101:101",
            "2002:101:101::1",
            "198.20.0.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_foreign_host_may_not_lead_into_the_private_network() {
        let r = rule(
            "https://registry.example",
            "trusted_hosts = [\"minio.lan\"]",
        );
        let metadata = addrs(&["169.254.169.254:80"]);
        let e = r.filter("cdn.example", metadata.clone()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("trusted_hosts"), "{e}");
        // Rebinding: public and private answers mixed; only the public ones are dialled.
        let mixed = addrs(&["127.0.0.1:443", "1.2.3.4:443"]);
        assert_eq!(
            r.filter("cdn.example", mixed).unwrap(),
            addrs(&["1.2.3.4:443"])
        );
        assert!(r.filter("minio.lan", metadata.clone()).is_ok(), "trusted");
        assert!(
            r.filter("REGISTRY.example", metadata).is_ok(),
            "the upstream itself"
        );
    }

    #[test]
    fn an_upstream_in_a_private_range_may_redirect_within_it() {
        let r = rule("http://127.0.0.1:5000", "");
        assert!(r.filter("127.0.0.1", addrs(&["127.0.0.1:5001"])).is_ok());
        assert!(r.filter("other.lan", addrs(&["10.0.0.5:80"])).is_ok());
        let named = rule("http://registry.lan:5000", "");
        assert!(named.filter("cdn.lan", addrs(&["10.0.0.5:80"])).is_err());
        named
            .filter("registry.lan", addrs(&["10.0.0.4:5000"]))
            .unwrap();
        assert!(
            named.filter("cdn.lan", addrs(&["10.0.0.5:80"])).is_ok(),
            "while the upstream's own name resolves into a private range"
        );
        named
            .filter("registry.lan", addrs(&["1.2.3.4:5000"]))
            .unwrap();
        assert!(
            named.filter("cdn.lan", addrs(&["10.0.0.5:80"])).is_err(),
            "a private answer once does not open the private network for good"
        );
    }
}

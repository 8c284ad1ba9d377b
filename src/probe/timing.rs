//! One HTTP(S) request to one address, timed like curl's `-w`: DNS (per round, by the caller),
//! TCP connect, TLS handshake, first response byte, total. Every stage has its own deadline
//! and a failure is named by the stage it happened in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, USER_AGENT, WWW_AUTHENTICATE};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use url::Url;

use super::failure::{FailureClass, io_source};

/// Bytes of a response body read before the request counts as done (targets are API roots).
const BODY_LIMIT: usize = 256 * 1024;
/// Longest the (small) body of a probed URL may take to arrive.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a system DNS lookup may take before it counts as failed.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses probed per name and round (a CDN can return dozens).
pub const MAX_ADDRESSES: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub connect: Duration,
    pub tls: Duration,
    pub header: Duration,
    pub stall: Duration,
}

/// One timed request.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub status: Option<u16>,
    pub failure: Option<FailureClass>,
    pub error: Option<String>,
    /// The `WWW-Authenticate` header, for discovering token endpoints.
    pub challenge: Option<String>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Resolves `host` with the system resolver (what containerd and curl use); an IP literal
/// resolves to itself. Returns the time taken and the addresses (A and AAAA) in resolver order.
pub async fn resolve(host: &str, port: u16) -> (f64, Result<Vec<SocketAddr>, String>) {
    let start = Instant::now();
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return (0.0, Ok(vec![SocketAddr::new(ip, port)]));
    }
    let result =
        match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Err(_) => Err(format!("no answer within {DNS_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(addrs)) => {
                let mut v: Vec<SocketAddr> = Vec::new();
                for a in addrs {
                    if !v.contains(&a) {
                        v.push(a);
                    }
                }
                if v.is_empty() {
                    Err("resolved to no address".into())
                } else {
                    Ok(v)
                }
            }
        };
    (ms(start), result)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Is this status a working path? Any answer is, except the far end saying it is in trouble.
/// 401/403 mean the request crossed the path and reached an auth check.
pub fn status_is_success(status: u16, any_answer_ok: bool) -> bool {
    if any_answer_ok {
        return status < 500 && status != 429;
    }
    status < 400 || status == 401 || status == 403
}

/// GET `url` over a new connection to `addr`. `tls` is used for `https` URLs (HTTP/1.1 ALPN).
pub async fn request_once(
    url: &Url,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    d: Deadlines,
    any_answer_ok: bool,
) -> Sample {
    let mut s = Sample::default();
    let fail = |mut s: Sample, class: FailureClass, error: String| {
        s.failure = Some(class);
        s.error = Some(error);
        s
    };
    let start = Instant::now();
    let socket = match if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    } {
        Ok(sock) => sock,
        Err(e) => return fail(s, FailureClass::ConnectUnreachable, e.to_string()),
    };
    let tcp = match tokio::time::timeout(d.connect, socket.connect(addr)).await {
        Err(_) => {
            return fail(
                s,
                FailureClass::ConnectTimeout,
                format!("TCP connect to {addr} took longer than {:?}", d.connect),
            );
        }
        Ok(Err(e)) => {
            let class = FailureClass::of_io(&e).unwrap_or(FailureClass::ConnectUnreachable);
            return fail(s, class, format!("TCP connect to {addr}: {e}"));
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    s.connect_ms = Some(ms(start));

    let host = url.host_str().unwrap_or_default().to_string();
    let stream: Box<dyn Io> = if url.scheme() == "https" {
        let Some(config) = tls else {
            return fail(s, FailureClass::TlsError, "no TLS configuration".into());
        };
        let name = match ServerName::try_from(host.trim_matches(['[', ']']).to_string()) {
            Ok(n) => n,
            Err(e) => return fail(s, FailureClass::TlsError, format!("{host}: {e}")),
        };
        let tls_start = Instant::now();
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(d.tls, connector.connect(name, tcp)).await {
            Err(_) => {
                return fail(
                    s,
                    FailureClass::TlsHandshakeTimeout,
                    format!(
                        "TLS handshake with {addr} took longer than {:?} (TCP connect was fine)",
                        d.tls
                    ),
                );
            }
            Ok(Err(e)) => {
                // A reset during the handshake is a reset; anything rustls refused is TLS.
                let class = match e.kind() {
                    std::io::ErrorKind::InvalidData => FailureClass::TlsError,
                    _ => FailureClass::of_io(&e).unwrap_or(FailureClass::TlsError),
                };
                return fail(s, class, format!("TLS handshake with {addr}: {e}"));
            }
            Ok(Ok(stream)) => {
                s.tls_ms = Some(ms(tls_start));
                Box::new(stream)
            }
        }
    } else {
        Box::new(tcp)
    };

    let (mut sender, conn) = match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        TokioIo::new(stream),
    )
    .await
    {
        Ok(pair) => pair,
        Err(e) => return fail(s, FailureClass::Reset, e.to_string()),
    };
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _abort = AbortOnDrop(driver);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let request = match http::Request::get(path)
        .header(HOST, authority)
        .header(
            USER_AGENT,
            concat!("berth-probe/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
    {
        Ok(r) => r,
        Err(e) => return fail(s, FailureClass::TlsError, e.to_string()),
    };
    let response = match tokio::time::timeout(d.header, sender.send_request(request)).await {
        Err(_) => {
            return fail(
                s,
                FailureClass::HeaderTimeout,
                format!("no response headers within {:?}", d.header),
            );
        }
        Ok(Err(e)) => {
            let class = io_source(&e)
                .and_then(FailureClass::of_io)
                .unwrap_or(FailureClass::Reset);
            return fail(s, class, format!("request failed: {e}"));
        }
        Ok(Ok(r)) => r,
    };
    s.ttfb_ms = Some(ms(start));
    let status = response.status().as_u16();
    s.status = Some(status);
    s.challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = response.into_body();
    let mut read = 0usize;
    let body_start = Instant::now();
    while read < BODY_LIMIT {
        // A trickle that never quite stalls must still end.
        if body_start.elapsed() > BODY_DEADLINE {
            return fail(
                s,
                FailureClass::Stall,
                format!("response body not done after {BODY_DEADLINE:?}"),
            );
        }
        match tokio::time::timeout(d.stall, body.frame()).await {
            Err(_) => {
                return fail(
                    s,
                    FailureClass::Stall,
                    format!("response body stopped for {:?}", d.stall),
                );
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let class = io_source(&e)
                    .and_then(FailureClass::of_io)
                    .unwrap_or(FailureClass::Reset);
                return fail(s, class, format!("response body: {e}"));
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                }
            }
        }
    }
    s.total_ms = Some(ms(start));
    if !status_is_success(status, any_answer_ok) {
        s.failure = Some(FailureClass::Http(status));
        s.error = Some(format!("HTTP {status}"));
    }
    s
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_answers_are_a_working_path() {
        assert!(status_is_success(200, false));
        assert!(status_is_success(401, false));
        assert!(status_is_success(403, false));
        assert!(!status_is_success(404, false));
        assert!(!status_is_success(429, false));
        assert!(!status_is_success(503, false));
        assert!(status_is_success(404, true));
        assert!(!status_is_success(502, true));
    }

    #[tokio::test]
    async fn ip_literals_resolve_without_a_lookup() {
        let (took, addrs) = resolve("127.0.0.1", 443).await;
        assert_eq!(took, 0.0);
        assert_eq!(addrs.unwrap(), vec!["127.0.0.1:443".parse().unwrap()]);
        let (_, addrs) = resolve("[::1]", 443).await;
        assert_eq!(addrs.unwrap(), vec!["[::1]:443".parse().unwrap()]);
    }

    #[tokio::test]
    async fn a_listener_that_resets_is_a_reset() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            drop(s);
        });
        let url = Url::parse(&format!("http://{addr}/v2/")).unwrap();
        let d = Deadlines {
            connect: Duration::from_secs(2),
            tls: Duration::from_secs(2),
            header: Duration::from_secs(2),
            stall: Duration::from_secs(2),
        };
        let s = request_once(&url, addr, None, d, false).await;
        server.join().unwrap();
        assert_eq!(s.failure, Some(FailureClass::Reset), "{s:?}");
        assert!(s.connect_ms.is_some());
    }
}

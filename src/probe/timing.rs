//! One HTTP(S) request to one address, timed like curl's `-w`: DNS (per round, by the caller),
//! TCP connect, TLS handshake, first response byte, total. Every stage has its own deadline
//! and a failure is named by the stage it happened in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, USER_AGENT, WWW_AUTHENTICATE};
use http_body_util::{BodyExt, Empty};
use url::Url;

use crate::config::Upstream;
use crate::failure::{ErrorClass, Failure, How, io_source};
use crate::upstream::{Connector, PhaseTimes, connect_failure, tls_config};

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

/// The upstream connector as the probe dials: `upstream`'s CA and address rule, the probe's
/// deadlines and `mss` clamp, HTTP/1.1 only.
pub fn connector(
    upstream: &Upstream,
    mss: Option<u32>,
    d: &Deadlines,
) -> std::io::Result<Connector> {
    let tls = tls_config(upstream.ca_file.as_deref(), true)?;
    Ok(Connector::new(
        &probe_upstream(upstream, mss, d),
        Arc::new(tls),
    ))
}

/// The upstream's settings with probe semantics: one attempt, the probe's deadlines and the
/// given MSS clamp.
pub fn probe_upstream(upstream: &Upstream, mss: Option<u32>, d: &Deadlines) -> Upstream {
    let mut u = upstream.clone();
    u.transport.max_attempts = 1;
    u.transport.connect_timeout = d.connect;
    u.transport.tls_timeout = d.tls;
    u.transport.header_timeout = d.header;
    u.transport.stall_timeout = d.stall;
    u.transport.tcp_mss = mss;
    // The probe measures each MSS itself: berth serve's self-healing would hide the hole.
    u.transport.mss_fallback = Vec::new();
    u.transport.min_speed = 0;
    // The probe measures this upstream's path: a fallback answering would hide it.
    u.fallback_urls.clear();
    u
}

/// One timed request.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub status: Option<u16>,
    pub failure: Option<Failure>,
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

/// Is this status a working path? Any answer is, except the far end saying it is in trouble.
/// 401/403 mean the request crossed the path and reached an auth check.
pub fn status_is_success(status: u16, any_answer_ok: bool) -> bool {
    if any_answer_ok {
        return status < 500 && status != 429;
    }
    status < 400 || status == 401 || status == 403
}

/// GET `url` over a new connection to `addr`, dialled by berth's own upstream connector (its
/// deadlines, MSS clamp, CA and address rule; HTTP/1.1 so the timings are per connection).
pub async fn request_once(
    url: &Url,
    addr: SocketAddr,
    connector: &Connector,
    d: Deadlines,
    any_answer_ok: bool,
) -> Sample {
    let mut s = Sample::default();
    let fail = |mut s: Sample, failure: Failure, error: String| {
        s.failure = Some(failure);
        s.error = Some(error);
        s
    };
    let start = Instant::now();
    let host = url.host_str().unwrap_or_default().to_string();
    let mut phases = PhaseTimes::default();
    let opened = connector
        .open(&host, addr, url.scheme() == "https", &mut phases)
        .await;
    s.connect_ms = phases.connect.map(|t| t.as_secs_f64() * 1000.0);
    s.tls_ms = phases.tls.map(|t| t.as_secs_f64() * 1000.0);
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            // The connector tags its failures with the phase; what it does not tag is its
            // address rule refusing the address.
            let failure = connect_failure(&e).unwrap_or_else(|| match e.kind() {
                std::io::ErrorKind::PermissionDenied => Failure::plain(ErrorClass::Refused),
                _ => Failure::of_io(ErrorClass::Connect, &e),
            });
            return fail(s, failure, format!("{addr}: {e}"));
        }
    };

    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(stream).await {
            Ok(pair) => pair,
            Err(e) => return fail(s, Failure::plain(ErrorClass::Reset), e.to_string()),
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
        Err(e) => return fail(s, Failure::plain(ErrorClass::Protocol), e.to_string()),
    };
    let response = match tokio::time::timeout(d.header, sender.send_request(request)).await {
        Err(_) => {
            return fail(
                s,
                Failure::new(ErrorClass::HeaderTimeout, How::TimedOut),
                format!("no response headers within {:?}", d.header),
            );
        }
        Ok(Err(e)) => {
            let failure = io_source(&e).map_or(Failure::plain(ErrorClass::Reset), |io| {
                Failure::of_io(ErrorClass::Reset, io)
            });
            return fail(s, failure, format!("request failed: {e}"));
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
                Failure::plain(ErrorClass::Stall),
                format!("response body not done after {BODY_DEADLINE:?}"),
            );
        }
        match tokio::time::timeout(d.stall, body.frame()).await {
            Err(_) => {
                return fail(
                    s,
                    Failure::plain(ErrorClass::Stall),
                    format!("response body stopped for {:?}", d.stall),
                );
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let failure = io_source(&e).map_or(Failure::plain(ErrorClass::Reset), |io| {
                    Failure::of_io(ErrorClass::Reset, io)
                });
                return fail(s, failure, format!("response body: {e}"));
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
        s.failure = Some(Failure::status(status));
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
        let connector = connector(&Upstream::at(url.clone()), None, &d).unwrap();
        let s = request_once(&url, addr, &connector, d, false).await;
        server.join().unwrap();
        assert_eq!(
            s.failure.map(Failure::name).as_deref(),
            Some("reset"),
            "{s:?}"
        );
        assert!(s.connect_ms.is_some());
    }
}

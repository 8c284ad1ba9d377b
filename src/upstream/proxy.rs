//! Upstream traffic through an HTTP proxy: which URIs go through it (`proxy` / `no_proxy`, or
//! the `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` environment when the config is
//! silent; hyper-util's `Matcher` reads them as curl does), and the CONNECT tunnel itself.
//!
//! Every destination is tunnelled with CONNECT, https and plain http alike; the TLS handshake
//! then runs end to end through the tunnel, so the proxy never sees the registry's traffic.
//!
//! The address rule still holds for the final destination. The proxy resolves the name it is
//! given, so berth resolves it too first and asks the rule: an IP literal is judged as it is;
//! a name whose answers are all non-public is refused (as without a proxy); a name berth cannot
//! resolve itself is refused unless the rule would admit any address for it (the upstream's
//! own host, `trusted_hosts`, an upstream in a private range). When the answers are mixed, the
//! CONNECT names the first admitted address instead of the name, so the proxy cannot pick a
//! private one. Left open: the proxy's resolver may answer differently from berth's (a name
//! that rebinds between the two lookups) — the proxy's own ACL is the last line there.
//!
//! The proxy's answer is untrusted input: at most [`MAX_ANSWER`] bytes of header, read within
//! `header_timeout`. Proxy credentials (the URL's user info) go only into `Proxy-Authorization`
//! of the CONNECT; every message names the proxy as `http://host:port`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::USER_AGENT_VALUE;
use super::address_rule::AddressRule;
use super::class::PhaseError;
use crate::config::{ProxySetting, Transport, Upstream, host_key};
use crate::failure::ErrorClass;

/// The most header bytes a proxy's CONNECT answer may have.
const MAX_ANSWER: usize = 8 * 1024;
const MAX_ANSWER_HEADERS: usize = 64;

/// Which URIs of one upstream go through which proxy.
pub struct ProxyRules {
    matcher: Matcher,
    /// The upstream's own host (`host_key`): the address rule admits any address for it.
    home_host: String,
}

/// One proxy a connection goes through.
pub struct Route {
    host: String,
    port: u16,
    /// `http://host:port`, without credentials: what messages show.
    shown: String,
    authorization: Option<HeaderValue>,
}

impl ProxyRules {
    /// The rules for `upstream`, or `None` when it is reached directly. An environment proxy
    /// berth cannot use (https://, socks) is an error naming the variable's value, redacted.
    pub fn new(upstream: &Upstream) -> io::Result<Option<ProxyRules>> {
        // `no_proxy` from the config wins over the environment's.
        let no_proxy = upstream
            .no_proxy
            .clone()
            .unwrap_or_else(|| env(&["NO_PROXY", "no_proxy"]));
        let builder = Matcher::builder().no(no_proxy);
        let builder = match &upstream.proxy {
            ProxySetting::Off => return Ok(None),
            ProxySetting::Url(url) => builder
                .http(url.with_credentials().to_string())
                .https(url.with_credentials().to_string()),
            ProxySetting::FromEnv => {
                let (all, http, https) = (
                    env(&["ALL_PROXY", "all_proxy"]),
                    env(&["HTTP_PROXY", "http_proxy"]),
                    env(&["HTTPS_PROXY", "https_proxy"]),
                );
                if [&all, &http, &https].iter().all(|v| v.trim().is_empty()) {
                    return Ok(None);
                }
                builder.all(all).http(http).https(https)
            }
        };
        Ok(Some(ProxyRules::with(builder.build(), upstream)?))
    }

    fn with(matcher: Matcher, upstream: &Upstream) -> io::Result<ProxyRules> {
        let rules = ProxyRules {
            matcher,
            home_host: host_key(upstream.url.host_str().unwrap_or("")),
        };
        // A proxy berth cannot speak to is an error at start, not a silent direct path.
        let mut shown = Vec::new();
        for scheme in ["http", "https"] {
            let uri: Uri = format!("{scheme}://{}/", upstream.url.authority())
                .parse()
                .map_err(io::Error::other)?;
            if let Some(intercept) = rules.matcher.intercept(&uri) {
                let route = Route::from_intercept(&intercept)?;
                if !shown.contains(&route.shown) {
                    shown.push(route.shown);
                }
            }
        }
        if !shown.is_empty() {
            tracing::info!(upstream = %upstream.name, url = %upstream.url, proxy = %shown.join(", "),
                "upstream traffic goes through a proxy");
        }
        Ok(rules)
    }

    /// `http://host:port` of the proxy for `url`, if one applies: what the status page shows.
    pub fn shown_for(&self, url: &url::Url) -> Option<String> {
        let uri: Uri = url.as_str().parse().ok()?;
        Some(self.route(&uri)?.ok()?.shown)
    }

    /// The proxy for a connection to `uri`, unless `no_proxy` names its host.
    pub fn route(&self, uri: &Uri) -> Option<io::Result<Route>> {
        self.matcher
            .intercept(uri)
            .map(|i| Route::from_intercept(&i))
    }

    /// The authority to CONNECT to for `host:port`, if the address rule admits it (see the
    /// module's comment for the choice).
    async fn target(
        &self,
        rule: &AddressRule,
        (host, port): (&str, u16),
        deadline: std::time::Duration,
    ) -> io::Result<String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            rule.filter(host, vec![SocketAddr::new(ip, port)])?;
            return Ok(authority(&ip.to_string(), port));
        }
        // A resolver that hangs is the same as one that fails: the proxy may still know.
        let lookup = tokio::time::timeout(deadline, tokio::net::lookup_host((host, port)));
        let resolved = match lookup
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        {
            Ok(addrs) => addrs.take(64).collect::<Vec<_>>(),
            Err(e) if host_key(host) == self.home_host => {
                tracing::debug!(%host, error = %e, "upstream host not resolvable here; the proxy resolves it");
                return Ok(authority(host, port));
            }
            // Resolvable only by the proxy: admitted where the rule admits any address.
            Err(_) => Vec::new(),
        };
        let admitted = rule.filter(host, resolved.clone()).map_err(|e| {
            if resolved.is_empty() {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "berth cannot resolve {host} itself to check where it leads; list it in \
                         trusted_hosts if only the proxy can resolve it"
                    ),
                )
            } else {
                e
            }
        })?;
        match admitted.first() {
            Some(first) if admitted.len() < resolved.len() => {
                Ok(authority(&first.ip().to_string(), port))
            }
            _ => Ok(authority(host, port)),
        }
    }
}

/// The first of these environment variables that is set, as curl reads them.
fn env(names: &[&str]) -> String {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .unwrap_or_default()
}

/// `host:port`, with brackets for an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Route {
    fn from_intercept(intercept: &Intercept) -> io::Result<Route> {
        let uri = intercept.uri();
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let shown = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        if uri.scheme_str() != Some("http") || host.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "proxy {shown}: berth reaches a proxy over plain http:// (CONNECT); set \
                     proxy = \"http://host:port\" for the upstream, or proxy = \"none\""
                ),
            ));
        }
        Ok(Route {
            port: uri.port_u16().unwrap_or(80),
            authorization: intercept.basic_auth().cloned(),
            host,
            shown,
        })
    }

    /// A tunnel to `host:port` through this proxy: the target checked against the address
    /// rule, the proxy dialled with `dial` (berth's own socket options) within
    /// `connect_timeout`, the CONNECT answered within `header_timeout`.
    pub(super) async fn tunnel<F, Fut>(
        &self,
        rules: &ProxyRules,
        rule: &AddressRule,
        transport: &Transport,
        (host, port): (&str, u16),
        dial: F,
    ) -> io::Result<TcpStream>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<TcpStream>>,
    {
        // The rule's refusal stays a plain PermissionDenied (class `refused`).
        let target = rules
            .target(rule, (host, port), transport.connect_timeout)
            .await?;
        let mut tcp = tokio::time::timeout(transport.connect_timeout, self.dial(dial))
            .await
            .map_err(|_| {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TCP connect to proxy {} timed out", self.shown),
                );
                PhaseError::wrap(ErrorClass::Connect, e)
            })??;
        tokio::time::timeout(transport.header_timeout, self.connect(&mut tcp, &target))
            .await
            .map_err(|_| {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "proxy {} did not answer CONNECT {target} within {:?}",
                        self.shown, transport.header_timeout
                    ),
                );
                PhaseError::wrap(ErrorClass::Connect, e)
            })??;
        Ok(tcp)
    }

    /// The proxy's addresses, each tried in turn. The address rule is for upstreams and their
    /// redirects, not for the proxy the operator named.
    async fn dial<F, Fut>(&self, dial: F) -> io::Result<TcpStream>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<TcpStream>>,
    {
        let wrap = |class, e: io::Error| {
            let e = io::Error::new(e.kind(), format!("proxy {}: {e}", self.shown));
            PhaseError::wrap(class, e)
        };
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| wrap(ErrorClass::Dns, e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "resolved to no address");
        for addr in addrs.take(16) {
            match dial(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = e,
            }
        }
        Err(wrap(ErrorClass::Connect, last))
    }

    /// Sends CONNECT and reads the answer: a 2xx opens the tunnel; 407 and other refusals are
    /// errors that name the proxy and what to fix.
    async fn connect(&self, tcp: &mut TcpStream, target: &str) -> io::Result<()> {
        let mut request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {USER_AGENT_VALUE}\r\n"
        )
        .into_bytes();
        if let Some(auth) = &self.authorization {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(auth.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        tcp.write_all(&request).await?;

        let mut buf = vec![0u8; MAX_ANSWER];
        let mut filled = 0;
        loop {
            let n = tcp.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(self.broken(format!(
                    "closed the connection before answering CONNECT {target}"
                )));
            }
            filled += n;
            let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&buf[..filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = answer.code.unwrap_or(0);
                    let reason =
                        crate::text::printable(&crate::text::clip(answer.reason.unwrap_or(""), 80))
                            .into_owned();
                    // The server speaks only after our first bytes (TLS ClientHello, HTTP
                    // request): anything more is not a tunnel berth understands.
                    if (200..300).contains(&status) && len == filled {
                        return Ok(());
                    }
                    return Err(self.refusal(status, &reason, target, len != filled));
                }
                Ok(httparse::Status::Partial) if filled < buf.len() => continue,
                Ok(httparse::Status::Partial) => {
                    return Err(self.broken(format!(
                        "answered CONNECT with more than {MAX_ANSWER} bytes of header"
                    )));
                }
                Err(e) => {
                    return Err(self.broken(format!("answered CONNECT with a bad header: {e}")));
                }
            }
        }
    }

    fn broken(&self, what: String) -> io::Error {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("proxy {} {what}", self.shown),
        );
        PhaseError::wrap(ErrorClass::Connect, e)
    }

    /// Why the tunnel was not opened. A 407 or 403 is the proxy's policy (not retried, not
    /// counted against the upstream's health); a 5xx says the proxy could not reach the
    /// target: the path is down (retried, and a reason to try `fallback_urls`).
    fn refusal(&self, status: u16, reason: &str, target: &str, extra: bool) -> io::Error {
        let shown = &self.shown;
        if extra {
            return self.broken(format!("sent bytes after its CONNECT {target} answer"));
        }
        match status {
            407 if self.authorization.is_some() => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "proxy {shown} refused the credentials in the proxy URL (407 {reason}); fix \
                     user:password in proxy = \"http://user:password@host:port\""
                ),
            ),
            407 => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "proxy {shown} demands authentication (407 {reason}); write its user and \
                     password into the URL: proxy = \"http://user:password@host:port\""
                ),
            ),
            400..=499 => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("proxy {shown} refused CONNECT {target} ({status} {reason})"),
            ),
            _ => self.broken(format!(
                "could not open a tunnel to {target} ({status} {reason})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio::net::TcpListener;

    fn upstream(extra: &str) -> Upstream {
        let text = format!("[upstreams.\"r\"]\nurl = \"https://registry.example\"\n{extra}\n");
        Config::from_toml(&text).unwrap().upstreams["r"].clone()
    }

    /// A proxy that answers every CONNECT with `answer` and hands back what it was sent.
    async fn proxy_answering(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            got
        });
        (format!("http://alice:s3cret@{addr}"), task)
    }

    async fn open(upstream: &Upstream, target: &str) -> io::Result<TcpStream> {
        let rules = ProxyRules::new(upstream)?.expect("a proxy");
        let uri: Uri = format!("https://{target}/").parse().unwrap();
        let route = rules.route(&uri).expect("proxied")?;
        let rule = AddressRule::new(upstream);
        let (host, port) = (
            uri.host().unwrap().to_string(),
            uri.port_u16().unwrap_or(443),
        );
        route
            .tunnel(&rules, &rule, &upstream.transport, (&host, port), |a| {
                TcpStream::connect(a)
            })
            .await
    }

    #[tokio::test]
    async fn connect_carries_credentials_and_a_refusal_hides_them() {
        let (url, seen) =
            proxy_answering(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        let up = upstream(&format!("proxy = {url:?}"));
        let e = open(&up, "registry.example:443").await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("refused the credentials"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{text}"
        );
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let request = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(
            request.starts_with("CONNECT registry.example:443 HTTP/1.1\r\n"),
            "{request}"
        );
        // base64("alice:s3cret")
        assert!(
            request.contains("Proxy-Authorization: Basic YWxpY2U6czNjcmV0"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_proxy_that_never_answers_connect_is_given_up_at_header_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts, reads the CONNECT, says nothing: the connection stays open.
        let silent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let up = upstream(&format!(
            "proxy = \"http://{addr}\"\nheader_timeout = \"1s\""
        ));
        let started = std::time::Instant::now();
        let e = open(&up, "registry.example:443").await.unwrap_err();
        assert!(e.to_string().contains("did not answer CONNECT"), "{e}");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
        silent.abort();
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_bound() {
        static HUGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            // One header line longer than the bound: the answer never completes within it.
            let mut v = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
            v.resize(2 * MAX_ANSWER, b'a');
            v
        });
        let (url, _seen) = proxy_answering(&HUGE).await;
        let up = upstream(&format!("proxy = {url:?}"));
        let e = open(&up, "registry.example:443").await.unwrap_err();
        assert!(e.to_string().contains("bytes of header"), "{e}");
    }

    #[tokio::test]
    async fn a_private_literal_redirect_target_is_refused_before_any_connect() {
        let up = upstream("proxy = \"http://127.0.0.1:9\"");
        let e = open(&up, "169.254.169.254:80").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("trusted_hosts"), "{e}");
    }

    #[test]
    fn no_proxy_and_none_keep_traffic_direct() {
        let up = upstream("proxy = \"http://proxy.lan:3128\"\nno_proxy = [\"cdn.example\"]");
        let rules = ProxyRules::new(&up).unwrap().unwrap();
        assert!(
            rules
                .route(&"https://cdn.example/x".parse().unwrap())
                .is_none()
        );
        assert!(
            rules
                .route(&"https://a.cdn.example/x".parse().unwrap())
                .is_none()
        );
        let via = rules
            .route(&"https://registry.example/v2/".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(via.shown, "http://proxy.lan:3128");
        assert!(
            ProxyRules::new(&upstream("proxy = \"none\""))
                .unwrap()
                .is_none()
        );
    }
}

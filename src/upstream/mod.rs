//! The only HTTP client of upstream registries. It owns the protocol: typed calls
//! (`fetch_manifest`, `head_manifest`, `fetch_blob`, `head_blob`, `fetch_listing`), token
//! auth, redirects, retries, Range resume and stall-aware reads. Callers name no HTTP header.
//!
//! Every call goes through [`UpstreamClient::send`], the one retry owner: up to `max_attempts`
//! header-stage attempts, each admitted by the circuit breaker. The breaker's probe runs in its
//! own task, so a client that hangs up (or a deadline around the call) cannot cancel it.
//!
//! Files: `calls` (typed calls), `blob` (blob download with resume), `retry` (the retry loop,
//! backoff), `health` (breaker, retry budget), `auth` (who gets which credentials),
//! `challenge` (WWW-Authenticate), `tokens` (token cache), `body` (stall-aware body reads),
//! `fallback` (`fallback_urls`, asked while the path is down), `connector` (TCP/TLS, MSS
//! clamp), `address_rule` (which addresses may be dialled), `black_hole` (which hosts need a clamped MSS, found by itself),
//! `proxy` (HTTP proxy rules, CONNECT tunnel), `error`; this file: one attempt (redirects,
//! challenges) and the HTTP plumbing.

mod address_rule;
mod auth;
mod black_hole;
mod blob;
mod body;
mod calls;
mod challenge;
mod class;
mod connector;
mod error;
mod fallback;
mod health;
mod proxy;
mod retry;
mod tokens;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER, USER_AGENT,
    WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

pub use black_hole::Clamp;
pub use blob::BlobStream;
pub use body::BodyReader;
pub use calls::{FetchedManifest, Listing, ListingKind};
pub use challenge::{Challenge, parse_challenges};
pub use class::connect_failure;
pub use connector::{Conn, Connector, PhaseTimes, tls_config};
pub use error::UpstreamError;
pub use fallback::{FallbackState, ServedBy};
pub use health::BreakerState;

use crate::config::Upstream;
use crate::metrics::Metrics;
use crate::oci::{Digest, Endpoint, Repository};
use auth::{Auth, Step, authority, redacted};
use health::Health;

const MAX_HOPS: usize = 12;
const MAX_TOKEN_BODY: u64 = 1024 * 1024;
/// At most this many bytes of media types go into one upstream `Accept` header.
const MAX_ACCEPT_BYTES: usize = 4096;
const USER_AGENT_VALUE: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

/// One request to an upstream's `/v2/<repo>/<endpoint>`.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    repo: Repository,
    endpoint: Endpoint,
    query: Option<String>,
    accept: Option<HeaderValue>,
    /// Ask for the bytes from this offset on (`Range: bytes=<n>-`).
    range_from: Option<u64>,
}

impl Request {
    fn new(method: Method, repo: &Repository, endpoint: Endpoint) -> Request {
        Request {
            method,
            repo: repo.clone(),
            endpoint,
            query: None,
            accept: None,
            range_from: None,
        }
    }

    /// A blob body: fetched on the HTTP/1.1 pool (`UpstreamClient::new` says why).
    fn is_bulk(&self) -> bool {
        self.method == Method::GET && matches!(self.endpoint, Endpoint::Blob(_))
    }

    /// Metrics label.
    fn kind(&self) -> &'static str {
        self.endpoint.kind()
    }

    fn path(&self) -> String {
        let endpoint = match &self.endpoint {
            Endpoint::Manifest(r) => format!("manifests/{r}"),
            Endpoint::Blob(d) => format!("blobs/{d}"),
            Endpoint::Tags => "tags/list".into(),
            Endpoint::Referrers(d) => format!("referrers/{d}"),
        };
        format!("/v2/{}/{endpoint}", self.repo)
    }
}

/// Where a response really came from after redirects (a CDN host for most blobs); a
/// response extension, read by `berth probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseUrl(pub Url);

type HttpClient = Client<Connector, Empty<Bytes>>;

pub struct UpstreamClient {
    config: Upstream,
    http: HttpClient,
    /// Blob bodies: HTTP/1.1 only, a connection per transfer.
    bulk: HttpClient,
    auth: Auth,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    black_holes: Arc<black_hole::BlackHoles>,
    /// `fallback_urls`, in order (`fallback.rs`).
    fallbacks: Vec<fallback::Fallback>,
    /// `http://host:port` of the proxy the upstream's own URL goes through, if any.
    proxy_shown: Option<String>,
}

impl UpstreamClient {
    pub fn new(config: Upstream, metrics: Arc<Metrics>) -> io::Result<UpstreamClient> {
        let tls = connector::tls_config(config.ca_file.as_deref(), config.transport.http1_only)?;
        let proxy = proxy::ProxyRules::new(&config)?;
        let proxy_shown = proxy.as_ref().and_then(|p| p.shown_for(&config.url));
        let connector = Connector::new(&config, Arc::new(tls))
            .with_metrics(metrics.clone(), &config.metrics_label)
            .with_proxy(proxy);
        let black_holes = connector.black_holes();
        // Blob bodies go over HTTP/1.1 even where the upstream speaks HTTP/2: one TCP flow per
        // transfer has the kernel's window (HTTP/2's per-stream window caps a long, fat path),
        // a stalled blob holds up no manifest or token request on a shared connection, and the
        // receive costs less: HTTP/2 hands over one 16 KiB DATA frame per wake-up (a fill over
        // TLS took 2.4 CPU-s/GiB over HTTP/2, 1.9 over HTTP/1.1: benches/cold-pull.sh with
        // UPSTREAM_TLS=1). Everything else multiplexes.
        let pool = |connector| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(16)
                .build(connector)
        };
        let bulk = pool(connector.for_blobs());
        let http = pool(connector);
        let t = &config.transport;
        // A probe is one attempt; past this it cannot still be honestly in flight.
        let probe_deadline = t.connect_timeout + t.tls_timeout + t.header_timeout;
        let health = Arc::new(Health::new(
            t.breaker_threshold,
            t.breaker_cooldown,
            probe_deadline,
            t.retry_budget,
        ));
        let fallbacks = fallback::Fallback::all_for(&config, &metrics)?;
        Ok(UpstreamClient {
            auth: Auth::new(&config),
            config,
            http,
            bulk,
            health,
            metrics,
            black_holes,
            fallbacks,
            proxy_shown,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The `upstream` label of this client's metric series (its name, or its pattern).
    pub fn label(&self) -> &str {
        &self.config.metrics_label
    }

    pub fn config(&self) -> &Upstream {
        &self.config
    }

    /// `http://host:port` of the proxy this upstream is reached through (never credentials).
    pub fn proxy(&self) -> Option<&str> {
        self.proxy_shown.as_deref()
    }

    pub fn state(&self) -> BreakerState {
        self.health.state()
    }

    /// The MSS clamp berth put on this upstream's connections after a PMTU black hole, if any.
    pub fn black_hole(&self) -> Option<Clamp> {
        self.black_holes.latest()
    }

    /// Is the circuit breaker open (the upstream marked down)?
    pub fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// A reader for a response body that detects stalls and (if configured) crawling transfers.
    fn body(&self, body: Incoming) -> BodyReader {
        BodyReader::new(
            body,
            &self.config.transport,
            self.health.clone(),
            (self.metrics.clone(), self.config.metrics_label.clone()),
        )
    }

    /// Docker Hub's `ratelimit-remaining: <n>;w=<seconds>`, as a gauge.
    fn note_ratelimit(&self, response: &Response<Incoming>) {
        let remaining = response
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|n| n.trim().parse::<i64>().ok());
        if let Some(remaining) = remaining {
            self.metrics
                .upstream_ratelimit_remaining
                .get_or_create(&crate::metrics::UpstreamNameLabels {
                    upstream: self.config.metrics_label.clone(),
                })
                .set(remaining);
        }
    }

    /// One attempt: follows redirects and answers auth challenges along the way. A 403/404
    /// from a redirect target is asked of the registry once more (signed URLs expire); a
    /// second one means the content is not there.
    async fn attempt(&self, req: &Request) -> Result<Response<Incoming>, UpstreamError> {
        let home = self.url_for(req)?;
        let mut url = home.clone();
        let mut challenged = std::collections::HashSet::new();
        let mut target_refusals = 0;
        for _ in 0..MAX_HOPS {
            let authority = authority(&url);
            let authorization = self.authorization(&authority, &req.repo).await?;
            let response = self.send_once(&url, req, authorization).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && challenged.insert(authority.clone()) {
                let challenges = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .take(16)
                    .collect();
                self.auth.challenged(authority, &req.repo, challenges)?;
                continue;
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        UpstreamError::Protocol(format!("redirect {status} without Location"))
                    })?;
                url = url.join(location).map_err(|e| {
                    UpstreamError::Protocol(format!("bad redirect Location from {authority}: {e}"))
                })?;
                self.auth.check_redirect(&url)?;
                continue;
            }
            if !self.auth.is_home(&url) && matches!(status.as_u16(), 403 | 404 | 410) {
                target_refusals += 1;
                if target_refusals >= 2 {
                    tracing::info!(upstream = %self.config.name, repo = %req.repo, target = %redacted(&url),
                        %status, "redirect target refused twice; the content is not there");
                    return Err(UpstreamError::NotFound);
                }
                tracing::info!(upstream = %self.config.name, repo = %req.repo, target = %redacted(&url),
                    %status, "redirect target refused (expired URL?); asking the registry again");
                url = home.clone();
                continue;
            }
            let mut response = check_status(response)?;
            response.extensions_mut().insert(ResponseUrl(url));
            return Ok(response);
        }
        Err(UpstreamError::Protocol(format!(
            "more than {MAX_HOPS} redirects or auth rounds"
        )))
    }

    async fn send_once(
        &self,
        url: &Url,
        req: &Request,
        authorization: Option<HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut builder = http::Request::builder()
            .method(&req.method)
            .uri(url.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(accept) = &req.accept {
            builder = builder.header(ACCEPT, accept.clone());
        }
        if let Some(from) = req.range_from {
            builder = builder.header(RANGE, format!("bytes={from}-"));
        }
        // Credentials only ever go to the host that asked for them (never to a CDN redirect target).
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.metrics.upstream_request(self.label(), req.kind());
        tracing::debug!(upstream = %self.config.name, method = %req.method, url = %redacted(url), "upstream request");
        let pool = if req.is_bulk() {
            &self.bulk
        } else {
            &self.http
        };
        self.roundtrip(pool, request, url).await
    }

    async fn roundtrip(
        &self,
        pool: &HttpClient,
        request: http::Request<Empty<Bytes>>,
        url: &Url,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let timeout = self.config.transport.header_timeout;
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, pool.request(request)).await {
            Ok(Ok(response)) => {
                Metrics::upstream_histogram(
                    &self.metrics.upstream_first_byte_seconds,
                    self.label(),
                    sent.elapsed().as_secs_f64(),
                );
                self.note_ratelimit(&response);
                Ok(response)
            }
            Ok(Err(e)) => Err(UpstreamError::from_hyper(e)),
            Err(_) => {
                // The first response bytes never arrived: one sign of a PMTU black hole.
                if let Some(key) = black_hole::key_of(url) {
                    self.black_holes.stalled_before_first_byte(&key);
                }
                Err(UpstreamError::Timeout(format!(
                    "no response headers from {} within {timeout:?}",
                    authority(url)
                )))
            }
        }
    }

    fn url_for(&self, req: &Request) -> Result<Url, UpstreamError> {
        let base = self.config.url.as_str().trim_end_matches('/');
        let mut text = format!("{base}{}", req.path());
        if let Some(q) = &req.query {
            text.push('?');
            text.push_str(q);
        }
        Url::parse(&text).map_err(|e| UpstreamError::Protocol(format!("bad upstream URL: {e}")))
    }

    /// The `Authorization` value for a host, fetching a token first if needed.
    async fn authorization(
        &self,
        authority: &str,
        repo: &Repository,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let request = match self.auth.step(authority, repo)? {
            Step::Anonymous => return Ok(None),
            Step::Header(value) => return Ok(Some(value)),
            Step::FetchToken(request) => request,
        };
        let mut builder = http::Request::builder()
            .method(Method::GET)
            .uri(request.url.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(basic) = request.basic {
            builder = builder.header(AUTHORIZATION, basic);
        }
        let http_request = builder
            .body(Empty::new())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.metrics.upstream_request(self.label(), "token");
        let realm = redacted(&request.url);
        let response = check_status(
            self.roundtrip(&self.http, http_request, &request.url)
                .await?,
        )?;
        let body = self
            .body(response.into_body())
            .read_to_end(MAX_TOKEN_BODY, self.config.transport.header_timeout)
            .await?;
        let parsed: tokens::TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Protocol(format!("token endpoint {realm} sent bad JSON: {e}"))
        })?;
        let (token, lifetime) = parsed.into_token().ok_or_else(|| {
            UpstreamError::Protocol(format!("token endpoint {realm} sent no token"))
        })?;
        let value = auth::bearer(&token).ok_or_else(|| {
            UpstreamError::Protocol(format!("token endpoint {realm} sent an unusable token"))
        })?;
        self.auth.store_token(request.key, token, lifetime);
        Ok(Some(value))
    }
}

/// The upstream `Accept` header from a list of media types, bounded in size.
fn accept_header(types: &[&str]) -> HeaderValue {
    let mut text = String::new();
    for t in types {
        if text.len() + t.len() + 2 > MAX_ACCEPT_BYTES {
            break;
        }
        if !text.is_empty() {
            text.push_str(", ");
        }
        text.push_str(t);
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(crate::oci::OCI_INDEX))
}

fn content_length(response: &Response<Incoming>) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn content_type(response: &Response<Incoming>) -> Option<String> {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .filter(|v| !v.is_empty())
}

fn header_digest(response: &Response<Incoming>) -> Option<Digest> {
    response
        .headers()
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn check_status(response: Response<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(86_400)));
    Err(match status.as_u16() {
        // 410: a registry that retired the content says so for good.
        404 | 410 => UpstreamError::NotFound,
        401 | 403 => UpstreamError::Denied {
            status: status.as_u16(),
        },
        429 => UpstreamError::TooManyRequests { retry_after },
        s => UpstreamError::Status {
            status: s,
            retry_after,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::config::TlsFiles;
    use crate::oci::{Reference, Tag};
    use crate::test_pki::Pki;

    type Seen = Arc<Mutex<Vec<(String, http::Version)>>>;

    /// An HTTPS registry with berth's own server TLS (HTTP/2 and HTTP/1.1 offered, as the
    /// public registries do) that notes the protocol of every request.
    async fn registry(pki: &Pki) -> (String, Seen) {
        let files = TlsFiles {
            cert_file: pki.leaf.clone(),
            key_file: pki.key.clone(),
            client_ca_file: None,
        };
        let acceptor = crate::server::tls::Tls::load(&files).unwrap().acceptor;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let seen = Seen::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let answer = service_fn(move |req: http::Request<Incoming>| {
                        log.lock()
                            .unwrap()
                            .push((req.uri().path().to_string(), req.version()));
                        let body = if req.uri().path().contains("/blobs/") {
                            Bytes::from(vec![7u8; 1024 * 1024])
                        } else {
                            Bytes::from_static(b"{}")
                        };
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), answer)
                        .await;
                });
            }
        });
        (url, seen)
    }

    /// Manifests multiplex over HTTP/2 where the upstream offers it; blob bodies take a
    /// connection of their own over HTTP/1.1 (`UpstreamClient::new` says why).
    #[tokio::test]
    async fn blob_bodies_go_over_http1_and_the_rest_over_http2() {
        let pki = crate::test_pki::pki(vec![]);
        let (url, seen) = registry(&pki).await;
        let text = format!(
            "[upstreams.\"r\"]\nurl = \"{url}\"\nca_file = \"{}\"\nmss_fallback = []\n",
            pki.ca.display()
        );
        let config = crate::config::Config::from_toml(&text).unwrap();
        let client =
            Arc::new(UpstreamClient::new(config.upstreams["r"].clone(), Arc::default()).unwrap());
        let repo: Repository = "library/app".parse().unwrap();
        let tag = Reference::Tag("1".parse::<Tag>().unwrap());
        client
            .fetch_manifest(&repo, &tag, &["application/json"])
            .await
            .unwrap();
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let mut blob = client.fetch_blob(&repo, &digest, None, 0).await.unwrap();
        let mut received = 0;
        while let Some(chunk) = blob.next().await.unwrap() {
            received += chunk.len();
        }
        assert_eq!(received, 1024 * 1024);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                (
                    "/v2/library/app/manifests/1".to_string(),
                    http::Version::HTTP_2
                ),
                (
                    format!("/v2/library/app/blobs/{digest}"),
                    http::Version::HTTP_11
                ),
            ]
        );
    }
}

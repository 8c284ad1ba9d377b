//! The only HTTP client of upstream registries: token auth, redirects, retries, stall-aware reads.

mod auth;
mod connector;
mod error;
mod health;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT, AUTHORIZATION, LOCATION, RANGE, RETRY_AFTER, USER_AGENT, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

pub use auth::{Challenge, parse_challenges};
pub use connector::tls_config;
pub use error::UpstreamError;

use crate::config::Upstream;
use crate::metrics::Metrics;
use crate::oci::Repository;
use auth::{TokenCache, TokenResponse};
use connector::Connector;
use health::Health;

const MAX_HOPS: usize = 12;
const MAX_TOKEN_BODY: u64 = 1024 * 1024;
/// A `Retry-After` longer than this is passed to the client instead of waited out.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const USER_AGENT_VALUE: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

/// Which API a request belongs to (metrics, scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
    Tags,
    Referrers,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Tags => "tags",
            Kind::Referrers => "referrers",
        }
    }
}

/// One request to an upstream's `/v2/<repo>/<endpoint>`.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub method: Method,
    pub repo: Repository,
    /// Path below the repository: `manifests/<ref>`, `blobs/<digest>`, `tags/list`, ...
    pub endpoint: String,
    pub query: Option<String>,
    pub accept: Option<HeaderValue>,
    /// Ask for the bytes from this offset on (`Range: bytes=<n>-`).
    pub range_from: Option<u64>,
}

/// Where a response really came from after redirects (a CDN host for most blobs); a
/// response extension, read by `berth probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseUrl(pub Url);

type HttpClient = Client<Connector, Empty<Bytes>>;

pub struct UpstreamClient {
    config: Upstream,
    http: HttpClient,
    tokens: TokenCache,
    /// The last challenge each host (`host:port`) answered with; lets later requests
    /// carry credentials up front instead of collecting a 401 first.
    challenges: Mutex<HashMap<String, Challenge>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    pub fn new(config: Upstream, metrics: Arc<Metrics>) -> io::Result<UpstreamClient> {
        let tls = connector::tls_config(config.ca_file.as_deref(), config.transport.http1_only)?;
        let connector = Connector::new(config.transport.clone(), Arc::new(tls));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build(connector);
        let t = &config.transport;
        let health = Arc::new(Health::new(
            t.breaker_threshold,
            t.breaker_cooldown,
            t.retry_budget,
        ));
        Ok(UpstreamClient {
            config,
            http,
            tokens: TokenCache::default(),
            challenges: Mutex::default(),
            health,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &Upstream {
        &self.config
    }

    /// Is the circuit breaker open (the upstream marked down)?
    pub fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// Sends the request, retrying transient failures with backoff, and returns a 2xx response
    /// (206 when a range was asked and honoured). Error statuses become [`UpstreamError`]s.
    pub async fn send(&self, req: &Request) -> Result<Response<Incoming>, UpstreamError> {
        let max = self.config.transport.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            if let Err(wait) = self.health.admit() {
                return Err(UpstreamError::Down { retry_after: wait });
            }
            let result = self.attempt(req).await;
            match &result {
                Err(e) if e.counts_against_health() => self.health.record_failure(),
                _ => self.health.record_success(),
            }
            match result {
                Err(e) if e.is_retryable() && attempt < max && self.health.take_retry() => {
                    let Some(delay) = backoff(attempt, e.retry_after()) else {
                        return Err(e);
                    };
                    tracing::warn!(upstream = %self.config.name, repo = %req.repo, endpoint = %req.endpoint,
                        attempt, error = %e, "upstream request failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One attempt: follows redirects and answers auth challenges along the way.
    async fn attempt(&self, req: &Request) -> Result<Response<Incoming>, UpstreamError> {
        let mut url = self.url_for(req)?;
        let registry_authority = authority(&url);
        let mut answered_challenge = HashSet::new();
        for _ in 0..MAX_HOPS {
            let authority = authority(&url);
            let authorization = self.authorization(&authority, &req.repo).await?;
            let response = self
                .send_once(&req.method, &url, req, authorization, req.kind.as_str())
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && answered_challenge.insert(authority.clone()) {
                let challenges: Vec<Challenge> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                let chosen = challenges
                    .iter()
                    .find(|c| matches!(c, Challenge::Bearer { .. }))
                    .or_else(|| challenges.first())
                    .cloned();
                let Some(challenge) = chosen else {
                    return Err(UpstreamError::Denied { status: 401 });
                };
                if let Challenge::Bearer { realm, service, .. } = &challenge {
                    // A 401 despite a cached token means the token went bad: fetch a new one.
                    self.tokens
                        .forget(realm, service.as_deref().unwrap_or(""), &scope(&req.repo));
                }
                self.challenges.lock().unwrap().insert(authority, challenge);
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
                    UpstreamError::Protocol(format!("bad redirect Location {location:?}: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(UpstreamError::Protocol(format!(
                        "redirect to unsupported URL {url}"
                    )));
                }
                continue;
            }
            let redirected = authority != registry_authority;
            if redirected && matches!(status.as_u16(), 403 | 404 | 410) {
                // Signed CDN URLs expire; the retry asks the registry for a fresh redirect.
                return Err(UpstreamError::Transport(format!(
                    "redirect target {authority} answered {status} (expired URL?)"
                )));
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
        method: &Method,
        url: &Url,
        req: &Request,
        authorization: Option<HeaderValue>,
        kind: &'static str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut builder = http::Request::builder()
            .method(method)
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
        self.metrics.upstream_request(&self.config.name, kind);
        tracing::debug!(upstream = %self.config.name, %method, %url, "upstream request");
        match tokio::time::timeout(
            self.config.transport.header_timeout,
            self.http.request(request),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(UpstreamError::from_hyper(e)),
            Err(_) => Err(UpstreamError::Timeout(format!(
                "no response headers from {} within {:?}",
                url.host_str().unwrap_or("?"),
                self.config.transport.header_timeout
            ))),
        }
    }

    fn url_for(&self, req: &Request) -> Result<Url, UpstreamError> {
        let base = self.config.url.as_str().trim_end_matches('/');
        let mut text = format!("{base}/v2/{}/{}", req.repo, req.endpoint);
        if let Some(q) = &req.query {
            text.push('?');
            text.push_str(q);
        }
        Url::parse(&text).map_err(|e| UpstreamError::Protocol(format!("{text}: {e}")))
    }

    /// The `Authorization` value for a host, if that host has challenged us before.
    async fn authorization(
        &self,
        authority: &str,
        repo: &Repository,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let challenge = self.challenges.lock().unwrap().get(authority).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic_credentials()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let service = service.unwrap_or_default();
                let scope = scope(repo);
                let token = match self.tokens.get(&realm, &service, &scope) {
                    Some(token) => token,
                    None => self.fetch_token(&realm, &service, &scope).await?,
                };
                Ok(HeaderValue::from_str(&format!("Bearer {token}")).ok())
            }
        }
    }

    fn basic_credentials(&self) -> Option<HeaderValue> {
        let creds = self.config.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password));
        HeaderValue::from_str(&format!("Basic {encoded}")).ok()
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: &str,
        scope: &str,
    ) -> Result<String, UpstreamError> {
        let mut url = Url::parse(realm)
            .map_err(|e| UpstreamError::Protocol(format!("token realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Protocol(format!(
                "token realm {realm:?} is not http(s)"
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if !service.is_empty() {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut builder = http::Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(basic) = self.basic_credentials() {
            builder = builder.header(AUTHORIZATION, basic);
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.metrics.upstream_request(&self.config.name, "token");
        let response = tokio::time::timeout(
            self.config.transport.header_timeout,
            self.http.request(request),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(format!("token endpoint {realm} did not answer")))?
        .map_err(UpstreamError::from_hyper)?;
        let response = check_status(response)?;
        let body = self
            .read_to_bytes(response.into_body(), MAX_TOKEN_BODY)
            .await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Protocol(format!("token endpoint {realm} sent bad JSON: {e}"))
        })?;
        let (token, lifetime) = parsed.into_token().ok_or_else(|| {
            UpstreamError::Protocol(format!("token endpoint {realm} sent no token"))
        })?;
        self.tokens
            .put(realm, service, scope, token.clone(), lifetime);
        Ok(token)
    }

    /// A reader for a response body that detects stalls and (if configured) crawling transfers.
    pub fn body(&self, body: Incoming) -> BodyReader {
        let t = &self.config.transport;
        BodyReader {
            body,
            stall: t.stall_timeout,
            min_speed: t.min_speed,
            window: t.min_speed_window,
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
            health: self.health.clone(),
        }
    }

    /// Reads a small body (manifest, token, tag list) whole, refusing more than `limit` bytes.
    pub async fn read_to_bytes(&self, body: Incoming, limit: u64) -> Result<Bytes, UpstreamError> {
        let mut body = self.body(body);
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await? {
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(UpstreamError::Protocol(format!(
                    "body larger than {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// A response body read with stall detection: no bytes for `stall` is a stall, and so is a
/// transfer averaging less than `min_speed` bytes/s over a `window`. No total deadline.
pub struct BodyReader {
    body: Incoming,
    stall: Duration,
    min_speed: u64,
    window: Duration,
    window_start: tokio::time::Instant,
    window_bytes: u64,
    health: Arc<Health>,
}

impl BodyReader {
    /// Next chunk, or `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let result = self.next_inner().await;
        if result
            .as_ref()
            .is_err_and(UpstreamError::counts_against_health)
        {
            self.health.record_failure();
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            let frame = tokio::time::timeout(self.stall, self.body.frame())
                .await
                .map_err(|_| UpstreamError::Stalled(self.stall))?;
            let data = match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(UpstreamError::Transport(format!("body read failed: {e}")));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            self.check_speed(data.len() as u64)?;
            return Ok(Some(data));
        }
    }

    /// The throughput floor: a trickle that never quite stops is a stall too.
    fn check_speed(&mut self, bytes: u64) -> Result<(), UpstreamError> {
        if self.min_speed == 0 {
            return Ok(());
        }
        self.window_bytes += bytes;
        let elapsed = self.window_start.elapsed();
        if elapsed >= self.window {
            let speed = self.window_bytes as f64 / elapsed.as_secs_f64();
            if speed < self.min_speed as f64 {
                return Err(UpstreamError::Stalled(elapsed));
            }
            self.window_start = tokio::time::Instant::now();
            self.window_bytes = 0;
        }
        Ok(())
    }
}

fn scope(repo: &Repository) -> String {
    format!("repository:{repo}:pull")
}

fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
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
        .map(Duration::from_secs);
    Err(match status.as_u16() {
        404 => UpstreamError::NotFound,
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

/// Exponential backoff with jitter; `None` when the upstream asks us to wait longer than we will.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if let Some(wait) = retry_after {
        return (wait <= MAX_RETRY_AFTER).then_some(wait);
    }
    let base = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(8));
    let jitter = rand::random_range(0.5..=1.0);
    Some(base.mul_f64(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(1, None).unwrap() <= Duration::from_millis(500));
        assert!(backoff(10, None).unwrap() <= Duration::from_secs(8));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(3600))), None);
    }
}

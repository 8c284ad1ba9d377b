//! `fallback_urls`: other registries with the same content (e.g. `https://mirror.gcr.io` for
//! Docker Hub), asked in order when the upstream's own path is down.
//!
//! Each fallback is a full [`UpstreamClient`] of its own: its own breaker, token dance, address
//! rule (its host is its "home") and connections, but never the upstream's credentials —
//! a fallback is asked anonymously. Only a failure of the path (connect, TLS, timeouts,
//! resets, 5xx, 429, an open breaker) sends a request on; an answer about the content (404,
//! 401/403, too large, a protocol error) is the upstream's word and is returned as it is.
//!
//! What a fallback sends is verified exactly as the primary's would be, by the caller: a blob
//! against its digest, a manifest by digest against that digest, a manifest by tag against the
//! `Docker-Content-Digest` it names. A response says which endpoint served it ([`ServedBy`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::Response;
use hyper::body::Incoming;

use super::{Request, UpstreamClient, UpstreamError};
use crate::config::Upstream;
use crate::metrics::{Metrics, UpstreamEndpointLabels};

/// One `fallback_urls` endpoint and what it has served.
pub struct Fallback {
    pub(super) client: Arc<UpstreamClient>,
    /// `host[:port]`: the metric label and what logs and the status page name.
    endpoint: String,
    served: AtomicU64,
    last_served: Mutex<Option<SystemTime>>,
}

/// A response extension: the fallback endpoint that answered (absent: the upstream itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub String);

/// A fallback as the status page shows it.
#[derive(Debug, Clone)]
pub struct FallbackState {
    pub url: String,
    pub state: &'static str,
    pub served: u64,
    pub last_served: Option<SystemTime>,
}

impl Fallback {
    /// The clients for `upstream`'s `fallback_urls`, in order.
    pub(super) fn all_for(
        upstream: &Upstream,
        metrics: &Arc<Metrics>,
    ) -> std::io::Result<Vec<Fallback>> {
        upstream
            .fallback_urls
            .iter()
            .map(|url| {
                let mut config = upstream.clone();
                config.url = url.clone();
                // Credentials stay with the registry they were written for.
                config.credentials = None;
                config.fallback_urls = Vec::new();
                Ok(Fallback {
                    client: Arc::new(UpstreamClient::new(config, metrics.clone())?),
                    endpoint: url.authority().to_string(),
                    served: AtomicU64::new(0),
                    last_served: Mutex::new(None),
                })
            })
            .collect()
    }

    fn note_served(&self, primary: &UpstreamClient, req: &Request, why: &UpstreamError) {
        self.served.fetch_add(1, Ordering::Relaxed);
        *self.last_served.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        primary
            .metrics
            .upstream_fallbacks
            .get_or_create(&UpstreamEndpointLabels {
                upstream: primary.label().to_string(),
                endpoint: self.endpoint.clone(),
            })
            .inc();
        tracing::info!(upstream = %primary.name(), fallback = %self.endpoint, repo = %req.repo,
            endpoint = %req.path(), primary_error = %why, "served by a fallback while the upstream is down");
    }
}

/// Should a request that failed this way at one endpoint be asked of the next?
fn path_is_down(e: &UpstreamError) -> bool {
    e.counts_against_health() || matches!(e, UpstreamError::Down { .. })
}

/// How much each endpoint is asked.
#[derive(Clone, Copy)]
enum Ask {
    /// [`UpstreamClient::send`]: the retry loop.
    Send,
    /// One breaker-admitted attempt (a blob download keeps its own retry budget).
    Attempt,
}

impl UpstreamClient {
    /// [`UpstreamClient::send`] (the retry loop) at the upstream, then at each fallback in
    /// turn while the path is down. The primary's error is the one returned when all fail.
    pub(super) async fn send_or_fall_back(
        self: &Arc<Self>,
        req: &Request,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.ask_in_turn(req, Ask::Send).await
    }

    /// One breaker-admitted attempt at the upstream, then one at each fallback in turn while
    /// the path is down: a blob download's (re)request, whose retries are its own.
    pub(super) async fn attempt_or_fall_back(
        self: &Arc<Self>,
        req: &Request,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.ask_in_turn(req, Ask::Attempt).await
    }

    async fn ask(
        self: &Arc<Self>,
        req: &Request,
        how: Ask,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match how {
            Ask::Send => self.send(req).await,
            Ask::Attempt => self.admitted_attempt(req).await,
        }
    }

    async fn ask_in_turn(
        self: &Arc<Self>,
        req: &Request,
        how: Ask,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let why = match self.ask(req, how).await {
            Err(e) if path_is_down(&e) && !self.fallbacks.is_empty() => e,
            other => return other,
        };
        for fallback in &self.fallbacks {
            match fallback.client.ask(req, how).await {
                Ok(mut response) => {
                    fallback.note_served(self, req, &why);
                    response
                        .extensions_mut()
                        .insert(ServedBy(fallback.endpoint.clone()));
                    return Ok(response);
                }
                // The fallback's word on the content is as good as the upstream's.
                Err(e) if !path_is_down(&e) => {
                    tracing::info!(upstream = %self.name(), fallback = %fallback.endpoint, repo = %req.repo,
                        error = %e, "fallback answered while the upstream is down");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.name(), fallback = %fallback.endpoint, repo = %req.repo,
                        error = %e, "fallback failed too");
                }
            }
        }
        Err(why)
    }

    /// The `fallback_urls` endpoints, their breakers and what they served.
    pub fn fallback_states(&self) -> Vec<FallbackState> {
        self.fallbacks
            .iter()
            .map(|f| FallbackState {
                url: f.client.config().url.to_string(),
                state: f.client.state().as_str(),
                served: f.served.load(Ordering::Relaxed),
                last_served: *f.last_served.lock().unwrap_or_else(|e| e.into_inner()),
            })
            .collect()
    }
}

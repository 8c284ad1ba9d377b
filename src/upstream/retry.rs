//! The one retry loop ([`UpstreamClient::send`]) and its backoff.
//!
//! Attempt budget: `max_attempts` header-stage attempts per call (manifest, tag HEAD, blob
//! HEAD, listing). A blob download (`blob.rs`) has one budget of `max_attempts` failures
//! without progress for its first request and every resume together; a received byte resets
//! it. Never nested, so never `max_attempts²`. Retries across all calls of an upstream are
//! capped further by its retry budget (`retry_budget` per minute).

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;

use super::health::Outcome;
use super::{Request, UpstreamClient, UpstreamError};

/// A `Retry-After` longer than this is passed to the client instead of waited out.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl UpstreamClient {
    /// Sends the request, retrying transient failures with backoff, and returns a 2xx response
    /// (206 when a range was asked and honoured). Error statuses become [`UpstreamError`]s.
    pub(super) async fn send(
        self: &Arc<Self>,
        req: &Request,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let max = self.config.transport.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = self.admitted_attempt(req).await;
            match result {
                Err(e) if e.is_retryable() && attempt < max => {
                    let Some(token) = self.health.take_retry() else {
                        return Err(e);
                    };
                    let Some(delay) = backoff(attempt, e.retry_after()) else {
                        return Err(e);
                    };
                    tracing::warn!(upstream = %self.config.name, repo = %req.repo, endpoint = req.kind(),
                        attempt, error = %e, "upstream request failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    token.spend();
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One attempt, if the breaker lets it out; its outcome is reported to the breaker.
    pub(super) async fn admitted_attempt(
        self: &Arc<Self>,
        req: &Request,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let permit = self
            .health
            .admit()
            .map_err(|wait| UpstreamError::Down { retry_after: wait })?;
        crate::trace::attempt();
        if !permit.is_probe() {
            let result = self.attempt(req).await;
            permit.record(outcome(&result));
            self.count_error(&result);
            return result;
        }
        // The probe decides for every client: it runs to its end in its own task even if
        // this caller goes away. If it panics, the dropped permit reopens the breaker.
        let (this, req) = (self.clone(), req.clone());
        let probe = tokio::spawn(async move {
            let result = this.attempt(&req).await;
            permit.record(outcome(&result));
            this.count_error(&result);
            result
        });
        probe
            .await
            .unwrap_or_else(|e| Err(UpstreamError::Transport(format!("probe task failed: {e}"))))
    }

    /// `berth_upstream_errors_total`: every failed attempt, by class. A 404 is an answer.
    fn count_error<T>(&self, result: &Result<T, UpstreamError>) {
        if let Err(e) = result {
            if !matches!(e, UpstreamError::NotFound) {
                self.metrics.upstream_error(self.label(), e.class());
            }
        }
    }
}

fn outcome<T>(result: &Result<T, UpstreamError>) -> Outcome {
    match result {
        Err(e) if e.counts_against_health() => Outcome::PathFailed,
        _ => Outcome::Answered,
    }
}

/// Exponential backoff with jitter; `None` when the upstream asks us to wait longer than we will.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
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

//! Reading upstream response bodies with stall detection and size limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::UpstreamError;
use super::health::Health;
use crate::metrics::Metrics;

/// A response body read with stall detection: no bytes for `stall` is a stall, and so is a
/// transfer averaging less than `min_speed` bytes/s over a `window`. No total deadline.
/// Failures of the path are reported to the upstream's health.
pub struct BodyReader {
    body: Incoming,
    stall: Duration,
    min_speed: u64,
    window: Duration,
    window_start: tokio::time::Instant,
    window_bytes: u64,
    health: Arc<Health>,
    /// Where failures are counted (`berth_upstream_errors_total`), by upstream name.
    errors: (Arc<Metrics>, String),
}

impl BodyReader {
    pub(super) fn new(
        body: Incoming,
        transport: &crate::config::Transport,
        health: Arc<Health>,
        errors: (Arc<Metrics>, String),
    ) -> BodyReader {
        BodyReader {
            body,
            stall: transport.stall_timeout,
            min_speed: transport.min_speed,
            window: transport.min_speed_window,
            window_start: tokio::time::Instant::now(),
            window_bytes: 0,
            health,
            errors,
        }
    }

    /// Next chunk, or `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let result = self.next_inner().await;
        if result
            .as_ref()
            .is_err_and(UpstreamError::counts_against_health)
        {
            self.health.record_failure();
        }
        if let Err(e) = &result {
            let (metrics, upstream) = &self.errors;
            metrics.upstream_error(upstream, e.class());
        }
        result
    }

    /// Reads the whole body (manifests, tokens: small ones), refusing more than `limit`
    /// bytes or longer than `deadline` in all: a drip that never quite stalls cannot hold a
    /// request.
    pub async fn read_to_end(
        mut self,
        limit: u64,
        deadline: Duration,
    ) -> Result<Bytes, UpstreamError> {
        let read = async {
            let mut buf = BytesMut::new();
            while let Some(chunk) = self.next().await? {
                if (buf.len() as u64).saturating_add(chunk.len() as u64) > limit {
                    return Err(UpstreamError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        };
        tokio::time::timeout(deadline, read).await.map_err(|_| {
            UpstreamError::Timeout(format!(
                "the response body was not complete within {deadline:?}"
            ))
        })?
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
        self.window_bytes = self.window_bytes.saturating_add(bytes);
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

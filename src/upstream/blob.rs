//! A blob download that survives a broken path: resumes with `Range: bytes=<received>-`,
//! checks the `206`'s `Content-Range` (or skips the known prefix of a `200`), and enforces
//! the size the upstream announced and the configured `max_blob_size`.
//!
//! Attempt budget: `max_attempts` failures *without progress*, counted across the initial
//! request and every resume together; any received byte resets the count. Each (re)request is
//! one attempt of [`UpstreamClient::send`]'s kind (breaker-admitted), never a nested loop.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::retry::backoff;
use super::{BodyReader, Request, UpstreamClient, UpstreamError, content_length};
use crate::oci::{Digest, Endpoint, Repository};

pub struct BlobStream {
    client: Arc<UpstreamClient>,
    request: Request,
    digest: Digest,
    /// Size of the blob, when the upstream said.
    total: Option<u64>,
    max_size: Option<u64>,
    received: u64,
    /// `received` when the current response began: a stall with nothing past it is a
    /// transfer that never got its first full-size segment.
    received_at_open: u64,
    body: Option<BodyReader>,
    /// Bytes of the current response that we already have (an upstream that ignored Range).
    skip: u64,
    failures: u32,
    received_at_last_failure: u64,
    /// Where the last response came from (after redirects).
    source: Option<url::Url>,
    /// Breaks resumed so far, and the last one's cause (`berth probe` reports them).
    interruptions: u32,
    last_interruption: Option<UpstreamError>,
}

impl UpstreamClient {
    /// Starts downloading a blob from byte `from` on (0: all of it; more: the caller has the
    /// prefix, e.g. from a peer replica); returns once response headers are in (so the size is
    /// known if the upstream sends it). `max_size` refuses bigger blobs before or while reading.
    pub async fn fetch_blob(
        self: &Arc<Self>,
        repo: &Repository,
        digest: &Digest,
        max_size: Option<u64>,
        from: u64,
    ) -> Result<BlobStream, UpstreamError> {
        let mut stream = BlobStream {
            client: self.clone(),
            request: Request::new(Method::GET, repo, Endpoint::Blob(digest.clone())),
            digest: digest.clone(),
            total: None,
            max_size,
            received: from,
            received_at_open: from,
            body: None,
            skip: 0,
            failures: 0,
            received_at_last_failure: from,
            source: None,
            interruptions: 0,
            last_interruption: None,
        };
        stream.open().await?;
        Ok(stream)
    }
}

impl BlobStream {
    /// The blob's size, if the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Caps a blob whose size the upstream did not announce (no `Content-Length`) at `cap`
    /// bytes, unless a tighter `max_size` is already set.
    pub fn cap_unannounced(&mut self, cap: u64) {
        if self.total.is_none() {
            self.max_size = Some(self.max_size.map_or(cap, |m| m.min(cap)));
        }
    }

    /// The URL the bytes come from after redirects (a CDN for most registries).
    pub fn source(&self) -> Option<&url::Url> {
        self.source.as_ref()
    }

    /// How often the transfer broke and was resumed, and the last break's cause.
    pub fn interruptions(&self) -> (u32, Option<&UpstreamError>) {
        (self.interruptions, self.last_interruption.as_ref())
    }

    /// The next chunk of the blob, resuming transparently; `None` once all of it arrived.
    pub async fn next(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            if self.body.is_none() {
                self.open().await?;
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match body.next().await {
                Ok(Some(mut chunk)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64);
                        self.skip -= n;
                        chunk = chunk.slice(n as usize..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    let after = self.received.saturating_add(chunk.len() as u64);
                    if self.total.is_some_and(|t| after > t) {
                        return Err(UpstreamError::Protocol(
                            "upstream sent more bytes than it announced".into(),
                        ));
                    }
                    if let Some(limit) = self.max_size.filter(|l| after > *l) {
                        return Err(UpstreamError::TooLarge { limit });
                    }
                    self.received = after;
                    return Ok(Some(chunk));
                }
                Ok(None) => match self.total {
                    Some(t) if self.received < t => {
                        let e = UpstreamError::Transport(format!(
                            "connection ended at {} of {t} bytes",
                            self.received
                        ));
                        self.client
                            .metrics
                            .upstream_error(self.client.label(), e.class());
                        self.failed(e).await?;
                    }
                    _ => return Ok(None),
                },
                Err(e) if e.is_retryable() => self.failed(e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// One request for what is missing, retried under the stream's budget.
    async fn open(&mut self) -> Result<(), UpstreamError> {
        loop {
            self.body = None;
            self.request.range_from = (self.received > 0).then_some(self.received);
            if self.received > 0 {
                self.client
                    .metrics
                    .upstream_resumes
                    .get_or_create(&crate::metrics::UpstreamNameLabels {
                        upstream: self.client.label().to_string(),
                    })
                    .inc();
            }
            match self.open_once().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => self.failed(e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    async fn open_once(&mut self) -> Result<(), UpstreamError> {
        let response = self.client.attempt_or_fall_back(&self.request).await?;
        if let Some(super::ResponseUrl(url)) = response.extensions().get() {
            self.source = Some(url.clone());
        }
        let length = content_length(&response);
        let status = response.status();
        self.skip = 0;
        self.received_at_open = self.received;
        if self.received == 0 {
            if let (Some(len), Some(limit)) = (length, self.max_size) {
                if len > limit {
                    return Err(UpstreamError::TooLarge { limit });
                }
            }
            self.total = length;
        } else if status == StatusCode::PARTIAL_CONTENT {
            let range = response
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range);
            let start = range.map(|(start, _)| start);
            if start != Some(self.received) {
                return Err(UpstreamError::Protocol(format!(
                    "asked for bytes from {}, got Content-Range starting at {start:?}",
                    self.received
                )));
            }
            // A download that started past 0 learns the size here.
            if self.total.is_none() {
                self.total = range.and_then(|(_, total)| total);
            }
        } else {
            // The upstream ignored Range: read from 0 again and drop what we have.
            tracing::info!(upstream = %self.client.name(), digest = %self.digest,
                "upstream ignored Range; re-reading from 0");
            self.skip = self.received;
            if self.total.is_none() {
                self.total = length;
            }
        }
        self.body = Some(self.client.body(response.into_body()));
        Ok(())
    }

    /// Counts a retryable failure; `Err` when the budget is spent. A failure after progress
    /// resumes at once; repeated failures without progress back off and draw on the
    /// upstream's retry budget.
    async fn failed(&mut self, e: UpstreamError) -> Result<(), UpstreamError> {
        self.body = None;
        if matches!(e, UpstreamError::Stalled(_)) && self.received == self.received_at_open {
            if let Some(key) = self.source.as_ref().and_then(super::black_hole::key_of) {
                self.client.black_holes.stalled_before_first_byte(&key);
            }
        }
        let progressed = self.received > self.received_at_last_failure;
        if progressed {
            self.failures = 0;
            self.received_at_last_failure = self.received;
        }
        self.failures += 1;
        let max = self.client.config.transport.max_attempts.max(1);
        if self.failures >= max {
            tracing::error!(upstream = %self.client.name(), digest = %self.digest, received = self.received,
                error = %e, "blob transfer failed {max} times without progress; giving up");
            return Err(e);
        }
        tracing::warn!(upstream = %self.client.name(), digest = %self.digest, received = self.received,
            error = %e, "blob transfer broke; resuming");
        self.interruptions += 1;
        self.last_interruption = Some(e.clone());
        if progressed {
            return Ok(());
        }
        let token = self.client.health.take_retry().ok_or(e.clone())?;
        let delay = backoff(self.failures, e.retry_after()).ok_or(e)?;
        tokio::time::sleep(delay).await;
        token.spend();
        Ok(())
    }
}

/// `bytes <start>-<end>/<total>` → (start, total; `*` → `None`).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes ")?;
    let (span, total) = spec.split_once('/')?;
    let start = span.split('-').next()?.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start_parses() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(content_range("bytes */200"), None);
        assert_eq!(content_range("items 1-2/3"), None);
    }
}

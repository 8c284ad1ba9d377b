//! Blobs: served from the store, or filled once from the upstream and streamed to every waiter.

use std::sync::Arc;

use http::Method;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};

use crate::coalesce::{FillFailure, FillWriter, Joined};
use crate::oci::{Digest, Hasher};
use crate::store::{ByteStream, keys};
use crate::upstream::{Kind, Request, UpstreamError};

use super::error::Reference as What;
use super::{Lookup, Mirror, MirrorError, Target};

/// A client's `Range: bytes=...` request (one range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`, inclusive.
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header; `None` for anything but one byte range (then the whole blob is sent).
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (false, false) => Some(ByteRange::FromTo(a.parse().ok()?, b.parse().ok()?))
                .filter(|r| matches!(r, ByteRange::FromTo(x, y) if x <= y)),
            (false, true) => Some(ByteRange::From(a.parse().ok()?)),
            (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
            (true, true) => None,
        }
    }

    /// The inclusive byte span within a blob of `size` bytes, or `None` if unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            ByteRange::FromTo(a, b) => (a, b.min(size.checked_sub(1)?)),
            ByteRange::From(a) => (a, size.checked_sub(1)?),
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => (size.saturating_sub(n), size.checked_sub(1)?),
        };
        (start <= end && start < size).then_some((start, end))
    }
}

/// What a blob response carries.
pub struct BlobBody {
    /// Size of the whole blob, when known (a chunked upstream may not say).
    pub total: Option<u64>,
    /// The inclusive span served, for a 206.
    pub range: Option<(u64, u64)>,
    /// `None` when the caller asked for headers only (HEAD).
    pub body: Option<ByteStream>,
}

impl Mirror {
    pub async fn blob(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        want_body: bool,
        lookup: Lookup,
    ) -> Result<BlobBody, MirrorError> {
        if lookup == Lookup::CacheOnly {
            let size = self.store.size(&keys::blob(digest)).await?;
            self.metrics.cache_lookup("blob", size.is_some());
            let size = size
                .ok_or_else(|| MirrorError::NotCached(format!("blob {}@{digest}", target.repo)))?;
            return self.blob_from_store(digest, size, range, want_body).await;
        }
        // Two rounds at most: a fill that finds the blob committed meanwhile sends us to the store.
        for _ in 0..2 {
            match self.store.size(&keys::blob(digest)).await {
                Ok(Some(size)) => {
                    match self.blob_from_store(digest, size, range, want_body).await {
                        Err(MirrorError::Raced) => continue,
                        other => {
                            self.metrics.cache_lookup("blob", true);
                            return other;
                        }
                    }
                }
                Ok(None) => {}
                // The store is unreachable (S3 down): the upstream can still serve the blob.
                Err(e) => tracing::warn!(%digest, error = %e,
                    "cannot ask the store for the blob; filling from the upstream"),
            }
            match self.blob_from_fill(target, digest, range, want_body).await {
                Err(MirrorError::Raced) => continue,
                other => {
                    self.metrics.cache_lookup("blob", false);
                    return other;
                }
            }
        }
        Err(MirrorError::Store(
            "blob vanished from the store right after it was committed".into(),
        ))
    }

    async fn blob_from_store(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<BlobBody, MirrorError> {
        let span = match range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(MirrorError::RangeNotSatisfiable { size })?,
            ),
            None => None,
        };
        let body = if want_body {
            let (start, end) = span.unwrap_or((0, size.saturating_sub(1)));
            let end_exclusive = if size == 0 { 0 } else { end + 1 };
            match self
                .store
                .read(&keys::blob(digest), start..end_exclusive)
                .await
            {
                Ok(stream) => Some(stream),
                // Evicted between the size check and the open: fill it again.
                Err(e) if e.is_not_found() => return Err(MirrorError::Raced),
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        Ok(BlobBody {
            total: Some(size),
            range: span,
            body,
        })
    }

    async fn blob_from_fill(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<BlobBody, MirrorError> {
        let joined = self
            .blob_fills
            .join(digest.clone())
            .map_err(|e| MirrorError::Store(format!("cannot create spool file: {e}")))?;
        let fill = match joined {
            Joined::Follower(fill) => fill,
            Joined::Leader(fill, writer) => {
                // Its own task: the fill outlives any one client.
                let (this, target, digest) = (self.clone(), target.clone(), digest.clone());
                self.fill_tasks
                    .spawn(async move { this.fill_blob(&target, &digest, writer).await });
                fill
            }
        };
        let total = fill.started().await.map_err(|e| match e {
            FillFailure::Failed(e) => e,
            FillFailure::Abandoned => MirrorError::Store("the fill was abandoned".into()),
        })?;
        // A range needs the size; a chunked upstream that did not send one gets the whole blob.
        let span = match (range, total) {
            (Some(r), Some(size)) => Some(
                r.resolve(size)
                    .ok_or(MirrorError::RangeNotSatisfiable { size })?,
            ),
            _ => None,
        };
        let body = want_body.then(|| {
            let (start, end) = match span {
                Some((s, e)) => (s, Some(e + 1)),
                None => (0, None),
            };
            fill.reader(start, end).into_stream()
        });
        Ok(BlobBody {
            total,
            range: span,
            body,
        })
    }

    /// The leader's work: download, hash, spool, verify, commit. Resumes a broken transfer
    /// with `Range: bytes=<received>-`, keeping the running hash.
    async fn fill_blob(
        &self,
        target: &Target,
        digest: &Digest,
        mut writer: FillWriter<Digest, MirrorError>,
    ) {
        if let Ok(Some(_)) = self.store.size(&keys::blob(digest)).await {
            writer.fail(MirrorError::Raced);
            return;
        }
        let upstream = target.upstream_name();
        let mut hasher = Hasher::new(digest.algorithm());
        let mut total: Option<u64> = None;
        let mut failures_without_progress = 0;
        let max_failures = target.upstream.config().transport.max_attempts;
        loop {
            let written_before = writer.written();
            match self
                .transfer(target, digest, &mut writer, &mut hasher, &mut total)
                .await
            {
                Ok(()) => break,
                // A local disk problem (e.g. ENOSPC): retrying the upstream cannot help. The
                // failed writer deletes the spool file, so nothing partial stays behind.
                Err(TransferError::Spool(e)) => {
                    tracing::error!(%upstream, repo = %target.repo, %digest, received = writer.written(),
                        error = %e, "cannot write the spool file; blob fill failed");
                    writer.fail(MirrorError::Store(format!(
                        "cannot write the spool file: {e}"
                    )));
                    return;
                }
                Err(TransferError::Upstream(e)) if e.is_retryable() => {
                    if writer.written() > written_before {
                        failures_without_progress = 0;
                    }
                    failures_without_progress += 1;
                    if failures_without_progress >= max_failures {
                        tracing::error!(%upstream, repo = %target.repo, %digest, received = writer.written(),
                            error = %e, "blob fill failed after {failures_without_progress} attempts without progress; giving up");
                        writer.fail(MirrorError::from_upstream(
                            upstream,
                            &target.repo,
                            What::Blob(&digest.to_string()),
                            e,
                        ));
                        return;
                    }
                    tracing::warn!(%upstream, repo = %target.repo, %digest, received = writer.written(), error = %e,
                        "blob transfer broke; resuming");
                }
                Err(TransferError::Upstream(e)) => {
                    tracing::warn!(%upstream, repo = %target.repo, %digest, error = %e, "blob fill failed");
                    writer.fail(MirrorError::from_upstream(
                        upstream,
                        &target.repo,
                        What::Blob(&digest.to_string()),
                        e,
                    ));
                    return;
                }
            }
        }

        let received = writer.written();
        let verdict = if total.is_some_and(|t| t != received) {
            Err(format!(
                "received {received} bytes, upstream announced {}",
                total.unwrap_or(0)
            ))
        } else {
            let actual = hasher.finish();
            if &actual == digest {
                Ok(())
            } else {
                Err(format!("blob hashes to {actual}, expected {digest}"))
            }
        };
        if let Err(cause) = verdict {
            self.metrics.verify_failures.inc();
            tracing::error!(%upstream, repo = %target.repo, %digest, %cause, "blob failed verification; discarded");
            writer.fail(MirrorError::Verification {
                upstream: upstream.into(),
                cause,
            });
            return;
        }
        // Clients get their last byte now, not after the sync and the store commit (an fsync
        // or an S3 upload takes a while); requests arriving meanwhile join this fill.
        writer.mark_verified();
        if let Err(e) = writer.sync().await {
            writer.fail(MirrorError::Store(format!("cannot sync spool file: {e}")));
            return;
        }
        match self
            .store
            .commit_file(&keys::blob(digest), writer.spool_path())
            .await
        {
            Ok(()) => {
                writer.mark_committed();
                tracing::info!(%upstream, repo = %target.repo, %digest, bytes = received, "blob cached");
                writer.complete();
            }
            Err(e) => {
                // The bytes are verified: the clients reading the spool still get them.
                tracing::error!(%upstream, repo = %target.repo, %digest, bytes = received, error = %e,
                    "blob verified but could not be stored; served uncached");
                writer.complete();
            }
        }
    }

    /// One upstream request: from 0, or resuming at what the writer already has.
    async fn transfer(
        &self,
        target: &Target,
        digest: &Digest,
        writer: &mut FillWriter<Digest, MirrorError>,
        hasher: &mut Hasher,
        total: &mut Option<u64>,
    ) -> Result<(), TransferError> {
        let have = writer.written();
        let request = Request {
            kind: Kind::Blob,
            method: Method::GET,
            repo: target.repo.clone(),
            endpoint: format!("blobs/{digest}"),
            query: None,
            accept: None,
            range_from: (have > 0).then_some(have),
        };
        let response = target.upstream.send(&request).await?;
        let status = response.status();
        let headers = response.headers();
        let length: Option<u64> = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // Bytes at the start of this response that we already have.
        let mut skip = 0;
        if have == 0 {
            *total = length;
            writer.start(*total);
        } else if status == http::StatusCode::PARTIAL_CONTENT {
            let start = headers
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(have) {
                return Err(UpstreamError::Protocol(format!(
                    "asked for bytes from {have}, got Content-Range {start:?}"
                ))
                .into());
            }
        } else {
            // The upstream ignored Range: read from 0 again and drop what we have.
            tracing::info!(upstream = %target.upstream_name(), %digest, "upstream ignored Range; re-reading from 0");
            skip = have;
        }
        let mut body = target.upstream.body(response.into_body());
        while let Some(mut chunk) = body.next().await? {
            self.metrics
                .upstream_blob_bytes
                .get_or_create(&crate::metrics::UpstreamLabels {
                    upstream: target.upstream_name().into(),
                    kind: "blob",
                })
                .inc_by(chunk.len() as u64);
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                chunk = chunk.slice(n as usize..);
                if chunk.is_empty() {
                    continue;
                }
            }
            if total.is_some_and(|t| writer.written() + chunk.len() as u64 > t) {
                return Err(UpstreamError::Protocol(
                    "upstream sent more bytes than it announced".into(),
                )
                .into());
            }
            hasher.update(&chunk);
            writer.append(chunk).await.map_err(TransferError::Spool)?;
        }
        if total.is_some_and(|t| writer.written() < t) {
            return Err(UpstreamError::Transport(format!(
                "connection ended at {} of {} bytes",
                writer.written(),
                total.unwrap_or(0)
            ))
            .into());
        }
        Ok(())
    }
}

/// Why one transfer stopped: the upstream, or our own disk (full, read-only, I/O error).
enum TransferError {
    Upstream(UpstreamError),
    Spool(std::io::Error),
}

impl From<UpstreamError> for TransferError {
    fn from(e: UpstreamError) -> Self {
        TransferError::Upstream(e)
    }
}

/// `bytes <start>-<end>/<total>` → start.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parse_and_resolve() {
        let cases = [
            ("bytes=0-9", 100, Some((0, 9))),
            ("bytes=90-", 100, Some((90, 99))),
            ("bytes=90-200", 100, Some((90, 99))),
            ("bytes=-10", 100, Some((90, 99))),
            ("bytes=-200", 100, Some((0, 99))),
            ("bytes=100-", 100, None),
            ("bytes=0-0", 0, None),
        ];
        for (header, size, want) in cases {
            let r = ByteRange::parse(header).unwrap();
            assert_eq!(r.resolve(size), want, "{header} of {size}");
        }
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
        ] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored}");
        }
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
    }
}

//! Blobs: served from the store, or filled once from the upstream and streamed to every waiter.

use std::sync::Arc;

use crate::coalesce::{Fill, FillFailure, FillWriter, HashingThread, Joined, Slot, Slots};
use crate::fleet::{Fleet, Lease, Role};
use crate::oci::{Digest, Repository};
use crate::store::{ByteStream, keys};
use crate::trace::{self, CacheResult};
use crate::upstream::ErrorClass;
use crate::upstream::UpstreamError;

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

/// Why a blob fill ended without content, as its followers see it.
#[derive(Debug, Clone)]
pub(super) enum FillError {
    /// Another fill committed the blob while this one was starting: read the store instead.
    Raced,
    Failed(MirrorError),
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Raced => f.write_str("the blob appeared in the store while filling"),
            FillError::Failed(e) => e.fmt(f),
        }
    }
}

/// The class of a blob body that broke: the fill's error, carried inside the reader's error.
pub fn fill_failure_class(e: &crate::coalesce::ReaderError) -> Option<crate::upstream::ErrorClass> {
    match e.cause::<FillError>()? {
        FillError::Failed(e) => Some(e.class()),
        FillError::Raced => None,
    }
}

/// How long a blob fill may wait for a slot under the `max_fills` caps before the client
/// is told to come back, and how long it should wait then.
pub(super) const FILL_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

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
            // First a fill that has verified the blob and is still committing it: it needs
            // no store request (which could hang on an S3 bucket that stopped answering).
            if let Some(body) = self.verified_fill(digest, range, want_body)? {
                return Ok(body);
            }
            let size = self.store.size(&keys::blob(digest)).await?;
            self.metrics.cache_lookup("blob", size.is_some());
            trace::note(if size.is_some() {
                CacheResult::Hit
            } else {
                CacheResult::Miss
            });
            let size = size
                .ok_or_else(|| MirrorError::NotCached(format!("blob {}@{digest}", target.repo)))?;
            return match self.blob_from_store(digest, size, range, want_body).await {
                Err(FillError::Raced) => Err(MirrorError::NotCached(format!(
                    "blob {}@{digest} (evicted just now)",
                    target.repo
                ))),
                Err(FillError::Failed(e)) => Err(e),
                Ok(body) => Ok(body),
            };
        }
        // Two rounds at most: a fill that finds the blob committed meanwhile sends us to the store.
        for round in 0..2 {
            // A running fill is joined without a store request: the blob is not stored yet,
            // and a store that stopped answering (a frozen bucket) must not hold up followers.
            let filling = round == 0 && want_body && self.blobs.fills.running(digest).is_some();
            let stored = if filling {
                Ok(None)
            } else {
                self.store.size(&keys::blob(digest)).await
            };
            match stored {
                Ok(Some(size)) => {
                    match self.blob_from_store(digest, size, range, want_body).await {
                        Err(FillError::Raced) => continue,
                        Err(FillError::Failed(e)) => return Err(e),
                        Ok(body) => {
                            self.metrics.cache_lookup("blob", true);
                            trace::note(CacheResult::Hit);
                            return Ok(body);
                        }
                    }
                }
                Ok(None) => {}
                // The store is unreachable (S3 down): the upstream can still serve the blob.
                Err(e) => tracing::warn!(%digest, error = %e,
                    "cannot ask the store for the blob; filling from the upstream"),
            }
            self.metrics.cache_lookup("blob", false);
            if self.missing.contains_key(&missing_key(target, digest)) {
                return Err(MirrorError::from_upstream(
                    target.upstream_name(),
                    &target.repo,
                    What::Blob(&digest.to_string()),
                    UpstreamError::NotFound,
                ));
            }
            if !want_body {
                // A HEAD asks the upstream with a HEAD; it does not start a download.
                trace::note(CacheResult::Miss);
                return self.blob_head_upstream(target, digest, range).await;
            }
            match self.blob_from_fill(target, digest, range).await {
                Err(FillError::Raced) => continue,
                Err(FillError::Failed(e)) => return Err(self.note_missing(target, digest, e)),
                Ok(body) => return Ok(body),
            }
        }
        Err(MirrorError::Store(
            "blob vanished from the store right after it was committed".into(),
        ))
    }

    /// Remembers a blob the upstream does not have (briefly), so a loop of requests for it
    /// costs one upstream request; passes `e` on.
    fn note_missing(&self, target: &Target, digest: &Digest, e: MirrorError) -> MirrorError {
        if matches!(e, MirrorError::BlobUnknown { .. }) {
            self.missing.insert(missing_key(target, digest), ());
        }
        e
    }

    async fn blob_head_upstream(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, MirrorError> {
        let total = target
            .upstream
            .head_blob(&target.repo, digest)
            .await
            .inspect_err(|e| {
                if matches!(e, UpstreamError::NotFound) {
                    self.missing.insert(missing_key(target, digest), ());
                }
            })
            .map_err(|e| {
                MirrorError::from_upstream(
                    target.upstream_name(),
                    &target.repo,
                    What::Blob(&digest.to_string()),
                    e,
                )
            })?;
        let span = match (range, total) {
            (Some(r), Some(size)) => Some(
                r.resolve(size)
                    .ok_or(MirrorError::RangeNotSatisfiable { size })?,
            ),
            _ => None,
        };
        Ok(BlobBody {
            total,
            range: span,
            body: None,
        })
    }

    async fn blob_from_store(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<BlobBody, FillError> {
        let span = match range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(FillError::Failed(MirrorError::RangeNotSatisfiable { size }))?,
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
                Err(e) if e.is_not_found() => return Err(FillError::Raced),
                Err(e) => return Err(FillError::Failed(e.into())),
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
    ) -> Result<BlobBody, FillError> {
        let joined = self.blobs.fills.join(digest.clone()).map_err(|e| {
            FillError::Failed(MirrorError::Store(format!("cannot create spool file: {e}")))
        })?;
        let fill = match joined {
            Joined::Follower(fill) => {
                trace::note(CacheResult::Joined);
                fill
            }
            Joined::Leader(fill, writer) => {
                // Its own task: the fill outlives any one client (its attempts are this one's).
                let (this, target, digest) = (self.clone(), target.clone(), digest.clone());
                self.blobs.tasks.spawn(trace::carry(async move {
                    this.fill_blob(&target, &digest, writer).await
                }));
                fill
            }
        };
        let total = fill.started().await.map_err(|e| match e {
            FillFailure::Failed(e) => e,
            FillFailure::Abandoned => {
                FillError::Failed(MirrorError::Store("the fill was abandoned".into()))
            }
        })?;
        fill_body(&fill, total, range, true)
    }

    /// `only-if-cached` for a blob whose fill has verified it and is still syncing or
    /// uploading it: as good as stored (right after a prewarm, its check must not call
    /// a blob that is being committed missing).
    fn verified_fill(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<Option<BlobBody>, MirrorError> {
        let Some(fill) = self.blobs.fills.running(digest) else {
            return Ok(None);
        };
        let Some(size) = fill.verified_size() else {
            return Ok(None);
        };
        self.metrics.cache_lookup("blob", true);
        trace::note(CacheResult::Hit);
        let body = fill_body(&fill, Some(size), range, want_body).map_err(|e| match e {
            FillError::Failed(e) => e,
            FillError::Raced => MirrorError::Store(e.to_string()),
        })?;
        Ok(Some(body))
    }

    /// Slots under the upstream's and the global `max_fills` caps.
    async fn fill_slots(&self, target: &Target) -> Result<(Slot, Slot), MirrorError> {
        let busy = |_| MirrorError::Busy {
            upstream: target.upstream_name().into(),
            retry_after: BUSY_RETRY_AFTER,
        };
        let per_upstream = {
            let mut slots = self.blobs.upstream_slots.lock().unwrap();
            slots
                .entry(target.upstream_name().to_string())
                .or_insert_with(|| {
                    let cap = target.upstream.config().max_fills as usize;
                    Arc::new(Slots::new(cap, cap * 4, FILL_QUEUE_WAIT))
                })
                .clone()
        };
        let upstream_slot = per_upstream.acquire().await.map_err(busy)?;
        let global_slot = self.blobs.slots.acquire().await.map_err(busy)?;
        Ok((upstream_slot, global_slot))
    }

    /// The leader's work: wait for a slot, download (the upstream resumes broken transfers),
    /// hash, spool, verify, commit.
    async fn fill_blob(
        &self,
        target: &Target,
        digest: &Digest,
        mut writer: FillWriter<Digest, FillError>,
    ) {
        if let Ok(Some(_)) = self.store.size(&keys::blob(digest)).await {
            writer.fail(FillError::Raced);
            return;
        }
        // Noted here, in the trace the leader's request carried in: a fill that finds the
        // blob stored meanwhile sends that request to the store, a hit.
        trace::note(CacheResult::Miss);
        let upstream = target.upstream_name();
        // Observed as `failed` unless marked ok: every early return below is a failure.
        let timer = self.metrics.blob_fill_timer(upstream);
        let _slots = match self.fill_slots(target).await {
            Ok(slots) => slots,
            Err(e) => {
                tracing::warn!(%upstream, repo = %target.repo, %digest,
                    "too many blob fills running and queued; the client is asked to retry");
                writer.fail(FillError::Failed(e));
                return;
            }
        };
        let failed = |e: UpstreamError| {
            FillError::Failed(MirrorError::from_upstream(
                upstream,
                &target.repo,
                What::Blob(&digest.to_string()),
                e,
            ))
        };
        let mut hasher = match HashingThread::start(digest.algorithm()) {
            Ok(hasher) => hasher,
            Err(e) => {
                writer.fail(FillError::Failed(MirrorError::Store(format!(
                    "cannot start the hashing thread: {e}"
                ))));
                return;
            }
        };
        // The spool counts against the store's size limit until the commit (or the failure).
        let mut spool = SpoolAccount {
            store: self.store.as_ref(),
            bytes: 0,
        };
        let bytes_metric = self
            .metrics
            .upstream_blob_bytes
            .get_or_create(&crate::metrics::UpstreamLabels {
                upstream: upstream.into(),
                kind: "blob",
            })
            .clone();
        // On a shared bucket: lead the fill for every replica, or stream the leader's.
        let role = match &self.blobs.fleet {
            Some(fleet) => fleet.claim(digest).await,
            None => Role::Alone,
        };
        let mut started: Option<Option<u64>> = None;
        if let (Role::Follower(lease), Some(fleet)) = (&role, &self.blobs.fleet) {
            match self
                .follow_leader(fleet, lease, digest, &mut writer, &mut hasher, &mut spool)
                .await
            {
                Ok(total) => started = Some(total),
                Err(Followed::Store(e)) => {
                    writer.fail(FillError::Failed(e));
                    return;
                }
                Err(Followed::Leader(total, e)) => {
                    started = total;
                    tracing::warn!(%upstream, repo = %target.repo, %digest, leader = %lease.leader,
                        received = writer.written(), error = %e,
                        "leader replica failed; fetching the rest from the upstream");
                }
            }
        }
        let complete = started.flatten().is_some_and(|t| writer.written() == t);
        if !complete {
            let max_size = target.upstream.config().max_blob_size;
            let mut stream = match target
                .upstream
                .fetch_blob(&target.repo, digest, max_size, writer.written())
                .await
            {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%upstream, repo = %target.repo, %digest, error = %e, "blob fill failed");
                    writer.fail(failed(e));
                    return;
                }
            };
            // No announced size: never more than the whole cache may hold.
            if let Some(cap) = self.config.store.max_size {
                stream.cap_unannounced(cap);
            }
            if started.is_none() {
                writer.start(stream.total());
            }
            loop {
                match stream.next().await {
                    Ok(Some(chunk)) => {
                        bytes_metric.inc_by(chunk.len() as u64);
                        spool.add(chunk.len());
                        // A local disk problem (e.g. ENOSPC): retrying the upstream cannot
                        // help. The failed writer deletes the spool file: nothing partial stays.
                        if let Err(e) = keep(&mut hasher, &mut writer, chunk).await {
                            tracing::error!(%upstream, repo = %target.repo, %digest, received = writer.written(),
                                error = %e, "cannot write the spool file; blob fill failed");
                            writer.fail(FillError::Failed(MirrorError::Store(format!(
                                "cannot write the spool file: {e}"
                            ))));
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(%upstream, repo = %target.repo, %digest, received = writer.written(),
                            error = %e, "blob fill failed");
                        writer.fail(failed(e));
                        return;
                    }
                }
            }
        }

        let received = writer.written();
        let actual = match hasher.finish().await {
            Ok(actual) => actual,
            Err(e) => {
                tracing::error!(%upstream, repo = %target.repo, %digest, error = %e, "hashing the blob failed");
                writer.fail(FillError::Failed(MirrorError::Store(format!(
                    "hashing failed: {e}"
                ))));
                return;
            }
        };
        if &actual != digest {
            self.metrics.verify_failures.inc();
            self.metrics.upstream_error(upstream, ErrorClass::Verify);
            let cause = format!("blob hashes to {actual}, expected {digest}");
            tracing::error!(%upstream, repo = %target.repo, %digest, %cause, "blob failed verification; discarded");
            writer.fail(FillError::Failed(MirrorError::Verification {
                upstream: upstream.into(),
                cause,
            }));
            return;
        }
        // Clients get their last byte now, not after the sync and the store commit (an fsync
        // or an S3 upload takes a while); requests arriving meanwhile join this fill.
        // (A follower's bytes are usually in the bucket already: the S3 store skips them.)
        let verified = match writer.verified().await {
            Ok(verified) => verified,
            Err(e) => {
                tracing::error!(%upstream, repo = %target.repo, %digest, error = %e,
                    "cannot write the spool file; blob fill failed");
                return;
            }
        };
        let committed = verified
            .commit(|spool| async move {
                self.store
                    .commit_file(&keys::blob(digest), &spool)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        if let (Role::Follower(lease), Some(fleet)) = (&role, &self.blobs.fleet) {
            // When the leader finished, its own guard removes the lease; when we finished
            // without it, its lease is left over.
            if !complete {
                fleet.release_abandoned(digest, lease).await;
            }
        }
        // A leader's lease is deleted when `role` drops, after the commit.
        drop(role);
        match committed {
            Ok(()) => {
                timer.ok();
                tracing::info!(%upstream, repo = %target.repo, %digest, bytes = received, "blob cached")
            }
            // The bytes are verified: the clients reading the spool still get them.
            Err(e) => {
                timer.ok();
                self.metrics.store_errors.inc();
                tracing::error!(%upstream, repo = %target.repo, %digest, bytes = received, error = %e,
                "blob verified but could not be stored; served uncached")
            }
        }
    }
}

/// A fill's spool bytes, reported to the store while the fill runs and given back on drop.
struct SpoolAccount<'a> {
    store: &'a dyn crate::store::BlobStore,
    bytes: u64,
}

impl SpoolAccount<'_> {
    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        self.store.spooling(n as i64);
    }
}

impl Drop for SpoolAccount<'_> {
    fn drop(&mut self) {
        self.store
            .spooling(-(i64::try_from(self.bytes).unwrap_or(i64::MAX)));
    }
}

/// How following a leader replica ended without the whole blob.
enum Followed {
    /// The leader failed or stalled after announcing `total` (if it did): go on upstream.
    Leader(Option<Option<u64>>, crate::fleet::PeerError),
    /// Our own spool failed: the fill fails.
    Store(MirrorError),
}

impl Mirror {
    /// Streams a leader replica's fill into ours, hashing as it goes. `Ok(total)` once the
    /// leader's stream ended (it ends only after the leader verified the blob).
    async fn follow_leader(
        &self,
        fleet: &Fleet,
        lease: &Lease,
        digest: &Digest,
        writer: &mut FillWriter<Digest, FillError>,
        hasher: &mut HashingThread,
        spool: &mut SpoolAccount<'_>,
    ) -> Result<Option<u64>, Followed> {
        let mut peer = fleet
            .stream_from(lease, digest, 0)
            .await
            .map_err(|e| Followed::Leader(None, e))?;
        let total = peer.total();
        writer.start(total);
        loop {
            match peer.next().await {
                Ok(Some(chunk)) => {
                    spool.add(chunk.len());
                    if let Err(e) = keep(hasher, writer, chunk).await {
                        return Err(Followed::Store(MirrorError::Store(format!(
                            "cannot write the spool file: {e}"
                        ))));
                    }
                }
                Ok(None) => return Ok(total),
                Err(e) => return Err(Followed::Leader(Some(total), e)),
            }
        }
    }

    /// A peer replica reading the fill this replica leads (`GET /_berth/fills/<digest>`):
    /// the blob's size if known, and its bytes from `from` on as they arrive. `None` when the
    /// token does not open a running fill of ours.
    pub async fn peer_fill(
        &self,
        digest: &Digest,
        token: &str,
        from: u64,
    ) -> Option<(Option<u64>, ByteStream)> {
        let fleet = self.blobs.fleet.as_ref()?;
        if !fleet.admits(digest, token) {
            return None;
        }
        let fill = self.blobs.fills.running(digest)?;
        let total = fill.started().await.ok()?;
        Some((total, fill.reader(from, None).into_stream()))
    }
}

/// Hands a received chunk to the hashing thread and the spool. An error is local (a write
/// that failed, e.g. ENOSPC, or a thread that died): retrying the upstream cannot help.
async fn keep(
    hasher: &mut HashingThread,
    writer: &mut FillWriter<Digest, FillError>,
    chunk: bytes::Bytes,
) -> std::io::Result<()> {
    hasher.update(chunk.clone()).await?;
    writer.append(chunk).await
}

/// A response following `fill` (which has started; `total` if known); no reader for a HEAD.
/// The key of a blob in the mirror's short memory of blobs an upstream does not have.
fn missing_key(target: &Target, digest: &Digest) -> (String, Repository, String) {
    (
        target.upstream_name().to_string(),
        target.repo.clone(),
        digest.to_string(),
    )
}

fn fill_body(
    fill: &Fill<FillError>,
    total: Option<u64>,
    range: Option<ByteRange>,
    want_body: bool,
) -> Result<BlobBody, FillError> {
    // A range needs the size; a chunked upstream that did not send one gets the whole blob.
    let span = match (range, total) {
        (Some(r), Some(size)) => Some(
            r.resolve(size)
                .ok_or(FillError::Failed(MirrorError::RangeNotSatisfiable { size }))?,
        ),
        _ => None,
    };
    let (start, end) = match span {
        Some((s, e)) => (s, Some(e + 1)),
        None => (0, None),
    };
    Ok(BlobBody {
        total,
        range: span,
        body: want_body.then(|| fill.reader(start, end).into_stream()),
    })
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
    }
}

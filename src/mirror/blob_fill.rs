//! The leader's work for one cold blob, in named steps:
//!
//! 1. [`FillJob::start`]: a slot under the `max_fills` caps (`fill_slots.rs`), the
//!    hashing thread, the spool's account against the store's size limit;
//! 2. [`FillJob::receive`]: every byte into the spool and the hasher — on a shared bucket first
//!    what a leader replica streams ([`FillJob::follow_leader`]), then the rest from the
//!    upstream ([`FillJob::download`], which resumes broken transfers with `Range`);
//! 3. [`FillJob::check_digest`]: the bytes hash to the digest, or the fill fails;
//! 4. [`FillJob::commit`]: the verified spool goes to the store (readers already have every
//!    byte; a failed commit serves them uncached).
//!
//! Every failure fails the fill's writer: its readers wake with the error, and nothing
//! partial stays in the spool or the store.

use prometheus_client::metrics::counter::Counter;

use crate::coalesce::{FillWriter, HashingThread, Slot, VerifiedFill};
use crate::failure::ErrorClass;
use crate::fleet::{Fleet, Lease, Role};
use crate::oci::Digest;
use crate::store::keys;
use crate::trace::{self, CacheResult};
use crate::upstream::UpstreamError;

use super::blobs::{Blobs, FillError, FillKey};
use super::error::Reference as What;
use super::fill_slots::BUSY_RETRY_AFTER;
use super::spool_budget::{NoRoom, Reservation};
use super::{MirrorError, Target};

type Writer = FillWriter<FillKey, FillError>;

impl Blobs {
    /// The leader's work (in its own task). Readers follow the writer's spool as it grows.
    pub(super) async fn fill(&self, target: &Target, digest: &Digest, mut writer: Writer) {
        if let Ok(Some(_)) = self.core.store.size(&keys::blob(digest)).await {
            writer.fail(FillError::Raced);
            return;
        }
        // Noted here, in the trace the leader's request carried in: a fill that finds the
        // blob stored meanwhile sends that request to the store, a hit.
        trace::note(CacheResult::Miss);
        // Observed as `failed` unless marked ok: every early return below is a failure.
        let timer = self.core.metrics.blob_fill_timer(target.upstream.label());
        let mut job = match FillJob::start(self, target, digest).await {
            Ok(job) => job,
            Err(e) => return writer.fail(e),
        };
        // On a shared bucket: lead the fill for every replica, or stream the leader's.
        let role = match &self.fleet {
            Some(fleet) => fleet.claim(digest).await,
            None => Role::Alone,
        };
        let from_leader = match job.receive(&role, &mut writer).await {
            Ok(from_leader) => from_leader,
            Err(e) => return writer.fail(e),
        };
        if let Err(e) = job.check_digest().await {
            return writer.fail(e);
        }
        // Clients get their last byte now, not after the sync and the store commit (an fsync
        // or an S3 upload takes a while); requests arriving meanwhile join this fill.
        let received = writer.written();
        let verified = match writer.verified().await {
            Ok(verified) => verified,
            Err(e) => {
                return tracing::error!(upstream = %target.upstream_name(), repo = %target.repo,
                    %digest, error = %e, "cannot write the spool file; blob fill failed");
            }
        };
        job.commit(verified, role, from_leader, received).await;
        timer.ok();
    }
}

/// One blob fill as its leader runs it: what the steps share.
struct FillJob<'a> {
    blobs: &'a Blobs,
    target: &'a Target,
    digest: &'a Digest,
    hasher: HashingThread,
    spool: SpoolAccount,
    upstream_bytes: Counter,
    _slots: (Slot, Slot),
}

impl<'a> FillJob<'a> {
    async fn start(
        blobs: &'a Blobs,
        target: &'a Target,
        digest: &'a Digest,
    ) -> Result<FillJob<'a>, FillError> {
        let slots = blobs.slots.acquire(target).await.inspect_err(|_| {
            tracing::warn!(upstream = %target.upstream_name(), repo = %target.repo, %digest,
                "too many blob fills running and queued; the client is asked to retry");
        })?;
        let hasher = HashingThread::start(digest.algorithm())
            .map_err(|e| MirrorError::Store(format!("cannot start the hashing thread: {e}")))?;
        let upstream_bytes = blobs
            .core
            .metrics
            .upstream_blob_bytes
            .get_or_create(&crate::metrics::UpstreamLabels {
                upstream: target.upstream.label().into(),
                kind: "blob",
            })
            .clone();
        Ok(FillJob {
            blobs,
            target,
            digest,
            hasher,
            spool: SpoolAccount {
                bytes: 0,
                reservation: blobs.spool_budget.reservation(),
                announced: None,
            },
            upstream_bytes,
            _slots: slots,
        })
    }

    /// Every byte of the blob into the spool and the hasher. `Ok(true)` when a leader replica
    /// delivered all of it (its lease is its to remove).
    async fn receive(&mut self, role: &Role, writer: &mut Writer) -> Result<bool, FillError> {
        let mut announced = None;
        if let (Role::Follower(lease), Some(fleet)) = (role, &self.blobs.fleet) {
            announced = self.follow_leader(fleet, lease, writer).await?;
        }
        let complete = announced
            .flatten()
            .is_some_and(|total| writer.written() == total);
        if !complete {
            self.download(writer, announced.is_none()).await?;
        }
        Ok(complete)
    }

    /// Streams a leader replica's fill into ours, hashing as it goes. `Some(total)` once the
    /// leader announced the size (`total` if it knew it), whether or not it then finished; a
    /// leader that fails or stalls is logged and the rest comes from the upstream.
    async fn follow_leader(
        &mut self,
        fleet: &Fleet,
        lease: &Lease,
        writer: &mut Writer,
    ) -> Result<Option<Option<u64>>, FillError> {
        let mut announced = None;
        let failure = match fleet.stream_from(lease, self.digest, 0).await {
            Err(e) => e,
            Ok(mut peer) => {
                let total = peer.total();
                self.reserve(total).await?;
                announced = Some(total);
                writer.start(total);
                loop {
                    match self.next_or_flush(writer, peer.next()).await? {
                        Ok(Some(chunk)) => self.keep(writer, chunk).await?,
                        Ok(None) => return Ok(announced),
                        Err(e) => break e,
                    }
                }
            }
        };
        tracing::warn!(upstream = %self.target.upstream_name(), repo = %self.target.repo,
            digest = %self.digest, leader = %lease.leader, received = writer.written(),
            error = %failure, "leader replica failed; fetching the rest from the upstream");
        Ok(announced)
    }

    /// The blob (or what is missing of it) from the upstream, which retries and resumes.
    async fn download(&mut self, writer: &mut Writer, announce: bool) -> Result<(), FillError> {
        let (target, digest) = (self.target, self.digest);
        let failed = |e: UpstreamError| {
            tracing::warn!(upstream = %target.upstream_name(), repo = %target.repo, %digest,
                received = writer.written(), error = %e, "blob fill failed");
            FillError::Failed(MirrorError::from_upstream(
                target.upstream_name(),
                &target.repo,
                What::Blob(digest.as_str()),
                e,
            ))
        };
        let max_size = target.upstream.config().max_blob_size;
        let fetched = target
            .upstream
            .fetch_blob(&target.repo, digest, max_size, writer.written())
            .await;
        // An upstream without the blob is remembered briefly: a loop of requests for it
        // costs one upstream request.
        let what = What::Blob(digest.as_str());
        let mut stream = self
            .blobs
            .core
            .missing
            .note(target, what, fetched)
            .map_err(failed)?;
        // No announced size: never more than the whole cache may hold.
        if let Some(cap) = self.blobs.core.config.store.max_size {
            stream.cap_unannounced(cap);
        }
        self.reserve(stream.total()).await?;
        if announce {
            writer.start(stream.total());
        }
        loop {
            match self.next_or_flush(writer, stream.next()).await? {
                Ok(Some(chunk)) => {
                    self.upstream_bytes.inc_by(chunk.len() as u64);
                    self.keep(writer, chunk).await?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(upstream = %target.upstream_name(), repo = %target.repo,
                        %digest, received = writer.written(), error = %e, "blob fill failed");
                    return Err(FillError::Failed(MirrorError::from_upstream(
                        target.upstream_name(),
                        &target.repo,
                        What::Blob(digest.as_str()),
                        e,
                    )));
                }
            }
        }
    }

    /// Room in the spool budget for a source that announced `total` (or did not).
    async fn reserve(&mut self, total: Option<u64>) -> Result<(), FillError> {
        let reserved = self.spool.expect(total).await;
        reserved.map_err(|e| self.no_room(e))
    }

    fn no_room(&self, e: NoRoom) -> FillError {
        let upstream = self.target.upstream_name();
        tracing::warn!(%upstream, repo = %self.target.repo, digest = %self.digest, ?e,
            "no room in the spool budget (three quarters of the disk limit) for this blob");
        FillError::Failed(match e {
            NoRoom::Busy => MirrorError::Busy {
                upstream: upstream.into(),
                retry_after: BUSY_RETRY_AFTER,
            },
            NoRoom::TooLarge { share } => MirrorError::TooLarge {
                upstream: upstream.into(),
                cause: format!(
                    "the blob needs more than the {share} bytes fills may spool at once \
                     (three quarters of the disk limit); raise [store] max_size"
                ),
            },
        })
    }

    /// Hands a received chunk to the hashing thread and the spool. An error is local (a
    /// write that failed, e.g. ENOSPC, or a thread that died): retrying the upstream cannot
    /// help, and the failed writer deletes the spool file.
    async fn keep(&mut self, writer: &mut Writer, chunk: bytes::Bytes) -> Result<(), FillError> {
        if let Err(e) = self.spool.add(chunk.len()).await {
            return Err(self.no_room(e));
        }
        let kept = match self.hasher.update(chunk.clone()).await {
            Ok(()) => writer.append_batched(chunk).await,
            Err(e) => Err(e),
        };
        kept.map_err(|e| self.spool_failed(writer, e))
    }

    fn spool_failed(&self, writer: &Writer, e: std::io::Error) -> FillError {
        tracing::error!(upstream = %self.target.upstream_name(), repo = %self.target.repo,
            digest = %self.digest, received = writer.written(), error = %e,
            "cannot write the spool file; blob fill failed");
        FillError::Failed(MirrorError::Store(format!(
            "cannot write the spool file: {e}"
        )))
    }

    /// What `next` gives (a source's next chunk). When it has nothing yet, the chunks batched
    /// for the hasher and the spool go to them first: readers of a slow upstream get every
    /// byte as it comes, a fast one's chunks travel in batches.
    async fn next_or_flush<F: std::future::Future>(
        &mut self,
        writer: &mut Writer,
        next: F,
    ) -> Result<F::Output, FillError> {
        let mut next = std::pin::pin!(next);
        if let std::task::Poll::Ready(item) = futures::poll!(next.as_mut()) {
            return Ok(item);
        }
        let flushed = match self.hasher.flush().await {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        flushed.map_err(|e| self.spool_failed(writer, e))?;
        Ok(next.await)
    }

    /// The received bytes hash to the digest.
    async fn check_digest(&mut self) -> Result<(), FillError> {
        let (upstream, digest) = (self.target.upstream_name(), self.digest);
        let actual = self.hasher.finish().await.map_err(|e| {
            tracing::error!(%upstream, repo = %self.target.repo, %digest, error = %e,
                "hashing the blob failed");
            MirrorError::Store(format!("hashing failed: {e}"))
        })?;
        if &actual == digest {
            return Ok(());
        }
        let metrics = &self.blobs.core.metrics;
        metrics.verify_failures.inc();
        metrics.upstream_error(self.target.upstream.label(), ErrorClass::Verify);
        let cause = format!("blob hashes to {actual}, expected {digest}");
        tracing::error!(%upstream, repo = %self.target.repo, %digest, %cause,
            "blob failed verification; discarded");
        Err(FillError::Failed(MirrorError::Verification {
            upstream: upstream.into(),
            cause,
        }))
    }

    /// Hands the verified spool to the store (a follower's bytes are usually in the bucket
    /// already: the S3 store skips them), then lets go of the fleet lease.
    async fn commit(
        self,
        verified: VerifiedFill<FillKey, FillError>,
        role: Role,
        from_leader: bool,
        received: u64,
    ) {
        let (store, digest) = (&self.blobs.core.store, self.digest);
        let committed = verified
            .commit(|spool| async move {
                store
                    .commit_file(&keys::blob(digest), &spool)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        if let (Role::Follower(lease), Some(fleet)) = (&role, &self.blobs.fleet) {
            // When the leader finished, its own guard removes the lease; when we finished
            // without it, its lease is left over.
            if !from_leader {
                fleet.release_abandoned(digest, lease).await;
            }
        }
        // A leader's lease is deleted when `role` drops, after the commit.
        drop(role);
        let (upstream, repo) = (self.target.upstream_name(), &self.target.repo);
        match committed {
            Ok(()) => tracing::info!(%upstream, %repo, %digest, bytes = received, "blob cached"),
            // The bytes are verified: the clients reading the spool still get them.
            Err(e) => {
                self.blobs.core.metrics.store_errors.inc();
                tracing::error!(%upstream, %repo, %digest, bytes = received, error = %e,
                    "blob verified but could not be stored; served uncached")
            }
        }
    }
}

/// A fill's spool bytes, reserved in the spool budget before they are written (the store
/// counts the reservation; it is given back when the fill ends).
struct SpoolAccount {
    bytes: u64,
    reservation: Reservation,
    /// The blob's size, once a source announced it.
    announced: Option<u64>,
}

impl SpoolAccount {
    /// A source starts sending: reserve the size it announced, or a first step of an
    /// unknown one.
    async fn expect(&mut self, total: Option<u64>) -> Result<(), NoRoom> {
        self.announced = total.or(self.announced);
        match self.announced {
            Some(total) => self.reservation.cover(total).await,
            None => self.reservation.cover_growing(self.bytes.max(1)).await,
        }
    }

    async fn add(&mut self, n: usize) -> Result<(), NoRoom> {
        self.bytes += n as u64;
        if self.announced.is_none_or(|total| self.bytes > total) {
            self.reservation.cover_growing(self.bytes).await?;
        }
        Ok(())
    }
}

//! Blobs, in the order a request meets them: a fill that has verified the blob (as good as
//! stored), the store, a fill running now, and else a new fill this request leads
//! (`blob_fill.rs`: the leader's steps). A HEAD asks the upstream with a HEAD and starts no
//! download; `only-if-cached` never asks the upstream.

use std::sync::Arc;

use crate::coalesce::{Fill, FillFailure, Fills, Joined};
use crate::failure::ErrorClass;
use crate::fleet::Fleet;
use crate::oci::{ByteRange, Digest, Want};
use crate::store::{ByteStream, Content, SpanStream, keys};
use crate::trace::{self, CacheResult};

use super::core::Core;
use super::error::Reference as What;
use super::fill_slots::FillSlots;
use super::spool_budget::SpoolBudget;
use super::{Lookup, MirrorError, Target};

/// What a client asked of a blob.
#[derive(Debug, Clone, Copy)]
pub struct BlobQuery {
    pub want: Want,
    pub range: Option<ByteRange>,
    pub lookup: Lookup,
}

/// What a blob response carries.
pub struct BlobBody {
    /// Size of the whole blob, when known (a chunked upstream may not say).
    pub total: Option<u64>,
    /// The inclusive span served, for a 206.
    pub range: Option<(u64, u64)>,
    /// `None` when the caller asked for headers only (HEAD).
    pub body: Option<BlobStream>,
}

/// A blob's bytes: spans of a local file (a stored blob, a fill's spool) that the server can
/// send without copying them, or bytes (from S3).
pub enum BlobStream {
    /// `read_chunk`: how much to read at a time for a client that takes bytes, not spans.
    Spans {
        spans: SpanStream,
        read_chunk: u64,
    },
    Bytes(ByteStream),
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

impl From<MirrorError> for FillError {
    fn from(e: MirrorError) -> FillError {
        FillError::Failed(e)
    }
}

/// The class of a blob body that broke: the fill's error, carried inside the reader's error.
pub fn fill_failure_class(e: &crate::coalesce::ReaderError) -> Option<ErrorClass> {
    match e.cause::<FillError>()? {
        FillError::Failed(e) => Some(e.class()),
        FillError::Raced => None,
    }
}

/// A blob fill is one upstream's: a client of one registry never waits on another registry's
/// transfer of the same digest (which may trickle).
pub(super) type FillKey = (String, Digest);

fn fill_key(target: &Target, digest: &Digest) -> FillKey {
    (target.upstream_name().to_string(), digest.clone())
}

/// The blob flow's state: fills in flight, the `max_fills` caps, the fleet on a shared bucket.
pub(super) struct Blobs {
    pub(super) core: Arc<Core>,
    pub(super) fills: Fills<FillKey, FillError>,
    pub(super) slots: FillSlots,
    /// Room on local disk for the spools of fills in progress.
    pub(super) spool_budget: SpoolBudget,
    /// Cross-replica fills on a shared bucket (`advertise_url` with an S3 store).
    pub(super) fleet: Option<Fleet>,
}

impl Blobs {
    pub(super) async fn get(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        query: BlobQuery,
    ) -> Result<BlobBody, MirrorError> {
        if query.lookup == Lookup::CacheOnly {
            return self.cached(target, digest, query).await;
        }
        // Two rounds at most: a fill that finds the blob committed meanwhile sends us to the store.
        for round in 0..2 {
            // A running fill is joined without a store request: the blob is not stored yet,
            // and a store that stopped answering (a frozen bucket) must not hold up followers.
            let filling = round == 0
                && query.want == Want::Body
                && self.fills.running(&fill_key(target, digest)).is_some();
            let stored = if filling {
                Ok(None)
            } else {
                self.core.store.size(&keys::blob(digest)).await
            };
            match stored {
                Ok(Some(size)) => match self.read_store(digest, size, query).await {
                    Err(FillError::Raced) => continue,
                    Err(FillError::Failed(e)) => return Err(e),
                    Ok(body) => {
                        self.core.metrics.cache_lookup("blob", true);
                        trace::note(CacheResult::Hit);
                        return Ok(body);
                    }
                },
                Ok(None) => {}
                // The store is unreachable (S3 down): the upstream can still serve the blob.
                Err(e) => tracing::warn!(%digest, error = %e,
                    "cannot ask the store for the blob; filling from the upstream"),
            }
            self.core.metrics.cache_lookup("blob", false);
            let what = What::Blob(digest.as_str());
            self.core.missing.check(target, what)?;
            if query.want == Want::Headers {
                trace::note(CacheResult::Miss);
                return self.head_upstream(target, digest, query.range).await;
            }
            match self.follow_fill(target, digest, query.range).await {
                Err(FillError::Raced) => continue,
                Err(FillError::Failed(e)) => return Err(e),
                Ok(body) => return Ok(body),
            }
        }
        Err(MirrorError::Store(
            "blob vanished from the store right after it was committed".into(),
        ))
    }

    /// `only-if-cached`: a fill that has verified the blob, else the store, else `NotCached`.
    async fn cached(
        &self,
        target: &Target,
        digest: &Digest,
        query: BlobQuery,
    ) -> Result<BlobBody, MirrorError> {
        // A fill still committing needs no store request (which could hang on an S3 bucket
        // that stopped answering); right after a prewarm its check must not call it missing.
        if let Some(body) = self.verified_fill(target, digest, query)? {
            return Ok(body);
        }
        let size = self.core.store.size(&keys::blob(digest)).await?;
        self.core.metrics.cache_lookup("blob", size.is_some());
        trace::note(if size.is_some() {
            CacheResult::Hit
        } else {
            CacheResult::Miss
        });
        let not_cached =
            |why: &str| MirrorError::NotCached(format!("blob {}@{digest}{why}", target.repo));
        let size = size.ok_or_else(|| not_cached(""))?;
        match self.read_store(digest, size, query).await {
            Err(FillError::Raced) => Err(not_cached(" (evicted just now)")),
            Err(FillError::Failed(e)) => Err(e),
            Ok(body) => Ok(body),
        }
    }

    /// A fill whose content matched its digest and is still syncing or uploading it.
    fn verified_fill(
        &self,
        target: &Target,
        digest: &Digest,
        query: BlobQuery,
    ) -> Result<Option<BlobBody>, MirrorError> {
        let Some(fill) = self.fills.running(&fill_key(target, digest)) else {
            return Ok(None);
        };
        let Some(size) = fill.verified_size() else {
            return Ok(None);
        };
        self.core.metrics.cache_lookup("blob", true);
        trace::note(CacheResult::Hit);
        let body = fill_body(&fill, Some(size), query.range, query.want).map_err(|e| match e {
            FillError::Failed(e) => e,
            FillError::Raced => MirrorError::Store(e.to_string()),
        })?;
        Ok(Some(body))
    }

    async fn read_store(
        &self,
        digest: &Digest,
        size: u64,
        query: BlobQuery,
    ) -> Result<BlobBody, FillError> {
        let span = match query.range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(MirrorError::RangeNotSatisfiable { size })?,
            ),
            None => None,
        };
        let body = match query.want {
            Want::Headers => None,
            Want::Body => {
                let (start, end) = span.unwrap_or((0, size.saturating_sub(1)));
                let end_exclusive = if size == 0 { 0 } else { end + 1 };
                let read = self
                    .core
                    .store
                    .read_content(&keys::blob(digest), start..end_exclusive)
                    .await;
                match read {
                    Ok(Content::Spans(spans)) => Some(BlobStream::Spans {
                        spans,
                        read_chunk: crate::store::disk::READ_CHUNK,
                    }),
                    Ok(Content::Bytes(bytes)) => Some(BlobStream::Bytes(bytes)),
                    // Evicted between the size check and the open: fill it again.
                    Err(e) if e.is_not_found() => return Err(FillError::Raced),
                    Err(e) => return Err(FillError::Failed(e.into())),
                }
            }
        };
        Ok(BlobBody {
            total: Some(size),
            range: span,
            body,
        })
    }

    /// A HEAD of a blob berth does not have: the upstream's HEAD, no download.
    async fn head_upstream(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, MirrorError> {
        let what = What::Blob(digest.as_str());
        let headed = target.upstream.head_blob(&target.repo, digest).await;
        let total = self.core.missing.note(target, what, headed).map_err(|e| {
            MirrorError::from_upstream(target.upstream_name(), &target.repo, what, e)
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

    /// Joins the running fill, or leads a new one in its own task (a fill outlives any one
    /// client; its upstream attempts are this request's).
    async fn follow_fill(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody, FillError> {
        let joined = self.fills.join(fill_key(target, digest)).map_err(|e| {
            FillError::Failed(MirrorError::Store(format!("cannot create spool file: {e}")))
        })?;
        let fill = match joined {
            Joined::Follower(fill) => {
                trace::note(CacheResult::Joined);
                fill
            }
            Joined::Leader(fill, writer) => {
                let (this, target, digest) = (self.clone(), target.clone(), digest.clone());
                self.core.tasks.spawn(trace::carry(async move {
                    this.fill(&target, &digest, writer).await
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
        fill_body(&fill, total, range, Want::Body)
    }

    /// A peer replica reading the fill this replica leads (`GET /_berth/fills/<digest>`):
    /// the blob's size if known, and its bytes from `from` on as they arrive. `None` when the
    /// token does not open a running fill of ours.
    pub(super) async fn peer_fill(
        &self,
        digest: &Digest,
        token: &str,
        from: u64,
    ) -> Option<(Option<u64>, ByteStream)> {
        let fleet = self.fleet.as_ref()?;
        if !fleet.admits(digest, token) {
            return None;
        }
        // Leases are by digest across replicas: whichever upstream this replica fills it from.
        let fill = self.fills.find(|(_, running)| running == digest)?;
        let total = fill.started().await.ok()?;
        Some((total, fill.reader(from, None).into_stream()))
    }
}

/// A response following `fill` (which has started; `total` if known); no reader for a HEAD.
fn fill_body(
    fill: &Fill<FillError>,
    total: Option<u64>,
    range: Option<ByteRange>,
    want: Want,
) -> Result<BlobBody, FillError> {
    // A range needs the size; a chunked upstream that did not send one gets the whole blob.
    let span = match (range, total) {
        (Some(r), Some(size)) => Some(
            r.resolve(size)
                .ok_or(MirrorError::RangeNotSatisfiable { size })?,
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
        body: (want == Want::Body).then(|| BlobStream::Spans {
            spans: fill.reader(start, end).into_spans(),
            read_chunk: crate::coalesce::FOLLOW_CHUNK,
        }),
    })
}

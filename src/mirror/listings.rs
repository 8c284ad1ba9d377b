//! Tag lists and referrers: asked of the upstream each time (they change), never cached,
//! streamed through (never held whole), one upstream request for identical concurrent ones,
//! and cut off past [`MAX_LISTING`] bytes.

use std::sync::Arc;

use crate::coalesce::{FillFailure, FillWriter, Fills, Joined};
use crate::store::ByteStream;
use crate::trace::{self, CacheResult};
use crate::upstream::{ListingKind, UpstreamError};

use super::core::Core;
use super::error::Reference as What;
use super::{MirrorError, Target};

/// Larger listings are cut off with a broken response rather than passed on whole.
const MAX_LISTING: u64 = 8 * 1024 * 1024;

/// A listing on its way to the client.
pub struct ListingBody {
    pub content_type: Option<String>,
    pub body: ByteStream,
}

/// (upstream, repository, endpoint, query): what makes two listing requests the same.
type ListingKey = (String, String, String, Option<String>);

/// The listing flow's state: listings in flight, and each one's upstream content type.
pub(super) struct Listings {
    core: Arc<Core>,
    fills: Fills<ListingKey, MirrorError>,
    content_types: moka::sync::Cache<ListingKey, Option<String>>,
}

impl Listings {
    pub(super) fn new(core: Arc<Core>) -> std::io::Result<Listings> {
        Ok(Listings {
            fills: Fills::new(&core.config.data_dir.join("spool"))?,
            content_types: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            core,
        })
    }

    /// Identical concurrent listings share one upstream request: the first request leads a
    /// fill (spooled like a blob, never held whole) that every other one reads as it grows.
    pub(super) async fn get(
        self: &Arc<Self>,
        target: &Target,
        kind: ListingKind,
        query: Option<&str>,
    ) -> Result<ListingBody, MirrorError> {
        let what = match &kind {
            ListingKind::Tags => "tags/list".to_string(),
            ListingKind::Referrers(d) => format!("referrers/{d}"),
        };
        let key = (
            target.upstream_name().to_string(),
            target.repo.to_string(),
            what,
            query.map(str::to_string),
        );
        let joined = self
            .fills
            .join(key.clone())
            .map_err(|e| MirrorError::Store(format!("cannot create spool file: {e}")))?;
        let fill = match joined {
            Joined::Follower(fill) => {
                trace::note(CacheResult::Joined);
                fill
            }
            Joined::Leader(fill, writer) => {
                trace::note(CacheResult::Bypass);
                let (this, target, query) =
                    (self.clone(), target.clone(), query.map(str::to_string));
                let key = key.clone();
                // Its own task: the listing finishes for the others if this client leaves.
                self.core.tasks.spawn(trace::carry(async move {
                    this.fill_listing(&target, kind, query, key, writer).await
                }));
                fill
            }
        };
        fill.started().await.map_err(|e| match e {
            FillFailure::Failed(e) => e,
            FillFailure::Abandoned => MirrorError::Store("the listing was abandoned".into()),
        })?;
        let content_type = self.content_types.get(&key).flatten();
        Ok(ListingBody {
            content_type,
            body: fill.reader(0, None).into_stream(),
        })
    }

    async fn fill_listing(
        &self,
        target: &Target,
        kind: ListingKind,
        query: Option<String>,
        key: ListingKey,
        mut writer: FillWriter<ListingKey, MirrorError>,
    ) {
        let what = What::Listing(match kind {
            ListingKind::Tags => "tag list",
            ListingKind::Referrers(_) => "referrers",
        });
        let mut listing = match target
            .upstream
            .fetch_listing(&target.repo, kind, query)
            .await
        {
            Ok(listing) => listing,
            Err(e) => {
                writer.fail(MirrorError::from_upstream(
                    target.upstream_name(),
                    &target.repo,
                    what,
                    e,
                ));
                return;
            }
        };
        self.content_types.insert(key, listing.content_type.clone());
        writer.start(None);
        loop {
            let failure = match listing.body.next().await {
                Ok(Some(chunk)) if writer.written() + chunk.len() as u64 > MAX_LISTING => {
                    UpstreamError::TooLarge { limit: MAX_LISTING }
                }
                Ok(Some(chunk)) => match writer.append(chunk).await {
                    Ok(()) => continue,
                    Err(e) => {
                        writer.fail(MirrorError::Store(format!(
                            "cannot write the spool file: {e}"
                        )));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => e,
            };
            // The readers' responses break rather than end short.
            writer.fail(MirrorError::from_upstream(
                target.upstream_name(),
                &target.repo,
                what,
                failure,
            ));
            return;
        }
        // The upstream's answer is complete: a request from now on asks the upstream itself.
        writer.close_to_joiners();
        // Nothing to verify or keep: the readers got every byte; the spool goes.
        if let Ok(verified) = writer.verified().await {
            let _ = verified
                .commit(|spool| async move {
                    let _ = tokio::fs::remove_file(&spool).await;
                    Ok(())
                })
                .await;
        }
    }
}

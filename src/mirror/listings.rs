//! Tag lists and referrers: asked of the upstream each time (they change), streamed through
//! (never held whole), one upstream request for identical concurrent ones, and cut off past
//! [`MAX_LISTING`] bytes. The last complete tag list of a repository is kept: when the upstream
//! cannot be reached it is served, marked stale, a page at a time as `n` and `last` ask (Flux
//! resolves semver ranges from tag lists; every byte it needs may be cached).

use std::sync::Arc;

use crate::coalesce::{FillFailure, FillWriter, Fills, Joined};
use futures::StreamExt as _;

use crate::store::{ByteStream, keys};
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

/// The stored form of a tag list.
#[derive(serde::Serialize, serde::Deserialize)]
struct TagList {
    name: String,
    tags: Vec<String>,
}

/// A failure of the upstream (down, unreachable, failing, rate limiting), not an answer about
/// the repository (404, denied).
fn upstream_failed(e: &MirrorError) -> bool {
    matches!(
        e,
        MirrorError::Unreachable { .. }
            | MirrorError::BadUpstream { .. }
            | MirrorError::RateLimited { .. }
    )
}

/// `n` and `last` of a tag list query (the one the API built: `n` is a number).
fn page(query: Option<&str>) -> (Option<usize>, Option<String>) {
    let (mut n, mut last) = (None, None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "n" => n = value.parse().ok(),
            "last" => last = Some(value.into_owned()),
            _ => {}
        }
    }
    (n, last)
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
                let (key, kind) = (key.clone(), kind.clone());
                // Its own task: the listing finishes for the others if this client leaves.
                self.core.tasks.spawn(trace::carry(async move {
                    this.fill_listing(&target, kind, query, key, writer).await
                }));
                fill
            }
        };
        let started = fill.started().await.map_err(|e| match e {
            FillFailure::Failed(e) => e,
            FillFailure::Abandoned => MirrorError::Store("the listing was abandoned".into()),
        });
        if let Err(e) = started {
            return match (&kind, upstream_failed(&e)) {
                (ListingKind::Tags, true) => self.stale_tags(target, query, e).await,
                _ => Err(e),
            };
        }
        let content_type = self.content_types.get(&key).flatten();
        Ok(ListingBody {
            content_type,
            body: fill.reader(0, None).into_stream(),
        })
    }

    /// Stores `bytes` (what the upstream just sent) if they are a tag list.
    async fn keep_tags(&self, target: &Target, bytes: &[u8]) {
        let Ok(list) = serde_json::from_slice::<TagList>(bytes) else {
            return;
        };
        let key = keys::tag_list(target.upstream_name(), &target.repo);
        let json = serde_json::to_vec(&list).unwrap_or_default();
        if let Err(e) = self.core.store.put(&key, bytes::Bytes::from(json)).await {
            tracing::warn!(%key, error = %e, "cannot keep the tag list");
        }
    }

    /// The upstream could not answer: the kept tag list, paged as the client asked, or `e`.
    async fn stale_tags(
        &self,
        target: &Target,
        query: Option<&str>,
        e: MirrorError,
    ) -> Result<ListingBody, MirrorError> {
        let key = keys::tag_list(target.upstream_name(), &target.repo);
        let Ok(Some(stored)) = self.core.store.get(&key).await else {
            return Err(e);
        };
        let Ok(mut list) = serde_json::from_slice::<TagList>(&stored) else {
            return Err(e);
        };
        let (n, last) = page(query);
        list.tags.sort();
        list.tags
            .retain(|t| last.as_deref().is_none_or(|last| t.as_str() > last));
        if let Some(n) = n {
            list.tags.truncate(n);
        }
        tracing::warn!(upstream = %target.upstream_name(), repo = %target.repo, error = %e,
            "upstream failed; serving the last known tag list");
        self.core
            .metrics
            .tag_lookup(target.upstream.label(), "stale");
        trace::note(CacheResult::Stale);
        let body = bytes::Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
        Ok(ListingBody {
            content_type: Some("application/json".into()),
            body: futures::stream::once(async move { Ok(body) }).boxed(),
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
        // A first page of tags is kept for when the upstream is down (bounded by MAX_LISTING).
        let mut kept = (matches!(kind, ListingKind::Tags)
            && !query.as_deref().is_some_and(|q| q.contains("last=")))
        .then(bytes::BytesMut::new);
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
                Ok(Some(chunk)) => {
                    if let Some(kept) = &mut kept {
                        kept.extend_from_slice(&chunk);
                    }
                    match writer.append(chunk).await {
                        Ok(()) => continue,
                        Err(e) => {
                            writer.fail(MirrorError::Store(format!(
                                "cannot write the spool file: {e}"
                            )));
                            return;
                        }
                    }
                }
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
        // Kept before the readers get their last byte: a client that saw the list whole can
        // count on it being there when the upstream goes away next.
        if let Some(kept) = kept {
            self.keep_tags(target, &kept).await;
        }
        // Nothing to verify or keep of the spool: the readers got every byte; it goes.
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

//! Tag lists and referrers: asked of the upstream each time (they change), never cached,
//! streamed through (never held whole), and cut off past [`MAX_LISTING`] bytes.

use std::sync::Arc;

use futures::StreamExt;

use crate::oci::Digest;
use crate::store::ByteStream;
use crate::upstream::{ListingKind, UpstreamError};

use super::error::Reference as What;
use super::{Mirror, MirrorError, Target};

/// Larger listings are cut off with a broken response rather than passed on whole.
const MAX_LISTING: u64 = 8 * 1024 * 1024;

/// A listing on its way to the client.
pub struct ListingBody {
    pub content_type: Option<String>,
    pub body: ByteStream,
}

impl Mirror {
    pub async fn tag_list(
        self: &Arc<Self>,
        target: &Target,
        query: Option<&str>,
    ) -> Result<ListingBody, MirrorError> {
        self.passthrough(target, ListingKind::Tags, query).await
    }

    pub async fn referrers(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<ListingBody, MirrorError> {
        self.passthrough(target, ListingKind::Referrers(digest.clone()), query)
            .await
    }

    async fn passthrough(
        &self,
        target: &Target,
        kind: ListingKind,
        query: Option<&str>,
    ) -> Result<ListingBody, MirrorError> {
        let listing = target
            .upstream
            .fetch_listing(&target.repo, kind, query.map(str::to_string))
            .await
            .map_err(|e| {
                MirrorError::from_upstream(target.upstream_name(), &target.repo, What::Other, e)
            })?;
        let body = futures::stream::unfold((listing.body, 0u64), |(mut reader, sent)| async move {
            match reader.next().await {
                Ok(Some(chunk)) => {
                    let sent = sent.saturating_add(chunk.len() as u64);
                    if sent > MAX_LISTING {
                        let e = UpstreamError::TooLarge { limit: MAX_LISTING };
                        return Some((Err(std::io::Error::other(e)), (reader, u64::MAX)));
                    }
                    Some((Ok(chunk), (reader, sent)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), (reader, u64::MAX))),
            }
        })
        // After an error the stream ends (the client sees a broken response, not a short one).
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        })
        .boxed();
        Ok(ListingBody {
            content_type: listing.content_type,
            body,
        })
    }
}

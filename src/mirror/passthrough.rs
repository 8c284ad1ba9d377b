//! Tag lists and referrers: asked of the upstream each time (they change), never cached.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http::header::CONTENT_TYPE;

use crate::oci::Digest;
use crate::upstream::{Kind, Request};

use super::error::Reference as What;
use super::{Mirror, MirrorError, Target};

const MAX_LISTING: u64 = 8 * 1024 * 1024;

impl Mirror {
    pub async fn tag_list(
        self: &Arc<Self>,
        target: &Target,
        query: Option<&str>,
    ) -> Result<(Bytes, Option<String>), MirrorError> {
        self.passthrough(target, Kind::Tags, "tags/list".into(), query)
            .await
    }

    pub async fn referrers(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<(Bytes, Option<String>), MirrorError> {
        self.passthrough(
            target,
            Kind::Referrers,
            format!("referrers/{digest}"),
            query,
        )
        .await
    }

    async fn passthrough(
        &self,
        target: &Target,
        kind: Kind,
        endpoint: String,
        query: Option<&str>,
    ) -> Result<(Bytes, Option<String>), MirrorError> {
        let request = Request {
            kind,
            method: Method::GET,
            repo: target.repo.clone(),
            endpoint,
            query: query.map(str::to_string),
            accept: None,
            range_from: None,
        };
        let failed =
            |e| MirrorError::from_upstream(target.upstream_name(), &target.repo, What::Other, e);
        let response = target.upstream.send(&request).await.map_err(failed)?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = target
            .upstream
            .read_to_bytes(response.into_body(), MAX_LISTING)
            .await
            .map_err(failed)?;
        Ok((body, content_type))
    }
}

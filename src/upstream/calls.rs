//! The typed calls `mirror` makes: what it asks of an upstream, in OCI terms. Each goes through
//! [`UpstreamClient::send`] (retries, breaker); `fetch_blob` lives in `blob.rs`.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use super::{
    BodyReader, Request, UpstreamClient, UpstreamError, accept_header, content_length,
    content_type, header_digest,
};
use crate::oci::{Digest, Endpoint, MAX_MANIFEST_SIZE, Reference, Repository};

/// A manifest as the upstream sent it; verification is the caller's business.
pub struct FetchedManifest {
    pub bytes: Bytes,
    /// `Content-Type` without parameters, when the upstream sent one.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest`, when the upstream sent one.
    pub digest: Option<Digest>,
    /// The `fallback_urls` endpoint that served it (`None`: the upstream itself).
    pub fallback: Option<String>,
}

/// A tag list or referrers index, streamed through.
pub struct Listing {
    pub content_type: Option<String>,
    pub body: BodyReader,
}

/// Which listing to fetch.
#[derive(Debug, Clone)]
pub enum ListingKind {
    Tags,
    Referrers(Digest),
}

impl UpstreamClient {
    /// GETs a manifest (at most [`MAX_MANIFEST_SIZE`] bytes).
    pub async fn fetch_manifest(
        self: &Arc<Self>,
        repo: &Repository,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<FetchedManifest, UpstreamError> {
        let mut req = Request::new(Method::GET, repo, Endpoint::Manifest(reference.clone()));
        req.accept = Some(accept_header(accept));
        let response = self.send_or_fall_back(&req).await?;
        if content_length(&response).is_some_and(|len| len > MAX_MANIFEST_SIZE) {
            return Err(UpstreamError::TooLarge {
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let digest = header_digest(&response);
        let media_type = content_type(&response);
        let fallback = response
            .extensions()
            .get::<super::ServedBy>()
            .map(|s| s.0.clone());
        let bytes = self
            .body(response.into_body())
            .read_to_end(MAX_MANIFEST_SIZE, self.config.transport.header_timeout)
            .await?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
            fallback,
        })
    }

    /// HEADs a manifest: the digest the upstream names for it, if it says.
    pub async fn head_manifest(
        self: &Arc<Self>,
        repo: &Repository,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Option<Digest>, UpstreamError> {
        let mut req = Request::new(Method::HEAD, repo, Endpoint::Manifest(reference.clone()));
        req.accept = Some(accept_header(accept));
        let response = self.send_or_fall_back(&req).await?;
        Ok(header_digest(&response))
    }

    /// HEADs a blob: its size, if the upstream says. Nothing is downloaded.
    pub async fn head_blob(
        self: &Arc<Self>,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let req = Request::new(Method::HEAD, repo, Endpoint::Blob(digest.clone()));
        let response = self.send_or_fall_back(&req).await?;
        Ok(content_length(&response))
    }

    /// A tag list or referrers index, streamed; `query` is passed through as it is.
    pub async fn fetch_listing(
        self: &Arc<Self>,
        repo: &Repository,
        kind: ListingKind,
        query: Option<String>,
    ) -> Result<Listing, UpstreamError> {
        let endpoint = match kind {
            ListingKind::Tags => Endpoint::Tags,
            ListingKind::Referrers(d) => Endpoint::Referrers(d),
        };
        let mut req = Request::new(Method::GET, repo, endpoint);
        req.query = query;
        let response = self.send_or_fall_back(&req).await?;
        Ok(Listing {
            content_type: content_type(&response),
            body: self.body(response.into_body()),
        })
    }
}

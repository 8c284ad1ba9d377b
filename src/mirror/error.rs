//! What can go wrong serving a pull, shaped for the API to pick status and OCI code.

use std::time::Duration;

use crate::failure::ErrorClass;
use crate::oci::{NameError, Repository};
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    #[error(
        "registry `{0}` is not configured on this mirror; add it under [upstreams] in berth.toml, or match it with upstream_patterns"
    )]
    UnknownRegistry(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("manifest unknown to {upstream}: {repo}:{reference}")]
    ManifestUnknown {
        upstream: String,
        repo: Repository,
        reference: String,
    },
    #[error("blob unknown to {upstream}: {repo}@{digest}")]
    BlobUnknown {
        upstream: String,
        repo: Repository,
        digest: String,
    },
    /// The upstream has no tag list (or referrers) for the repository.
    #[error("{upstream} has no {what} for {repo}")]
    ListingUnknown {
        upstream: String,
        repo: Repository,
        what: &'static str,
    },
    #[error(
        "{upstream} refused access to {repo} (it does not exist there, or berth needs credentials for it)"
    )]
    Denied { upstream: String, repo: Repository },
    #[error("{upstream} is rate limiting berth")]
    RateLimited {
        upstream: String,
        retry_after: Option<Duration>,
    },
    #[error("{upstream} is unreachable and the content is not cached: {cause}")]
    Unreachable {
        upstream: String,
        cause: String,
        retry_after: Option<Duration>,
        class: ErrorClass,
    },
    #[error("{upstream} failed: {cause}")]
    BadUpstream {
        upstream: String,
        cause: String,
        class: ErrorClass,
    },
    #[error("content from {upstream} failed verification: {cause}")]
    Verification { upstream: String, cause: String },
    #[error("requested range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("the manifest is larger than the 4 MiB limit")]
    ManifestTooLarge,
    /// `Cache-Control: only-if-cached` asked for something the cache does not hold.
    #[error("not cached: {0}")]
    NotCached(String),
    #[error("local storage failed: {0}")]
    Store(String),
    /// Too many blob fills are running and queued; the client should come back.
    #[error("{upstream}: too many blob downloads in progress; try again shortly")]
    Busy {
        upstream: String,
        retry_after: Duration,
    },
    #[error("{upstream} serves something larger than berth's limit ({cause})")]
    TooLarge { upstream: String, cause: String },
    /// berth's upstream rules refused to go where the upstream pointed.
    #[error("{upstream}: {cause}")]
    Refused { upstream: String, cause: String },
    /// `allow_repositories` / `deny_repositories` of the upstream refuse the repository.
    #[error(
        "{repo} may not be pulled through this mirror from {upstream}: upstreams.{upstream}.{rule}"
    )]
    RepositoryRefused {
        upstream: String,
        repo: Repository,
        rule: String,
    },
    /// A cached manifest berth cannot read as a manifest (asked to pin it, say).
    #[error("manifest {digest} cannot be walked: {cause}")]
    Unwalkable { digest: String, cause: String },
    /// A bug contained (a panic in shared work); the request fails, nothing stays poisoned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl MirrorError {
    /// Converts an upstream failure for content that is not cached.
    pub(crate) fn from_upstream(
        upstream: &str,
        repo: &Repository,
        reference: Reference<'_>,
        e: UpstreamError,
    ) -> MirrorError {
        let upstream = upstream.to_string();
        let class = e.class();
        match e {
            UpstreamError::NotFound => match reference {
                Reference::Manifest(r) => MirrorError::ManifestUnknown {
                    upstream,
                    repo: repo.clone(),
                    reference: r.into(),
                },
                Reference::Blob(d) => MirrorError::BlobUnknown {
                    upstream,
                    repo: repo.clone(),
                    digest: d.into(),
                },
                Reference::Listing(what) => MirrorError::ListingUnknown {
                    upstream,
                    repo: repo.clone(),
                    what,
                },
            },
            UpstreamError::Denied { .. } => MirrorError::Denied {
                upstream,
                repo: repo.clone(),
            },
            UpstreamError::TooManyRequests { retry_after } => MirrorError::RateLimited {
                upstream,
                retry_after,
            },
            UpstreamError::Transport(_)
            | UpstreamError::Connect { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Stalled(_) => MirrorError::Unreachable {
                upstream,
                cause: e.to_string(),
                retry_after: None,
                class,
            },
            UpstreamError::Down { retry_after } => MirrorError::Unreachable {
                upstream,
                cause: e.to_string(),
                retry_after: Some(retry_after),
                class,
            },
            UpstreamError::Status { .. } | UpstreamError::Protocol(_) => MirrorError::BadUpstream {
                upstream,
                cause: e.to_string(),
                class,
            },
            UpstreamError::TooLarge { .. } => match reference {
                Reference::Manifest(_) => MirrorError::ManifestTooLarge,
                _ => MirrorError::TooLarge {
                    upstream,
                    cause: e.to_string(),
                },
            },
            UpstreamError::Refused(cause) => MirrorError::Refused { upstream, cause },
        }
    }
}

impl MirrorError {
    /// The class the pull record and the status page file this failure under.
    pub fn class(&self) -> ErrorClass {
        match self {
            MirrorError::UnknownRegistry(_)
            | MirrorError::InvalidName(_)
            | MirrorError::RangeNotSatisfiable { .. } => ErrorClass::Client,
            MirrorError::ManifestUnknown { .. }
            | MirrorError::BlobUnknown { .. }
            | MirrorError::ListingUnknown { .. } => ErrorClass::NotFound,
            MirrorError::Denied { .. } => ErrorClass::Denied,
            MirrorError::RateLimited { .. } => ErrorClass::Status429,
            MirrorError::Unreachable { class, .. } | MirrorError::BadUpstream { class, .. } => {
                *class
            }
            MirrorError::Verification { .. } => ErrorClass::Verify,
            MirrorError::ManifestTooLarge => ErrorClass::TooLarge,
            MirrorError::NotCached(_) => ErrorClass::NotCached,
            MirrorError::Store(_) => ErrorClass::Store,
            MirrorError::Busy { .. } => ErrorClass::Busy,
            MirrorError::TooLarge { .. } => ErrorClass::TooLarge,
            MirrorError::Refused { .. } => ErrorClass::Refused,
            MirrorError::Unwalkable { .. } => ErrorClass::Client,
            MirrorError::RepositoryRefused { .. } => ErrorClass::Refused,
            MirrorError::Internal(_) => ErrorClass::Other,
        }
    }
}

/// What was being fetched, for naming the right "unknown" error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reference<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    /// `tags list` or `referrers`.
    Listing(&'static str),
}

impl Reference<'_> {
    /// The tag or digest named, as the short memory of upstream 404s keys it.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Manifest(r) | Reference::Blob(r) => r,
            Reference::Listing(what) => what,
        }
    }
}

impl From<crate::coalesce::FlightAbandoned> for MirrorError {
    fn from(e: crate::coalesce::FlightAbandoned) -> Self {
        MirrorError::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for MirrorError {
    fn from(e: crate::store::StoreError) -> Self {
        MirrorError::Store(e.to_string())
    }
}

//! The follower's side: streaming a leader replica's in-progress fill.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use url::Url;

use super::Lease;
use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("leader {leader}: {message}")]
    Leader { leader: String, message: String },
}

/// The leader's bytes from the requested offset on; ends when the leader's fill is verified.
pub struct PeerStream {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    total: Option<u64>,
    leader: String,
    stall_timeout: Duration,
}

/// The whole blob's size, sent by the leader beside the (possibly partial) body.
pub const BLOB_SIZE_HEADER: &str = "x-berth-blob-size";

impl PeerStream {
    /// The blob's size, if the leader knows it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The next chunk; `Ok(None)` at the end. No bytes within the stall timeout is an error.
    pub async fn next(&mut self) -> Result<Option<Bytes>, PeerError> {
        match tokio::time::timeout(self.stall_timeout, self.inner.next()).await {
            Err(_) => Err(self.error(format!("no bytes for {:?}", self.stall_timeout))),
            Ok(None) => Ok(None),
            Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
            Ok(Some(Err(e))) => Err(self.error(format!("transfer broke: {e}"))),
        }
    }

    fn error(&self, message: String) -> PeerError {
        PeerError::Leader {
            leader: self.leader.clone(),
            message,
        }
    }
}

pub(super) async fn open(
    http: &reqwest::Client,
    lease: &Lease,
    digest: &Digest,
    from: u64,
    stall_timeout: Duration,
) -> Result<PeerStream, PeerError> {
    let failed = |message: String| PeerError::Leader {
        leader: lease.leader.clone(),
        message,
    };
    let base = Url::parse(&lease.leader)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| failed("the lease names no http(s) URL".into()))?;
    let mut url = base
        .join(&format!("_berth/fills/{digest}"))
        .map_err(|e| failed(e.to_string()))?;
    url.query_pairs_mut().append_pair("from", &from.to_string());
    let response = tokio::time::timeout(
        stall_timeout,
        http.get(url).bearer_auth(&lease.token).send(),
    )
    .await
    .map_err(|_| failed("no answer".into()))?
    .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("answered {}", response.status())));
    }
    let total = response
        .headers()
        .get(BLOB_SIZE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(PeerStream {
        total,
        inner: response.bytes_stream().boxed(),
        leader: lease.leader.clone(),
        stall_timeout,
    })
}

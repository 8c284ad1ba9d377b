//! The follower's side: streaming a leader replica's in-progress fill, through the one client of
//! berth's API ([`BerthClient::peer_fill`]).

use bytes::Bytes;

use super::Lease;
use crate::client::{self, BerthClient, ClientError};
use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("leader {leader}: {message}")]
    Leader { leader: String, message: String },
}

/// The leader's bytes from the requested offset on; ends when the leader's fill is verified.
pub struct PeerStream {
    body: client::Body,
    total: Option<u64>,
    leader: String,
}

impl PeerStream {
    /// The blob's size, if the leader knows it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The next chunk; `Ok(None)` at the end. No bytes within the stall timeout is an error.
    pub async fn next(&mut self) -> Result<Option<Bytes>, PeerError> {
        self.body.next().await.map_err(|e| failed(&self.leader, &e))
    }
}

fn failed(leader: &str, e: &ClientError) -> PeerError {
    PeerError::Leader {
        leader: leader.to_string(),
        message: e.detail(),
    }
}

/// Asks the lease's leader for its fill of `digest` from byte `from` on; no answer within the
/// stall timeout (the client's read timeout) is an error.
pub(super) async fn open(
    client: &BerthClient,
    lease: &Lease,
    digest: &Digest,
    from: u64,
) -> Result<PeerStream, PeerError> {
    let fill = client
        .peer_fill(&lease.leader, &lease.token, digest, from)
        .await
        .map_err(|e| failed(&lease.leader, &e))?;
    Ok(PeerStream {
        body: fill.body,
        total: fill.total,
        leader: lease.leader.clone(),
    })
}

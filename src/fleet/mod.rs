//! One upstream fetch per blob across replicas that share a bucket.
//!
//! The first replica to create the lease object `fills/<alg>/<hex>` (an atomic create in the
//! bucket, [`BlobStore::create`]) leads the fill: it fetches from the upstream as a lone berth
//! would and lets the other replicas read its in-progress fill over HTTP
//! (`GET /_berth/fills/<digest>`), authenticated by the random token written in the lease, so
//! only those who can read the bucket can ask. The others stream from the leader into their
//! own fill, hashing and verifying it themselves, and when the leader fails or stalls they go
//! on from the upstream, resuming at the bytes they have. The leader renews the lease while it
//! fills and deletes it when done; a lease not renewed within [`LEASE_TTL`] is dead, and the
//! next replica that meets it deletes it.
//!
//! Followers call the leader with the one client of berth's API ([`crate::client`]), trusting and
//! presenting what the front door is set up with ([`trust`]); a fleet whose replicas could not
//! connect so fails at start.
//!
//! Needs `advertise_url` (how the others reach this replica) and a store whose `create` is
//! atomic (S3 `If-None-Match: *`). On a server that ignores that header two replicas may both
//! lead a fill: each result is still verified, only the saving is lost; a short re-read after
//! the create catches most such races.

mod lease;
mod peer;
mod trust;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use url::Url;

pub use crate::client::BLOB_SIZE_HEADER;
pub use lease::{Lease, LeaseGuard};
pub use peer::{PeerError, PeerStream};
pub use trust::FleetError;

use crate::client::BerthClient;
use crate::config::ServerConfig;
use crate::oci::Digest;
use crate::store::BlobStore;

/// A lease not renewed for this long belongs to a dead leader.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a leader renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// This replica's part in cross-replica fills.
pub struct Fleet {
    advertise_url: Url,
    store: Arc<dyn BlobStore>,
    /// Streams other replicas' fills; times out after the stall timeout.
    client: BerthClient,
    /// Fills this replica leads: digest → lease token.
    leading: Arc<Mutex<HashMap<Digest, String>>>,
}

/// What this replica does for one cold blob.
pub enum Role {
    /// Fetch it from the upstream; others may stream it from us while the guard lives.
    Leader(LeaseGuard),
    /// Another replica is fetching it: stream from there.
    Follower(Lease),
    /// No coordination (the store could not be asked): fetch it alone.
    Alone,
}

impl Fleet {
    /// This replica's part, its client set up from `[server]` (see [`trust`]); `Err` when the
    /// other replicas could not stream from it, or it from them.
    pub fn new(
        advertise_url: Url,
        server: &ServerConfig,
        store: Arc<dyn BlobStore>,
        stall_timeout: Duration,
    ) -> Result<Fleet, FleetError> {
        let access = trust::access(&advertise_url, server)?;
        let client = BerthClient::builder(advertise_url.clone())
            .access(access)
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(stall_timeout)
            .build()
            .map_err(|e| FleetError::new(e.to_string()))?;
        Ok(Fleet {
            advertise_url,
            store,
            client,
            leading: Arc::default(),
        })
    }

    pub fn advertise_url(&self) -> &Url {
        &self.advertise_url
    }

    /// Does `token` open this replica's running fill of `digest` to a peer?
    pub fn admits(&self, digest: &Digest, token: &str) -> bool {
        let leading = self.leading.lock().unwrap_or_else(|e| e.into_inner());
        leading
            .get(digest)
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    /// Streams the leader's fill of `digest` from byte `from` on.
    pub async fn stream_from(
        &self,
        lease: &Lease,
        digest: &Digest,
        from: u64,
    ) -> Result<PeerStream, PeerError> {
        peer::open(&self.client, lease, digest, from).await
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! Fill leases in the shared store: `fills/<alg>/<hex>`, JSON naming the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Fleet, LEASE_TTL, RENEW_EVERY, Role};
use crate::oci::Digest;
use crate::store::BlobStore;

/// Leases are bounded like everything read from a shared store.
const MAX_LEASE_BYTES: usize = 4096;
/// After a create, how long to wait before reading the lease back: a server whose conditional
/// create is not atomic lets two replicas both "create" it, and the later write wins.
const SETTLE: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leader's `advertise_url`.
    pub leader: String,
    /// Bearer token for `/_berth/fills/<digest>` on the leader, fresh per fill.
    pub token: String,
    pub renewed_unix_ms: u64,
}

impl Lease {
    fn is_dead(&self) -> bool {
        now_ms().saturating_sub(self.renewed_unix_ms) > LEASE_TTL.as_millis() as u64
    }
}

fn key(digest: &Digest) -> String {
    format!("fills/{}/{}", digest.algorithm().as_str(), digest.hex())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A lease is another replica's object: read only when small (an oversized one is not a lease).
async fn read(store: &dyn BlobStore, digest: &Digest) -> Option<Lease> {
    let bytes = crate::store::get_small(store, &key(digest), MAX_LEASE_BYTES as u64)
        .await
        .ok()??;
    serde_json::from_slice(&bytes).ok()
}

impl Fleet {
    /// Leads the fill of `digest`, or names the replica that does.
    pub async fn claim(&self, digest: &Digest) -> Role {
        // Two rounds: the second after deleting a dead leader's lease.
        for _ in 0..2 {
            let lease = Lease {
                leader: self.advertise_url.to_string(),
                token: format!("{:032x}", rand::random::<u128>()),
                renewed_unix_ms: now_ms(),
            };
            let json = Bytes::from(serde_json::to_vec(&lease).unwrap_or_default());
            // Admitted before the lease is visible: a follower may ask the moment it reads it.
            self.admit(digest, &lease.token);
            let created = self.store.create(&key(digest), json).await;
            if !matches!(created, Ok(true)) {
                self.forget(digest, &lease.token);
            }
            match created {
                Ok(true) => {
                    tokio::time::sleep(SETTLE).await;
                    return match read(self.store.as_ref(), digest).await {
                        Some(found) if found.token != lease.token => {
                            self.forget(digest, &lease.token);
                            Role::Follower(found)
                        }
                        _ => Role::Leader(self.lead(digest, lease)),
                    };
                }
                Ok(false) => match read(self.store.as_ref(), digest).await {
                    Some(found) if found.is_dead() => {
                        tracing::info!(%digest, leader = %found.leader, "fill lease expired; taking over");
                        let _ = self.store.delete(&key(digest)).await;
                    }
                    Some(found) if found.leader == self.advertise_url.as_str() => {
                        // Our own lease from before a restart: nobody serves it any more.
                        let _ = self.store.delete(&key(digest)).await;
                    }
                    Some(found) => return Role::Follower(found),
                    // Gone between create and read (the leader finished): go again.
                    None => {}
                },
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "fill lease unavailable; filling alone");
                    return Role::Alone;
                }
            }
        }
        Role::Alone
    }

    fn admit(&self, digest: &Digest, token: &str) {
        self.leading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.clone(), token.to_string());
    }

    fn forget(&self, digest: &Digest, token: &str) {
        forget(&self.leading, digest, token);
    }

    fn lead(&self, digest: &Digest, lease: Lease) -> LeaseGuard {
        let (store, digest_owned) = (self.store.clone(), digest.clone());
        let mut renewed = lease.clone();
        let renew = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                renewed.renewed_unix_ms = now_ms();
                if let Ok(json) = serde_json::to_vec(&renewed) {
                    let _ = store.put(&key(&digest_owned), Bytes::from(json)).await;
                }
            }
        });
        LeaseGuard {
            digest: digest.clone(),
            token: lease.token,
            store: self.store.clone(),
            leading: self.leading.clone(),
            renew,
        }
    }

    /// After a follower finished a fill on its own (the leader failed): removes the leader's
    /// lease if it is still that one, so no stale lease outlives the fill.
    pub async fn release_abandoned(&self, digest: &Digest, followed: &Lease) {
        // The same fill's lease (renewals change only its time).
        if read(self.store.as_ref(), digest)
            .await
            .is_some_and(|l| l.token == followed.token)
        {
            let _ = self.store.delete(&key(digest)).await;
        }
    }
}

/// The lease of a fill this replica leads: renewed while it lives, deleted when dropped
/// (whether the fill succeeded, failed or its task was cancelled).
pub struct LeaseGuard {
    digest: Digest,
    token: String,
    store: Arc<dyn BlobStore>,
    leading: Arc<Mutex<HashMap<Digest, String>>>,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
        forget(&self.leading, &self.digest, &self.token);
        let (store, key) = (self.store.clone(), key(&self.digest));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = store.delete(&key).await;
            });
        }
    }
}

/// Stops admitting peers to `digest`'s fill, unless a newer fill of ours took the entry.
fn forget(leading: &Mutex<HashMap<Digest, String>>, digest: &Digest, token: &str) {
    let mut leading = leading.lock().unwrap_or_else(|e| e.into_inner());
    if leading.get(digest).is_some_and(|t| t == token) {
        leading.remove(digest);
    }
}

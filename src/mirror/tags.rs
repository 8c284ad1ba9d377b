//! Tag → digest records: in memory for speed, persisted so the last known answer survives a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::oci::{Digest, Tag};
use crate::store::keys;

use std::sync::Arc;

use super::core::Core;
use super::{MirrorError, Target};

#[derive(Debug, Clone)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    /// When the upstream last confirmed this answer (`None`: longer ago than this process can tell).
    pub checked: Option<Instant>,
}

/// The persisted form; times are wall-clock seconds so they mean something after a restart.
#[derive(Serialize, Deserialize)]
struct StoredTag {
    digest: String,
    media_type: String,
    checked_unix: u64,
    /// The same instant in milliseconds (records from older versions lack it): replicas
    /// sharing a store compare records, and tag TTLs may be shorter than a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checked_unix_ms: Option<u64>,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl TagRecord {
    pub fn age(&self) -> Duration {
        self.checked.map_or(Duration::MAX, |c| {
            Instant::now().saturating_duration_since(c)
        })
    }
}

/// Last known tag → digest answers: in memory, and persisted in the store.
pub(super) struct Tags {
    core: Arc<Core>,
    memory: moka::sync::Cache<(String, crate::oci::Repository, Tag), TagRecord>,
}

impl Tags {
    pub(super) fn new(core: Arc<Core>) -> Tags {
        Tags {
            core,
            memory: moka::sync::Cache::builder().max_capacity(100_000).build(),
        }
    }

    /// The last known record for a tag: memory while it is fresh, else the store, where
    /// another replica sharing the store may have written a fresher one.
    pub(super) async fn known(&self, target: &Target, tag: &Tag) -> Option<TagRecord> {
        let key = (
            target.upstream_name().to_string(),
            target.repo.clone(),
            tag.clone(),
        );
        let in_memory = self.memory.get(&key);
        if let Some(record) = &in_memory {
            if record.age() < target.upstream.config().tag_ttl {
                return in_memory;
            }
        }
        let stored = self.stored(target, tag).await;
        match (in_memory, stored) {
            (Some(memory), Some(stored)) if stored.age() >= memory.age() => Some(memory),
            (_, Some(stored)) => {
                self.memory.insert(key, stored.clone());
                Some(stored)
            }
            (memory, None) => memory,
        }
    }

    async fn stored(&self, target: &Target, tag: &Tag) -> Option<TagRecord> {
        let key = keys::tag(target.upstream_name(), &target.repo, tag);
        let bytes = match self.core.store.get(&key).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read the tag record from the store");
                return None;
            }
        };
        let stored: StoredTag = serde_json::from_slice(&bytes).ok()?;
        let checked = stored
            .checked_unix_ms
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(stored.checked_unix));
        let age = unix_now().saturating_sub(checked);
        Some(TagRecord {
            digest: stored.digest.parse().ok()?,
            media_type: stored.media_type,
            checked: Instant::now().checked_sub(age),
        })
    }

    pub(super) async fn remember(
        &self,
        target: &Target,
        tag: &Tag,
        record: &TagRecord,
    ) -> Result<(), MirrorError> {
        let key = (
            target.upstream_name().to_string(),
            target.repo.clone(),
            tag.clone(),
        );
        self.memory.insert(key, record.clone());
        let checked = unix_now().saturating_sub(record.age());
        let stored = StoredTag {
            digest: record.digest.to_string(),
            media_type: record.media_type.clone(),
            checked_unix: checked.as_secs(),
            checked_unix_ms: Some(u64::try_from(checked.as_millis()).unwrap_or(u64::MAX)),
        };
        let json = serde_json::to_vec(&stored).map_err(|e| MirrorError::Store(e.to_string()))?;
        let key = keys::tag(target.upstream_name(), &target.repo, tag);
        if let Err(e) = self.core.store.put(&key, Bytes::from(json)).await {
            // Still answered from memory; other replicas ask the upstream themselves.
            tracing::error!(%key, error = %e, "cannot store the tag record");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_older_versions_still_parse() {
        let old = r#"{"digest":"sha256:aa","media_type":"x","checked_unix":1700000000}"#;
        let stored: StoredTag = serde_json::from_str(old).unwrap();
        assert_eq!(stored.checked_unix_ms, None);
        let new = StoredTag {
            checked_unix_ms: Some(1_700_000_000_123),
            ..stored
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains("\"checked_unix\":1700000000"), "{json}");
        assert!(json.contains("\"checked_unix_ms\":1700000000123"), "{json}");
    }
}

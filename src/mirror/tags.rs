//! Tag → digest records: in memory for speed, persisted so the last known answer survives a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::oci::{Digest, Tag};
use crate::store::keys;

use super::{Mirror, MirrorError, Target};

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
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TagRecord {
    pub fn age(&self) -> Duration {
        self.checked.map_or(Duration::MAX, |c| {
            Instant::now().saturating_duration_since(c)
        })
    }
}

impl Mirror {
    /// The last known record for a tag: memory first, then the store.
    pub(super) async fn known_tag(&self, target: &Target, tag: &Tag) -> Option<TagRecord> {
        let key = (
            target.upstream_name().to_string(),
            target.repo.clone(),
            tag.clone(),
        );
        if let Some(record) = self.tags.get(&key) {
            return Some(record);
        }
        let bytes = self
            .store
            .get(&keys::tag(target.upstream_name(), &target.repo, tag))
            .await
            .ok()??;
        let stored: StoredTag = serde_json::from_slice(&bytes).ok()?;
        let age = Duration::from_secs(unix_now().saturating_sub(stored.checked_unix));
        let record = TagRecord {
            digest: stored.digest.parse().ok()?,
            media_type: stored.media_type,
            checked: Instant::now().checked_sub(age),
        };
        self.tags.insert(key, record.clone());
        Some(record)
    }

    pub(super) async fn remember_tag(
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
        self.tags.insert(key, record.clone());
        let stored = StoredTag {
            digest: record.digest.to_string(),
            media_type: record.media_type.clone(),
            checked_unix: unix_now().saturating_sub(record.age().as_secs()),
        };
        let json = serde_json::to_vec(&stored).map_err(|e| MirrorError::Store(e.to_string()))?;
        self.store
            .put(
                &keys::tag(target.upstream_name(), &target.repo, tag),
                Bytes::from(json),
            )
            .await?;
        Ok(())
    }
}

//! Pin sets through the mirror: what the admin endpoint (`/_berth/pins`, called by
//! `berth prewarm`) records. The format and keys belong to `store::pins`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::oci::Digest;
use crate::store::pins::{self, PinError, PinName, PinSet};

use super::{Mirror, MirrorError};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl From<PinError> for MirrorError {
    fn from(e: PinError) -> MirrorError {
        match e {
            PinError::Store(e) => e.into(),
            other => MirrorError::Store(other.to_string()),
        }
    }
}

impl Mirror {
    /// Replaces the pin set `name` with `manifests` (sorted, deduplicated). A cached manifest
    /// berth cannot walk is refused, naming it: pinning it would keep none of its layers.
    pub async fn put_pins(
        &self,
        name: PinName,
        mut manifests: Vec<Digest>,
    ) -> Result<PinSet, MirrorError> {
        manifests.sort();
        manifests.dedup();
        let walked = pins::walk(self.core.store.as_ref(), &manifests).await?;
        if let Some((digest, cause)) = walked.unreadable.into_iter().next() {
            return Err(MirrorError::Unwalkable {
                digest: digest.to_string(),
                cause,
            });
        }
        let set = PinSet {
            name,
            manifests,
            updated_unix: unix_now(),
        };
        pins::write(self.core.store.as_ref(), &set).await?;
        Ok(set)
    }

    /// Every pin set, by name.
    pub async fn pins(&self) -> Result<Vec<PinSet>, MirrorError> {
        Ok(pins::read_all(self.core.store.as_ref()).await?)
    }
}

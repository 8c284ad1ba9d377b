//! Pin sets: manifests an operator asked to keep (prewarm records one per image group).
//!
//! Stored under `pins/<name>` as `{"name","manifests":[digest…],"updated_unix"}`; eviction keeps
//! every blob a pinned manifest references. `pins/_index` lists the names (`_` cannot start a
//! pin name, so it never collides), because a store has no listing.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;

use super::{Mirror, MirrorError};

const INDEX_KEY: &str = "pins/_index";

/// `[a-z0-9][a-z0-9._-]{0,63}`: safe as a store key component and in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PinName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a valid pin/group name (lowercase letters, digits, . _ -; starting with a letter or digit; at most 64)"
)]
pub struct PinNameError(pub String);

impl FromStr for PinName {
    type Err = PinNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
        if first_ok && rest_ok && b.len() <= 64 {
            Ok(PinName(s.to_string()))
        } else {
            Err(PinNameError(s.to_string()))
        }
    }
}

impl TryFrom<String> for PinName {
    type Error = PinNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PinName> for String {
    fn from(n: PinName) -> String {
        n.0
    }
}

impl PinName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn key(&self) -> String {
        format!("pins/{}", self.0)
    }
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One named set of pinned manifest digests (an index and its chosen platforms' manifests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinSet {
    pub name: PinName,
    pub manifests: Vec<Digest>,
    pub updated_unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_error(e: serde_json::Error) -> MirrorError {
    MirrorError::Store(format!("pin record: {e}"))
}

impl Mirror {
    /// Replaces the pin set `name` with `manifests` (sorted, deduplicated).
    pub async fn put_pins(
        &self,
        name: PinName,
        mut manifests: Vec<Digest>,
    ) -> Result<PinSet, MirrorError> {
        manifests.sort();
        manifests.dedup();
        let set = PinSet {
            name,
            manifests,
            updated_unix: unix_now(),
        };
        let _guard = self.pins_lock.lock().await;
        let json = serde_json::to_vec(&set).map_err(json_error)?;
        self.store.put(&set.name.key(), Bytes::from(json)).await?;
        let mut names = self.pin_names().await?;
        if !names.contains(&set.name) {
            names.push(set.name.clone());
            names.sort();
            let json = serde_json::to_vec(&names).map_err(json_error)?;
            self.store.put(INDEX_KEY, Bytes::from(json)).await?;
        }
        Ok(set)
    }

    /// Every pin set, by name.
    pub async fn pins(&self) -> Result<Vec<PinSet>, MirrorError> {
        let mut sets = Vec::new();
        for name in self.pin_names().await? {
            if let Some(bytes) = self.store.get(&name.key()).await? {
                sets.push(serde_json::from_slice(&bytes).map_err(json_error)?);
            }
        }
        Ok(sets)
    }

    async fn pin_names(&self) -> Result<Vec<PinName>, MirrorError> {
        match self.store.get(INDEX_KEY).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(json_error),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names() {
        for ok in ["flux", "k3s-bootstrap", "a", "0.x_y", &"a".repeat(64)] {
            assert!(ok.parse::<PinName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_index",
            "Flux",
            "-a",
            "a/b",
            "..",
            &"a".repeat(65),
            "a b",
        ] {
            assert!(bad.parse::<PinName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pin_set_json_shape() {
        let d = Digest::sha256_of(b"x");
        let set = PinSet {
            name: "flux".parse().unwrap(),
            manifests: vec![d.clone()],
            updated_unix: 1_764_600_000,
        };
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "flux", "manifests": [d.to_string()], "updated_unix": 1_764_600_000u64})
        );
        assert_eq!(serde_json::from_value::<PinSet>(json).unwrap(), set);
    }
}

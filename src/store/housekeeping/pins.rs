//! Pin sets: manifests (and everything they reference) that eviction and gc must keep. The
//! one owner of the pin format and of the `pins/` keys; the mirror's admin endpoint (which
//! `berth prewarm` calls) writes through here, eviction and `berth cache` read through here.
//!
//! A pin set is the store object `pins/<name>`, JSON:
//! `{"name":"flux","manifests":["sha256:…"],"updated_unix":1764600000}`. The names are the
//! listing of `pins/` (`_` starts no pin name: an older berth's `pins/_index` is skipped).
//! A pinned manifest keeps: itself; for an index / manifest list, its child manifests
//! (recursively, those that are cached); for an image manifest, its config and layers.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::{Digest, ManifestDoc, References};
use crate::store::{BlobStore, StoreError, keys, manifest_form};

const PREFIX: &str = "pins/";

/// Deepest index nesting followed (real images nest one level; this bounds a hostile cycle).
const MAX_DEPTH: usize = 8;

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
        format!("{PREFIX}{}", self.0)
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
    #[serde(default)]
    pub updated_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin set {key} is not valid JSON of the pin format: {cause}")]
    Malformed { key: String, cause: String },
    #[error("pin set {0} cannot be encoded: {1}")]
    Encode(PinName, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store keys (`manifests/…`, `blobs/…`) that pins keep.
#[derive(Debug, Default, Clone)]
pub struct Pinned {
    pub keys: HashSet<String>,
    /// Pinned manifests that are not cached (yet): nothing of theirs can be protected.
    pub missing: Vec<Digest>,
    /// Pinned manifests that are cached but cannot be walked (not a manifest berth can read):
    /// what they reference is not protected, and the pin set says so instead of keeping
    /// nothing quietly.
    pub unreadable: Vec<(Digest, String)>,
}

impl Pinned {
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// The names of the stored pin sets, sorted.
pub async fn names(store: &dyn BlobStore) -> Result<Vec<PinName>, StoreError> {
    let mut names: Vec<PinName> = store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter_map(|l| l.key.strip_prefix(PREFIX)?.parse().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Reads one pin set; `None` if it is not stored. A malformed pin set is an error: silently
/// ignoring it would let gc delete what an operator pinned.
pub async fn read(store: &dyn BlobStore, name: &PinName) -> Result<Option<PinSet>, PinError> {
    let key = name.key();
    let Some(bytes) = store.get(&key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PinError::Malformed {
            key,
            cause: e.to_string(),
        })
}

/// Stores (replaces) one pin set.
pub async fn write(store: &dyn BlobStore, set: &PinSet) -> Result<(), PinError> {
    let json =
        serde_json::to_vec(set).map_err(|e| PinError::Encode(set.name.clone(), e.to_string()))?;
    store.put(&set.name.key(), Bytes::from(json)).await?;
    Ok(())
}

/// Every stored pin set.
pub async fn read_all(store: &dyn BlobStore) -> Result<Vec<PinSet>, PinError> {
    let mut sets = Vec::new();
    for name in names(store).await? {
        sets.extend(read(store, &name).await?);
    }
    Ok(sets)
}

/// Reads the pin sets `names` and resolves what they keep.
pub async fn resolve(store: &dyn BlobStore, names: &[PinName]) -> Result<Pinned, PinError> {
    let mut pinned = Pinned::default();
    for name in names {
        let Some(set) = read(store, name).await? else {
            continue;
        };
        for digest in &set.manifests {
            keep_manifest(store, digest, 0, &mut pinned).await?;
        }
    }
    Ok(pinned)
}

/// What pinning `manifests` would keep (a pin set before it is written).
pub async fn walk(store: &dyn BlobStore, manifests: &[Digest]) -> Result<Pinned, StoreError> {
    let mut pinned = Pinned::default();
    for digest in manifests {
        keep_manifest(store, digest, 0, &mut pinned).await?;
    }
    Ok(pinned)
}

async fn keep_manifest(
    store: &dyn BlobStore,
    digest: &Digest,
    depth: usize,
    pinned: &mut Pinned,
) -> Result<(), StoreError> {
    let key = keys::manifest(digest);
    if depth > MAX_DEPTH || !pinned.keys.insert(key.clone()) {
        return Ok(());
    }
    let Some(stored) = store.get(&key).await? else {
        pinned.missing.push(digest.clone());
        return Ok(());
    };
    let references = match references(&stored) {
        Ok(references) => references,
        Err(cause) => {
            pinned.unreadable.push((digest.clone(), cause));
            return Ok(());
        }
    };
    for child in references.manifests {
        Box::pin(keep_manifest(store, &child, depth + 1, pinned)).await?;
    }
    for blob in references.blobs {
        pinned.keys.insert(keys::blob(&blob));
    }
    Ok(())
}

/// What a stored manifest (see `manifest_form`) references, or why it cannot be read.
pub fn references(stored: &[u8]) -> Result<References, String> {
    let (_, body) =
        manifest_form::split(stored).ok_or("the stored object has no valid manifest header")?;
    let doc =
        ManifestDoc::parse(body).map_err(|e| format!("not a manifest berth can read: {e}"))?;
    Ok(doc.references())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DiskStore;

    fn stored(media_type: &str, json: &serde_json::Value) -> (Digest, Bytes) {
        let body = serde_json::to_vec(json).unwrap();
        let digest = Digest::sha256_of(&body);
        let mut out = format!("{media_type}\n").into_bytes();
        out.extend_from_slice(&body);
        (digest, out.into())
    }

    #[tokio::test]
    async fn an_index_pin_keeps_children_configs_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let (config, layer) = (Digest::sha256_of(b"config"), Digest::sha256_of(b"layer"));
        let (image, image_bytes) = stored(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::json!({"schemaVersion": 2,
                "config": {"digest": config.to_string(), "size": 6},
                "layers": [{"digest": layer.to_string(), "size": 5}]}),
        );
        let absent = Digest::sha256_of(b"other platform");
        let (index, index_bytes) = stored(
            "application/vnd.oci.image.index.v1+json",
            &serde_json::json!({"schemaVersion": 2, "manifests": [
                {"digest": image.to_string()}, {"digest": absent.to_string()}]}),
        );
        store
            .put(&keys::manifest(&image), image_bytes)
            .await
            .unwrap();
        store
            .put(&keys::manifest(&index), index_bytes)
            .await
            .unwrap();
        let pin = serde_json::json!({"name": "flux", "manifests": [index.to_string()],
            "updated_unix": 1764600000});
        store
            .put("pins/flux", serde_json::to_vec(&pin).unwrap().into())
            .await
            .unwrap();

        let pinned = resolve(&store, &names(&store).await.unwrap())
            .await
            .unwrap();
        for key in [
            keys::manifest(&index),
            keys::manifest(&image),
            keys::blob(&config),
            keys::blob(&layer),
        ] {
            assert!(pinned.contains(&key), "{key} is pinned");
        }
        assert_eq!(pinned.missing, [absent]);
        assert!(!pinned.contains(&keys::blob(&Digest::sha256_of(b"x"))));
    }

    #[tokio::test]
    async fn a_malformed_pin_set_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        store
            .put("pins/bad", Bytes::from_static(b"{\"name\": 3}"))
            .await
            .unwrap();
        assert!(matches!(
            resolve(&store, &["bad".parse().unwrap()]).await,
            Err(PinError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_list() {
        assert!(references(b"no newline").is_err());
        assert!(references(b"application/json\n{not json").is_err());
    }

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

    #[tokio::test]
    async fn names_are_the_listing_without_the_old_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        for key in ["pins/k3s", "pins/_index", "pins/flux"] {
            store.put(key, Bytes::from_static(b"{}")).await.unwrap();
        }
        let names: Vec<String> = names(&store)
            .await
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["flux", "k3s"]);
    }
}

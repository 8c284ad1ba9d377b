//! Pin sets: manifests (and everything they reference) that eviction and gc must keep.
//!
//! A pin set is the store object `pins/<name>`, JSON:
//! `{"name":"flux","manifests":["sha256:…"],"updated_unix":1764600000}`.
//! `src/mirror/pins.rs` (the admin endpoint prewarm calls) writes this format, plus a
//! `pins/_index` of names that `DiskStore::pin_names` skips; this module only reads it. A pinned manifest keeps: itself; for an index / manifest list, its child
//! manifests (recursively, those that are cached); for an image manifest, its config and layers.

use std::collections::HashSet;

use serde::Deserialize;

use super::{BlobStore, StoreError, keys, manifest_form};
use crate::oci::Digest;

/// Deepest index nesting followed (real images nest one level; this bounds a hostile cycle).
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, Deserialize)]
pub struct PinSet {
    pub name: String,
    pub manifests: Vec<String>,
    #[serde(default)]
    pub updated_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin set {key} is not valid JSON of the pin format: {cause}")]
    Malformed { key: String, cause: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store keys (`manifests/…`, `blobs/…`) that pins keep.
#[derive(Debug, Default, Clone)]
pub struct Pinned {
    pub keys: HashSet<String>,
    /// Pinned manifests that are not cached (yet): nothing of theirs can be protected.
    pub missing: Vec<Digest>,
}

impl Pinned {
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// Reads the pin sets `names` and resolves what they keep. A malformed pin set is an error:
/// silently ignoring it would let gc delete what an operator pinned.
pub async fn resolve(store: &dyn BlobStore, names: &[String]) -> Result<Pinned, PinError> {
    let mut pinned = Pinned::default();
    for name in names {
        let key = format!("pins/{name}");
        let Some(bytes) = store.get(&key).await? else {
            continue;
        };
        let set: PinSet = serde_json::from_slice(&bytes).map_err(|e| PinError::Malformed {
            key: key.clone(),
            cause: e.to_string(),
        })?;
        for text in &set.manifests {
            let digest: Digest = text.parse().map_err(|e| PinError::Malformed {
                key: key.clone(),
                cause: format!("{text:?}: {e}"),
            })?;
            keep_manifest(store, &digest, 0, &mut pinned).await?;
        }
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
    let references = references(&stored);
    for child in references.manifests {
        Box::pin(keep_manifest(store, &child, depth + 1, pinned)).await?;
    }
    for blob in references.blobs {
        pinned.keys.insert(keys::blob(&blob));
    }
    Ok(())
}

/// What a stored manifest points to.
#[derive(Debug, Default, PartialEq)]
pub struct References {
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

/// Parses a stored manifest (`<media type>\n<bytes>`). Unparseable content references nothing.
pub fn references(stored: &[u8]) -> References {
    #[derive(Deserialize)]
    struct Descriptor {
        digest: String,
    }
    #[derive(Deserialize)]
    struct AnyManifest {
        #[serde(default)]
        manifests: Vec<Descriptor>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let Some((_, body)) = manifest_form::split(stored) else {
        return References::default();
    };
    let Ok(parsed) = serde_json::from_slice::<AnyManifest>(body) else {
        return References::default();
    };
    let digests = |list: Vec<Descriptor>| -> Vec<Digest> {
        list.into_iter()
            .filter_map(|d| d.digest.parse().ok())
            .collect()
    };
    References {
        manifests: digests(parsed.manifests),
        blobs: digests(parsed.config.into_iter().chain(parsed.layers).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DiskStore;
    use bytes::Bytes;

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

        let pinned = resolve(&store, &store.pin_names().unwrap()).await.unwrap();
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
            resolve(&store, &["bad".into()]).await,
            Err(PinError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_references_nothing() {
        assert_eq!(references(b"no newline"), References::default());
        assert_eq!(references(b"t\n{not json"), References::default());
    }
}

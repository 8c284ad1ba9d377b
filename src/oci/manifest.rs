//! The one manifest model berth reads: descriptors, image manifests and indexes (OCI and Docker
//! schema2, which share the shape), platform choice, attestations, what a manifest references.
//!
//! Read only and lenient. berth serves an upstream's exact bytes and never re-serialises a
//! manifest, so this model holds just the fields berth acts on and ignores the rest. It is not
//! `oci-spec`'s `ImageManifest` / `ImageIndex` / `Descriptor`: those require `mediaType` and
//! `size` on every descriptor and `config` on every manifest and reject the whole document
//! when one is missing, while a mirror must still walk (pin, prewarm) what a registry served.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{Digest, Platform};

/// An image manifest, an index / manifest list, or an artifact manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    pub media_type: Option<String>,
    pub artifact_type: Option<String>,
    /// Present (even empty) on an index or manifest list.
    pub manifests: Option<Vec<Descriptor>>,
    pub config: Option<Descriptor>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, deserialize_with = "null_as_default")]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default, deserialize_with = "null_as_default")]
    pub size: u64,
    pub platform: Option<Platform>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub urls: Vec<String>,
    pub artifact_type: Option<String>,
}

/// `null` reads as the field's default: registries and tools write `"annotations": null` and
/// `"urls": null`, which mean "none".
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// What a manifest points to: child manifests (of an index) and blobs (config and layers).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

impl ManifestDoc {
    pub fn parse(bytes: &[u8]) -> Result<ManifestDoc, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The `mediaType` a document declares about itself, for upstreams that send no
    /// Content-Type. Looks at nothing else, so it works on any JSON manifest.
    pub fn declared_media_type(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct MediaTypeOnly {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        serde_json::from_slice::<MediaTypeOnly>(bytes)
            .ok()?
            .media_type
    }

    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
    }

    pub fn entries(&self) -> &[Descriptor] {
        self.manifests.as_deref().unwrap_or_default()
    }

    pub fn references(&self) -> References {
        References {
            manifests: self.entries().iter().map(|d| d.digest.clone()).collect(),
            blobs: self
                .config
                .iter()
                .chain(&self.layers)
                .map(|d| d.digest.clone())
                .collect(),
        }
    }

    /// The layers a client downloads: foreign (Windows) layers live outside registries, and
    /// containerd skips them too.
    pub fn pullable_layers(&self) -> impl Iterator<Item = &Descriptor> {
        self.layers.iter().filter(|l| !l.is_foreign())
    }

    /// For each wanted platform, the first index entry that serves it, an exact variant first
    /// (what containerd picks). Attestation manifests are never chosen.
    pub fn choose<'a>(
        &'a self,
        wanted: &'a [Platform],
    ) -> Vec<(&'a Platform, Option<&'a Descriptor>)> {
        let candidates: Vec<(&Descriptor, &Platform)> = self
            .entries()
            .iter()
            .filter(|e| !e.is_attestation())
            .filter_map(|e| Some((e, e.platform.as_ref()?)))
            .collect();
        let serves = |want: &Platform, p: &Platform| {
            want.matches(&p.os, &p.architecture, p.variant.as_deref())
        };
        wanted
            .iter()
            .map(|want| {
                let found = candidates
                    .iter()
                    .find(|(_, p)| serves(want, p) && p.variant == want.variant)
                    .or_else(|| candidates.iter().find(|(_, p)| serves(want, p)))
                    .map(|(e, _)| *e);
                (want, found)
            })
            .collect()
    }
}

impl Descriptor {
    /// BuildKit's attestation manifests (SBOM, provenance): annotated, or platform unknown/unknown.
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
            || self
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }

    pub fn is_foreign(&self) -> bool {
        !self.urls.is_empty() && self.media_type.contains("foreign")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str, annotations: &[(&str, &str)]) -> serde_json::Value {
        let parts: Vec<&str> = platform.split('/').collect();
        let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
        if let Some(v) = parts.get(2) {
            p["variant"] = (*v).into();
        }
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Digest::sha256_of(platform.as_bytes()).to_string(),
            "size": 1, "platform": p, "annotations": annotations,
        })
    }

    fn index(entries: Vec<serde_json::Value>) -> ManifestDoc {
        let doc = serde_json::json!({"schemaVersion": 2, "manifests": entries});
        ManifestDoc::parse(&serde_json::to_vec(&doc).unwrap()).unwrap()
    }

    #[test]
    fn chooses_platforms_and_skips_attestations() {
        let doc = index(vec![
            entry(
                "unknown/unknown",
                &[("vnd.docker.reference.type", "attestation-manifest")],
            ),
            entry("linux/amd64", &[]),
            entry("linux/arm/v6", &[]),
            entry("linux/arm/v7", &[]),
            entry("linux/arm64/v8", &[]),
        ]);
        let wanted: Vec<Platform> = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let chosen: Vec<Option<Digest>> = doc
            .choose(&wanted)
            .into_iter()
            .map(|(_, e)| e.map(|e| e.digest.clone()))
            .collect();
        let digest_of = |p: &str| Some(Digest::sha256_of(p.as_bytes()));
        assert_eq!(
            chosen,
            [
                digest_of("linux/amd64"),
                digest_of("linux/arm64/v8"),
                digest_of("linux/arm/v7"),
                None
            ]
        );
        let only_attestation = index(vec![entry("unknown/unknown", &[])]);
        let any: Vec<Platform> = vec!["unknown/unknown".parse().unwrap()];
        assert!(only_attestation.choose(&any)[0].1.is_none());
    }

    #[test]
    fn null_lists_and_maps_read_as_empty() {
        let doc = format!(
            r#"{{"schemaVersion":2,"annotations":null,"layers":null,
              "config":{{"mediaType":null,"digest":"sha256:{a}","size":1,"annotations":null,"urls":null}},
              "manifests":null}}"#,
            a = "a".repeat(64)
        );
        let doc = ManifestDoc::parse(doc.as_bytes()).unwrap();
        let config = doc.config.as_ref().unwrap();
        assert!(config.annotations.is_empty() && config.urls.is_empty());
        assert!(doc.layers.is_empty() && !doc.is_index());
        assert_eq!(doc.references().blobs.len(), 1);
    }

    #[test]
    fn references_of_an_image_and_an_index() {
        let (config, layer) = (Digest::sha256_of(b"c"), Digest::sha256_of(b"l"));
        let image = serde_json::json!({"schemaVersion": 2,
            "config": {"digest": config.to_string()},
            "layers": [{"digest": layer.to_string(), "size": 5}]});
        let doc = ManifestDoc::parse(&serde_json::to_vec(&image).unwrap()).unwrap();
        assert!(!doc.is_index());
        assert_eq!(doc.references().blobs, [config, layer]);
        let idx = index(vec![entry("linux/amd64", &[])]);
        assert!(idx.is_index());
        assert_eq!(
            idx.references().manifests,
            [Digest::sha256_of(b"linux/amd64")]
        );
        assert!(idx.references().blobs.is_empty());
    }

    #[test]
    fn declared_media_type_reads_only_that_field() {
        let doc = br#"{"mediaType":"application/vnd.example+json","manifests":"not a list"}"#;
        assert_eq!(
            ManifestDoc::declared_media_type(doc).as_deref(),
            Some("application/vnd.example+json")
        );
        assert_eq!(ManifestDoc::declared_media_type(b"[1]"), None);
    }

    #[test]
    fn foreign_layers_are_not_pulled() {
        let doc = serde_json::json!({"schemaVersion": 2,
            "config": {"digest": Digest::sha256_of(b"c").to_string()},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                 "digest": Digest::sha256_of(b"w").to_string(), "urls": ["https://x/y"]},
                {"digest": Digest::sha256_of(b"l").to_string()}]});
        let doc = ManifestDoc::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let pulled: Vec<_> = doc.pullable_layers().map(|l| l.digest.clone()).collect();
        assert_eq!(pulled, [Digest::sha256_of(b"l")]);
    }
}

//! Manifests: tag freshness, stale serving, digest verification.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::oci::{Digest, MANIFEST_MEDIA_TYPES, Reference, Tag, accepts, is_media_type};
use crate::store::{keys, manifest_form};
use crate::trace::{self, CacheResult};

use super::core::Core;
use super::error::Reference as What;
use super::tags::{TagRecord, Tags};
use super::{Lookup, MirrorError, Target};
use crate::coalesce::Singleflight;

/// How long a tag revalidation may take when a last known answer is there to fall back on.
const REVALIDATE_DEADLINE: Duration = Duration::from_secs(5);

/// A manifest as the registry sent it: bytes untouched, media type from its `Content-Type`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Manifest {
    fn encode(&self) -> Bytes {
        manifest_form::encode(&self.media_type, &self.bytes)
    }

    fn decode(digest: Digest, stored: Bytes) -> Option<Manifest> {
        let (media_type, body) = manifest_form::split(&stored)?;
        Some(Manifest {
            digest,
            media_type: media_type.to_string(),
            bytes: stored.slice(stored.len() - body.len()..),
        })
    }
}

/// The manifest and tag flow's state.
pub(super) struct Manifests {
    pub(super) core: Arc<Core>,
    /// Manifests by digest, in memory in front of the store.
    memory: moka::future::Cache<Digest, Arc<Manifest>>,
    flights: Singleflight<(String, Digest), Result<Arc<Manifest>, MirrorError>>,
    /// Last known tag → digest answers (also persisted in the store).
    tags: Tags,
    tag_flights:
        Singleflight<(String, crate::oci::Repository, Tag), Result<TagRecord, MirrorError>>,
    /// What a tag gave clients whose Accept excludes the shared record's type, per Accept class.
    narrow_tags: moka::sync::Cache<
        (String, crate::oci::Repository, Tag, String),
        (Digest, tokio::time::Instant),
    >,
}

impl Manifests {
    pub(super) fn new(core: Arc<Core>) -> Manifests {
        let memory = moka::future::Cache::builder()
            .weigher(|_, m: &Arc<Manifest>| m.bytes.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(core.config.manifest_memory_cache)
            .build();
        Manifests {
            memory,
            flights: Singleflight::default(),
            tags: Tags::new(core.clone()),
            core,
            tag_flights: Singleflight::default(),
            narrow_tags: moka::sync::Cache::builder().max_capacity(10_000).build(),
        }
    }

    /// The manifest for a tag or digest, from the cache when it may be, else from the upstream.
    pub(super) async fn get(
        self: &Arc<Self>,
        target: &Target,
        reference: &Reference,
        accept: &[String],
        lookup: Lookup,
    ) -> Result<Arc<Manifest>, MirrorError> {
        if lookup == Lookup::CacheOnly {
            return self.manifest_from_cache(target, reference, accept).await;
        }
        match reference {
            Reference::Digest(digest) => self.manifest_by_digest(target, digest, accept).await,
            Reference::Tag(tag) => {
                let record = self.resolve_tag(target, tag, accept).await?;
                if !accepts(accept, &record.media_type) {
                    return self.narrow_manifest(target, tag, accept).await;
                }
                self.manifest_by_digest(target, &record.digest, accept)
                    .await
            }
        }
    }

    /// The client cannot take what the tag points to for everyone else: ask the upstream for
    /// what it can take, without touching the shared tag record. The answer is remembered per
    /// Accept class for `tag_ttl`, so clients that differ only in Accept cost one GET, not one each.
    async fn narrow_manifest(
        self: &Arc<Self>,
        target: &Target,
        tag: &Tag,
        accept: &[String],
    ) -> Result<Arc<Manifest>, MirrorError> {
        // The class is the known manifest types the client takes: at most 16 classes, however
        // many distinct Accept headers clients invent.
        let class: Vec<&str> = MANIFEST_MEDIA_TYPES
            .iter()
            .copied()
            .filter(|t| accepts(accept, t))
            .collect();
        let key = (
            target.upstream_name().to_string(),
            target.repo.clone(),
            tag.clone(),
            class.join(","),
        );
        if let Some((digest, at)) = self.narrow_tags.get(&key) {
            if at.elapsed() < target.upstream.config().tag_ttl {
                if let Some(m) = self.cached_manifest(&digest).await {
                    trace::note(CacheResult::Hit);
                    return Ok(m);
                }
            }
        }
        let manifest = self
            .fetch_manifest(
                target,
                &Reference::Tag(tag.clone()),
                None,
                &upstream_accept(accept),
            )
            .await?;
        self.narrow_tags
            .insert(key, (manifest.digest.clone(), Instant::now()));
        Ok(manifest)
    }

    /// Only what is stored: a tag answers from its last known record whatever its age.
    async fn manifest_from_cache(
        &self,
        target: &Target,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Arc<Manifest>, MirrorError> {
        let not_cached = || MirrorError::NotCached(format!("manifest {}:{reference}", target.repo));
        let digest = match reference {
            Reference::Digest(digest) => digest.clone(),
            Reference::Tag(tag) => {
                let record = self.tags.known(target, tag).await.ok_or_else(not_cached)?;
                if !accepts(accept, &record.media_type) {
                    return Err(not_cached());
                }
                record.digest
            }
        };
        let manifest = self.cached_manifest(&digest).await;
        self.core
            .metrics
            .cache_lookup("manifest", manifest.is_some());
        trace::note(if manifest.is_some() {
            CacheResult::Hit
        } else {
            CacheResult::Miss
        });
        manifest.ok_or_else(not_cached)
    }

    async fn cached_manifest(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        if let Some(m) = self.memory.get(digest).await {
            // Served from memory: still a use, so the stored copy is not evicted as idle.
            self.core.store.touch(&keys::manifest(digest));
            return Some(m);
        }
        let stored = self.core.store.get(&keys::manifest(digest)).await.ok()??;
        let manifest = Manifest::decode(digest.clone(), stored)?;
        // The store is a disk or a bucket that others write too: what it gives back is
        // hashed again before it is served; a mismatch is fetched afresh.
        if Digest::of(digest.algorithm(), &manifest.bytes) != *digest {
            tracing::error!(%digest, "stored manifest does not hash to its digest; ignored");
            return None;
        }
        let manifest = Arc::new(manifest);
        self.memory.insert(digest.clone(), manifest.clone()).await;
        Some(manifest)
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        accept: &[String],
    ) -> Result<Arc<Manifest>, MirrorError> {
        if let Some(m) = self.cached_manifest(digest).await {
            self.core.metrics.cache_lookup("manifest", true);
            trace::note(CacheResult::Hit);
            return Ok(m);
        }
        self.core.metrics.cache_lookup("manifest", false);
        let (this, target2, digest2, accept) = (
            self.clone(),
            target.clone(),
            digest.clone(),
            accept.to_vec(),
        );
        let key = (target.upstream_name().to_string(), digest.clone());
        self.flights
            .run(key, async move {
                this.fetch_manifest(
                    &target2,
                    &Reference::Digest(digest2.clone()),
                    Some(&digest2),
                    &upstream_accept(&accept),
                )
                .await
            })
            .await?
    }

    /// Tag → digest, honouring `tag_ttl`, revalidating with a HEAD, serving the last known
    /// answer when the upstream fails.
    async fn resolve_tag(
        self: &Arc<Self>,
        target: &Target,
        tag: &Tag,
        accept: &[String],
    ) -> Result<TagRecord, MirrorError> {
        let known = self.tags.known(target, tag).await;
        if let Some(record) = &known {
            if record.age() < target.upstream.config().tag_ttl {
                self.core
                    .metrics
                    .tag_lookup(target.upstream.label(), "fresh");
                return Ok(record.clone());
            }
        }
        let key = (
            target.upstream_name().to_string(),
            target.repo.clone(),
            tag.clone(),
        );
        let (this, target2, tag2, accept) =
            (self.clone(), target.clone(), tag.clone(), accept.to_vec());
        self.tag_flights
            .run(key, async move {
                let revalidation = this.revalidate_tag(&target2, &tag2, known.as_ref(), &accept);
                let result = match &known {
                    Some(_) => tokio::time::timeout(REVALIDATE_DEADLINE, revalidation).await.unwrap_or_else(|_| {
                        Err(MirrorError::Unreachable {
                            upstream: target2.upstream_name().into(),
                            cause: format!("no answer within {REVALIDATE_DEADLINE:?}"),
                            retry_after: None,
                            class: crate::failure::ErrorClass::HeaderTimeout,
                        })
                    }),
                    None => revalidation.await,
                };
                match (result, known) {
                    (Ok(record), _) => Ok(record),
                    // A registry that deleted the tag: pinned content outlives it.
                    (Err(e @ MirrorError::ManifestUnknown { .. }), Some(stale)) => {
                        if !this.core.is_pinned(&stale.digest).await {
                            return Err(e);
                        }
                        tracing::warn!(upstream = %target2.upstream_name(), repo = %target2.repo, tag = %tag2,
                            digest = %stale.digest, "the upstream no longer has this tag; serving the pinned digest");
                        this.core.metrics.tag_lookup(target2.upstream.label(), "stale");
                        trace::note(CacheResult::Stale);
                        Ok(stale)
                    }
                    (Err(e @ MirrorError::ManifestUnknown { .. }), None) => Err(e),
                    (Err(e), Some(stale)) => {
                        tracing::warn!(upstream = %target2.upstream_name(), repo = %target2.repo, tag = %tag2,
                            digest = %stale.digest, error = %e, "upstream failed; serving the last known digest");
                        this.core.metrics.tag_lookup(target2.upstream.label(), "stale");
                        trace::note(CacheResult::Stale);
                        Ok(stale)
                    }
                    (Err(e), None) => Err(e),
                }
            })
            .await?
    }

    async fn revalidate_tag(
        &self,
        target: &Target,
        tag: &Tag,
        known: Option<&TagRecord>,
        accept: &[String],
    ) -> Result<TagRecord, MirrorError> {
        let upstream = target.upstream_name();
        if let Some(known) = known {
            // HEAD is free on Docker Hub's pull limit; only a changed digest costs a GET.
            let reference = Reference::Tag(tag.clone());
            let what = What::Manifest(tag.as_str());
            self.core.missing.check(target, what)?;
            let headed = target
                .upstream
                .head_manifest(&target.repo, &reference, &upstream_accept(accept))
                .await;
            let digest = self
                .core
                .missing
                .note(target, what, headed)
                .map_err(|e| MirrorError::from_upstream(upstream, &target.repo, what, e))?;
            if digest.as_ref() == Some(&known.digest)
                && self.cached_manifest(&known.digest).await.is_some()
            {
                let record = TagRecord {
                    checked: Some(Instant::now()),
                    ..known.clone()
                };
                self.tags.remember(target, tag, &record).await?;
                self.core
                    .metrics
                    .tag_lookup(target.upstream.label(), "revalidated");
                trace::note(CacheResult::Revalidated);
                return Ok(record);
            }
        }
        let manifest = self
            .fetch_manifest(
                target,
                &Reference::Tag(tag.clone()),
                None,
                &upstream_accept(accept),
            )
            .await?;
        let record = TagRecord {
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            checked: Some(Instant::now()),
        };
        self.tags.remember(target, tag, &record).await?;
        self.core
            .metrics
            .tag_lookup(target.upstream.label(), "refreshed");
        Ok(record)
    }

    /// GETs a manifest from the upstream, verifies it and stores it by digest.
    async fn fetch_manifest(
        &self,
        target: &Target,
        reference: &Reference,
        expected: Option<&Digest>,
        accept: &[&str],
    ) -> Result<Arc<Manifest>, MirrorError> {
        let upstream = target.upstream_name();
        let named = reference.to_string();
        let what = What::Manifest(&named);
        self.core.missing.check(target, what)?;
        trace::note(CacheResult::Miss);
        let fetched = target
            .upstream
            .fetch_manifest(&target.repo, reference, accept)
            .await;
        let fetched = self
            .core
            .missing
            .note(target, what, fetched)
            .map_err(|e| MirrorError::from_upstream(upstream, &target.repo, what, e))?;
        let from_fallback = fetched.fallback.clone();
        let (bytes, header_digest) = (fetched.bytes, fetched.digest);
        // The upstream's Content-Type, else the manifest's own `mediaType`; either only when
        // it is a valid media type (it becomes a header, and the stored form's header).
        let media_type = fetched
            .media_type
            .filter(|t| is_media_type(t))
            .unwrap_or_else(|| sniff_media_type(&bytes));

        // By digest: the bytes must hash to it. By tag: to the upstream's Docker-Content-Digest.
        let digest = match (expected, &header_digest) {
            (Some(want), _) => want.clone(),
            (None, Some(header)) => header.clone(),
            (None, None) => Digest::sha256_of(&bytes),
        };
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != digest {
            self.core.metrics.verify_failures.inc();
            self.core
                .metrics
                .upstream_error(target.upstream.label(), crate::failure::ErrorClass::Verify);
            return Err(MirrorError::Verification {
                upstream: upstream.into(),
                cause: format!(
                    "manifest {}:{reference} hashes to {actual}, expected {digest}",
                    target.repo
                ),
            });
        }
        if let Some(fallback) = from_fallback {
            // A tag's answer from another registry: on record, with the digest it named.
            tracing::warn!(%upstream, repo = %target.repo, %reference, %digest, %fallback,
                "manifest served by a fallback registry while the upstream is down");
        }
        // The first verified media type of a digest stays: another upstream (or a later
        // answer) serving the same bytes under another type does not change what clients get.
        if let Some(known) = self.cached_manifest(&digest).await {
            return Ok(known);
        }
        let manifest = Arc::new(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        });
        if let Err(e) = self
            .core
            .store
            .put(&keys::manifest(&digest), manifest.encode())
            .await
        {
            // Verified and kept in memory; the next replica or restart fetches it again.
            tracing::error!(%upstream, repo = %target.repo, %digest, error = %e,
                "manifest verified but could not be stored; served uncached");
        }
        self.memory.insert(digest, manifest.clone()).await;
        Ok(manifest)
    }
}

/// The full list of manifest types plus anything else the client named: a tag record is
/// shared by every client, so it is made from the richest answer (an index, not one platform).
/// Linear in the client's list, which the API has already capped.
fn upstream_accept(client: &[String]) -> Vec<&str> {
    let mut seen: std::collections::HashSet<&str> = MANIFEST_MEDIA_TYPES.iter().copied().collect();
    let mut types: Vec<&str> = MANIFEST_MEDIA_TYPES.to_vec();
    for t in client {
        if seen.insert(t.as_str()) {
            types.push(t);
        }
    }
    types
}

/// For upstreams that send no (valid) Content-Type: the manifest's own `mediaType` when it is
/// a valid media type, else OCI manifest.
fn sniff_media_type(bytes: &[u8]) -> String {
    crate::oci::ManifestDoc::declared_media_type(bytes)
        .filter(|t| is_media_type(t))
        .unwrap_or_else(|| crate::oci::OCI_MANIFEST.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips_exact_bytes() {
        let bytes = Bytes::from_static(b"{\n \"schemaVersion\": 2 }\n\n");
        let m = Manifest {
            digest: Digest::sha256_of(&bytes),
            media_type: "application/x-odd".into(),
            bytes,
        };
        assert_eq!(Manifest::decode(m.digest.clone(), m.encode()), Some(m));
    }

    #[test]
    fn upstream_accept_keeps_client_extras() {
        let client: Vec<String> = vec![
            "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            "*/*".into(),
            "application/vnd.oci.image.index.v1+json".into(),
            "*/*".into(),
        ];
        let value = upstream_accept(&client);
        assert_eq!(value.len(), 6, "known types and duplicates appear once");
        let text = value.join(", ");
        assert!(text.starts_with("application/vnd.oci.image.index.v1+json"));
        assert!(text.contains("prettyjws"));
        assert!(text.ends_with("*/*"));
    }
}

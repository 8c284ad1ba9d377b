//! The containerd-like walk over HTTP to a running berth: resolve the tag (HEAD), fetch the
//! index, the chosen platforms' manifests, then config and layers. Every body is hashed as it
//! streams and checked against its digest; nothing is kept. A blob the mirror already holds
//! (a [`Lookup::CacheOnly`] HEAD finds it) is not downloaded again. The HTTP is
//! [`crate::client`]'s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::client::{BerthClient, ClientError, Lookup};
use crate::oci::{Digest, Hasher, ManifestDoc, Platform, Reference, Tag, is_docker_schema1};

use super::error::PullError;
use super::progress::ImageProgress;
use super::references::ImageRef;

/// Warm the cache, or only ask whether it could serve everything (`--check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Warm,
    Check,
}

/// One blob or manifest the cache does not hold (`--check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// `tag v1.5.1`, `manifest sha256:…`, `config sha256:…`, `layer sha256:…`
    pub what: String,
    pub platform: Option<String>,
}

/// What happened to one image.
#[derive(Debug, Clone)]
pub struct ImageOutcome {
    pub group: String,
    pub image: ImageRef,
    /// The digest the reference resolved to (index or manifest).
    pub digest: Option<Digest>,
    /// The platforms found and walked (`single` for a single-platform image).
    pub platforms: Vec<String>,
    /// Chosen platforms the image does not offer.
    pub not_offered: Vec<String>,
    /// The index and each walked platform's manifest: what gets pinned.
    pub manifests: Vec<Digest>,
    /// Bytes of every manifest and blob of the walked platforms.
    pub size: u64,
    /// Blob bytes downloaded from the mirror in this run (0 when all was cached).
    pub downloaded: u64,
    pub blobs: usize,
    pub blobs_cached: usize,
    pub missing: Vec<Missing>,
    pub error: Option<PullError>,
    pub elapsed: Duration,
}

impl ImageOutcome {
    pub fn failed(&self) -> bool {
        self.error.is_some() || !self.missing.is_empty()
    }
}

/// Walks one image for `platforms`.
pub async fn pull(
    client: &BerthClient,
    group: &str,
    image: &ImageRef,
    platforms: &[Platform],
    mode: Mode,
    progress: &ImageProgress,
) -> ImageOutcome {
    let started = Instant::now();
    let mut outcome = ImageOutcome {
        group: group.to_string(),
        image: image.clone(),
        digest: None,
        platforms: Vec::new(),
        not_offered: Vec::new(),
        manifests: Vec::new(),
        size: 0,
        downloaded: 0,
        blobs: 0,
        blobs_cached: 0,
        missing: Vec::new(),
        error: None,
        elapsed: Duration::ZERO,
    };
    let walk = Walk {
        client,
        image,
        mode,
        progress,
    };
    if let Err(e) = walk.run(platforms, &mut outcome).await {
        outcome.error = Some(e);
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// One image's walk; `Err` ends it (`--check` records what is missing instead, where it can).
struct Walk<'a> {
    client: &'a BerthClient,
    image: &'a ImageRef,
    mode: Mode,
    progress: &'a ImageProgress,
}

/// A blob to have: config or layer of one platform.
struct BlobRef {
    kind: &'static str,
    digest: Digest,
    size: u64,
    platform: Option<String>,
}

impl Walk<'_> {
    async fn run(&self, platforms: &[Platform], out: &mut ImageOutcome) -> Result<(), PullError> {
        let root = match self.image.reference() {
            Reference::Digest(d) => d,
            Reference::Tag(tag) => match self.resolve(&tag).await? {
                Some(d) => d,
                None => {
                    out.missing.push(Missing {
                        what: format!("tag {tag}"),
                        platform: None,
                    });
                    return Ok(());
                }
            },
        };
        out.digest = Some(root.clone());
        let Some(doc) = self.manifest(&root, None, out).await? else {
            return Ok(());
        };
        let mut blobs: Vec<BlobRef> = Vec::new();
        if doc.is_index() {
            for (platform, entry) in doc.choose(platforms) {
                let Some(entry) = entry else {
                    out.not_offered.push(platform.to_string());
                    continue;
                };
                let name = platform.to_string();
                out.platforms.push(name.clone());
                if let Some(image) = self.manifest(&entry.digest, Some(&name), out).await? {
                    image_blobs(&image, Some(&name), &entry.digest, &mut blobs)?;
                }
            }
            if out.platforms.is_empty() && out.missing.is_empty() {
                return Err(PullError::Invalid {
                    what: self.image.to_string(),
                    message: format!(
                        "offers none of the platforms {}",
                        out.not_offered.join(", ")
                    ),
                });
            }
        } else {
            out.platforms.push("single".into());
            image_blobs(&doc, None, &root, &mut blobs)?;
        }
        // One HEAD/GET per distinct blob (platforms often share a config or base layer).
        let mut seen = BTreeMap::new();
        blobs.retain(|b| seen.insert(b.digest.clone(), ()).is_none());
        self.progress
            .add_total(blobs.iter().map(|b| b.size).sum::<u64>());
        for blob in &blobs {
            out.blobs += 1;
            out.size += blob.size;
            if self.blob_cached(blob).await? {
                out.blobs_cached += 1;
                self.progress.advance(blob.size);
                continue;
            }
            match self.mode {
                Mode::Check => out.missing.push(Missing {
                    what: format!("{} {}", blob.kind, blob.digest),
                    platform: blob.platform.clone(),
                }),
                Mode::Warm => out.downloaded += self.download(blob).await?,
            }
        }
        Ok(())
    }

    /// `--check` asks the cache alone.
    fn lookup(&self) -> Lookup {
        match self.mode {
            Mode::Warm => Lookup::Pull,
            Mode::Check => Lookup::CacheOnly,
        }
    }

    fn failed(&self, what: &str, e: ClientError) -> PullError {
        PullError::from_client(self.client.base(), what, e)
    }

    /// Tag → digest with a HEAD, as containerd resolves. `None`: not cached (`--check`).
    async fn resolve(&self, tag: &Tag) -> Result<Option<Digest>, PullError> {
        let image = self.image;
        let head = self
            .client
            .head_manifest(
                &image.registry,
                &image.repository,
                &Reference::Tag(tag.clone()),
                self.lookup(),
            )
            .await
            .map_err(|e| self.failed(&image.to_string(), e))?;
        Ok(head.map(|h| h.digest))
    }

    /// GETs and verifies one manifest. `None`: not cached (`--check`, recorded as missing).
    async fn manifest(
        &self,
        digest: &Digest,
        platform: Option<&str>,
        out: &mut ImageOutcome,
    ) -> Result<Option<ManifestDoc>, PullError> {
        let what = format!("{} manifest {digest}", self.image);
        let fetched = self
            .client
            .get_manifest(
                &self.image.registry,
                &self.image.repository,
                &Reference::Digest(digest.clone()),
                self.lookup(),
            )
            .await
            .map_err(|e| self.failed(&what, e))?;
        let Some(manifest) = fetched else {
            out.missing.push(Missing {
                what: format!("manifest {digest}"),
                platform: platform.map(str::to_string),
            });
            return Ok(None);
        };
        let actual = Digest::of(digest.algorithm(), &manifest.bytes);
        if &actual != digest {
            return Err(PullError::Verification {
                what,
                actual,
                expected: digest.clone(),
            });
        }
        if is_docker_schema1(&manifest.media_type) {
            return Err(PullError::Invalid {
                what,
                message:
                    "Docker schema 1 manifests are not supported (containerd 2 refuses them too)"
                        .into(),
            });
        }
        let doc = ManifestDoc::parse(&manifest.bytes).map_err(|e| PullError::Invalid {
            what: what.clone(),
            message: format!("not a manifest or index: {e}"),
        })?;
        out.manifests.push(digest.clone());
        out.size += manifest.bytes.len() as u64;
        Ok(Some(doc))
    }

    /// Does the mirror hold it (`only-if-cached` HEAD → 200)?
    async fn blob_cached(&self, blob: &BlobRef) -> Result<bool, PullError> {
        let head = self
            .client
            .head_blob(
                &self.image.registry,
                &self.image.repository,
                &blob.digest,
                Lookup::CacheOnly,
            )
            .await
            .map_err(|e| {
                self.failed(&format!("{} {} {}", self.image, blob.kind, blob.digest), e)
            })?;
        Ok(head.is_some())
    }

    /// GETs a blob through the mirror (which fills its cache), hashing as it streams.
    async fn download(&self, blob: &BlobRef) -> Result<u64, PullError> {
        let what = format!("{} {} {}", self.image, blob.kind, blob.digest);
        let body = self
            .client
            .get_blob(
                &self.image.registry,
                &self.image.repository,
                &blob.digest,
                Lookup::Pull,
            )
            .await
            .map_err(|e| self.failed(&what, e))?;
        let Some(mut body) = body else {
            return Err(PullError::Invalid {
                what,
                message: "the mirror does not hold it".into(),
            });
        };
        let mut hasher = Hasher::new(blob.digest.algorithm());
        let mut received = 0u64;
        loop {
            let chunk = match body.next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    let cause = match e {
                        ClientError::Broken { cause, .. } => cause,
                        e => e.detail(),
                    };
                    return Err(PullError::Invalid {
                        what,
                        message: format!(
                            "transfer from the mirror broke after {received} bytes: {cause}"
                        ),
                    });
                }
            };
            hasher.update(&chunk);
            received += chunk.len() as u64;
            self.progress.advance(chunk.len() as u64);
        }
        let actual = hasher.finish();
        if actual != blob.digest {
            return Err(PullError::Verification {
                what,
                actual,
                expected: blob.digest.clone(),
            });
        }
        Ok(received)
    }
}

fn image_blobs(
    doc: &ManifestDoc,
    platform: Option<&str>,
    manifest: &Digest,
    out: &mut Vec<BlobRef>,
) -> Result<(), PullError> {
    let config = doc.config.as_ref().ok_or_else(|| PullError::Invalid {
        what: format!("manifest {manifest}"),
        message: "has neither `manifests` nor `config`".into(),
    })?;
    out.push(BlobRef {
        kind: "config",
        digest: config.digest.clone(),
        size: config.size,
        platform: platform.map(str::to_string),
    });
    for layer in doc.pullable_layers() {
        out.push(BlobRef {
            kind: "layer",
            digest: layer.digest.clone(),
            size: layer.size,
            platform: platform.map(str::to_string),
        });
    }
    Ok(())
}

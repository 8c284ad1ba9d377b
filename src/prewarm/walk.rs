//! The containerd-like walk over HTTP to a running berth: resolve the tag (HEAD), fetch the
//! index, the chosen platforms' manifests, then config and layers. Every body is hashed as it
//! streams and checked against its digest; nothing is kept. A blob the mirror already holds
//! (HEAD with `Cache-Control: only-if-cached` → 200) is not downloaded again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, StatusCode};
use url::Url;

use crate::oci::{Digest, Hasher, MAX_MANIFEST_SIZE, ManifestDoc, Platform, Reference};

use super::client::{MirrorClient, PullError, cause, ok_or_status};
use super::progress::ImageProgress;
use super::references::ImageRef;

/// What containerd sends when it resolves a tag (protocol notes §1.2).
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
const ONLY_IF_CACHED: &str = "only-if-cached";

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
    client: &MirrorClient,
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
    client: &'a MirrorClient,
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
            Reference::Tag(tag) => match self.resolve(tag.as_str()).await? {
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

    fn path(&self, endpoint: &str) -> Url {
        self.client.url(
            &format!("v2/{}/{endpoint}", self.image.repository),
            Some(&self.image.registry),
        )
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, PullError> {
        let mut request = self.client.http().request(method, url);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if self.mode == Mode::Check {
            request = request.header(CACHE_CONTROL, ONLY_IF_CACHED);
        }
        request
            .send()
            .await
            .map_err(|e| self.client.unreachable(&e))
    }

    /// Tag → digest with a HEAD, as containerd resolves. `None`: not cached (`--check`).
    async fn resolve(&self, tag: &str) -> Result<Option<Digest>, PullError> {
        let what = format!("{}", self.image);
        let url = self.path(&format!("manifests/{tag}"));
        let mut response = self
            .send(Method::HEAD, url.clone(), Some(CONTAINERD_ACCEPT))
            .await?;
        if response.status() == StatusCode::GATEWAY_TIMEOUT && self.mode == Mode::Check {
            return Ok(None);
        }
        if !response.status().is_success() {
            // A HEAD error has no body; the GET's says why (containerd, too, retries as GET).
            response = self.send(Method::GET, url, Some(CONTAINERD_ACCEPT)).await?;
        }
        let response = ok_or_status(response, &what).await?;
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| PullError::Invalid {
                what,
                message: "the mirror sent no valid Docker-Content-Digest".into(),
            })?;
        Ok(Some(digest))
    }

    /// GETs and verifies one manifest. `None`: not cached (`--check`, recorded as missing).
    async fn manifest(
        &self,
        digest: &Digest,
        platform: Option<&str>,
        out: &mut ImageOutcome,
    ) -> Result<Option<ManifestDoc>, PullError> {
        let what = format!("{} manifest {digest}", self.image);
        let url = self.path(&format!("manifests/{digest}"));
        let response = self.send(Method::GET, url, Some(CONTAINERD_ACCEPT)).await?;
        if response.status() == StatusCode::GATEWAY_TIMEOUT && self.mode == Mode::Check {
            out.missing.push(Missing {
                what: format!("manifest {digest}"),
                platform: platform.map(str::to_string),
            });
            return Ok(None);
        }
        let response = ok_or_status(response, &what).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_MANIFEST_SIZE)
        {
            return Err(PullError::Invalid {
                what,
                message: "larger than the 4 MiB manifest limit".into(),
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.client.unreachable(&e))?;
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(PullError::Verification {
                what,
                actual,
                expected: digest.clone(),
            });
        }
        if content_type.starts_with("application/vnd.docker.distribution.manifest.v1") {
            return Err(PullError::Invalid {
                what,
                message:
                    "Docker schema 1 manifests are not supported (containerd 2 refuses them too)"
                        .into(),
            });
        }
        let doc = ManifestDoc::parse(&bytes).map_err(|e| PullError::Invalid {
            what: what.clone(),
            message: format!("not a manifest or index: {e}"),
        })?;
        out.manifests.push(digest.clone());
        out.size += bytes.len() as u64;
        Ok(Some(doc))
    }

    /// `HEAD` with `only-if-cached`: 200 = the mirror holds it (with the right size).
    async fn blob_cached(&self, blob: &BlobRef) -> Result<bool, PullError> {
        let url = self.path(&format!("blobs/{}", blob.digest));
        let response = self
            .client
            .http()
            .head(url)
            .header(CACHE_CONTROL, ONLY_IF_CACHED)
            .send()
            .await
            .map_err(|e| self.client.unreachable(&e))?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::GATEWAY_TIMEOUT | StatusCode::NOT_FOUND => Ok(false),
            _ => {
                let what = format!("{} {} {}", self.image, blob.kind, blob.digest);
                ok_or_status(response, &what).await.map(|_| false)
            }
        }
    }

    /// GETs a blob through the mirror (which fills its cache), hashing as it streams.
    async fn download(&self, blob: &BlobRef) -> Result<u64, PullError> {
        let what = format!("{} {} {}", self.image, blob.kind, blob.digest);
        let url = self.path(&format!("blobs/{}", blob.digest));
        let response = self.send(Method::GET, url, None).await?;
        let mut response = ok_or_status(response, &what).await?;
        let mut hasher = Hasher::new(blob.digest.algorithm());
        let mut received = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| PullError::Invalid {
            what: what.clone(),
            message: format!(
                "transfer from the mirror broke after {received} bytes: {}",
                cause(&e)
            ),
        })? {
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

//! A local disk tier in front of a shared remote store (S3): the hot tier.
//!
//! The remote store is the truth; the local tier is a cache of it and never the only copy of
//! anything, so deleting `data_dir` loses nothing:
//! - content-addressed objects (blobs, manifests) are read locally when present, else from the
//!   remote (ranged, streaming) and promoted in the background (blobs re-verified on the way);
//! - writes go to the remote first and then to the local tier, so the local tier holds only
//!   what the bucket holds;
//! - shared records (tag records, pin sets) are read from the remote, where other replicas write
//!   them, and from the local copy only when the remote cannot be reached;
//! - the local tier is bounded by its own evictor (`local_max_size`, the disk store's LRU and
//!   pin rules); the bucket is sized by its lifecycle rules.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::housekeeping::scan::ObjectKind;
use super::{BlobStore, ByteStream, Content, DiskStore, Listed, StoreError};
use crate::oci::{Digest, Hasher};

/// Promotions running at once (each streams one object from the remote to local disk).
const MAX_PROMOTIONS: usize = 4;

pub struct TieredStore {
    local: Arc<DiskStore>,
    remote: Arc<dyn BlobStore>,
    /// Where promotions write before the commit; emptied at start-up.
    promote_dir: PathBuf,
    promoting: Arc<Mutex<HashSet<String>>>,
}

impl TieredStore {
    pub fn new(local: Arc<DiskStore>, remote: Arc<dyn BlobStore>) -> std::io::Result<TieredStore> {
        let promote_dir = local.root().join("promote");
        if promote_dir.exists() {
            std::fs::remove_dir_all(&promote_dir)?;
        }
        std::fs::create_dir_all(&promote_dir)?;
        Ok(TieredStore {
            local,
            remote,
            promote_dir,
            promoting: Arc::default(),
        })
    }

    pub fn local(&self) -> &Arc<DiskStore> {
        &self.local
    }

    /// Copies `key` from the remote to the local tier in its own task, once per key at a time.
    /// Best effort: a failure only means the next read goes to the remote again.
    fn promote(&self, key: &str, size: u64) {
        {
            let mut promoting = self.promoting.lock().unwrap_or_else(|e| e.into_inner());
            if promoting.len() >= MAX_PROMOTIONS || !promoting.insert(key.to_string()) {
                return;
            }
        }
        let (local, remote) = (self.local.clone(), self.remote.clone());
        let (key, promoting) = (key.to_string(), self.promoting.clone());
        let file =
            self.promote_dir
                .join(format!("{}-{}", std::process::id(), key.replace('/', "_")));
        tokio::spawn(async move {
            // Released however the task ends.
            let _slot = PromotionSlot {
                key: key.clone(),
                set: promoting,
                file: file.clone(),
            };
            match copy_verified(remote.as_ref(), &key, size, &file).await {
                Ok(()) => {
                    if let Err(e) = local.commit_file(&key, &file).await {
                        tracing::debug!(%key, error = %e, "hot tier: promotion not committed");
                    }
                }
                Err(e) => tracing::debug!(%key, error = %e, "hot tier: promotion failed"),
            }
        });
    }
}

/// Frees a promotion's key and removes its leftover file, even if the task is cancelled.
struct PromotionSlot {
    key: String,
    set: Arc<Mutex<HashSet<String>>>,
    file: PathBuf,
}

impl Drop for PromotionSlot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The digest a content-addressed key names (`blobs/sha256/<hex>`, `manifests/sha256/<hex>`).
fn digest_of_key(key: &str) -> Option<Digest> {
    let mut parts = key.splitn(3, '/');
    let (_, alg, hex) = (parts.next()?, parts.next()?, parts.next()?);
    format!("{alg}:{hex}").parse().ok()
}

/// Streams the whole remote object into `file`, checking its digest and size before it may be
/// committed: the local tier never holds bytes the bucket would not verify to.
async fn copy_verified(
    remote: &dyn BlobStore,
    key: &str,
    size: u64,
    file: &Path,
) -> Result<(), StoreError> {
    let digest = digest_of_key(key).ok_or_else(|| StoreError::InvalidKey(key.to_string()))?;
    let mut stream = remote.read(key, 0..size).await?;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::disk::FILE_MODE)
        .open(file)
        .await
        .map_err(|e| StoreError::io(key, e))?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StoreError::io(key, e))?;
        hasher.update(&chunk);
        written += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| StoreError::io(key, e))?;
    }
    out.flush().await.map_err(|e| StoreError::io(key, e))?;
    let actual = hasher.finish();
    if written != size || actual != digest {
        return Err(StoreError::Io {
            key: key.to_string(),
            source: std::io::Error::other(format!(
                "remote copy is {written} bytes hashing to {actual}, expected {size} bytes of {digest}"
            )),
        });
    }
    Ok(())
}

fn is_content(key: &str) -> bool {
    ObjectKind::of_key(key).is_some()
}

#[async_trait::async_trait]
impl BlobStore for TieredStore {
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        if is_content(key) {
            if let Ok(Some(size)) = self.local.size(key).await {
                return Ok(Some(size));
            }
        }
        self.remote.size(key).await
    }

    async fn read(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StoreError> {
        Ok(match self.read_content(key, range).await? {
            Content::Spans(spans) => super::file_span::into_bytes(spans, super::disk::READ_CHUNK),
            Content::Bytes(bytes) => bytes,
        })
    }

    /// The hot tier's file when it has one, else S3's bytes (and the object is promoted).
    async fn read_content(&self, key: &str, range: Range<u64>) -> Result<Content, StoreError> {
        if is_content(key) {
            match self.local.read_content(key, range.clone()).await {
                Ok(content) => return Ok(content),
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::debug!(%key, error = %e, "hot tier read failed; reading S3"),
            }
            if let Ok(Some(size)) = self.remote.size(key).await {
                self.promote(key, size);
            }
        }
        Ok(Content::Bytes(self.remote.read(key, range).await?))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        if is_content(key) {
            if let Ok(Some(bytes)) = self.local.get(key).await {
                return Ok(Some(bytes));
            }
            let bytes = self.remote.get(key).await?;
            if let Some(bytes) = &bytes {
                let verified =
                    digest_of_key(key).is_some_and(|d| Digest::of(d.algorithm(), bytes) == d);
                if verified {
                    let _ = self.local.put(key, bytes.clone()).await;
                }
            }
            return Ok(bytes);
        }
        match self.remote.get(key).await {
            Ok(found) => Ok(found),
            // A shared record (tag, pin) from the local copy only while the remote is down.
            Err(remote) => match self.local.get(key).await {
                Ok(Some(bytes)) => {
                    tracing::debug!(%key, error = %remote, "S3 unreachable; local copy used");
                    Ok(Some(bytes))
                }
                _ => Err(remote),
            },
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.remote.put(key, bytes.clone()).await?;
        if let Err(e) = self.local.put(key, bytes).await {
            tracing::debug!(%key, error = %e, "hot tier: local copy not written");
        }
        Ok(())
    }

    async fn commit_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        // The remote upload takes a link to the file (the S3 store skips an upload the bucket
        // already holds); the local commit then takes the file itself.
        let upload = link_for_upload(file)
            .await
            .map_err(|e| StoreError::io(key, e))?;
        let uploaded = self.remote.commit_file(key, &upload).await;
        let _ = tokio::fs::remove_file(&upload).await;
        uploaded?;
        if let Err(e) = self.local.commit_file(key, file).await {
            tracing::debug!(%key, error = %e, "hot tier: local copy not committed");
            let _ = tokio::fs::remove_file(file).await;
        }
        Ok(())
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        self.remote.create(key, bytes).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.remote.delete(key).await?;
        self.local.delete(key).await
    }

    fn touch(&self, key: &str) {
        self.local.touch(key);
    }

    fn spooling(&self, delta: i64) {
        self.local.spooling(delta);
    }

    fn local_usage(&self) -> u64 {
        self.local.usage()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.remote.list(prefix).await
    }
}

/// A hard link beside `file` for the remote upload, which deletes what it uploaded: the
/// original stays for the local commit. (Same directory, so the link cannot cross devices.)
async fn link_for_upload(file: &Path) -> std::io::Result<PathBuf> {
    let link = file.with_extension("upload");
    let _ = tokio::fs::remove_file(&link).await;
    tokio::fs::hard_link(file, &link).await?;
    Ok(link)
}

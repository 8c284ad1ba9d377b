//! Where cached content lives: a key/value object store with range reads.
//!
//! Keys are built only from validated types (see [`keys`]). Blobs arrive as verified spool
//! files ([`BlobStore::commit_file`]); small objects (manifests, tag records) via [`BlobStore::put`].
//! Every write is atomic: a reader sees the whole object or nothing.
//!
//! Two halves. The backends: the [`BlobStore`] trait, [`DiskStore`], [`S3Store`], the hot tier
//! [`TieredStore`] (local disk in front of S3), [`keys`] and the
//! stored [`manifest_form`]. The cache's [`housekeeping`] on top of them: what is stored, what
//! was used when, what is pinned, what to evict, verify and count.

pub mod disk;
pub mod file_span;
pub mod housekeeping;
pub mod keys;
pub mod manifest_form;
mod page_cache;
mod s3;
mod tiered;

pub use housekeeping::{access, evict, pins, scan, stats, verify};

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use disk::DiskStore;
pub use file_span::{FileSpan, SpanStream};
pub use s3::S3Store;
pub use tiered::TieredStore;

pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What [`BlobStore::read_content`] gives.
pub enum Content {
    Spans(SpanStream),
    Bytes(ByteStream),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error on {key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error("invalid store key {0:?}")]
    InvalidKey(String),
    /// The remote store (S3) refused or could not be reached; the mirror falls back to upstreams.
    #[error("S3 request for {key} failed: {message}")]
    Remote { key: String, message: String },
    /// The store could not be set up from its configuration.
    #[error("store configuration: {message}")]
    Config { message: String },
}

impl StoreError {
    /// The object is not there (e.g. evicted between a size check and the read).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    pub(crate) fn io(key: &str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            key: key.to_string(),
            source,
        }
    }
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of the object, or `None` if absent.
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Streams `range` of the object (the caller has checked it against the size).
    async fn read(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StoreError>;
    /// `range` of the object as the store holds it: spans of a local file when it has one
    /// (a server can send them without copying them through memory), else streamed bytes.
    async fn read_content(&self, key: &str, range: Range<u64>) -> Result<Content, StoreError> {
        Ok(Content::Bytes(self.read(key, range).await?))
    }
    /// Reads a small object whole, or `None` if absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Writes a small object atomically.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;
    /// Adopts a complete, verified local file as the object (moving or uploading it). After
    /// `Ok` the file belongs to the store (moved, or uploaded and deleted); after `Err` it is
    /// left where it was and nothing is visible under `key`.
    async fn commit_file(&self, key: &str, file: &Path) -> Result<(), StoreError>;
    /// Writes a small object only if none has the key, atomically: `Ok(true)` created,
    /// `Ok(false)` it was there. Cross-replica fill leases are built on it.
    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Notes a use served from memory in front of the store, for LRU eviction. No I/O.
    fn touch(&self, _key: &str) {}
    /// Room reserved on local disk for fills in progress (spool files) grew (`+`) or went
    /// (`-`): a size-bounded store counts it against its limit (and evicts to make it), so
    /// fills cannot overrun the limit.
    fn spooling(&self, _delta: i64) {}
    /// Bytes of committed content on local disk (what the evictor bounds); 0 for a store
    /// with no local disk.
    fn local_usage(&self) -> u64 {
        0
    }
    /// Every object under the key path `prefix` (e.g. `blobs/sha256`), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError>;
}

/// A small object written by someone else (another replica, over a shared bucket), read only
/// when it is at most `max` bytes: its size is asked first and at most that is read, so an
/// object that grew meanwhile is not loaded whole either. `Ok(None)`: none, or too big.
pub async fn get_small(
    store: &dyn BlobStore,
    key: &str,
    max: u64,
) -> Result<Option<Bytes>, StoreError> {
    use futures::StreamExt as _;
    let Some(size) = store.size(key).await? else {
        return Ok(None);
    };
    if size > max {
        return Ok(None);
    }
    let mut stream = store.read(key, 0..size).await?;
    let mut bytes = bytes::BytesMut::with_capacity(size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StoreError::io(key, e))?;
        if (bytes.len() + chunk.len()) as u64 > max {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes.freeze()))
}

/// One object found by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

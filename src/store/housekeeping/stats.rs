//! `berth cache stats`: what the disk cache holds.

use super::evict::EvictError;
use super::pins;
use super::scan::{self, ObjectKind};
use crate::store::DiskStore;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheStats {
    pub total_bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    pub manifest_bytes: u64,
    pub tags: u64,
    pub pin_sets: u64,
    /// Bytes of stored objects that pins keep.
    pub pinned_bytes: u64,
    /// Pinned manifests not in the cache.
    pub pinned_missing: u64,
}

pub async fn collect(store: &DiskStore) -> Result<CacheStats, EvictError> {
    let root = store.root();
    let scan_error = |source| EvictError::Scan {
        dir: root.to_path_buf(),
        source,
    };
    let objects = scan::objects(root).map_err(scan_error)?;
    let names = pins::names(store).await.map_err(pins::PinError::Store)?;
    let pinned = pins::resolve(store, &names).await?;
    let mut stats = CacheStats {
        tags: scan::count_files(&root.join("tags")).map_err(scan_error)?,
        pin_sets: names.len() as u64,
        pinned_missing: pinned.missing.len() as u64,
        ..CacheStats::default()
    };
    for object in &objects {
        stats.total_bytes += object.size;
        if pinned.contains(&object.key) {
            stats.pinned_bytes += object.size;
        }
        match object.kind {
            ObjectKind::Blob => {
                stats.blobs += 1;
                stats.blob_bytes += object.size;
            }
            ObjectKind::Manifest => {
                stats.manifests += 1;
                stats.manifest_bytes += object.size;
            }
        }
    }
    Ok(stats)
}

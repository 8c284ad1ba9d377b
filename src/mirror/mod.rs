//! The use case: serve pulls from the cache, fill it from upstreams, never serve unverified bytes.

mod blobs;
mod error;
mod manifests;
mod passthrough;
mod pins;
mod routing;
mod tags;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::store::pins::{PinName, PinNameError, PinSet};
pub use blobs::{BlobBody, ByteRange};
pub use error::MirrorError;
pub use manifests::Manifest;
pub use routing::Target;

use crate::coalesce::{Fills, Singleflight};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::{Digest, Repository, Tag};
use crate::store::BlobStore;
use crate::upstream::UpstreamClient;
use tags::TagRecord;

/// Where a lookup may look: a normal pull fills the cache from the upstream; `CacheOnly`
/// (`Cache-Control: only-if-cached`) answers from what is stored and never asks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Normal,
    CacheOnly,
}

pub struct Mirror {
    config: Arc<Config>,
    upstreams: BTreeMap<String, Arc<UpstreamClient>>,
    store: Arc<dyn BlobStore>,
    metrics: Arc<Metrics>,
    blob_fills: Fills<Digest, MirrorError>,
    /// Running fill tasks, so a graceful shutdown lets them verify and commit.
    fill_tasks: tokio_util::task::TaskTracker,
    /// Manifests by digest, in memory in front of the store.
    manifests: moka::future::Cache<Digest, Arc<Manifest>>,
    manifest_flights: Singleflight<(String, Digest), Result<Arc<Manifest>, MirrorError>>,
    /// Last known tag → digest answers (also persisted in the store).
    tags: moka::sync::Cache<(String, Repository, Tag), TagRecord>,
    tag_flights: Singleflight<(String, Repository, Tag), Result<TagRecord, MirrorError>>,
}

impl Mirror {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn BlobStore>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Mirror> {
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let client = UpstreamClient::new(upstream.clone(), metrics.clone())
                .map_err(|e| std::io::Error::new(e.kind(), format!("upstream {name}: {e}")))?;
            upstreams.insert(name.clone(), Arc::new(client));
        }
        let blob_fills = Fills::new(&config.data_dir.join("spool"))?;
        let manifests = moka::future::Cache::builder()
            .weigher(|_, m: &Arc<Manifest>| m.bytes.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(config.manifest_memory_cache)
            .build();
        let tags = moka::sync::Cache::builder().max_capacity(100_000).build();
        Ok(Mirror {
            config,
            upstreams,
            store,
            metrics,
            blob_fills,
            fill_tasks: tokio_util::task::TaskTracker::new(),
            manifests,
            manifest_flights: Singleflight::default(),
            tags,
            tag_flights: Singleflight::default(),
        })
    }

    /// Waits (up to `deadline`) for running fills to finish, so content whose clients already
    /// got every byte is committed before the process exits. Call after serving stopped.
    pub async fn drain(&self, deadline: std::time::Duration) {
        self.fill_tasks.close();
        let running = self.fill_tasks.len();
        if running == 0 {
            return;
        }
        tracing::info!(running, "waiting for blob fills to finish before exiting");
        if tokio::time::timeout(deadline, self.fill_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.fill_tasks.len(),
                "blob fills still running at shutdown are abandoned; they will be fetched again"
            );
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

//! The use case: serve pulls from the cache, fill it from upstreams, never serve unverified bytes.

mod blobs;
mod error;
mod manifests;
mod passthrough;
mod pins;
mod routing;
mod status;
mod tags;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::store::pins::{PinName, PinNameError, PinSet};
pub use blobs::{BlobBody, ByteRange, fill_failure_class};
pub use error::MirrorError;
pub use manifests::Manifest;
pub use passthrough::ListingBody;
pub use routing::Target;

use crate::coalesce::{Fills, Singleflight, Slots};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::{Digest, Repository, Tag};
use crate::store::BlobStore;
use crate::upstream::UpstreamClient;
use tags::TagRecord;

/// A leader replica that sends no bytes for this long is given up for the upstream.
const FLEET_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an upstream 404 for a tag, manifest or blob is believed without asking again.
const MISSING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a lookup may look: a normal pull fills the cache from the upstream; `CacheOnly`
/// (`Cache-Control: only-if-cached`) answers from what is stored and never asks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Normal,
    CacheOnly,
}

/// The use case's state, grouped by the flow that owns it: each group is touched only by its
/// flow's file (`blobs.rs`; `manifests.rs` + `tags.rs`); the shared part is read by all.
pub struct Mirror {
    // Shared by every flow.
    config: Arc<Config>,
    upstreams: BTreeMap<String, Arc<UpstreamClient>>,
    /// Clients of registries allowed by `upstream_patterns`, made on first use.
    pattern_upstreams: routing::PatternClients,
    store: Arc<dyn BlobStore>,
    metrics: Arc<Metrics>,
    /// Recent upstream 404s (upstream, repo, tag or digest): a loop of bad references costs
    /// one upstream request per [`MISSING_TTL`], not one each.
    missing: moka::sync::Cache<(String, Repository, String), ()>,
    /// Every client request, for `/_berth/status` (`status.rs`).
    pulls: crate::pulls::PullRecord,
    pin_check: status::PinCheck,
    /// Blob fills: `blobs.rs`.
    blobs: BlobFlow,
    /// Manifests and tags: `manifests.rs`, `tags.rs`.
    refs: RefFlow,
    /// Tag lists and referrers in flight: `passthrough.rs`.
    listings: passthrough::ListingFlow,
}

/// What the blob flow owns.
struct BlobFlow {
    fills: Fills<Digest, blobs::FillError>,
    /// The global `max_fills` cap, and one per upstream (made on first use).
    slots: Slots,
    upstream_slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Slots>>>,
    /// Running fill tasks, so a graceful shutdown lets them verify and commit.
    tasks: tokio_util::task::TaskTracker,
    /// Cross-replica fills on a shared bucket (`advertise_url` with an S3 store).
    fleet: Option<crate::fleet::Fleet>,
}

/// What the manifest and tag flows own.
struct RefFlow {
    /// Manifests by digest, in memory in front of the store.
    manifests: moka::future::Cache<Digest, Arc<Manifest>>,
    manifest_flights: Singleflight<(String, Digest), Result<Arc<Manifest>, MirrorError>>,
    /// Last known tag → digest answers (also persisted in the store).
    tags: moka::sync::Cache<(String, Repository, Tag), TagRecord>,
    tag_flights: Singleflight<(String, Repository, Tag), Result<TagRecord, MirrorError>>,
    /// What a tag gave clients whose Accept excludes the shared record's type, per Accept class.
    narrow_tags:
        moka::sync::Cache<(String, Repository, Tag, String), (Digest, tokio::time::Instant)>,
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
            metrics.announce_upstream(name);
            upstreams.insert(name.clone(), Arc::new(client));
        }
        let blob_fills = Fills::new(&config.data_dir.join("spool"))?;
        let listings = passthrough::ListingFlow::new(&config.data_dir.join("spool"))?;
        let manifests = moka::future::Cache::builder()
            .weigher(|_, m: &Arc<Manifest>| m.bytes.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(config.manifest_memory_cache)
            .build();
        let tags = moka::sync::Cache::builder().max_capacity(100_000).build();
        let narrow_tags = moka::sync::Cache::builder().max_capacity(10_000).build();
        let missing = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(MISSING_TTL)
            .build();
        let fleet = match (&config.advertise_url, &config.store.kind) {
            (Some(url), crate::config::StoreKind::S3(_)) => Some(
                crate::fleet::Fleet::new(
                    url.clone(),
                    &config.server,
                    store.clone(),
                    FLEET_STALL_TIMEOUT,
                )
                .map_err(std::io::Error::other)?,
            ),
            _ => None,
        };
        let cap = config.max_fills as usize;
        let fill_slots = Slots::new(cap, cap * 4, blobs::FILL_QUEUE_WAIT);
        Ok(Mirror {
            config,
            upstreams,
            pattern_upstreams: routing::PatternClients::default(),
            store,
            metrics,
            missing,
            pulls: crate::pulls::PullRecord::default(),
            pin_check: status::PinCheck::default(),
            blobs: BlobFlow {
                fills: blob_fills,
                slots: fill_slots,
                upstream_slots: Default::default(),
                tasks: tokio_util::task::TaskTracker::new(),
                fleet,
            },
            listings,
            refs: RefFlow {
                manifests,
                manifest_flights: Singleflight::default(),
                tags,
                tag_flights: Singleflight::default(),
                narrow_tags,
            },
        })
    }

    /// Waits (up to `deadline`) for running fills to finish, so content whose clients already
    /// got every byte is committed before the process exits. Call after serving stopped.
    pub async fn drain(&self, deadline: std::time::Duration) {
        self.blobs.tasks.close();
        let running = self.blobs.tasks.len();
        if running == 0 {
            return;
        }
        tracing::info!(running, "waiting for blob fills to finish before exiting");
        if tokio::time::timeout(deadline, self.blobs.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.blobs.tasks.len(),
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

//! The use case: serve pulls from the cache, fill it from upstreams, never serve unverified bytes.
//!
//! [`Mirror`] routes a request to a [`Target`] (`routing.rs`) and hands it to the flow that
//! owns its kind of content, each a type with its own file and state:
//! - `blobs.rs` ([`Blobs`](blobs)): a verified fill, the store, a running fill, else a new
//!   fill, whose leader's steps are `blob_fill.rs`;
//! - `manifests.rs` + `tags.rs`: manifests by digest, tag freshness, stale serving;
//! - `listings.rs`: tag lists and referrers, streamed through, one upstream request for
//!   identical concurrent ones.
//!
//! `core.rs` is what every flow shares (config, store, metrics, the short memory of upstream
//! 404s, the tasks a shutdown drains); `pins.rs` and `status.rs` read across the flows.

mod blob_fill;
mod blobs;
mod core;
mod error;
mod fill_slots;
mod listings;
mod manifests;
mod pins;
mod routing;
mod spool_budget;
mod status;
mod tags;

use std::sync::Arc;
use std::time::Duration;

pub use crate::store::pins::{PinName, PinNameError, PinSet};
pub use blobs::{BlobBody, BlobQuery, BlobStream, fill_failure_class};
pub use error::MirrorError;
pub use listings::ListingBody;
pub use manifests::Manifest;
pub use routing::Target;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference};
use crate::pulls::PullRecord;
use crate::store::{BlobStore, ByteStream};
use crate::upstream::ListingKind;
use blobs::Blobs;
use core::Core;
use fill_slots::FillSlots;
use listings::Listings;
use manifests::Manifests;
use routing::Routes;
use spool_budget::SpoolBudget;

/// A leader replica that sends no bytes for this long is given up for the upstream.
const FLEET_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a lookup may look: a normal pull fills the cache from the upstream; `CacheOnly`
/// (`Cache-Control: only-if-cached`) answers from what is stored and never asks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Normal,
    CacheOnly,
}

pub struct Mirror {
    core: Arc<Core>,
    routes: Routes,
    blobs: Arc<Blobs>,
    manifests: Arc<Manifests>,
    listings: Arc<Listings>,
    /// Every client request, for `/_berth/status` (`status.rs`).
    pulls: PullRecord,
    /// Every image the cluster pulled, for the rebuild gate and `pin_history`.
    history: Arc<crate::history::History>,
    pin_check: status::PinCheck,
}

impl Mirror {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn BlobStore>,
        metrics: Arc<Metrics>,
        history: Arc<crate::history::History>,
    ) -> std::io::Result<Mirror> {
        let routes = Routes::new(config.clone(), metrics.clone())?;
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
        let core = Arc::new(Core::new(config, store, metrics, history.clone()));
        let spool_dir = core.config.data_dir.join("spool");
        // Spools live on local disk: bounded by the disk cache's limit, or the hot tier's.
        let disk_limit = match &core.config.store.kind {
            crate::config::StoreKind::Disk => core.config.store.max_size,
            crate::config::StoreKind::S3(s3) => s3.local_max_size,
        };
        let blobs = Blobs {
            fills: crate::coalesce::Fills::new(&spool_dir)?,
            slots: FillSlots::new(core.config.max_fills as usize),
            spool_budget: SpoolBudget::new(
                disk_limit,
                core.store.clone(),
                fill_slots::FILL_QUEUE_WAIT,
            ),
            fleet,
            core: core.clone(),
        };
        Ok(Mirror {
            routes,
            blobs: Arc::new(blobs),
            manifests: Arc::new(Manifests::new(core.clone())),
            listings: Arc::new(Listings::new(core.clone())?),
            core,
            pulls: PullRecord::default(),
            history,
            pin_check: status::PinCheck::default(),
        })
    }

    /// Which upstream a request is for (`routing.rs`).
    pub fn route(&self, name: &str, ns: Option<&str>) -> Result<Target, MirrorError> {
        self.routes.route(name, ns)
    }

    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        query: BlobQuery,
    ) -> Result<BlobBody, MirrorError> {
        self.blobs.get(target, digest, query).await
    }

    /// The manifest for a tag or digest, from the cache when it may be, else from the upstream.
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: &[String],
        lookup: Lookup,
    ) -> Result<Arc<Manifest>, MirrorError> {
        self.manifests.get(target, reference, accept, lookup).await
    }

    pub async fn tag_list(
        &self,
        target: &Target,
        query: Option<&str>,
    ) -> Result<ListingBody, MirrorError> {
        self.listings.get(target, ListingKind::Tags, query).await
    }

    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<ListingBody, MirrorError> {
        let kind = ListingKind::Referrers(digest.clone());
        self.listings.get(target, kind, query).await
    }

    /// A peer replica reading the fill this replica leads (`GET /_berth/fills/<digest>`).
    pub async fn peer_fill(
        &self,
        digest: &Digest,
        token: &str,
        from: u64,
    ) -> Option<(Option<u64>, ByteStream)> {
        self.blobs.peer_fill(digest, token, from).await
    }

    /// Waits (up to `deadline`) for running fills to finish, so content whose clients already
    /// got every byte is committed before the process exits. Call after serving stopped.
    pub async fn drain(&self, deadline: Duration) {
        let tasks = &self.core.tasks;
        tasks.close();
        if tasks.is_empty() {
            return;
        }
        tracing::info!(
            running = tasks.len(),
            "waiting for blob fills to finish before exiting"
        );
        if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "blob fills still running at shutdown are abandoned; they will be fetched again"
            );
        }
    }

    pub fn history(&self) -> &crate::history::History {
        &self.history
    }

    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    pub fn config(&self) -> &Config {
        &self.core.config
    }
}

//! What every flow shares: config, store, metrics, the short memory of upstream 404s, and the
//! work that outlives its client, which a graceful shutdown lets finish.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::error::Reference as What;
use super::{MirrorError, Target};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::Repository;
use crate::store::BlobStore;
use crate::upstream::UpstreamError;

/// How long an upstream 404 for a tag, manifest or blob is believed without asking again.
const MISSING_TTL: Duration = Duration::from_secs(10);

pub(super) struct Core {
    pub config: Arc<Config>,
    pub store: Arc<dyn BlobStore>,
    pub metrics: Arc<Metrics>,
    /// Every image the cluster pulled (what `pin_history` keeps).
    pub history: Arc<crate::history::History>,
    pub missing: Missing,
    /// Blob fills and shared listings run in their own tasks (a client that hangs up does not
    /// cancel them for the others); a graceful shutdown waits for them here.
    pub tasks: TaskTracker,
}

impl Core {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn BlobStore>,
        metrics: Arc<Metrics>,
        history: Arc<crate::history::History>,
    ) -> Core {
        Core {
            config,
            store,
            metrics,
            history,
            missing: Missing::new(),
            tasks: TaskTracker::new(),
        }
    }
}

impl Core {
    /// Is `digest` (a manifest) kept on purpose: named by a pin set, or pulled by the cluster
    /// within `pin_history`? Such content outlives its tag upstream.
    pub async fn is_pinned(&self, digest: &crate::oci::Digest) -> bool {
        if let Some(window) = self.config.store.pin_history {
            if self.history.digests(window).contains(digest) {
                return true;
            }
        }
        match crate::store::pins::read_all(self.store.as_ref()).await {
            Ok(sets) => sets.iter().any(|set| set.manifests.contains(digest)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pin sets");
                false
            }
        }
    }
}

/// Recent upstream 404s (upstream, repository, tag or digest): a loop of bad references costs
/// one upstream request per [`MISSING_TTL`], not one each.
pub(super) struct Missing(moka::sync::Cache<(String, Repository, String), ()>);

impl Missing {
    fn new() -> Missing {
        Missing(
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(MISSING_TTL)
                .build(),
        )
    }

    fn key(target: &Target, reference: &str) -> (String, Repository, String) {
        (
            target.upstream_name().to_string(),
            target.repo.clone(),
            reference.to_string(),
        )
    }

    /// The upstream said "not found" for `what` a moment ago: the error it would say again.
    pub fn check(&self, target: &Target, what: What<'_>) -> Result<(), MirrorError> {
        if self.0.contains_key(&Missing::key(target, what.as_str())) {
            return Err(MirrorError::from_upstream(
                target.upstream_name(),
                &target.repo,
                what,
                UpstreamError::NotFound,
            ));
        }
        Ok(())
    }

    /// Remembers `what` when `e` says the upstream does not have it; passes `e` on.
    pub fn note<T>(
        &self,
        target: &Target,
        what: What<'_>,
        result: Result<T, UpstreamError>,
    ) -> Result<T, UpstreamError> {
        if matches!(result, Err(UpstreamError::NotFound)) {
            self.0.insert(Missing::key(target, what.as_str()), ());
        }
        result
    }
}

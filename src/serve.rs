//! Running the mirror: wiring config, store, upstreams and the HTTP API.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{Config, StoreKind};
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::store::evict::{Evictor, EvictorTask};
use crate::store::{BlobStore, DiskStore, S3Store, TieredStore};

/// How long a graceful shutdown waits for running blob fills to verify and commit.
const FILL_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the mirror on `listener` until `shutdown` resolves. Shared by `berth serve` and tests.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {}; pick another with --data-dir",
            config.data_dir.display()
        )
    })?;
    let metrics = Arc::new(Metrics::default());
    // Eviction works on local disk (the cache, or S3's hot tier); a bucket is sized by its own
    // lifecycle rules.
    let (store, store_location, evictor): (Arc<dyn BlobStore>, String, Option<EvictorTask>) =
        match &config.store.kind {
            StoreKind::Disk => {
                let store = Arc::new(DiskStore::open(&config.data_dir).with_context(|| {
                    format!("cannot open the cache in {}", config.data_dir.display())
                })?);
                let evictor = EvictorTask::spawn(
                    Evictor::new(store.clone(), config.store.max_size),
                    config.store.evict_interval,
                    metrics.clone(),
                );
                (store, config.data_dir.display().to_string(), Some(evictor))
            }
            StoreKind::S3(s3) => {
                let remote = S3Store::open(s3)
                    .context("cannot set up the S3 store ([store] in the config)")?;
                let location = remote.location().to_string();
                match s3.local_max_size {
                    None => (Arc::new(remote), location, None),
                    Some(limit) => {
                        let local =
                            Arc::new(DiskStore::open(&config.data_dir).with_context(|| {
                                format!("cannot open the hot tier in {}", config.data_dir.display())
                            })?);
                        let evictor = EvictorTask::spawn(
                            Evictor::new(local.clone(), Some(limit)),
                            config.store.evict_interval,
                            metrics.clone(),
                        );
                        let tiered = TieredStore::new(local, Arc::new(remote))
                            .context("cannot prepare the hot tier's promote directory")?;
                        let location =
                            format!("{location} (hot tier in {})", config.data_dir.display());
                        (Arc::new(tiered), location, Some(evictor))
                    }
                }
            }
        };
    // Off unless `probe_interval` is set; stops when this function returns.
    let _light_probe = crate::probe::light::spawn(&config, metrics.clone());
    let mirror = Arc::new(Mirror::new(config.clone(), store, metrics)?);
    let app = crate::api::router(mirror.clone());
    tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), store = %store_location,
        upstreams = ?config.upstreams.keys().collect::<Vec<_>>(), default = %config.default_upstream, "berth is serving");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    mirror.drain(FILL_DRAIN_DEADLINE).await;
    // Last access times reach the files even when serving ended with an error.
    if let Some(evictor) = evictor {
        evictor.shutdown().await;
    }
    served?;
    Ok(())
}

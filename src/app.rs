//! Running the mirror: wiring config, store, upstreams and the HTTP API.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{Config, ServerConfig, StoreKind};
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::server::tls::Tls;
use crate::server::users::Users;
use crate::server::{self, Limits};
use crate::store::evict::{Evictor, EvictorTask};
use crate::store::{BlobStore, DiskStore, S3Store, TieredStore};

/// How long a graceful shutdown waits for running blob fills to verify and commit.
const FILL_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a graceful shutdown lets clients finish their requests; then their connections close.
const CONNECTION_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the pull history is written when it changed.
const HISTORY_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the mirror on `listener` until `shutdown` resolves. Shared by `berth serve` and tests.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    create_data_dir(&config)?;
    let metrics = Arc::new(Metrics::default());
    let history = Arc::new(crate::history::History::open(&config.data_dir));
    let opened = open_store(&config, &metrics, &history)?;
    // Off unless `probe_interval` is set; stops when this function returns.
    let _light_probe = crate::probe::light::spawn(&config, metrics.clone());
    let mirror = Arc::new(Mirror::new(
        config.clone(),
        opened.store,
        metrics,
        history.clone(),
    )?);
    if let Some(path) = &config.access_log {
        let log = crate::pulls::AccessLog::open(path).with_context(|| {
            format!(
                "cannot open access_log {}; fix the path or remove the key",
                path.display()
            )
        })?;
        mirror.pulls().log_to(log);
    }
    let history_saver = history.spawn_saver(HISTORY_SAVE_INTERVAL);

    let front = FrontDoor::open(&config.server)?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    serve_until_stopped(
        &config,
        &front,
        mirror.clone(),
        listener,
        &opened.location,
        &stop,
    )
    .await?;

    mirror.drain(FILL_DRAIN_DEADLINE).await;
    history_saver.abort();
    if let Err(e) = tokio::task::spawn_blocking(move || history.save()).await? {
        tracing::warn!(error = %e, "cannot write the pull history");
    }
    // Last access times reach the files even when serving ended with an error.
    if let Some(evictor) = opened.evictor {
        evictor.shutdown().await;
    }
    Ok(())
}

fn create_data_dir(config: &Config) -> anyhow::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(
        std::fs::DirBuilder::new().recursive(true),
        crate::store::disk::DIR_MODE,
    )
    .create(&config.data_dir)
    .with_context(|| {
        format!(
            "cannot create data_dir {}; pick another with --data-dir",
            config.data_dir.display()
        )
    })
}

/// The store, where it is (for the log), and its evictor when it has local disk.
struct OpenStore {
    store: Arc<dyn BlobStore>,
    location: String,
    evictor: Option<EvictorTask>,
}

/// Eviction works on local disk (the cache, or S3's hot tier); a bucket is sized by its own
/// lifecycle rules.
fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
    history: &Arc<crate::history::History>,
) -> anyhow::Result<OpenStore> {
    let evictor = |disk: &Arc<DiskStore>, limit: Option<u64>| {
        let mut evictor = Evictor::new(disk.clone(), limit);
        if let Some(window) = config.store.pin_history {
            // What the cluster pulled within the window stays, as if pinned.
            let history = history.clone();
            evictor = evictor.keeping(Arc::new(move || history.digests(window)));
        }
        EvictorTask::spawn(evictor, config.store.evict_interval, metrics.clone())
    };
    let open_disk = |what: &str| {
        DiskStore::open(&config.data_dir)
            .map(Arc::new)
            .with_context(|| format!("cannot open the {what} in {}", config.data_dir.display()))
    };
    let s3 = match &config.store.kind {
        StoreKind::Disk => {
            let disk = open_disk("cache")?;
            return Ok(OpenStore {
                evictor: Some(evictor(&disk, config.store.max_size)),
                store: disk,
                location: config.data_dir.display().to_string(),
            });
        }
        StoreKind::S3(s3) => s3,
    };
    let remote = S3Store::open(s3).context("cannot set up the S3 store ([store] in the config)")?;
    let location = remote.location().to_string();
    let Some(limit) = s3.local_max_size else {
        return Ok(OpenStore {
            store: Arc::new(remote),
            location,
            evictor: None,
        });
    };
    let local = open_disk("hot tier")?;
    let evictor = evictor(&local, Some(limit));
    let tiered = TieredStore::new(local, Arc::new(remote))
        .context("cannot prepare the hot tier's promote directory")?;
    Ok(OpenStore {
        store: Arc::new(tiered),
        location: format!("{location} (hot tier in {})", config.data_dir.display()),
        evictor: Some(evictor),
    })
}

/// The API behind the front door on `listener` (and the admin endpoints on `admin_listen`)
/// until `stop` is cancelled; both listeners drained.
async fn serve_until_stopped(
    config: &Config,
    front: &FrontDoor,
    mirror: Arc<Mirror>,
    listener: TcpListener,
    store_location: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let door = Arc::new(crate::api::Door {
        server: config.server.clone(),
        users: front.users.clone(),
    });
    let (public, admin) = crate::api::front_door(mirror, door);
    // One set of rules for both listeners: `allow` is checked at accept on admin_listen too.
    let limits = Limits {
        allow: config.server.allow.clone().into(),
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
        max_connections_per_client: config.server.max_connections_per_client,
        shutdown_deadline: CONNECTION_DRAIN_DEADLINE,
    };
    let acceptor = front.tls.as_ref().map(|t| t.acceptor.clone());
    let admin_task = match (admin, config.server.admin_listen) {
        (Some(router), Some(addr)) => {
            let admin_listener = server::listen(addr).with_context(|| {
                format!("cannot listen on {addr}; pick another server.admin_listen")
            })?;
            tracing::info!(admin_listen = %addr, "admin endpoints (/_berth/) are served here only");
            Some(tokio::spawn(server::serve(
                admin_listener,
                router,
                acceptor.clone(),
                limits.clone(),
                stop.clone(),
            )))
        }
        _ => None,
    };
    let local = listener.local_addr()?;
    warn_if_open_to_everyone(local, &config.server);
    for addr in std::iter::once(local).chain(config.server.admin_listen) {
        if let Some(user) = k3s_port(addr.port()) {
            tracing::warn!(listen = %addr, "this port is {user} on a K3s node; on a node, pick another port for berth");
        }
    }
    if let Some(tls) = &front.tls {
        tls.spawn_reloader(stop.clone());
    }
    if let Some(users) = &front.users {
        users.spawn_reloader(stop.clone());
    }
    tracing::info!(listen = %local, scheme = if acceptor.is_some() { "https" } else { "http" },
        client_certificates = config.server.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
        users = front.users.as_ref().map_or(0, |u| u.len()),
        data_dir = %config.data_dir.display(), store = %store_location,
        upstreams = ?config.upstreams.keys().collect::<Vec<_>>(), default = %config.default_upstream, "berth is serving");
    server::serve(listener, public, acceptor, limits, stop.clone()).await;
    stop.cancel();
    if let Some(admin) = admin_task {
        let _ = admin.await;
    }
    Ok(())
}

/// What `[server]` needs loaded before the first connection: the TLS certificate, the users.
struct FrontDoor {
    tls: Option<Tls>,
    users: Option<Arc<Users>>,
}

impl FrontDoor {
    fn open(server: &ServerConfig) -> anyhow::Result<FrontDoor> {
        let tls = server
            .tls
            .as_ref()
            .map(Tls::load)
            .transpose()
            .map_err(|e| anyhow::anyhow!("cannot serve HTTPS: {e}"))?;
        let users = server
            .users_file
            .as_deref()
            .map(Users::load)
            .transpose()
            .map_err(|e| anyhow::anyhow!("cannot load the users: {e}"))?
            .map(Arc::new);
        Ok(FrontDoor { tls, users })
    }
}

/// The ports a K3s node uses itself, and for what (berth on a node must stay off them).
fn k3s_port(port: u16) -> Option<&'static str> {
    match port {
        5001 => Some("the embedded registry mirror's peer-to-peer port (Spegel)"),
        6443 => Some("the API server's and the embedded registry mirror's"),
        10250 => Some("the kubelet's"),
        _ => None,
    }
}

/// Listening beyond the private networks with `allow` covering everyone lends berth's upstream
/// credentials and pull quota to the internet: say so.
fn warn_if_open_to_everyone(listen: std::net::SocketAddr, server: &ServerConfig) {
    if open_to_everyone(listen, server) {
        tracing::warn!(listen = %listen, users = server.users_file.is_some(),
            "berth listens on a public address and [server] allow lets every address in; \
             anyone who reaches it pulls with berth's upstream credentials. Narrow allow to your nodes' network");
    }
}

/// A public (or every: 0.0.0.0, ::) listen address, and `allow` with a /0 network.
fn open_to_everyone(listen: std::net::SocketAddr, server: &ServerConfig) -> bool {
    let private = ServerConfig::default();
    server.allows_everyone() && !private.allows(listen.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_a_k3s_node_uses_are_named_and_the_shipped_ones_are_free() {
        assert!(k3s_port(5001).is_some() && k3s_port(6443).is_some());
        let shipped =
            crate::config::Config::from_toml(include_str!("../config/berth.toml")).unwrap();
        assert!(k3s_port(shipped.listen.port()).is_none());
        let example = include_str!("../config/berth.toml")
            .lines()
            .find_map(|l| l.strip_prefix("# admin_listen = "))
            .expect("the example names an admin_listen");
        let port: u16 = example
            .trim_matches('"')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            k3s_port(port).is_none(),
            "the example admin_listen {example} is K3s's"
        );
    }

    #[test]
    fn warns_only_for_a_public_listener_open_to_everyone() {
        let everyone = ServerConfig {
            allow: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            ..ServerConfig::default()
        };
        let lan = ServerConfig::default();
        for (listen, server, warn) in [
            ("0.0.0.0:5000", &everyone, true),
            ("[::]:5000", &everyone, true),
            ("203.0.113.7:5000", &everyone, true),
            ("10.27.27.10:5000", &everyone, false),
            ("127.0.0.1:5000", &everyone, false),
            ("0.0.0.0:5000", &lan, false),
        ] {
            assert_eq!(
                open_to_everyone(listen.parse().unwrap(), server),
                warn,
                "{listen}"
            );
        }
    }
}

//! `berth serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::{Config, Overrides};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML). Without one, berth mirrors docker.io, ghcr.io, quay.io and registry.k8s.io.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:5000].
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Cache directory [default: ./data].
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Upstream for requests that name no registry [default: docker.io].
    #[arg(long, env = "BERTH_DEFAULT_UPSTREAM")]
    default_upstream: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        default_upstream: args.default_upstream,
        mirror_url: None,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = crate::server::listen(config.listen).with_context(|| {
            format!(
                "cannot listen on {}; pick another address with --listen",
                config.listen
            )
        })?;
        crate::app::run(config, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}

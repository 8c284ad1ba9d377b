//! The light probe of `berth serve`: every `probe_interval`, one timed request to each
//! upstream's `/v2/`, exported as `berth_probe_*` metrics so a dashboard shows whether the path
//! got better after a change. No bulk transfers, no DF probes: cheap enough to leave on.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::task::JoinHandle;

use super::timing::{self, Deadlines};
use crate::config::{Config, Upstream};
use crate::failure::{ErrorClass, Failure};
use crate::metrics::{Metrics, ProbeFailureLabels, ProbeLabels, ProbeStageLabels};
use crate::upstream::Connector;

/// The running probe loop; aborted on drop.
pub struct LightProbe(JoinHandle<()>);

impl Drop for LightProbe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the loop when `probe_interval` is set.
pub fn spawn(config: &Arc<Config>, metrics: Arc<Metrics>) -> Option<LightProbe> {
    let every = config.probe.interval?;
    let config = config.clone();
    Some(LightProbe(tokio::spawn(async move {
        let connectors = connectors(&config);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            probe_once(&config, &connectors, &metrics).await;
        }
    })))
}

/// Each upstream's connector as `berth serve` dials it (CA, address rule, `tcp_mss`).
fn connectors(config: &Config) -> HashMap<String, Connector> {
    config
        .upstreams
        .iter()
        .filter_map(|(name, u)| {
            let d = deadlines(u);
            match timing::connector(u, u.transport.tcp_mss, &d) {
                Ok(c) => Some((name.clone(), c)),
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "light probe: no TLS config");
                    None
                }
            }
        })
        .collect()
}

fn deadlines(upstream: &Upstream) -> Deadlines {
    let t = &upstream.transport;
    Deadlines {
        connect: t.connect_timeout,
        tls: t.tls_timeout,
        header: t.header_timeout,
        stall: t.stall_timeout,
    }
}

/// One request per upstream, concurrently; results go to the metrics.
pub async fn probe_once(
    config: &Config,
    connectors: &HashMap<String, Connector>,
    metrics: &Metrics,
) {
    join_all(config.upstreams.iter().map(|(name, upstream)| async move {
        if let Some(connector) = connectors.get(name) {
            probe_upstream(name, upstream, connector, metrics).await
        }
    }))
    .await;
}

async fn probe_upstream(name: &str, upstream: &Upstream, connector: &Connector, metrics: &Metrics) {
    let m = &metrics.probe;
    let labels = ProbeLabels {
        upstream: name.into(),
    };
    m.runs.get_or_create(&labels).inc();
    let stage = |stage: &'static str, ms: Option<f64>| {
        if let Some(ms) = ms {
            m.stage_seconds
                .get_or_create(&ProbeStageLabels {
                    upstream: name.into(),
                    stage,
                })
                .set(ms / 1000.0);
        }
    };
    let failed = |class: String| {
        m.failures
            .get_or_create(&ProbeFailureLabels {
                upstream: name.into(),
                class,
            })
            .inc();
        m.up.get_or_create(&labels).set(0);
    };
    let Ok(url) = upstream.url.join("/v2/") else {
        return;
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let (dns_ms, addrs) = timing::resolve(&host, port).await;
    let addr = match addrs.map(|a| a.first().copied()) {
        Ok(Some(addr)) => addr,
        _ => return failed(Failure::plain(ErrorClass::Dns).name()),
    };
    stage("dns", Some(dns_ms));
    let sample = timing::request_once(&url, addr, connector, deadlines(upstream), false).await;
    stage("connect", sample.connect_ms);
    stage("tls", sample.tls_ms);
    stage("ttfb", sample.ttfb_ms);
    stage("total", sample.total_ms);
    match sample.failure {
        Some(class) => {
            tracing::warn!(upstream = %name, %url, class = %class, error = sample.error.as_deref().unwrap_or(""),
                "light probe failed");
            failed(class.name());
        }
        None => {
            m.up.get_or_create(&labels).set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn results_become_metrics() {
        // A registry that answers 401 (a working path) and a port where nothing listens.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = Config::from_toml(&format!(
            "probe_interval = \"10s\"\n[upstreams.\"ok.test\"]\nurl = \"http://{ok}\"\n\
             [upstreams.\"down.test\"]\nurl = \"http://{closed}\"\n"
        ))
        .unwrap();
        let metrics = Metrics::default();
        probe_once(&config, &connectors(&config), &metrics).await;
        let text = metrics.encode();
        assert!(
            text.contains("berth_probe_up{upstream=\"ok.test\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_probe_up{upstream=\"down.test\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_probe_failures_total{upstream=\"down.test\",class=\"connect_refused\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("berth_probe_stage_seconds{upstream=\"ok.test\",stage=\"total\"}"),
            "{text}"
        );
        server.abort();
    }
}

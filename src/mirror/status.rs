//! The status report: upstream health, failures by image and node, fills, cache, pins.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Mirror;
use crate::metrics::{CacheLabels, UpstreamNameLabels};
use crate::pulls::PullRecord;
use crate::status::{
    BlackHoleStatus, CacheStatus, FillStatus, PinStatus, StatusReport, UpstreamStatus,
};
use crate::store::pins;

/// Pin completeness walks every pinned manifest: worked out at most this often.
const PIN_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Blob presence checks per pin set per walk.
const MAX_PIN_BLOB_CHECKS: usize = 5_000;

/// The last pin completeness answer, so an auto-refreshing page does not walk every minute
/// per open browser tab.
#[derive(Default)]
pub(super) struct PinCheck(Mutex<Option<(Instant, Vec<PinStatus>)>>);

impl Mirror {
    pub fn pulls(&self) -> &PullRecord {
        &self.pulls
    }

    /// `since`: failures of the recent past only (from the ring of recent requests).
    ///
    /// Upstreams: the configured ones, then the registries `upstream_patterns` allowed that
    /// have a client now (by name).
    pub async fn status(&self, since: Option<Duration>) -> StatusReport {
        self.refresh_gauges();
        let pulls = &self.pulls;
        let facts = pulls.registries();
        let upstreams = self
            .routes
            .clients()
            .iter()
            .map(|client| {
                let name = client.name();
                let fact = facts.get(name).cloned().unwrap_or_default();
                let (last_error_at, last_error_class, last_error) = match fact.last_error {
                    Some((at, class, message)) => (Some(unix(at)), class, Some(message)),
                    None => (None, None, None),
                };
                let remaining = self
                    .core
                    .metrics
                    .upstream_ratelimit_remaining
                    .get(&UpstreamNameLabels {
                        upstream: client.label().to_string(),
                    })
                    .map(|g| g.get());
                UpstreamStatus {
                    name: name.to_string(),
                    url: client.config().url.to_string(),
                    state: client.state().as_str().to_string(),
                    requests: fact.requests,
                    failures: fact.failures,
                    last_success: fact.last_success.map(unix),
                    last_error_at,
                    last_error_class,
                    last_error,
                    p50_ms: pulls
                        .median_latency(name)
                        .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
                    ratelimit_remaining: remaining,
                    black_hole: client.black_hole().map(|c| BlackHoleStatus {
                        host: c.host,
                        address: c.address,
                        mss: c.mss,
                        since: unix(c.since),
                    }),
                    proxy: client.proxy().map(str::to_string),
                    fallbacks: client
                        .fallback_states()
                        .into_iter()
                        .map(|f| crate::status::FallbackStatus {
                            url: f.url,
                            state: f.state.to_string(),
                            served: f.served,
                            last_served: f.last_served.map(unix),
                        })
                        .collect(),
                }
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generated_at: unix(SystemTime::now()),
            started_at: unix(pulls.started()),
            since_seconds: since.map(|d| d.as_secs()),
            requests: pulls.requests(),
            upstreams,
            failures: self.named(pulls.failures(since)),
            fills: self.fill_status(),
            cache: self.cache_status(),
            pins: self.pin_status().await,
        }
    }

    /// Failures with node names where `[nodes]` knows them: by node, the name beside the
    /// address; by image, the names instead of the addresses.
    fn named(&self, mut failures: crate::status::Failures) -> crate::status::Failures {
        let names = &self.core.config.nodes;
        let name_of = |address: &str| {
            address
                .parse()
                .ok()
                .and_then(|ip| names.name(ip))
                .map(str::to_string)
        };
        for node in &mut failures.by_node {
            node.name = name_of(&node.node);
        }
        for image in &mut failures.by_image {
            for node in &mut image.nodes {
                if let Some(name) = name_of(node) {
                    *node = name;
                }
            }
        }
        failures
    }

    /// Gauges that are a view of live state, brought up to date for a scrape or a report.
    /// A pattern's series shows the worst state among the registries it let in that have a
    /// client now; with none, it is up.
    pub fn refresh_gauges(&self) {
        let mut states = std::collections::BTreeMap::new();
        for pattern in self.core.config.upstream_patterns.patterns() {
            states.insert(pattern.to_string(), 0);
        }
        for client in self.routes.clients() {
            let state = states.entry(client.label().to_string()).or_insert(0);
            *state = (*state).max(client.state().gauge());
        }
        for (upstream, state) in states {
            self.core
                .metrics
                .upstream_state
                .get_or_create(&UpstreamNameLabels { upstream })
                .set(state);
        }
        let fills = self.blobs.fills.progress();
        self.core.metrics.fills_in_flight.set(fills.len() as i64);
        let waiters: usize = fills.iter().map(|(_, p)| p.readers).sum();
        self.core.metrics.fill_waiters.set(waiters as i64);
        self.core
            .metrics
            .cache_max_bytes
            .set(self.core.config.store.max_size.unwrap_or(0) as i64);
    }

    fn fill_status(&self) -> Vec<FillStatus> {
        let mut fills: Vec<FillStatus> = self
            .blobs
            .fills
            .progress()
            .into_iter()
            .map(|((_, digest), p)| {
                let seconds = p.age.as_secs_f64();
                FillStatus {
                    digest: digest.to_string(),
                    bytes: p.written,
                    total: p.total,
                    percent: p
                        .total
                        .filter(|t| *t > 0)
                        .map(|t| (p.written as f64 * 100.0 / t as f64).min(100.0)),
                    bytes_per_second: if seconds > 0.0 {
                        (p.written as f64 / seconds) as u64
                    } else {
                        0
                    },
                    waiters: p.readers as u64,
                    seconds,
                }
            })
            .collect();
        fills.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        fills
    }

    fn cache_status(&self) -> CacheStatus {
        let count = |result: &'static str| -> u64 {
            ["manifest", "blob"]
                .iter()
                .filter_map(|kind| {
                    self.core
                        .metrics
                        .cache_lookups
                        .get(&CacheLabels { kind, result })
                        .map(|c| c.get())
                })
                .sum()
        };
        let (hits, misses) = (count("hit"), count("miss"));
        CacheStatus {
            bytes: self.core.metrics.cache_bytes.get().max(0) as u64,
            limit: self.core.config.store.max_size,
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        }
    }

    async fn pin_status(&self) -> Vec<PinStatus> {
        if let Some((at, statuses)) = &*self.pin_check.0.lock().unwrap() {
            if at.elapsed() < PIN_CHECK_INTERVAL {
                return statuses.clone();
            }
        }
        let store = self.core.store.as_ref();
        let mut statuses = Vec::new();
        let names = match pins::names(store).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list pin sets for the status page");
                return statuses;
            }
        };
        for name in names {
            let (set, pinned) = match (
                pins::read(store, &name).await,
                pins::resolve(store, std::slice::from_ref(&name)).await,
            ) {
                (Ok(Some(set)), Ok(pinned)) => (set, pinned),
                _ => continue,
            };
            let mut missing = (pinned.missing.len() + pinned.unreadable.len()) as u64;
            for key in pinned
                .keys
                .iter()
                .filter(|k| k.starts_with("blobs/"))
                .take(MAX_PIN_BLOB_CHECKS)
            {
                if !matches!(store.size(key).await, Ok(Some(_))) {
                    missing += 1;
                }
            }
            statuses.push(PinStatus {
                name: name.to_string(),
                manifests: set.manifests.len() as u64,
                complete: missing == 0,
                missing,
            });
        }
        *self.pin_check.0.lock().unwrap() = Some((Instant::now(), statuses.clone()));
        statuses
    }
}

fn unix(at: SystemTime) -> u64 {
    crate::pulls::unix_seconds(at)
}

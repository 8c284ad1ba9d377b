//! Prometheus metrics, served at `/metrics`. Names follow `berth_<thing>_<unit>`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::failure::ErrorClass;

pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms … ~16 s: connects, handshakes, first bytes, client requests.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// 50 ms … ~14 min: whole blob fills.
fn fill_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// An empty family of [`latency_histogram`]s.
fn latency_family<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency_histogram)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOutcomeLabels {
    pub upstream: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamNameLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamEndpointLabels {
    pub upstream: String,
    /// A `fallback_urls` entry's host (and port): from the config, so the series stay few.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamClassLabels {
    pub upstream: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

/// `berth_build_info{version, commit} 1`: which build a replica runs, for joins and upgrades.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Requests sent upstream, by kind (manifest, blob, tags, referrers, token).
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// Body bytes received from upstreams for blob fills.
    pub upstream_blob_bytes: Family<UpstreamLabels, Counter>,
    /// Tag answers: fresh, revalidated, refreshed, stale (served while upstream failed).
    pub tag_lookups: Family<UpstreamOutcomeLabels, Counter>,
    /// Cache hits and misses for manifests and blobs.
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// Blob bytes sent to clients.
    pub served_bytes: Counter,
    /// Fills that failed verification (digest or size mismatch).
    pub verify_failures: Counter,
    /// Blobs and manifests deleted to keep the cache under `max_size`.
    pub cache_evictions: Counter,
    /// Bytes of blobs and manifests in the cache.
    pub cache_bytes: Gauge,
    /// `[store] max_size` (0 when unset), so alerts can compare without knowing the config.
    pub cache_max_bytes: Gauge,
    /// Upstream failures by class (see [`ErrorClass`]); every attempt counts, retried or not.
    pub upstream_errors: Family<UpstreamClassLabels, Counter>,
    /// The circuit breaker: 0 up, 1 probing, 2 down. Set at scrape time.
    pub upstream_state: Family<UpstreamNameLabels, Gauge>,
    pub upstream_connect_seconds: Histograms<UpstreamNameLabels>,
    pub upstream_tls_handshake_seconds: Histograms<UpstreamNameLabels>,
    /// From sending a request to its response headers.
    pub upstream_first_byte_seconds: Histograms<UpstreamNameLabels>,
    /// Docker Hub's `ratelimit-remaining`, as last seen.
    pub upstream_ratelimit_remaining: Family<UpstreamNameLabels, Gauge>,
    /// Range resumes of broken blob transfers.
    pub upstream_resumes: Family<UpstreamNameLabels, Counter>,
    /// The MSS clamp berth put on an upstream's connections after a PMTU black hole (the
    /// smallest in force over its hosts); 0 = full-size segments.
    pub upstream_mss: Family<UpstreamNameLabels, Gauge>,
    /// Times a clamped connection worked where full-size segments did not.
    pub upstream_mss_fallbacks: Family<UpstreamNameLabels, Counter>,
    /// Requests a `fallback_urls` endpoint answered while the upstream's own path was down.
    pub upstream_fallbacks: Family<UpstreamEndpointLabels, Counter>,
    /// Whole blob fills (download, verify, commit) by outcome (ok, failed).
    pub blob_fill_seconds: Histograms<UpstreamOutcomeLabels>,
    /// Blob fills running now, and client responses following them. Set at scrape time.
    pub fills_in_flight: Gauge,
    pub fill_waiters: Gauge,
    /// Store operations that failed (disk full, S3 errors).
    pub store_errors: Counter,
    /// Answers served from the cache because the upstream failed (stale tags).
    pub stale_answers: Family<UpstreamNameLabels, Counter>,
    /// Client requests by endpoint kind and HTTP status, and their latency to the last byte.
    pub client_requests: Family<ClientLabels, Counter>,
    pub client_request_seconds: Histograms<EndpointLabels>,
    /// The light probe of `berth serve` (`probe_interval`).
    pub probe: ProbeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        // Registration order is the order of `/metrics`: the probe's families come first.
        let probe = ProbeMetrics::register(&mut registry);
        register_build_info(&mut registry);
        let mut metrics = Metrics::unregistered(registry, probe);
        metrics.register_traffic();
        metrics.register_cache();
        metrics.register_upstream_health();
        metrics.register_fills_and_store();
        metrics.register_clients();
        metrics
    }
}

/// Always 1; the labels carry the information (the `node_exporter` `*_build_info` idiom).
fn register_build_info(registry: &mut Registry) {
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info
        .get_or_create(&BuildLabels {
            version: crate::build_info::VERSION,
            commit: crate::build_info::COMMIT,
        })
        .set(1);
    registry.register(
        "build_info",
        "The running berth's version and git commit (value 1)",
        build_info,
    );
}

impl Metrics {
    /// Every family empty, none registered yet (the `register_*` steps do that).
    fn unregistered(registry: Registry, probe: ProbeMetrics) -> Metrics {
        Metrics {
            registry,
            upstream_requests: Family::default(),
            upstream_blob_bytes: Family::default(),
            tag_lookups: Family::default(),
            cache_lookups: Family::default(),
            served_bytes: Counter::default(),
            verify_failures: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Gauge::default(),
            cache_max_bytes: Gauge::default(),
            upstream_errors: Family::default(),
            upstream_state: Family::default(),
            upstream_connect_seconds: latency_family(),
            upstream_tls_handshake_seconds: latency_family(),
            upstream_first_byte_seconds: latency_family(),
            upstream_ratelimit_remaining: Family::default(),
            upstream_resumes: Family::default(),
            upstream_mss: Family::default(),
            upstream_mss_fallbacks: Family::default(),
            upstream_fallbacks: Family::default(),
            blob_fill_seconds: Family::new_with_constructor(fill_histogram),
            fills_in_flight: Gauge::default(),
            fill_waiters: Gauge::default(),
            store_errors: Counter::default(),
            stale_answers: Family::default(),
            client_requests: Family::default(),
            client_request_seconds: latency_family(),
            probe,
        }
    }

    /// What flows through the mirror: upstream requests and bytes, tag and cache lookups.
    fn register_traffic(&mut self) {
        let r = &mut self.registry;
        r.register(
            "upstream_requests",
            "Requests sent to upstream registries",
            self.upstream_requests.clone(),
        );
        r.register(
            "upstream_blob_bytes",
            "Blob body bytes received from upstreams",
            self.upstream_blob_bytes.clone(),
        );
        r.register(
            "tag_lookups",
            "Tag resolutions by outcome",
            self.tag_lookups.clone(),
        );
        r.register(
            "cache_lookups",
            "Cache lookups by kind and result",
            self.cache_lookups.clone(),
        );
        r.register(
            "served_blob_bytes",
            "Blob bytes sent to clients",
            self.served_bytes.clone(),
        );
    }

    /// The cache: upstream content refused for failing verification, evictions, size and limit.
    fn register_cache(&mut self) {
        let r = &mut self.registry;
        r.register(
            "verify_failures",
            "Upstream content that failed digest verification",
            self.verify_failures.clone(),
        );
        r.register(
            "cache_evictions",
            "Blobs and manifests evicted to stay under max_size",
            self.cache_evictions.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes of blobs and manifests in the cache",
            self.cache_bytes.clone(),
        );
        r.register(
            "cache_max_bytes",
            "The cache's size limit ([store] max_size; 0 = none)",
            self.cache_max_bytes.clone(),
        );
    }

    /// How each upstream answers: failures, breaker state, timings, rate limit, resumes.
    fn register_upstream_health(&mut self) {
        let r = &mut self.registry;
        r.register(
            "upstream_errors",
            "Upstream failures by class (dns, connect, tls_handshake, header_timeout, stall, reset, status_5xx, status_429, verify, ...)",
            self.upstream_errors.clone(),
        );
        r.register(
            "upstream_state",
            "Circuit breaker state: 0 up, 1 probing, 2 down",
            self.upstream_state.clone(),
        );
        r.register(
            "upstream_connect_seconds",
            "TCP connect time to upstreams",
            self.upstream_connect_seconds.clone(),
        );
        r.register(
            "upstream_tls_handshake_seconds",
            "TLS handshake time with upstreams",
            self.upstream_tls_handshake_seconds.clone(),
        );
        r.register(
            "upstream_first_byte_seconds",
            "Time from sending an upstream request to its response headers",
            self.upstream_first_byte_seconds.clone(),
        );
        r.register(
            "upstream_ratelimit_remaining",
            "Docker Hub ratelimit-remaining as last seen",
            self.upstream_ratelimit_remaining.clone(),
        );
        r.register(
            "upstream_resumes",
            "Range resumes of broken blob transfers",
            self.upstream_resumes.clone(),
        );
        r.register(
            "upstream_mss",
            "MSS clamp in force after a path MTU black hole (0 = full-size segments)",
            self.upstream_mss.clone(),
        );
        r.register(
            "upstream_mss_fallbacks",
            "Clamped connections that worked where full-size segments did not",
            self.upstream_mss_fallbacks.clone(),
        );
        r.register(
            "upstream_fallback",
            "Requests a fallback_urls endpoint answered while the upstream's own path was down",
            self.upstream_fallbacks.clone(),
        );
    }

    /// Blob fills and their waiters, the store's failures, and answers served stale.
    fn register_fills_and_store(&mut self) {
        let r = &mut self.registry;
        r.register(
            "blob_fill_seconds",
            "Blob fills from upstream (download, verify, commit) by outcome",
            self.blob_fill_seconds.clone(),
        );
        r.register(
            "fills_in_flight",
            "Blob fills running now",
            self.fills_in_flight.clone(),
        );
        r.register(
            "fill_waiters",
            "Client responses following a running blob fill",
            self.fill_waiters.clone(),
        );
        r.register(
            "store_errors",
            "Failed store operations",
            self.store_errors.clone(),
        );
        r.register(
            "stale_answers",
            "Answers served from the cache because the upstream failed",
            self.stale_answers.clone(),
        );
    }

    /// Client requests by endpoint and status, and their latency.
    fn register_clients(&mut self) {
        let r = &mut self.registry;
        r.register(
            "client_requests",
            "Client requests by endpoint kind and HTTP status",
            self.client_requests.clone(),
        );
        r.register(
            "client_request_seconds",
            "Client request latency to the last byte, by endpoint kind",
            self.client_request_seconds.clone(),
        );
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn upstream_request(&self, upstream: &str, kind: &'static str) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                upstream: upstream.into(),
                kind,
            })
            .inc();
    }

    /// Times a blob fill; observed as `failed` when dropped without [`FillTimer::ok`].
    pub fn blob_fill_timer(&self, upstream: &str) -> FillTimer {
        FillTimer {
            family: self.blob_fill_seconds.clone(),
            upstream: upstream.to_string(),
            started: std::time::Instant::now(),
            outcome: "failed",
        }
    }

    pub fn tag_lookup(&self, upstream: &str, outcome: &'static str) {
        if outcome == "stale" {
            self.stale_answers
                .get_or_create(&UpstreamNameLabels {
                    upstream: upstream.into(),
                })
                .inc();
        }
        self.tag_lookups
            .get_or_create(&UpstreamOutcomeLabels {
                upstream: upstream.into(),
                outcome,
            })
            .inc();
    }

    /// Creates the per-upstream series at start, so dashboards and alerts see zeros, not gaps.
    pub fn announce_upstream(&self, upstream: &str) {
        let labels = UpstreamNameLabels {
            upstream: upstream.into(),
        };
        let _ = self.upstream_state.get_or_create(&labels);
        let _ = self.stale_answers.get_or_create(&labels);
        let _ = self.upstream_resumes.get_or_create(&labels);
        let _ = self.upstream_mss.get_or_create(&labels);
        let _ = self.upstream_mss_fallbacks.get_or_create(&labels);
    }

    pub fn upstream_error(&self, upstream: &str, class: ErrorClass) {
        self.upstream_errors
            .get_or_create(&UpstreamClassLabels {
                upstream: upstream.into(),
                class: class.as_str(),
            })
            .inc();
    }

    pub fn client_request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.client_requests
            .get_or_create(&ClientLabels { endpoint, status })
            .inc();
        self.client_request_seconds
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    pub fn upstream_histogram(
        family: &Histograms<UpstreamNameLabels>,
        upstream: &str,
        seconds: f64,
    ) {
        family
            .get_or_create(&UpstreamNameLabels {
                upstream: upstream.into(),
            })
            .observe(seconds);
    }

    pub fn cache_lookup(&self, kind: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels { kind, result })
            .inc();
    }
}

/// See [`Metrics::blob_fill_timer`].
pub struct FillTimer {
    family: Histograms<UpstreamOutcomeLabels>,
    upstream: String,
    started: std::time::Instant,
    outcome: &'static str,
}

impl FillTimer {
    pub fn ok(mut self) {
        self.outcome = "ok";
    }
}

impl Drop for FillTimer {
    fn drop(&mut self) {
        self.family
            .get_or_create(&UpstreamOutcomeLabels {
                upstream: std::mem::take(&mut self.upstream),
                outcome: self.outcome,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeStageLabels {
    pub upstream: String,
    /// dns, connect, tls, ttfb, total
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeFailureLabels {
    pub upstream: String,
    /// The failure class `berth probe` names (`tls_handshake_timeout`, `reset`, `http_503`, …).
    pub class: String,
}

/// Results of the light probe: the last answer per upstream and failure counts by class.
pub struct ProbeMetrics {
    pub up: Family<ProbeLabels, Gauge>,
    pub stage_seconds: Family<ProbeStageLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub runs: Family<ProbeLabels, Counter>,
    pub failures: Family<ProbeFailureLabels, Counter>,
}

impl ProbeMetrics {
    fn register(registry: &mut Registry) -> ProbeMetrics {
        let m = ProbeMetrics {
            up: Family::default(),
            stage_seconds: Family::default(),
            runs: Family::default(),
            failures: Family::default(),
        };
        registry.register(
            "probe_up",
            "1 if the last light probe of the upstream's /v2/ succeeded, else 0",
            m.up.clone(),
        );
        registry.register(
            "probe_stage_seconds",
            "Seconds each stage (dns, connect, tls, ttfb, total) of the last light probe took",
            m.stage_seconds.clone(),
        );
        registry.register("probe_runs", "Light probes run", m.runs.clone());
        registry.register(
            "probe_failures",
            "Light probes that failed, by failure class",
            m.failures.clone(),
        );
        m
    }
}

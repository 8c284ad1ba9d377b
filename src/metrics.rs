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
        let upstream_requests = Family::default();
        let upstream_blob_bytes = Family::default();
        let tag_lookups = Family::default();
        let cache_lookups = Family::default();
        let served_bytes = Counter::default();
        let verify_failures = Counter::default();
        let cache_evictions = Counter::default();
        let cache_bytes = Gauge::default();
        let cache_max_bytes = Gauge::default();
        let upstream_errors = Family::default();
        let upstream_state = Family::default();
        let upstream_connect_seconds: Histograms<_> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_tls_handshake_seconds: Histograms<_> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_first_byte_seconds: Histograms<_> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_ratelimit_remaining = Family::default();
        let upstream_resumes = Family::default();
        let blob_fill_seconds: Histograms<_> =
            Family::new_with_constructor(fill_histogram as fn() -> Histogram);
        let fills_in_flight = Gauge::default();
        let fill_waiters = Gauge::default();
        let store_errors = Counter::default();
        let stale_answers = Family::default();
        let client_requests = Family::default();
        let client_request_seconds: Histograms<_> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let probe = ProbeMetrics::register(&mut registry);
        registry.register(
            "upstream_requests",
            "Requests sent to upstream registries",
            upstream_requests.clone(),
        );
        registry.register(
            "upstream_blob_bytes",
            "Blob body bytes received from upstreams",
            upstream_blob_bytes.clone(),
        );
        registry.register(
            "tag_lookups",
            "Tag resolutions by outcome",
            tag_lookups.clone(),
        );
        registry.register(
            "cache_lookups",
            "Cache lookups by kind and result",
            cache_lookups.clone(),
        );
        registry.register(
            "served_blob_bytes",
            "Blob bytes sent to clients",
            served_bytes.clone(),
        );
        registry.register(
            "verify_failures",
            "Upstream content that failed digest verification",
            verify_failures.clone(),
        );
        registry.register(
            "cache_evictions",
            "Blobs and manifests evicted to stay under max_size",
            cache_evictions.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes of blobs and manifests in the cache",
            cache_bytes.clone(),
        );
        registry.register(
            "cache_max_bytes",
            "The cache's size limit ([store] max_size; 0 = none)",
            cache_max_bytes.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by class (dns, connect, tls_handshake, header_timeout, stall, reset, status_5xx, status_429, verify, ...)",
            upstream_errors.clone(),
        );
        registry.register(
            "upstream_state",
            "Circuit breaker state: 0 up, 1 probing, 2 down",
            upstream_state.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "TCP connect time to upstreams",
            upstream_connect_seconds.clone(),
        );
        registry.register(
            "upstream_tls_handshake_seconds",
            "TLS handshake time with upstreams",
            upstream_tls_handshake_seconds.clone(),
        );
        registry.register(
            "upstream_first_byte_seconds",
            "Time from sending an upstream request to its response headers",
            upstream_first_byte_seconds.clone(),
        );
        registry.register(
            "upstream_ratelimit_remaining",
            "Docker Hub ratelimit-remaining as last seen",
            upstream_ratelimit_remaining.clone(),
        );
        registry.register(
            "upstream_resumes",
            "Range resumes of broken blob transfers",
            upstream_resumes.clone(),
        );
        registry.register(
            "blob_fill_seconds",
            "Blob fills from upstream (download, verify, commit) by outcome",
            blob_fill_seconds.clone(),
        );
        registry.register(
            "fills_in_flight",
            "Blob fills running now",
            fills_in_flight.clone(),
        );
        registry.register(
            "fill_waiters",
            "Client responses following a running blob fill",
            fill_waiters.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations",
            store_errors.clone(),
        );
        registry.register(
            "stale_answers",
            "Answers served from the cache because the upstream failed",
            stale_answers.clone(),
        );
        registry.register(
            "client_requests",
            "Client requests by endpoint kind and HTTP status",
            client_requests.clone(),
        );
        registry.register(
            "client_request_seconds",
            "Client request latency to the last byte, by endpoint kind",
            client_request_seconds.clone(),
        );
        Metrics {
            registry,
            cache_max_bytes,
            upstream_errors,
            upstream_state,
            upstream_connect_seconds,
            upstream_tls_handshake_seconds,
            upstream_first_byte_seconds,
            upstream_ratelimit_remaining,
            upstream_resumes,
            blob_fill_seconds,
            fills_in_flight,
            fill_waiters,
            store_errors,
            stale_answers,
            client_requests,
            client_request_seconds,
            upstream_requests,
            upstream_blob_bytes,
            tag_lookups,
            cache_lookups,
            served_bytes,
            verify_failures,
            cache_evictions,
            cache_bytes,
            probe,
        }
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

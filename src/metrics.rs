//! Prometheus metrics, served at `/metrics`. Names follow `berth_<thing>_<unit>`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
        Metrics {
            registry,
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

    pub fn tag_lookup(&self, upstream: &str, outcome: &'static str) {
        self.tag_lookups
            .get_or_create(&UpstreamOutcomeLabels {
                upstream: upstream.into(),
                outcome,
            })
            .inc();
    }

    pub fn cache_lookup(&self, kind: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels { kind, result })
            .inc();
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

//! What happened to every pull: a bounded in-memory record of recent requests (a ring) and
//! failure aggregates since start, grouped by image and by node. Fed by the API (one entry
//! per client request); read by `/_berth/status`. Every map is bounded, because clients
//! choose the names and the addresses.

mod access_log;
mod failures;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub use access_log::AccessLog;
pub use failures::{Failures, ImageFailures, NodeFailures, unix_seconds};

use crate::failure::ErrorClass;
use crate::trace::CacheResult;
use failures::FailureTable;

/// Longest registry, repository or reference a record keeps (OCI names stop at 255).
const MAX_NAME_BYTES: usize = 256;
/// Longest error message a record keeps.
pub const MAX_ERROR_BYTES: usize = 512;

/// Requests kept for `--since` queries and latency percentiles.
pub const RING_CAPACITY: usize = 10_000;

/// One client request, as the API saw it.
#[derive(Debug, Clone)]
pub struct Pull {
    pub at: SystemTime,
    pub client: Option<IpAddr>,
    /// The client's name from `[nodes]`, where berth knows one.
    pub node: Option<String>,
    pub registry: String,
    pub repository: String,
    /// Tag or digest (blobs: the digest).
    pub reference: String,
    pub kind: &'static str,
    pub status: u16,
    /// Set for failures berth can name (upstream classes, store, verification, client error).
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub bytes: u64,
    pub duration: Duration,
    /// Where the answer came from; `None` when it never got that far (a refused request).
    pub cache: Option<CacheResult>,
    /// Upstream requests sent for this request (retries and resumes included; 0 for a hit or
    /// for a request that joined another's fetch).
    pub upstream_attempts: u32,
}

impl Pull {
    /// A pull failed when the client did not get what it asked for. 401 is the auth dance of
    /// a client that has not sent credentials yet, and the 504 of a `Cache-Control:
    /// only-if-cached` miss (what `berth prewarm` asks before each download and `--check`
    /// asks throughout) is an answer to a question, not a failure.
    pub fn failed(&self) -> bool {
        self.status >= 400 && self.status != 401 && self.error_class != Some(ErrorClass::NotCached)
    }

    /// Bounds every string a client or an upstream chose, before it is kept or logged (the
    /// API validates names; this is the record's own guarantee).
    fn clip(&mut self) {
        use crate::text::clip_owned;
        clip_owned(&mut self.registry, MAX_NAME_BYTES);
        clip_owned(&mut self.repository, MAX_NAME_BYTES);
        clip_owned(&mut self.reference, MAX_NAME_BYTES);
        if let Some(error) = &mut self.error {
            clip_owned(error, MAX_ERROR_BYTES);
        }
    }

    /// `registry/repository`: what failures are grouped by.
    pub fn image(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Per-registry facts since start.
#[derive(Debug, Clone, Default)]
pub struct RegistryFacts {
    pub requests: u64,
    pub failures: u64,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<(SystemTime, Option<ErrorClass>, String)>,
}

pub struct PullRecord {
    started: SystemTime,
    inner: Mutex<Inner>,
    access_log: std::sync::OnceLock<AccessLog>,
}

struct Inner {
    ring: VecDeque<Pull>,
    capacity: usize,
    requests: u64,
    failures: FailureTable,
    registries: HashMap<String, RegistryFacts>,
}

/// Registries are configured names or `?ns=` values that routed; still, never unbounded.
const MAX_REGISTRIES: usize = 256;

impl Default for PullRecord {
    fn default() -> Self {
        PullRecord::with_capacity(RING_CAPACITY)
    }
}

impl PullRecord {
    pub fn with_capacity(capacity: usize) -> PullRecord {
        PullRecord {
            started: SystemTime::now(),
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity.min(1024)),
                capacity: capacity.max(1),
                requests: 0,
                failures: FailureTable::default(),
                registries: HashMap::new(),
            }),
            access_log: std::sync::OnceLock::new(),
        }
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Every request added from now on is also written to `log`.
    pub fn log_to(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    pub fn add(&self, mut pull: Pull) {
        pull.clip();
        if let Some(log) = self.access_log.get() {
            log.write(&pull);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.requests += 1;
        if inner.registries.len() < MAX_REGISTRIES || inner.registries.contains_key(&pull.registry)
        {
            let facts = inner.registries.entry(pull.registry.clone()).or_default();
            facts.requests += 1;
            if pull.failed() {
                facts.failures += 1;
                let message = pull
                    .error
                    .clone()
                    .unwrap_or_else(|| status_words(pull.status));
                facts.last_error = Some((pull.at, pull.error_class, message));
            } else {
                facts.last_success = Some(pull.at);
            }
        }
        if pull.failed() {
            inner.failures.add(&pull);
        }
        if inner.ring.len() == inner.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(pull);
    }

    /// Requests recorded since start.
    pub fn requests(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
    }

    pub fn registries(&self) -> HashMap<String, RegistryFacts> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.registries.clone()
    }

    /// Failures grouped by image and node: since start, or (`since`) over the recent ring.
    pub fn failures(&self, since: Option<Duration>) -> Failures {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match since {
            None => inner.failures.report(),
            Some(window) => {
                let from = SystemTime::now()
                    .checked_sub(window)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let mut table = FailureTable::default();
                for pull in inner.ring.iter().filter(|p| p.at >= from && p.failed()) {
                    table.add(pull);
                }
                table.report()
            }
        }
    }

    /// Median duration of the recent requests to `registry` that reached an answer.
    pub fn median_latency(&self, registry: &str) -> Option<Duration> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut durations: Vec<Duration> = inner
            .ring
            .iter()
            .filter(|p| p.registry == registry && !p.failed())
            .map(|p| p.duration)
            .collect();
        if durations.is_empty() {
            return None;
        }
        let middle = durations.len() / 2;
        Some(*durations.select_nth_unstable(middle).1)
    }

    /// The most recent requests, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Pull> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.iter().rev().take(limit).cloned().collect()
    }
}

fn status_words(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP {status} {reason}").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(client: &str, repo: &str, status: u16, class: Option<ErrorClass>) -> Pull {
        Pull {
            at: SystemTime::now(),
            client: Some(client.parse().unwrap()),
            node: None,
            registry: "ghcr.io".into(),
            repository: repo.into(),
            reference: "v1".into(),
            kind: "manifest",
            status,
            error_class: class,
            error: class.map(|c| c.in_words().to_string()),
            bytes: 10,
            duration: Duration::from_millis(5),
            cache: None,
            upstream_attempts: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_requests_and_aggregates_keep_everything() {
        let record = PullRecord::with_capacity(3);
        for i in 0..5 {
            record.add(pull(
                "10.0.0.1",
                &format!("app{i}"),
                502,
                Some(ErrorClass::Reset),
            ));
        }
        assert_eq!(record.recent(10).len(), 3);
        assert_eq!(record.recent(10)[0].repository, "app4", "newest first");
        assert_eq!(record.requests(), 5);
        let failures = record.failures(None);
        assert_eq!(failures.by_image.len(), 5, "aggregates outlive the ring");
        assert_eq!(failures.by_node[0].count, 5);
        let recent = record.failures(Some(Duration::from_secs(60)));
        assert_eq!(recent.by_image.len(), 3, "--since reads the ring");
    }

    #[test]
    fn failures_are_grouped_by_image_and_by_node() {
        let record = PullRecord::default();
        record.add(pull("10.0.0.1", "org/app", 502, Some(ErrorClass::Reset)));
        record.add(pull("10.0.0.2", "org/app", 502, Some(ErrorClass::Stall)));
        record.add(pull("10.0.0.2", "org/db", 404, Some(ErrorClass::NotFound)));
        record.add(pull("10.0.0.3", "org/db", 200, None));
        record.add(pull("10.0.0.3", "org/db", 401, None));
        record.add(pull("10.0.0.3", "org/db", 504, Some(ErrorClass::NotCached)));
        let failures = record.failures(None);
        let app = &failures.by_image[0];
        assert_eq!(app.image, "ghcr.io/org/app");
        assert_eq!(app.count, 2);
        assert_eq!(app.nodes, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(app.last_error_class, Some(ErrorClass::Stall));
        let node = failures
            .by_node
            .iter()
            .find(|n| n.node == "10.0.0.2")
            .unwrap();
        assert_eq!(node.count, 2);
        assert_eq!(node.images, ["ghcr.io/org/app", "ghcr.io/org/db"]);
        assert!(
            failures.by_node.iter().all(|n| n.node != "10.0.0.3"),
            "a 200, a 401 challenge and an only-if-cached miss are not failures"
        );
        let facts = &record.registries()["ghcr.io"];
        assert_eq!((facts.requests, facts.failures), (6, 3));
        assert!(facts.last_success.is_some());
    }

    #[test]
    fn median_latency_ignores_failures() {
        let record = PullRecord::default();
        for ms in [1, 2, 3, 100, 200] {
            let mut p = pull("10.0.0.1", "a", 200, None);
            p.duration = Duration::from_millis(ms);
            record.add(p);
        }
        let mut failed = pull("10.0.0.1", "a", 502, None);
        failed.duration = Duration::from_secs(30);
        record.add(failed);
        assert_eq!(
            record.median_latency("ghcr.io"),
            Some(Duration::from_millis(3))
        );
        assert_eq!(record.median_latency("quay.io"), None);
    }
}

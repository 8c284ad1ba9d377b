//! The status report of `/_berth/status`: one set of types for the JSON (stable keys), the
//! HTML page a person opens in a browser, and `berth status` in a terminal.

mod html;
mod text;

use serde::{Deserialize, Serialize};

pub use crate::pulls::{Failures, ImageFailures, NodeFailures};
pub use html::render_html;
pub use text::render_text;

/// Seconds between refreshes of the HTML page.
pub const REFRESH_SECONDS: u32 = 10;

/// A `since` window longer than this is "since start" anyway for a ring of 10,000 requests.
pub const MAX_SINCE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    /// Seconds since the Unix epoch.
    pub generated_at: u64,
    pub started_at: u64,
    /// `failures` covers this many recent seconds (`?since=`), or everything since start.
    pub since_seconds: Option<u64>,
    /// Client requests recorded since start.
    pub requests: u64,
    pub upstreams: Vec<UpstreamStatus>,
    pub failures: Failures,
    pub fills: Vec<FillStatus>,
    pub cache: CacheStatus,
    pub pins: Vec<PinStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub url: String,
    /// `up`, `probing` or `down` (the circuit breaker).
    pub state: String,
    pub requests: u64,
    pub failures: u64,
    pub last_success: Option<u64>,
    pub last_error_at: Option<u64>,
    pub last_error_class: Option<crate::failure::ErrorClass>,
    pub last_error: Option<String>,
    /// Median client latency of recent successful requests, milliseconds.
    pub p50_ms: Option<u64>,
    /// Docker Hub's `ratelimit-remaining`, when the upstream sent one.
    pub ratelimit_remaining: Option<i64>,
    /// The MSS clamp berth put on this upstream's connections after a PMTU black hole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub black_hole: Option<BlackHoleStatus>,
    /// The proxy its traffic goes through, `http://host:port` (never its credentials).
    #[serde(default)]
    pub proxy: Option<String>,
    /// `fallback_urls`, in order, and what each served while the upstream was down.
    #[serde(default)]
    pub fallbacks: Vec<FallbackStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackStatus {
    pub url: String,
    /// `up`, `probing` or `down` (its own circuit breaker).
    pub state: String,
    /// Requests it answered while the upstream's own path was down.
    pub served: u64,
    pub last_served: Option<u64>,
}

/// A clamp in force: which host showed the black-hole signature, at which address, and since
/// when (unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlackHoleStatus {
    pub host: String,
    pub address: String,
    pub mss: u32,
    pub since: u64,
}

impl BlackHoleStatus {
    /// "clamped to 1360 since 3m ago (ghcr.io:443 at 140.82.121.34:443)", for both views.
    pub fn describe(&self, now: u64) -> String {
        let at = if self.address == self.host {
            String::new()
        } else {
            format!(" at {}", self.address)
        };
        format!(
            "clamped to MSS {} since {} ({}{at})",
            self.mss,
            ago(now, self.since),
            self.host
        )
    }
}

/// What the status views suggest to confirm a clamp.
pub const CONFIRM_BLACK_HOLE: &str = "berth probe --config <berth.toml>";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillStatus {
    pub digest: String,
    pub bytes: u64,
    pub total: Option<u64>,
    pub percent: Option<f64>,
    pub bytes_per_second: u64,
    /// Client responses following this fill.
    pub waiters: u64,
    pub seconds: f64,
}

impl FillStatus {
    /// The blob's size as people read it (`?` when the upstream did not say).
    pub fn total_text(&self) -> String {
        self.total.map(human_bytes).unwrap_or_else(|| "?".into())
    }

    /// How far along, `42%` (`–` without a size).
    pub fn percent_text(&self) -> String {
        self.percent
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "–".into())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheStatus {
    pub bytes: u64,
    /// `[store] max_size`, if set.
    pub limit: Option<u64>,
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinStatus {
    pub name: String,
    pub manifests: u64,
    /// Every pinned manifest and the blobs they name are in the cache.
    pub complete: bool,
    pub missing: u64,
}

/// "3m ago" style ages for people.
pub fn ago(now: u64, at: u64) -> String {
    let secs = now.saturating_sub(at);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h{:02}m ago", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d ago", secs / 86_400),
    }
}

pub use crate::units::human_bytes;

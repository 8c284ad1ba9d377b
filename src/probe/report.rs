//! The probe report: one JSON document with stable keys (`--json`), and its text rendering.

pub use super::handshakes::mss_label;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::path::PathFacts;

/// Bumped when a key changes meaning; `compare` refuses reports of another version.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub berth_version: String,
    /// The host the probe ran on (what `compare` labels its column with).
    pub host: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub settings: Settings,
    pub path: PathFacts,
    pub targets: Vec<TargetReport>,
    pub bulk: Vec<BulkReport>,
    pub verdicts: Vec<Verdict>,
    /// Things the probe could not do, and why.
    pub notes: Vec<String>,
}

/// One named cause (or `healthy`), with what showed it and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `pmtu_black_hole`, `tls_handshake_timeouts`, `dns_slow_or_failing`, `ipv6_broken`,
    /// `resets`, `connect_failing`, `stalls`, `http_errors`, `bulk_failures`, `healthy`.
    pub kind: String,
    /// The host (or image) it concerns; `*` for the whole path.
    pub target: String,
    pub evidence: String,
    pub fix: String,
    /// For `pmtu_black_hole`: the MSS to clamp to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_mss: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub rounds: u32,
    pub interval_ms: u64,
    pub mss: Vec<u32>,
    pub bulk_bytes: u64,
    pub connect_timeout_ms: u64,
    pub tls_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub stall_timeout_ms: u64,
}

/// Milliseconds: median, 90th percentile, worst, over the successful samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub samples: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        // Nearest-rank percentile: an actual sample, never an interpolation.
        let rank = |p: f64| {
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            round1(v[i])
        };
        if v.is_empty() {
            return Stats::default();
        }
        Stats {
            samples: v.len(),
            p50_ms: Some(rank(0.5)),
            p90_ms: Some(rank(0.9)),
            max_ms: v.last().copied().map(round1),
        }
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Request timings of one target: everything, per address family and per address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub url: String,
    pub host: String,
    /// `registry`, `token`, `cdn` (discovered) or `custom` (`--target`).
    pub role: String,
    pub upstream: Option<String>,
    pub dns: DnsReport,
    pub attempts: u32,
    pub ok: u32,
    /// Failure counts by class (`dns`, `connect_timeout`, … `http_503`).
    pub failures: BTreeMap<String, u32>,
    /// `ipv4` / `ipv6`.
    pub families: BTreeMap<String, Timings>,
    pub addresses: Vec<AddressTimings>,
    /// Handshakes at each MSS, when this target's TLS handshakes timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<super::handshakes::HandshakeComparison>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsReport {
    pub lookups: u32,
    pub failures: u32,
    pub time: Stats,
    /// Every address returned (A and AAAA), in resolver order.
    pub addresses: Vec<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub attempts: u32,
    pub ok: u32,
    pub failures: BTreeMap<String, u32>,
    pub connect: Stats,
    pub tls: Stats,
    pub ttfb: Stats,
    pub total: Stats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddressTimings {
    pub address: String,
    pub family: String,
    #[serde(flatten)]
    pub timings: Timings,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// Bulk transfers of one image's largest layer, once per MSS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkReport {
    pub image: String,
    pub upstream: String,
    pub layer: Option<String>,
    pub layer_size: Option<u64>,
    /// Where the blob bytes came from (the CDN host after redirects).
    pub blob_host: Option<String>,
    /// `scheme://host[:port]` of the same, probed as a `cdn` target.
    pub blob_origin: Option<String>,
    pub runs: Vec<BulkRun>,
    /// Why no transfer was tried (the manifest could not be read, …).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkRun {
    /// `None`: the system's default MSS.
    pub mss: Option<u32>,
    /// `complete`, or the failure class (`stall`, `reset`, `connect_timeout`, …).
    pub outcome: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_s: f64,
    pub error: Option<String>,
}

impl BulkRun {
    pub fn completed(&self) -> bool {
        self.outcome == "complete"
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

fn failures_text(failures: &BTreeMap<String, u32>) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    failures
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// Exit status of `berth probe`: healthy or not.
    pub fn healthy(&self) -> bool {
        self.verdicts.iter().all(|v| v.kind == "healthy")
    }

    /// The text a person reads: path facts, one line per target and family, bulk transfers,
    /// then the verdicts with evidence and fix.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "berth probe on {} at {} ({} round{}, {:.1} s)",
            self.host,
            self.started_at,
            self.settings.rounds,
            if self.settings.rounds == 1 { "" } else { "s" },
            self.duration_ms as f64 / 1000.0
        );
        out.push_str(&self.path.render());
        let _ = writeln!(
            out,
            "\nrequests (ms, p50/p90/max over successes)\n  {:<44} {:<5} {:>7} {:>14} {:>14} {:>14} {:>14}  failures",
            "target", "fam", "ok", "dns", "connect", "tls", "ttfb/total"
        );
        for t in &self.targets {
            let dns = format!(
                "{}/{}/{}",
                ms(t.dns.time.p50_ms),
                ms(t.dns.time.p90_ms),
                ms(t.dns.time.max_ms)
            );
            if t.families.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<44} {:<5} {:>7} {:>14} {:>14} {:>14} {:>14}  {}",
                    short(&t.url, 44),
                    "-",
                    format!("{}/{}", t.ok, t.attempts),
                    dns,
                    "-",
                    "-",
                    "-",
                    failures_text(&t.failures)
                );
            }
            for (family, f) in &t.families {
                let triple =
                    |s: &Stats| format!("{}/{}/{}", ms(s.p50_ms), ms(s.p90_ms), ms(s.max_ms));
                let _ = writeln!(
                    out,
                    "  {:<44} {:<5} {:>7} {:>14} {:>14} {:>14} {:>14}  {}",
                    short(&t.url, 44),
                    family,
                    format!("{}/{}", f.ok, f.attempts),
                    dns,
                    triple(&f.connect),
                    triple(&f.tls),
                    format!("{}/{}", ms(f.ttfb.p50_ms), ms(f.total.p50_ms)),
                    failures_text(&f.failures)
                );
            }
            if !t.dns.addresses.is_empty() {
                let _ = writeln!(out, "      addresses: {}", t.dns.addresses.join(" "));
            }
            if let Some(h) = &t.handshakes {
                let mtu = h
                    .path_mtu
                    .map(|m| {
                        format!(
                            "; largest working MSS {} ({m} bytes on the wire)",
                            h.largest_mss.unwrap_or(0)
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "      TLS handshakes to {} at each MSS: {}{mtu}",
                    h.address,
                    h.summary()
                );
            }
        }
        if !self.bulk.is_empty() {
            let _ = writeln!(
                out,
                "\nbulk transfers (largest layer, fresh connection per MSS)"
            );
        }
        for b in &self.bulk {
            let _ = writeln!(
                out,
                "  {} via {} (layer {} bytes from {})",
                b.image,
                b.upstream,
                b.layer_size.map_or("?".into(), |s| s.to_string()),
                b.blob_host.as_deref().unwrap_or("?")
            );
            if let Some(e) = &b.error {
                let _ = writeln!(out, "    not measured: {e}");
            }
            for r in &b.runs {
                let _ = writeln!(
                    out,
                    "    mss {:<8} {:<16} {:>10} bytes in {:>7.2} s  {:>7.2} MiB/s{}",
                    mss_label(r.mss),
                    r.outcome,
                    r.bytes,
                    r.seconds,
                    r.mib_per_s,
                    r.error
                        .as_deref()
                        .map(|e| format!("  ({e})"))
                        .unwrap_or_default()
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes");
            for n in &self.notes {
                let _ = writeln!(out, "  - {n}");
            }
        }
        let _ = writeln!(out, "\nverdicts");
        for v in &self.verdicts {
            let _ = writeln!(out, "  {} [{}]", v.kind, v.target);
            let _ = writeln!(out, "    evidence: {}", v.evidence);
            let _ = writeln!(out, "    fix: {}", v.fix);
        }
        out
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_samples() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 100.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(s.samples, 10);
        assert_eq!(s.p50_ms, Some(5.0));
        assert_eq!(s.p90_ms, Some(9.0));
        assert_eq!(s.max_ms, Some(100.0));
        assert_eq!(Stats::of(&[]), Stats::default());
        assert_eq!(Stats::of(&[2.25]).p90_ms, Some(2.3));
    }
}

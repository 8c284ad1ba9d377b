//! `berth status` in a terminal: what a rebuild workflow prints when a rollout fails.

use std::fmt::Write as _;

use super::{StatusReport, ago, human_bytes};

pub fn render_text(report: &StatusReport) -> String {
    let now = report.generated_at;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "berth {} · up since {} · {} requests",
        report.version,
        ago(now, report.started_at),
        report.requests
    );
    let _ = writeln!(out, "\nUpstreams");
    for u in &report.upstreams {
        let p50 = u
            .p50_ms
            .map(|ms| format!("p50 {ms} ms"))
            .unwrap_or_else(|| "p50 –".into());
        let last_ok = u
            .last_success
            .map(|t| format!("last ok {}", ago(now, t)))
            .unwrap_or_else(|| "never ok".into());
        let _ = writeln!(
            out,
            "  {:<22} {:<8} {} requests, {} failed, {p50}, {last_ok}",
            u.name, u.state, u.requests, u.failures
        );
        if let (Some(error), Some(at)) = (&u.last_error, u.last_error_at) {
            let words = u.last_error_class.map(|c| c.in_words()).unwrap_or("failed");
            let _ = writeln!(
                out,
                "  {:<22} last error {}: {words}: {error}",
                "",
                ago(now, at)
            );
        }
        if let Some(left) = u.ratelimit_remaining {
            let _ = writeln!(out, "  {:<22} rate limit remaining: {left}", "");
        }
    }
    let window = match report.since_seconds {
        Some(s) => format!("in the last {}", ago(s, 0).trim_end_matches(" ago")),
        None => "since start".into(),
    };
    let _ = writeln!(out, "\nFailed pulls by image ({window})");
    if report.failures.by_image.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for f in &report.failures.by_image {
        let words = f.last_error_class.map(|c| c.in_words()).unwrap_or("failed");
        let _ = writeln!(
            out,
            "  {}:{}  {}× on {}\n      {words} (HTTP {}): {}  [{}]",
            f.image,
            short_reference(&f.last_reference),
            f.count,
            f.nodes.join(", "),
            f.last_status,
            f.last_error,
            ago(now, f.last_at),
        );
    }
    let _ = writeln!(out, "\nFailed pulls by node ({window})");
    if report.failures.by_node.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for n in &report.failures.by_node {
        let _ = writeln!(out, "  {:<16} {}× {}", n.node, n.count, n.images.join(", "));
    }
    if !report.fills.is_empty() {
        let _ = writeln!(out, "\nFills in progress");
        for f in &report.fills {
            let _ = writeln!(
                out,
                "  {}  {} of {} ({}), {}/s, {} waiting",
                short_reference(&f.digest),
                human_bytes(f.bytes),
                f.total.map(human_bytes).unwrap_or_else(|| "?".into()),
                f.percent
                    .map(|p| format!("{p:.0}%"))
                    .unwrap_or_else(|| "–".into()),
                human_bytes(f.bytes_per_second),
                f.waiters
            );
        }
    }
    let c = &report.cache;
    let _ = writeln!(
        out,
        "\nCache  {} of {}, hit ratio {}",
        human_bytes(c.bytes),
        c.limit
            .map(human_bytes)
            .unwrap_or_else(|| "no limit".into()),
        c.hit_ratio
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "–".into())
    );
    for p in &report.pins {
        let state = if p.complete {
            "complete".to_string()
        } else {
            format!("{} missing", p.missing)
        };
        let _ = writeln!(out, "Pins   {}: {} manifests, {state}", p.name, p.manifests);
    }
    out
}

/// `sha256:0123456789ab…` is enough to tell digests apart on a terminal line.
fn short_reference(reference: &str) -> String {
    match reference.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 && algo.starts_with("sha") => {
            format!("{algo}:{}…", &hex[..12])
        }
        _ => reference.to_string(),
    }
}

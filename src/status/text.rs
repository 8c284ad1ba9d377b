//! `berth status` in a terminal: what a rebuild workflow prints when a rollout fails.

use std::fmt::Write as _;

use super::{FillStatus, StatusReport, ago, human_bytes};
use crate::text::{first_chars, printable as p};

pub fn render_text(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "berth {} · up since {} · {} requests",
        p(&report.version),
        ago(report.generated_at, report.started_at),
        report.requests
    );
    write_upstreams(&mut out, report);
    let window = failure_window(report);
    write_failures_by_image(&mut out, report, &window);
    write_failures_by_node(&mut out, report, &window);
    write_fills(&mut out, &report.fills);
    write_cache_and_pins(&mut out, report);
    out
}

/// One line per upstream, plus its last error and rate limit when there are any.
fn write_upstreams(out: &mut String, report: &StatusReport) {
    let now = report.generated_at;
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
            p(&u.name),
            p(&u.state),
            u.requests,
            u.failures
        );
        if let (Some(error), Some(at)) = (&u.last_error, u.last_error_at) {
            let words = u.last_error_class.map(|c| c.in_words()).unwrap_or("failed");
            let _ = writeln!(
                out,
                "  {:<22} last error {}: {words}: {}",
                "",
                ago(now, at),
                p(error)
            );
        }
        if let Some(left) = u.ratelimit_remaining {
            let _ = writeln!(out, "  {:<22} rate limit remaining: {left}", "");
        }
        if let Some(hole) = &u.black_hole {
            let _ = writeln!(
                out,
                "  {:<22} black hole: {}; confirm with `{}`",
                "",
                p(&hole.describe(now)),
                super::CONFIRM_BLACK_HOLE
            );
        }
        if let Some(proxy) = &u.proxy {
            let _ = writeln!(out, "  {:<22} via proxy {}", "", p(proxy));
        }
        for f in &u.fallbacks {
            let last = f
                .last_served
                .map(|t| format!(", last {}", ago(now, t)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<22} fallback {} {}, served {}{last}",
                "",
                p(&f.url),
                p(&f.state),
                f.served
            );
        }
    }
}

/// The span the failure sections cover, for their headings: `in the last 1h`, or `since start`.
fn failure_window(report: &StatusReport) -> String {
    match report.since_seconds {
        Some(s) => format!("in the last {}", ago(s, 0).trim_end_matches(" ago")),
        None => "since start".into(),
    }
}

fn write_failures_by_image(out: &mut String, report: &StatusReport, window: &str) {
    let _ = writeln!(out, "\nFailed pulls by image ({window})");
    if report.failures.by_image.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for f in &report.failures.by_image {
        let words = f.last_error_class.map(|c| c.in_words()).unwrap_or("failed");
        let _ = writeln!(
            out,
            "  {}:{}  {}× on {}\n      {words} (HTTP {}): {}  [{}]",
            p(&f.image),
            short_reference(&f.last_reference),
            f.count,
            p(&f.nodes.join(", ")),
            f.last_status,
            p(&f.last_error),
            ago(report.generated_at, f.last_at),
        );
    }
}

fn write_failures_by_node(out: &mut String, report: &StatusReport, window: &str) {
    let _ = writeln!(out, "\nFailed pulls by node ({window})");
    if report.failures.by_node.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for n in &report.failures.by_node {
        let node = match &n.name {
            Some(name) => format!("{} ({})", p(name), p(&n.node)),
            None => p(&n.node).into_owned(),
        };
        let _ = writeln!(out, "  {node:<16} {}× {}", n.count, p(&n.images.join(", ")));
    }
}

/// Only while fills run (the HTML page shows an empty table instead).
fn write_fills(out: &mut String, fills: &[FillStatus]) {
    if fills.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nFills in progress");
    for f in fills {
        let _ = writeln!(
            out,
            "  {}  {} of {} ({}), {}/s, {} waiting",
            short_reference(&f.digest),
            human_bytes(f.bytes),
            f.total_text(),
            f.percent_text(),
            human_bytes(f.bytes_per_second),
            f.waiters
        );
    }
}

/// The cache line, then one line per pin set.
fn write_cache_and_pins(out: &mut String, report: &StatusReport) {
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
    for pin in &report.pins {
        let state = if pin.complete {
            "complete".to_string()
        } else {
            format!("{} missing", pin.missing)
        };
        let _ = writeln!(
            out,
            "Pins   {}: {} manifests, {state}",
            p(&pin.name),
            pin.manifests
        );
    }
}

/// `sha256:0123456789ab…` is enough to tell digests apart on a terminal line. The reference
/// comes from a remote report: escaped, and cut by characters, not bytes.
fn short_reference(reference: &str) -> String {
    match reference.split_once(':') {
        Some((algo, hex)) if hex.chars().count() > 12 && algo.starts_with("sha") => {
            format!("{}:{}…", p(algo), p(first_chars(hex, 12)))
        }
        _ => p(reference).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Failures, ImageFailures};

    #[test]
    fn strings_from_the_report_cannot_forge_lines_or_panic() {
        let report = StatusReport {
            generated_at: 100,
            failures: Failures {
                by_image: vec![ImageFailures {
                    image: "ghcr.io/org/app\r\n  all good\u{1b}[32m".into(),
                    count: 1,
                    nodes: vec!["10.0.0.1".into()],
                    last_error_class: None,
                    last_error: "boom\nforged line".into(),
                    last_reference: format!("sha256:{}", "é".repeat(40)),
                    last_status: 502,
                    last_at: 90,
                }],
                by_node: vec![],
            },
            ..StatusReport::default()
        };
        let text = render_text(&report);
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(
            !text.contains("\n  all good"),
            "a client string started a line: {text}"
        );
        assert!(text.contains("sha256:éééééééééééé…"), "{text}");
    }

    #[test]
    fn an_upstream_shows_its_proxy_and_what_each_fallback_served() {
        let upstream = crate::status::UpstreamStatus {
            name: "docker.io".into(),
            url: "https://registry-1.docker.io/".into(),
            state: "down".into(),
            requests: 5,
            failures: 2,
            proxy: Some("http://proxy.lan:3128".into()),
            fallbacks: vec![crate::status::FallbackStatus {
                url: "https://mirror.gcr.io/".into(),
                state: "up".into(),
                served: 3,
                last_served: Some(90),
            }],
            ..crate::status::UpstreamStatus::default()
        };
        let report = StatusReport {
            generated_at: 100,
            upstreams: vec![upstream],
            ..StatusReport::default()
        };
        let text = render_text(&report);
        assert!(text.contains("via proxy http://proxy.lan:3128"), "{text}");
        assert!(
            text.contains("fallback https://mirror.gcr.io/ up, served 3, last 10s ago"),
            "{text}"
        );
        let html = super::super::render_html(&report);
        assert!(
            html.contains("data-fallback=\"https://mirror.gcr.io/\""),
            "{html}"
        );
    }
}

//! The status page: server-rendered HTML, inline CSS, no script, refreshes itself; tables
//! scroll sideways on a phone instead of squeezing.

use std::fmt::Write as _;

use super::{CacheStatus, FillStatus, PinStatus, REFRESH_SECONDS, StatusReport, ago, human_bytes};

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:.5rem 1rem;color:#1a1a1a;background:#fafafa}\
h1{font-size:1.3rem;margin:.3rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .3rem;border-bottom:1px solid #ccc}\
.meta{color:#555}.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{text-align:left;overflow-wrap:anywhere;padding:.25rem .5rem;border-bottom:1px solid #e3e3e3;vertical-align:top}th{background:#eee;white-space:nowrap}\
td.num{text-align:right;white-space:nowrap}.up{color:#176d1e;font-weight:600}.probing{color:#a06000;font-weight:600}\
.down{color:#b00020;font-weight:600}.class{font-family:ui-monospace,monospace;background:#fde8e8;padding:0 .25rem;border-radius:3px}\
.none{color:#777;font-style:italic}code{font-family:ui-monospace,monospace;word-break:break-all}";

pub fn render_html(report: &StatusReport) -> String {
    let mut out = String::with_capacity(16 * 1024);
    write_head(&mut out, report);
    write_upstreams(&mut out, report);
    let window = failure_window(report);
    write_failures_by_image(&mut out, report, &window);
    write_failures_by_node(&mut out, report, &window);
    write_fills(&mut out, &report.fills);
    write_cache(&mut out, &report.cache);
    write_pins(&mut out, &report.pins);
    out.push_str("</body></html>\n");
    out
}

/// The document head (refresh, style) and the title line: version, uptime, request count.
fn write_head(out: &mut String, report: &StatusReport) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"><title>berth status</title><style>{STYLE}</style></head><body>\
<h1>berth status</h1><p class=\"meta\">berth {} · up since {} · {} requests · refreshed every {REFRESH_SECONDS}s · \
<a href=\"?format=json\">JSON</a></p>",
        esc(&report.version),
        ago(report.generated_at, report.started_at),
        report.requests,
    );
}

fn write_upstreams(out: &mut String, report: &StatusReport) {
    let now = report.generated_at;
    out.push_str("<h2>Upstreams</h2><div class=\"scroll\"><table id=\"upstreams\"><tr><th>upstream</th><th>state</th><th>requests</th><th>failures</th><th>p50</th><th>last success</th><th>last error</th><th>rate limit left</th></tr>");
    for u in &report.upstreams {
        let _ = write!(
            out,
            "<tr data-upstream=\"{name}\"><td><b>{name}</b><br><code>{url}</code>{egress}</td><td class=\"{state}\">{state}{hole}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            u.requests,
            u.failures,
            u.p50_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "–".into()),
            u.last_success
                .map(|t| ago(now, t))
                .unwrap_or_else(|| "never".into()),
            match (&u.last_error, u.last_error_at) {
                (Some(e), Some(at)) => format!(
                    "{} {} <small>({})</small>",
                    class_badge(u.last_error_class),
                    esc(e),
                    ago(now, at)
                ),
                _ => "<span class=\"none\">none</span>".into(),
            },
            u.ratelimit_remaining
                .map(|r| r.to_string())
                .unwrap_or_else(|| "–".into()),
            name = esc(&u.name),
            url = esc(&u.url),
            state = esc(&u.state),
            hole = u
                .black_hole
                .as_ref()
                .map(|h| format!(
                    "<br><small class=\"black-hole\">black hole: {}<br>confirm: <code>{}</code></small>",
                    esc(&h.describe(now)),
                    esc(crate::status::CONFIRM_BLACK_HOLE)
                ))
                .unwrap_or_default(),
            egress = egress_html(u, now),
        );
    }
    out.push_str("</table></div>");
}

/// The proxy and the fallbacks under an upstream's URL: each fallback with its state, how
/// often it served and when last.
fn egress_html(u: &crate::status::UpstreamStatus, now: u64) -> String {
    let mut out = String::new();
    if let Some(proxy) = &u.proxy {
        let _ = write!(
            out,
            "<br><small>via proxy <code>{}</code></small>",
            esc(proxy)
        );
    }
    for f in &u.fallbacks {
        let last = f
            .last_served
            .map(|t| format!(", last {}", ago(now, t)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<br><small class=\"fallback\" data-fallback=\"{url}\">fallback <code>{url}</code> \
             <span class=\"{state}\">{state}</span>, served {}{last}</small>",
            f.served,
            url = esc(&f.url),
            state = esc(&f.state),
        );
    }
    out
}

/// The span the failure tables cover, for their headings: `in the last 1h`, or `since start`.
fn failure_window(report: &StatusReport) -> String {
    match report.since_seconds {
        Some(s) => format!("in the last {}", ago(s, 0).trim_end_matches(" ago")),
        None => "since start".into(),
    }
}

fn write_failures_by_image(out: &mut String, report: &StatusReport, window: &str) {
    let _ = write!(
        out,
        "<h2>Failures by image ({window})</h2><div class=\"scroll\"><table id=\"failures-by-image\"><tr><th>image</th><th>count</th><th>nodes</th><th>last error</th><th>when</th></tr>"
    );
    if report.failures.by_image.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"none\">no failed pulls</td></tr>");
    }
    for f in &report.failures.by_image {
        let _ = write!(
            out,
            "<tr class=\"failure\" data-image=\"{image}\"><td><b>{image}</b><br><code>{reference}</code></td><td class=\"num\">{}</td>\
<td>{}</td><td>{} {} <small>HTTP {}</small></td><td>{}</td></tr>",
            f.count,
            f.nodes
                .iter()
                .map(|n| esc(n))
                .collect::<Vec<_>>()
                .join(", "),
            class_badge(f.last_error_class),
            esc(&f.last_error),
            f.last_status,
            ago(report.generated_at, f.last_at),
            image = esc(&f.image),
            reference = esc(&f.last_reference),
        );
    }
    out.push_str("</table></div>");
}

fn write_failures_by_node(out: &mut String, report: &StatusReport, window: &str) {
    let _ = write!(
        out,
        "<h2>Failures by node ({window})</h2><div class=\"scroll\"><table id=\"failures-by-node\"><tr><th>node</th><th>count</th><th>images</th><th>when</th></tr>"
    );
    if report.failures.by_node.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"none\">no failed pulls</td></tr>");
    }
    for n in &report.failures.by_node {
        let _ = write!(
            out,
            "<tr class=\"failure\" data-node=\"{node}\"><td><b>{label}</b></td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            n.count,
            n.images
                .iter()
                .map(|i| esc(i))
                .collect::<Vec<_>>()
                .join("<br>"),
            ago(report.generated_at, n.last_at),
            node = esc(&n.node),
            label = match &n.name {
                Some(name) => format!("{} ({})", esc(name), esc(&n.node)),
                None => esc(&n.node).to_string(),
            },
        );
    }
    out.push_str("</table></div>");
}

fn write_fills(out: &mut String, fills: &[FillStatus]) {
    out.push_str("<h2>Fills in progress</h2><div class=\"scroll\"><table id=\"fills\"><tr><th>blob</th><th>received</th><th>done</th><th>speed</th><th>waiters</th><th>running</th></tr>");
    if fills.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"none\">nothing is being filled</td></tr>");
    }
    for f in fills {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td class=\"num\">{} / {}</td><td class=\"num\">{}</td><td class=\"num\">{}/s</td><td class=\"num\">{}</td><td class=\"num\">{:.0}s</td></tr>",
            esc(&f.digest),
            human_bytes(f.bytes),
            f.total_text(),
            f.percent_text(),
            human_bytes(f.bytes_per_second),
            f.waiters,
            f.seconds,
        );
    }
    out.push_str("</table></div>");
}

fn write_cache(out: &mut String, c: &CacheStatus) {
    let _ = write!(
        out,
        "<h2>Cache</h2><table id=\"cache\"><tr><th>size</th><td class=\"num\">{}</td></tr><tr><th>limit</th><td class=\"num\">{}</td></tr>\
<tr><th>hit ratio</th><td class=\"num\">{}</td></tr><tr><th>hits / misses</th><td class=\"num\">{} / {}</td></tr></table>",
        human_bytes(c.bytes),
        c.limit.map(human_bytes).unwrap_or_else(|| "none".into()),
        c.hit_ratio
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "–".into()),
        c.hits,
        c.misses,
    );
}

fn write_pins(out: &mut String, pins: &[PinStatus]) {
    out.push_str("<h2>Pin sets</h2><div class=\"scroll\"><table id=\"pins\"><tr><th>name</th><th>manifests</th><th>in cache</th></tr>");
    if pins.is_empty() {
        out.push_str("<tr><td colspan=\"3\" class=\"none\">no pin sets</td></tr>");
    }
    for p in pins {
        let state = if p.complete {
            "<span class=\"up\">complete</span>".to_string()
        } else {
            format!("<span class=\"down\">{} missing</span>", p.missing)
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{state}</td></tr>",
            esc(&p.name),
            p.manifests
        );
    }
    out.push_str("</table></div>");
}

fn class_badge(class: Option<crate::failure::ErrorClass>) -> String {
    match class {
        Some(c) => format!(
            "<span class=\"class\" title=\"{}\">{}</span>",
            c.in_words(),
            c.as_str()
        ),
        None => String::new(),
    }
}

/// Names, references and error messages come from clients and upstreams.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Failures, ImageFailures};

    #[test]
    fn client_chosen_names_are_escaped() {
        let report = StatusReport {
            generated_at: 100,
            failures: Failures {
                by_image: vec![ImageFailures {
                    image: "docker.io/<script>alert(1)</script>".into(),
                    count: 1,
                    nodes: vec!["10.0.0.1".into()],
                    last_error_class: None,
                    last_error: "\"quoted\" & <b>".into(),
                    last_reference: "v1".into(),
                    last_status: 404,
                    last_at: 90,
                }],
                by_node: vec![],
            },
            ..StatusReport::default()
        };
        let html = render_html(&report);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&quot;quoted&quot; &amp; &lt;b&gt;"));
        assert!(html.contains("10s ago"));
    }
}

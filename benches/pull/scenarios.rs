//! The five measurements, each against a fresh mirror (empty cache) behind its own counting
//! relay, so "cold" really is cold and upstream bytes belong to one scenario.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Runtime;

use crate::client::{self, Download, mib};
use crate::processes::{MirrorKind, Service, start_mirror, start_registry};
use crate::relay::{Fault, Relay};
use crate::report::{Better, Report, median_of, quantile};
use crate::support::images::{self, Content, Format, ImageSpec};
use crate::support::real::skopeo;

pub const BLOB_MIB: usize = 200;
pub const REPO: &str = "library/bench";
pub const TAG: &str = "latest";
const WARM_GETS: usize = 7;
const MANIFEST_ROUNDS: usize = 2000;
const WRK_CONNECTIONS: u32 = 16;
const WRK_SECS: u64 = 10;
/// Concurrent cold clients in (3); `BENCH_COLD_CLIENTS` overrides (e.g. 100 for fan-out memory).
fn cold_clients() -> usize {
    std::env::var("BENCH_COLD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}
const RESET_AFTER: u64 = 100 * 1024 * 1024;
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// The upstream registry holding one image: a small config and one 200 MiB random layer.
pub struct Fixture {
    pub upstream: Service,
    pub blob: Bytes,
    pub blob_digest: String,
}

impl Fixture {
    pub fn build() -> Fixture {
        let layer = images::big_blob(BLOB_MIB, 7);
        let image = images::image_with_layers(&ImageSpec::new(7, Format::Oci), vec![layer.clone()]);
        let upstream = start_registry(None);
        skopeo::push(
            &image as &dyn Content,
            &format!("{}/{REPO}:{TAG}", upstream.addr),
            None,
        );
        Fixture {
            upstream,
            blob: layer.bytes,
            blob_digest: layer.digest,
        }
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }
}

fn blob_url(base: &str, fx: &Fixture) -> String {
    format!("{base}/v2/{REPO}/blobs/{}", fx.blob_digest)
}

fn manifest_url(base: &str) -> String {
    format!("{base}/v2/{REPO}/manifests/{TAG}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A relay to the upstream and a fresh mirror of `kind` behind it.
fn fresh_mirror(rt: &Runtime, fx: &Fixture, kind: MirrorKind, fault: Fault) -> (Relay, Service) {
    let relay = rt.block_on(Relay::start(fx.upstream.addr, fault));
    let mirror = start_mirror(kind, &relay.url());
    (relay, mirror)
}

/// Runs `fut` with the scenario deadline; a timeout becomes an error naming the scenario.
fn bounded<T>(
    rt: &Runtime,
    what: &str,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    rt.block_on(async { tokio::time::timeout(SCENARIO_TIMEOUT, fut).await })
        .unwrap_or_else(|_| Err(format!("{what}: timed out after {SCENARIO_TIMEOUT:?}")))
}

/// Waits until the relay has seen no upstream byte for 500 ms (background fills finishing).
fn settle(relay: &Relay) -> u64 {
    let mut last = relay.upstream_bytes();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(500));
        let now = relay.upstream_bytes();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Median time of three direct downloads from the upstream registry (no mirror, no relay).
pub fn direct_download(rt: &Runtime, fx: &Fixture) -> Result<Duration, String> {
    let http = client::http_client();
    let url = blob_url(&fx.upstream.url(), fx);
    bounded(rt, "direct download", async {
        let mut secs = Vec::new();
        for _ in 0..3 {
            let d = client::download(&http, &url, &fx.blob).await;
            if !d.correct {
                return Err(format!("direct download from upstream: {}", d.outcome()));
            }
            secs.push(d.elapsed.as_secs_f64());
        }
        Ok(Duration::from_secs_f64(median_of(&mut secs)))
    })
}

/// (1) warm blob throughput and (2) warm manifest latency, on one mirror.
pub fn warm(rt: &Runtime, fx: &Fixture, kind: MirrorKind, report: &mut Report) {
    const S1: &str = "1 warm 200 MiB blob";
    const S2: &str = "2 warm manifest by tag";
    let (relay, mirror) = fresh_mirror(rt, fx, kind, Fault::None);
    let http = client::http_client();
    let url = blob_url(&mirror.url(), fx);
    let blobs = bounded(rt, S1, async {
        let cold = client::download(&http, &url, &fx.blob).await;
        if !cold.correct {
            return Err(format!("cold pull: {}", cold.outcome()));
        }
        let mut warm = Vec::new();
        let mut went_upstream = 0;
        for _ in 0..WARM_GETS {
            let before = relay.upstream_bytes();
            warm.push(client::download(&http, &url, &fx.blob).await);
            if relay.upstream_bytes() - before > fx.size() / 2 {
                went_upstream += 1;
            }
        }
        Ok((cold, warm, went_upstream))
    });
    let upstream_after_blobs = settle(&relay);
    match blobs {
        Ok((cold, warm, went_upstream)) => {
            record_warm_blobs(
                report,
                S1,
                kind,
                &cold,
                &warm,
                upstream_after_blobs,
                fx.size(),
            );
            let title = format!("warm GETs (of {WARM_GETS}) that re-fetched the blob upstream");
            report.num(
                S1,
                &title,
                Some(Better::Lower),
                0,
                kind,
                went_upstream as f64,
            );
        }
        Err(e) => report.text(S1, "result", kind, e),
    }
    warm_manifests(rt, &relay, &mirror, kind, report, S2);
    if let Some(rss) = mirror.peak_rss_mib() {
        report.num(
            S1,
            "mirror peak RSS over (1)+(2), MiB",
            Some(Better::Lower),
            0,
            kind,
            rss,
        );
    }
}

fn record_warm_blobs(
    report: &mut Report,
    s: &'static str,
    kind: MirrorKind,
    cold: &Download,
    warm: &[Download],
    upstream_bytes: u64,
    size: u64,
) {
    report.num(
        s,
        "cold pull (1 client), MiB/s",
        Some(Better::Higher),
        0,
        kind,
        cold.mib_per_s(),
    );
    let mut rates: Vec<f64> = warm.iter().map(Download::mib_per_s).collect();
    let title = format!("warm GET median of {WARM_GETS}, MiB/s");
    report.num(
        s,
        &title,
        Some(Better::Higher),
        0,
        kind,
        median_of(&mut rates),
    );
    let bad: Vec<String> = warm
        .iter()
        .filter(|d| !d.correct)
        .map(Download::outcome)
        .collect();
    if !bad.is_empty() {
        report.text(s, "warm GET failures", kind, bad.join("; "));
    }
    let extra = upstream_bytes.saturating_sub(size);
    report.num(
        s,
        "upstream MiB beyond 1 blob (cold + warm)",
        Some(Better::Lower),
        1,
        kind,
        mib(extra),
    );
}

fn warm_manifests(
    rt: &Runtime,
    relay: &Relay,
    mirror: &Service,
    kind: MirrorKind,
    report: &mut Report,
    s: &'static str,
) {
    let http = client::http_client();
    let url = manifest_url(&mirror.url());
    let before = relay.upstream_bytes();
    let started = Instant::now();
    let sequential = bounded(rt, s, async {
        // One request to fill the cache, then the measured rounds.
        client::manifest_latencies(&http, &url, 1).await?;
        client::manifest_latencies(&http, &url, MANIFEST_ROUNDS).await
    });
    let elapsed = started.elapsed();
    match sequential {
        Ok((mut heads, mut gets)) => {
            let rps = (2 * MANIFEST_ROUNDS) as f64 / elapsed.as_secs_f64();
            record_latencies(report, s, kind, "HEAD", &mut heads);
            record_latencies(report, s, kind, "GET", &mut gets);
            report.num(
                s,
                "sequential HEAD+GET, req/s",
                Some(Better::Higher),
                0,
                kind,
                rps,
            );
        }
        Err(e) => report.text(s, "sequential result", kind, e),
    }
    let upstream = relay.upstream_bytes() - before;
    let title = format!("upstream KiB during {MANIFEST_ROUNDS}× HEAD+GET");
    report.num(
        s,
        &title,
        Some(Better::Lower),
        0,
        kind,
        upstream as f64 / 1024.0,
    );
    match client::run_wrk(&url, WRK_CONNECTIONS, WRK_SECS) {
        Ok(w) => {
            let p = format!("wrk {WRK_CONNECTIONS} conns {WRK_SECS}s GET");
            report.num(
                s,
                &format!("{p} p50, ms"),
                Some(Better::Lower),
                3,
                kind,
                ms(w.p50),
            );
            report.num(
                s,
                &format!("{p} p99, ms"),
                Some(Better::Lower),
                3,
                kind,
                ms(w.p99),
            );
            report.num(
                s,
                &format!("{p}, req/s"),
                Some(Better::Higher),
                0,
                kind,
                w.requests_per_s,
            );
            if w.non_2xx > 0 {
                report.num(
                    s,
                    &format!("{p}, non-2xx answers"),
                    Some(Better::Lower),
                    0,
                    kind,
                    w.non_2xx as f64,
                );
            }
        }
        Err(e) => report.text(s, "wrk result", kind, e),
    }
}

fn record_latencies(
    report: &mut Report,
    s: &'static str,
    kind: MirrorKind,
    method: &str,
    lat: &mut [Duration],
) {
    let mut v: Vec<f64> = lat.iter().map(|d| ms(*d)).collect();
    let p50 = quantile(&mut v, 0.50);
    let p99 = quantile(&mut v, 0.99);
    let title = format!("sequential {method} p50, ms");
    report.num(s, &title, Some(Better::Lower), 3, kind, p50);
    let title = format!("sequential {method} p99, ms");
    report.num(s, &title, Some(Better::Lower), 3, kind, p99);
}

/// (3) N (20) concurrent cold clients of one blob, and (5) the mirror's peak RSS meanwhile.
pub fn concurrent_cold(
    rt: &Runtime,
    fx: &Fixture,
    kind: MirrorKind,
    direct: Option<Duration>,
    report: &mut Report,
) {
    let clients = cold_clients();
    // A scenario name lives as long as the report; one per run is a few bytes.
    let s: &'static str =
        Box::leak(format!("3 {clients} concurrent cold clients").into_boxed_str());
    let (relay, mirror) = fresh_mirror(rt, fx, kind, Fault::None);
    let http = client::http_client();
    let url = blob_url(&mirror.url(), fx);
    let started = Instant::now();
    let result = bounded(rt, s, async {
        let pulls = (0..clients).map(|_| client::download(&http, &url, &fx.blob));
        Ok(futures::future::join_all(pulls).await)
    });
    let wall = started.elapsed();
    let upstream = settle(&relay);
    let downloads = match result {
        Ok(d) => d,
        Err(e) => return report.text(s, "result", kind, e),
    };
    let correct = downloads.iter().filter(|d| d.correct).count();
    report.num(
        s,
        "clients with a correct body",
        Some(Better::Higher),
        0,
        kind,
        correct as f64,
    );
    if correct < clients {
        let first_bad = downloads.iter().find(|d| !d.correct).map(Download::outcome);
        report.text(s, "first failure", kind, first_bad.unwrap_or_default());
    }
    let ratio = upstream as f64 / fx.size() as f64;
    report.num(
        s,
        "upstream bytes / blob size",
        Some(Better::Lower),
        2,
        kind,
        ratio,
    );
    report.num(
        s,
        "wall time, s",
        Some(Better::Lower),
        2,
        kind,
        wall.as_secs_f64(),
    );
    let delivered = mib(downloads.iter().map(|d| d.bytes).sum());
    report.num(
        s,
        "aggregate delivered to clients, MiB/s",
        Some(Better::Higher),
        0,
        kind,
        delivered / wall.as_secs_f64(),
    );
    if let Some(direct) = direct {
        let rel = wall.as_secs_f64() / direct.as_secs_f64();
        report.num(
            s,
            "wall time / 1 direct download",
            Some(Better::Lower),
            1,
            kind,
            rel,
        );
    }
    if let Some(rss) = mirror.peak_rss_mib() {
        report.num(
            "5 memory",
            "peak RSS during (3), MiB",
            Some(Better::Lower),
            0,
            kind,
            rss,
        );
    }
}

/// (4) the relay resets the first upstream transfer after 100 MiB of the 200 MiB blob.
pub fn reset_midway(rt: &Runtime, fx: &Fixture, kind: MirrorKind, report: &mut Report) {
    const S: &str = "4 upstream reset at 100 MiB";
    let (relay, mirror) = fresh_mirror(rt, fx, kind, Fault::ResetOnceAfter(RESET_AFTER));
    let http = client::http_client();
    let url = blob_url(&mirror.url(), fx);
    let first = bounded(rt, S, async {
        Ok(client::download(&http, &url, &fx.blob).await)
    });
    let after_first = settle(&relay);
    let first = match first {
        Ok(d) => d,
        Err(e) => return report.text(S, "client 1", kind, e),
    };
    report.text(S, "client 1 (during the reset)", kind, first.outcome());
    report.num(
        S,
        "resets the relay fired",
        None,
        0,
        kind,
        relay.resets() as f64,
    );
    let extra = after_first.saturating_sub(fx.size());
    report.num(
        S,
        "extra upstream MiB for client 1",
        Some(Better::Lower),
        1,
        kind,
        mib(extra),
    );
    let second = bounded(rt, S, async {
        Ok(client::download(&http, &url, &fx.blob).await)
    });
    let total = settle(&relay);
    match second {
        Ok(d) => report.text(S, "client 2 (after)", kind, d.outcome()),
        Err(e) => report.text(S, "client 2 (after)", kind, e),
    }
    let extra = total.saturating_sub(fx.size());
    report.num(
        S,
        "extra upstream MiB after client 2",
        Some(Better::Lower),
        1,
        kind,
        mib(extra),
    );
    if !first.correct {
        report.note(format!(
            "{}: client 1 during the reset got: {}; last mirror error log line: `{}`",
            kind.label(),
            first.outcome(),
            last_error_line(&mirror)
        ));
    }
}

/// The mirror's last error-level log line (distribution: `level=error`, berth: ` ERROR `),
/// cut to 300 characters.
fn last_error_line(mirror: &Service) -> String {
    let tail = mirror.stderr_tail(200);
    let line = tail
        .lines()
        .rev()
        .find(|l| l.contains("level=error") || l.contains(" ERROR "))
        .unwrap_or("(none)");
    line.chars().take(300).collect()
}

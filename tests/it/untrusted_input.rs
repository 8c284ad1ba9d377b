//! Clients and remote reports choose strings: none of them can grow berth's memory, its log
//! or its status page, forge a line on an operator's terminal, or mint metric series.

use std::time::Duration;

use axum::Router;
use axum::routing::get;

use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Format, ImageSpec};
use crate::support::inprocess::{Berth, client};
use crate::support::util::{eventually, run};

#[tokio::test]
async fn a_long_ns_is_refused_before_it_is_recorded_logged_or_echoed() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(401, Format::Oci));
    fake.push("library/app", "1", &image);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.jsonl");
    let berth = Berth::builder()
        .top_level(&format!("access_log = {:?}", log.display().to_string()))
        .upstream(&fake)
        .start()
        .await;
    let long_ns = "a".repeat(60_000);
    for _ in 0..50 {
        let response = client()
            .get(berth.url(&format!("/v2/library/app/manifests/1?ns={long_ns}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body = response.text().await.unwrap();
        assert!(body.contains("NAME_INVALID"), "{body}");
        assert!(
            body.len() < 1024,
            "the ns is not echoed: {} bytes",
            body.len()
        );
    }
    // A real pull still works and is recorded; the refused ones left nothing big behind.
    assert_eq!(berth.status_of("/v2/library/app/manifests/1").await, 200);
    let (_, report) = berth.get_text("/_berth/status?format=json").await;
    assert!(
        report.len() < 64 * 1024,
        "status report {} bytes",
        report.len()
    );
    assert!(!report.contains(&long_ns[..1000]));
    let logged = eventually(
        "the pull in the access log",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("library/app").then_some(text)
        },
    )
    .await;
    assert!(
        logged.len() < 16 * 1024,
        "access log {} bytes",
        logged.len()
    );
}

#[tokio::test]
async fn error_messages_quote_at_most_a_few_hundred_bytes_of_the_request() {
    let berth = Berth::builder().start().await;
    let long_tag = "t".repeat(50_000);
    let response = client()
        .get(berth.url(&format!("/v2/library/app/manifests/{long_tag}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap();
    assert!(body.len() < 1024, "{} bytes", body.len());
}

/// A remote "berth" whose status report carries terminal escapes, forged lines and non-ASCII
/// references where strings go.
async fn forged_status_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let report = serde_json::json!({
        "version": "0.1.0\u{1b}[2J",
        "generated_at": 1_000, "started_at": 0, "since_seconds": null, "requests": 3,
        "upstreams": [{
            "name": "docker.io\r\n  docker.io  up  all good", "url": "https://x/", "state": "up",
            "requests": 1, "failures": 1, "last_success": null, "last_error_at": 990,
            "last_error_class": "reset", "last_error": "boom\u{1b}[32m OK", "p50_ms": null,
            "ratelimit_remaining": null
        }],
        "failures": {
            "by_image": [{
                "image": "docker.io/library/app\nFailed pulls by node (since start)\n  none",
                "count": 1, "nodes": ["10.0.0.1"], "last_error_class": "reset",
                "last_error": "x", "last_reference": format!("sha256:{}", "é".repeat(30)),
                "last_status": 502, "last_at": 995
            }],
            "by_node": []
        },
        "fills": [], "cache": {"bytes": 0, "limit": null, "hits": 0, "misses": 0, "hit_ratio": null},
        "pins": []
    });
    let app = Router::new().route(
        "/_berth/status",
        get(move || {
            let report = report.clone();
            async move { axum::Json(report) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_status_prints_remote_strings_escaped_and_never_panics() {
    let (addr, server) = forged_status_server().await;
    let out = tokio::task::spawn_blocking(move || {
        run(
            std::process::Command::new(env!("CARGO_BIN_EXE_berth")).args([
                "status",
                "--mirror",
                &format!("http://{addr}"),
            ]),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    server.abort();
    assert_eq!(
        out.code,
        Some(1),
        "a report with failures, not a panic: {out:?}"
    );
    let text = &out.stdout;
    assert!(
        !text.contains('\u{1b}'),
        "no terminal escape reaches the terminal: {text}"
    );
    assert!(!text.contains('\r'), "{text}");
    assert!(
        !text.contains("\n  docker.io  up  all good"),
        "a remote string cannot start a line: {text}"
    );
    assert!(text.contains("sha256:éééééééééééé…"), "{text}");
}

#[tokio::test]
async fn registries_a_pattern_lets_in_share_the_patterns_metric_series() {
    let berth = Berth::builder()
        .top_level(
            "upstream_patterns = [\"*.pkg.dev\"]\n\
             [upstream_defaults]\nconnect_timeout = \"200ms\"\nmax_attempts = 1",
        )
        .start()
        .await;
    let names: Vec<String> = (0..120).map(|i| format!("made-up-{i}.pkg.dev")).collect();
    // Sixteen at a time: one client's connections are capped (max_connections_per_client).
    let requests = names.iter().map(|name| {
        let url = berth.url(&format!("/v2/{name}/app/manifests/1"));
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let statuses: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(requests),
        16,
    ))
    .await;
    for status in statuses {
        assert!(
            status.as_ref().is_ok_and(|s| *s >= 500),
            "nothing answers there: {status:?}"
        );
    }
    let metrics = berth.metrics_text().await;
    assert!(
        !metrics.contains("made-up-"),
        "no series per made-up registry name"
    );
    assert!(
        metrics.contains("berth_upstream_state{upstream=\"*.pkg.dev\"}"),
        "one series for the pattern"
    );
    let lines = metrics.lines().count();
    assert!(lines < 400, "/metrics stays small: {lines} lines");
}

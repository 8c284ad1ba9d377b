//! Seeing every pull: injected upstream faults show up under their class in
//! `berth_upstream_errors_total` and in `/_berth/status` under the right image and node; the
//! breaker gauge; `berth status`; the page in a real browser; alert rules and the dashboard
//! against a real Prometheus.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::fake_upstream::{AfterStall, FakeUpstream, Fault, Kind, Options, TlsFront};
use crate::support::images::{self, Format, ImageSpec};
use crate::support::inprocess::Berth;
use crate::support::real::TestCa;

const NODE_A: &str = "127.0.0.2";
const NODE_B: &str = "127.0.0.3";

/// A client whose requests come from `address` (a node of the cluster, as berth sees it).
fn node(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(address.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET `url` from `client`, reading the whole body; a body that breaks is fine here.
async fn pull(client: &reqwest::Client, url: &str) -> u16 {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

async fn status_json(berth: &Berth, query: &str) -> Value {
    let response = reqwest::Client::new()
        .get(berth.url(&format!("/_berth/status{query}")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn image_entry<'a>(status: &'a Value, image: &str) -> &'a Value {
    status["failures"]["by_image"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["image"] == image)
        .unwrap_or_else(|| panic!("{image} not among the failed images: {status:#}"))
}

fn node_entry<'a>(status: &'a Value, node: &str) -> &'a Value {
    status["failures"]["by_node"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == node)
        .unwrap_or_else(|| panic!("{node} not among the failing nodes: {status:#}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// The fault scenario shared by the tests: five images, each broken its own way, pulled by
/// two nodes. Returns berth and the fake (which must outlive the pulls).
async fn faulty_mirror() -> (Berth, FakeUpstream) {
    let fake = FakeUpstream::start(Options::plain()).await;
    for (repo, tag, seed) in [("library/five", "five", 1), ("library/rate", "rate", 2)] {
        fake.push(
            repo,
            tag,
            &images::image(&ImageSpec::new(seed, Format::Oci)),
        );
    }
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1\nbreaker_threshold = 100\nstall_timeout = \"1s\"")
        .start()
        .await;
    fake.inject(Fault::status(503, None).reference("five").times(2));
    fake.inject(Fault::status(429, None).reference("rate"));
    let mut blob_urls = Vec::new();
    let faults = [
        ("library/reset", Fault::reset_after(0)),
        (
            "library/stall",
            Fault::stall(0, Duration::from_secs(5), AfterStall::Reset),
        ),
        ("library/corrupt", Fault::corrupt(10)),
    ];
    for (i, (repo, fault)) in faults.into_iter().enumerate() {
        let blob = images::big_blob(1, 100 + i as u64);
        fake.put_blob(repo, &blob);
        fake.inject(fault.kind(Kind::Blob).reference(&blob.digest));
        blob_urls.push(berth.url(&format!("/v2/{repo}/blobs/{}", blob.digest)));
    }
    let (a, b) = (node(NODE_A), node(NODE_B));
    let five = berth.url("/v2/library/five/manifests/five");
    // An upstream 5xx is a bad gateway; unreachable would be 503.
    assert_eq!(pull(&a, &five).await, 502);
    assert_eq!(pull(&b, &five).await, 502);
    assert_eq!(
        pull(&b, &berth.url("/v2/library/rate/manifests/rate")).await,
        429
    );
    pull(&a, &blob_urls[0]).await;
    pull(&b, &blob_urls[1]).await;
    pull(&a, &blob_urls[2]).await;
    (berth, fake)
}

#[tokio::test]
async fn each_fault_shows_under_its_class_image_and_node() {
    let (berth, fake) = faulty_mirror().await;
    assert_eq!(fake.pending_faults(), 0, "every fault fired");
    let status = status_json(&berth, "").await;

    let expected = [
        ("docker.io/library/five", "status_5xx", vec![NODE_A, NODE_B]),
        ("docker.io/library/rate", "status_429", vec![NODE_B]),
        ("docker.io/library/reset", "reset", vec![NODE_A]),
        ("docker.io/library/stall", "stall", vec![NODE_B]),
        ("docker.io/library/corrupt", "verify", vec![NODE_A]),
    ];
    for (image, class, nodes) in &expected {
        let entry = image_entry(&status, image);
        assert_eq!(entry["last_error_class"], *class, "{image}: {entry:#}");
        assert_eq!(strings(&entry["nodes"]), *nodes, "{image}");
        assert!(!entry["last_error"].as_str().unwrap().is_empty());
    }
    assert_eq!(image_entry(&status, "docker.io/library/five")["count"], 2);
    let a = node_entry(&status, NODE_A);
    assert_eq!(
        strings(&a["images"]),
        [
            "docker.io/library/corrupt",
            "docker.io/library/five",
            "docker.io/library/reset"
        ]
    );
    let b = node_entry(&status, NODE_B);
    assert_eq!(
        strings(&b["images"]),
        [
            "docker.io/library/five",
            "docker.io/library/rate",
            "docker.io/library/stall"
        ]
    );
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["name"], "docker.io");
    assert_eq!(
        upstream["state"], "up",
        "threshold 100: the breaker stays closed"
    );
    assert_eq!(upstream["failures"], 6);

    for class in ["status_5xx", "status_429", "reset", "stall", "verify"] {
        let count = berth
            .metric(
                "berth_upstream_errors_total",
                &[("upstream", "docker.io"), ("class", class)],
            )
            .await;
        assert!(
            count >= 1.0,
            "berth_upstream_errors_total{{class={class}}} = {count}"
        );
    }
    assert_eq!(
        berth
            .metric(
                "berth_upstream_errors_total",
                &[("upstream", "docker.io"), ("class", "tls_handshake")]
            )
            .await,
        0.0
    );
    let failed = berth
        .metric(
            "berth_client_requests_total",
            &[("endpoint", "manifest"), ("status", "502")],
        )
        .await;
    assert_eq!(failed, 2.0);
}

#[tokio::test]
async fn since_limits_failures_to_the_recent_past_and_html_names_them() {
    let (berth, _fake) = faulty_mirror().await;
    let recent = status_json(&berth, "?since=10m").await;
    assert_eq!(recent["since_seconds"], 600);
    assert_eq!(recent["failures"]["by_image"].as_array().unwrap().len(), 5);

    let response = reqwest::get(berth.url("/_berth/status")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(html.contains("data-image=\"docker.io/library/stall\""));
    assert!(html.contains("data-node=\"127.0.0.3\""));

    let bad = reqwest::get(berth.url("/_berth/status?since=forever"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn the_status_page_is_for_loopback_clients_without_an_admin_token() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let berth = Berth::builder().upstream(&fake).start().await;
    // 127.0.0.2 is loopback too; a non-loopback client needs a non-loopback listener, so
    // the rule is checked the other way: with a token configured, loopback is not enough.
    let ok = node(NODE_A)
        .get(berth.url("/_berth/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let guarded = Berth::builder()
        .top_level(&format!(
            "admin_token_file = {:?}",
            token_file.to_str().unwrap()
        ))
        .upstream(&fake)
        .start()
        .await;
    let denied = reqwest::get(guarded.url("/_berth/status")).await.unwrap();
    assert_eq!(denied.status(), 401);
    let allowed = reqwest::Client::new()
        .get(guarded.url("/_berth/status"))
        .bearer_auth("s3cret-admin-token")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
}

#[tokio::test]
async fn a_hung_tls_handshake_is_filed_as_tls_handshake() {
    let ca = TestCa::new();
    let fake = FakeUpstream::start(Options::plain()).await;
    fake.push(
        "org/app",
        "1",
        &images::image(&ImageSpec::new(7, Format::Oci)),
    );
    let front = TlsFront::start(&ca, fake.registry_addr).await;
    let berth = Berth::builder()
        .upstream_named("ghcr.io", &front.url())
        .config(&format!(
            "ca_file = {:?}\ntls_timeout = \"300ms\"\nmax_attempts = 1",
            ca.ca_pem.display().to_string()
        ))
        .start()
        .await;
    front.delay_next_handshakes(1, Duration::from_secs(30));
    let url = berth.url("/v2/org/app/manifests/1?ns=ghcr.io");
    assert_eq!(pull(&node(NODE_B), &url).await, 503);
    let status = status_json(&berth, "").await;
    let entry = image_entry(&status, "ghcr.io/org/app");
    assert_eq!(entry["last_error_class"], "tls_handshake", "{entry:#}");
    assert_eq!(strings(&entry["nodes"]), [NODE_B]);
    assert_eq!(
        berth
            .metric(
                "berth_upstream_errors_total",
                &[("upstream", "ghcr.io"), ("class", "tls_handshake")]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_breaker_gauge_goes_open_probing_closed() {
    let fake = FakeUpstream::start(Options::plain()).await;
    fake.push(
        "library/app",
        "1",
        &images::image(&ImageSpec::new(9, Format::Oci)),
    );
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1\nbreaker_threshold = 2\nbreaker_cooldown = \"1s\"")
        .start()
        .await;
    let state = || berth.metric("berth_upstream_state", &[("upstream", "docker.io")]);
    assert_eq!(state().await, 0.0, "up");
    let url = berth.url("/v2/library/app/manifests/1");
    fake.inject(Fault::status(503, None).times(2));
    for _ in 0..2 {
        assert_eq!(pull(&node(NODE_A), &url).await, 502);
    }
    assert_eq!(state().await, 2.0, "down after two failures");

    // After the cooldown the next request is the probe; hold its answer to see `probing`.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.inject(Fault::delay_headers(Duration::from_millis(1500)));
    let probe = tokio::spawn({
        let url = url.clone();
        async move { pull(&node(NODE_A), &url).await }
    });
    let mut seen = Vec::new();
    for _ in 0..40 {
        let s = state().await;
        seen.push(s);
        if s == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        seen.contains(&1.0),
        "probing while the probe is out: {seen:?}"
    );
    assert_eq!(probe.await.unwrap(), 200);
    assert_eq!(state().await, 0.0, "closed after the probe answered");
}

/// Runs headless Chromium (Debian's `chromium`) with a fresh profile and no network but ours.
fn chromium(profile: &std::path::Path, args: &[String]) -> crate::support::util::CmdOutput {
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    crate::support::util::run(&mut cmd, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: run by scripts/test"]
async fn the_status_page_renders_in_headless_chromium() {
    if !crate::support::prereq::require_tool("chromium") {
        return;
    }
    let (berth, _fake) = faulty_mirror().await;
    let url = berth.url("/_berth/status");
    let profile = tempfile::tempdir().unwrap();
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    let (dom, shot) = tokio::task::spawn_blocking({
        let (url, screenshot, profile) =
            (url.clone(), screenshot.clone(), profile.path().to_owned());
        move || {
            let dom = chromium(&profile, &["--dump-dom".into(), url.clone()]);
            let shot = chromium(
                &profile,
                &[
                    format!("--screenshot={}", screenshot.display()),
                    "--window-size=1000,1300".into(),
                    url,
                ],
            );
            (dom, shot)
        }
    })
    .await
    .unwrap();
    dom.expect_success();
    let dom = &dom.stdout;
    assert!(dom.contains("<title>berth status</title>"), "{dom}");
    for image in ["docker.io/library/stall", "docker.io/library/corrupt"] {
        assert!(
            dom.contains(&format!("data-image=\"{image}\"")),
            "{image} missing from the rendered page"
        );
    }
    for node in [NODE_A, NODE_B] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "{node} missing"
        );
    }
    assert!(
        dom.contains(">stall<") && dom.contains(">verify<"),
        "classes shown"
    );
    shot.expect_success();
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a real page, not a blank one");
}

//! Seeing every pull: injected upstream faults show up under their class in
//! `berth_upstream_errors_total` and in `/_berth/status` under the right image and node; the
//! breaker gauge; `berth status` and its exit codes; `upstream_patterns` registries under
//! `upstreams[]`; the loopback-only rule from a client in another network namespace; the page
//! in a real browser; alert rules and the dashboard against a real Prometheus.

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

/// A berth whose admin pages need `Authorization: Bearer s3cret-admin-token` (and the
/// directory holding its token file, to keep).
async fn token_guarded(fake: &FakeUpstream) -> (Berth, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let berth = Berth::builder()
        .top_level(&format!(
            "admin_token_file = {:?}",
            token_file.to_str().unwrap()
        ))
        .upstream(fake)
        .start()
        .await;
    (berth, dir)
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

    let (guarded, _token_dir) = token_guarded(&fake).await;
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

    // With admin_listen (and no token), the page lives there only.
    let admin_port = crate::support::util::free_port();
    let split = Berth::builder()
        .top_level(&format!(
            "[server]\nadmin_listen = \"127.0.0.1:{admin_port}\""
        ))
        .upstream(&fake)
        .start()
        .await;
    let public = reqwest::get(split.url("/_berth/status")).await.unwrap();
    assert_eq!(public.status(), 404, "not on the public listener");
    let admin = reqwest::get(format!("http://127.0.0.1:{admin_port}/_berth/status"))
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
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
    // The README's picture is refreshed on request only, so a test run leaves the tree clean:
    // BERTH_UPDATE_SCREENSHOT=1 writes docs/status-page.png, otherwise target/.
    let target = if std::env::var_os("BERTH_UPDATE_SCREENSHOT").is_some() {
        "docs/status-page.png"
    } else {
        "target/status-page.png"
    };
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(target);
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

/// A Prometheus child process, killed (by its own handle) when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        crate::support::util::kill_child(&mut self.child);
    }
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates berth's alert rules.
    fn start(target: std::net::SocketAddr, rules: &std::path::Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
scrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = crate::support::util::free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Runs an instant query; `Err` with Prometheus's message when it does not parse.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

/// Every PromQL expression the dashboard and the alert rules ship, with Grafana's variables
/// filled in: (where, expression).
fn shipped_expressions() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/berth-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                expr,
            ));
        }
    }
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("prometheus/berth-alerts.yml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// `berth_…` metric names an expression reads (histogram suffixes kept).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("berth_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus: run by scripts/test"]
async fn a_real_prometheus_evaluates_every_shipped_expression() {
    if !crate::support::prereq::require_tool("prometheus") {
        return;
    }
    // Traffic: a successful pull (cache miss, then hits), every fault of the fault scenario,
    // a size limit and a Docker Hub rate-limit header.
    let mut options = Options::plain();
    options.ratelimit_remaining = Some(42);
    let fake = FakeUpstream::start(options).await;
    let image = images::image(&ImageSpec::new(11, Format::Oci));
    fake.push("library/ok", "1", &image);
    let berth = Berth::builder()
        .top_level("[store]\nmax_size = \"1GiB\"")
        .upstream(&fake)
        .config("max_attempts = 1\nbreaker_threshold = 100\nstall_timeout = \"1s\"")
        .start()
        .await;
    let a = node(NODE_A);
    let layer = &image.layers[0].digest;
    for _ in 0..3 {
        assert_eq!(
            pull(&a, &berth.url("/v2/library/ok/manifests/1")).await,
            200
        );
        assert_eq!(
            pull(&a, &berth.url(&format!("/v2/library/ok/blobs/{layer}"))).await,
            200
        );
    }
    fake.inject(Fault::status(503, None).reference("1").times(1));
    let digest_url = berth.url(&format!(
        "/v2/library/ok/manifests/{}",
        image.manifest.digest
    ));
    let _ = pull(&a, &berth.url("/v2/library/ok/manifests/1?fresh")).await;
    let _ = pull(&a, &digest_url).await;
    let corrupt = images::big_blob(1, 77);
    fake.put_blob("library/ok", &corrupt);
    fake.inject(
        Fault::corrupt(5)
            .kind(Kind::Blob)
            .reference(&corrupt.digest),
    );
    let _ = pull(
        &a,
        &berth.url(&format!("/v2/library/ok/blobs/{}", corrupt.digest)),
    )
    .await;

    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/berth-alerts.yml");
    let prometheus = Prometheus::start(berth.addr, &rules);
    // Enough scrapes for rate() over 1m: at least 5 samples.
    let mut scraped = false;
    for _ in 0..60 {
        if let Ok(result) = prometheus
            .query("count_over_time(up{job=\"berth\"}[1m]) >= 5")
            .await
        {
            if !result.is_empty() {
                scraped = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        scraped,
        "prometheus did not scrape berth 5 times in 30 s:\n{}",
        prometheus.log()
    );
    let up = prometheus.query("up{job=\"berth\"}").await.unwrap();
    assert_eq!(
        up[0]["value"][1], "1",
        "berth's /metrics parses as Prometheus text"
    );

    // Panels that may be empty in this scenario, and why.
    let may_be_empty = [
        // plain HTTP upstream: no TLS handshakes.
        "berth_upstream_tls_handshake_seconds",
    ];
    let mut failures = Vec::new();
    for (place, expr) in shipped_expressions() {
        match prometheus.query(&expr).await {
            Err(e) => failures.push(format!("{place}: does not parse: {e}\n  {expr}")),
            Ok(result) => {
                let optional = may_be_empty.iter().any(|m| expr.contains(m));
                if place.starts_with("panel") && result.is_empty() && !optional {
                    failures.push(format!("{place}: no data\n  {expr}"));
                }
            }
        }
        for name in metric_names(&expr) {
            let series = prometheus
                .query(&format!("count({{__name__=\"{name}\"}})"))
                .await
                .unwrap();
            if series.is_empty() && !may_be_empty.iter().any(|m| name.starts_with(m)) {
                failures.push(format!("{place}: berth exports no {name}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs prometheus (promtool): run by scripts/test"]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !crate::support::prereq::require_tool("promtool") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "berth-alerts.yml"],
        ["test", "rules", "berth-alerts.test.yml"],
    ] {
        let mut cmd = std::process::Command::new("promtool");
        cmd.args(args).current_dir(&dir);
        crate::support::util::run(&mut cmd, Duration::from_secs(60)).expect_success();
    }
}

/// Runs `berth status --mirror <mirror> <args>` (≤ 30 s) off the async runtime, so an
/// in-process berth keeps answering.
async fn berth_status(mirror: &str, args: &[&str]) -> crate::support::util::CmdOutput {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("status").arg("--mirror").arg(mirror).args(args);
    tokio::task::spawn_blocking(move || {
        crate::support::util::run(&mut cmd, Duration::from_secs(30))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_status_prints_failures_by_image_and_node_in_words() {
    let (berth, _fake) = faulty_mirror().await;
    let mirror = berth.url("");
    // Failures listed: exit 1, the report printed in full all the same.
    let text = berth_status(&mirror, &[]).await;
    assert_eq!(text.code, Some(1), "{}", text.stderr);
    let json = berth_status(&mirror, &["--json", "--since", "30m"]).await;
    assert_eq!(json.code, Some(1), "{}", json.stderr);
    let text = text.stdout;
    assert!(text.contains("Failed pulls by image"), "{text}");
    assert!(
        text.contains("docker.io/library/stall") && text.contains("transfer stalled mid-body"),
        "{text}"
    );
    assert!(
        text.contains("docker.io/library/corrupt") && text.contains("did not match its digest"),
        "{text}"
    );
    assert!(
        text.contains("127.0.0.2") && text.contains("127.0.0.3"),
        "{text}"
    );
    assert!(text.contains("Cache "), "printed to the end: {text}");
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["since_seconds"], 1800);
    assert_eq!(report["failures"]["by_node"].as_array().unwrap().len(), 2);

    // Bad flags: no report, exit 2, one line saying why.
    let bad = berth_status("ftp://x", &["--since", "30m"]).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("not an http(s) URL"), "{}", bad.stderr);
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_status_exits_0_clean_1_after_a_failed_pull_2_without_a_report() {
    let fake = FakeUpstream::start(Options::plain()).await;
    fake.push(
        "library/app",
        "1",
        &images::image(&ImageSpec::new(12, Format::Oci)),
    );
    fake.push(
        "library/broken",
        "2",
        &images::image(&ImageSpec::new(13, Format::Oci)),
    );
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1\nbreaker_threshold = 100")
        .start()
        .await;
    let mirror = berth.url("");
    let url = berth.url("/v2/library/app/manifests/1");

    // A clean mirror, after a good pull: 0, in text and JSON.
    assert_eq!(pull(&node(NODE_A), &url).await, 200);
    for args in [&[][..], &["--json"][..]] {
        let out = berth_status(&mirror, args).await;
        assert_eq!(
            out.code,
            Some(0),
            "{args:?}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.contains("docker.io"), "{}", out.stdout);
    }

    // A failed pull (not cached, so no stale answer): 1, and the report says which.
    fake.inject(Fault::status(503, None).reference("2"));
    assert_eq!(
        pull(&node(NODE_B), &berth.url("/v2/library/broken/manifests/2")).await,
        502
    );
    let out = berth_status(&mirror, &[]).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("docker.io/library/broken") && out.stdout.contains(NODE_B),
        "{}",
        out.stdout
    );
    let out = berth_status(&mirror, &["--json", "--since", "10m"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        report["failures"]["by_image"][0]["image"],
        "docker.io/library/broken"
    );

    // No report: 2 with one line naming why. Nothing listens on an unused port.
    let port = crate::support::util::free_port();
    let out = berth_status(&format!("http://127.0.0.1:{port}"), &[]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // The token missing: 401 is no report either.
    let (guarded, token_dir) = token_guarded(&fake).await;
    let out = berth_status(&guarded.url(""), &[]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("admin token"), "{}", out.stderr);
    let out = berth_status(
        &guarded.url(""),
        &[
            "--admin-token-file",
            token_dir.path().join("token").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);

    // Clap's own usage errors are 2 as well; --help names the exit codes.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["status", "--no-such-flag"]);
    let out = crate::support::util::run(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["status", "--help"]);
    let out = crate::support::util::run(&mut cmd, Duration::from_secs(30));
    out.expect_success();
    assert!(
        out.stdout.contains("Exit status: 0") && out.stdout.contains("upstream down"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_fill_shows_its_progress_and_waiters() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(4, 61);
    fake.put_blob("library/big", &blob);
    // 1 MiB, then nothing for 3 s (under the 20 s stall timeout), then the rest.
    fake.inject(
        Fault::stall(1024 * 1024, Duration::from_secs(3), AfterStall::Continue).kind(Kind::Blob),
    );
    let berth = Berth::builder().upstream(&fake).start().await;
    let url = berth.url(&format!("/v2/library/big/blobs/{}", blob.digest));
    let pulls: Vec<_> = [NODE_A, NODE_B]
        .into_iter()
        .map(|address| {
            let url = url.clone();
            tokio::spawn(async move { pull(&node(address), &url).await })
        })
        .collect();
    let mut fill = Value::Null;
    for _ in 0..100 {
        let status = status_json(&berth, "").await;
        if let Some(f) = status["fills"].as_array().and_then(|f| f.first()) {
            if f["bytes"].as_u64().unwrap_or(0) >= 1024 * 1024 && f["waiters"] == 2 {
                fill = f.clone();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fill["digest"],
        blob.digest.as_str(),
        "no fill in progress seen"
    );
    assert_eq!(fill["total"], blob.size());
    assert!(fill["percent"].as_f64().unwrap() >= 25.0 - 0.01);
    assert_eq!(
        berth.metric("berth_fills_in_flight", &[]).await,
        1.0,
        "the gauge agrees"
    );
    for p in pulls {
        assert_eq!(p.await.unwrap(), 200);
    }
    // Clients finish at verification; the fill ends after its commit.
    berth.wait_committed(&blob.digest).await;
    let mut fills = usize::MAX;
    for _ in 0..100 {
        fills = status_json(&berth, "").await["fills"]
            .as_array()
            .unwrap()
            .len();
        if fills == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fills, 0, "a finished fill leaves the list");
}

/// The access log's lines once `count` have been written (bounded wait).
async fn access_log_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= count {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "fewer than {count} access log lines:\n{}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

#[tokio::test]
async fn the_access_log_says_where_each_answer_came_from_and_what_it_cost_upstream() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(7, Format::Oci));
    fake.push("library/app", "v1", &image);
    let retried = images::big_blob(1, 300);
    fake.put_blob("library/app", &retried);
    let shared = images::big_blob(4, 301);
    fake.put_blob("library/app", &shared);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.jsonl");
    let berth = Berth::builder()
        .top_level(&format!("access_log = {:?}", log.to_str().unwrap()))
        .upstream(&fake)
        .config("tag_ttl = \"1s\"\nmax_attempts = 2\nbreaker_threshold = 100")
        .start()
        .await;
    let (a, b) = (node(NODE_A), node(NODE_B));
    let manifest = berth.url("/v2/library/app/manifests/v1");
    let blob = |digest: &str| berth.url(&format!("/v2/library/app/blobs/{digest}"));

    // 1 miss, then 2 a hit.
    assert_eq!(pull(&a, &manifest).await, 200);
    assert_eq!(pull(&a, &manifest).await, 200);
    // 3: the first upstream answer is a 503, the retry succeeds: one request, two attempts.
    fake.inject(
        Fault::status(503, None)
            .kind(Kind::Blob)
            .reference(&retried.digest),
    );
    assert_eq!(pull(&a, &blob(&retried.digest)).await, 200);
    // 4 and 5: two nodes ask for a blob whose transfer pauses; the second joins the first's fill.
    fake.inject(
        Fault::stall(
            1024 * 1024,
            Duration::from_millis(1500),
            AfterStall::Continue,
        )
        .kind(Kind::Blob)
        .reference(&shared.digest),
    );
    let leader = tokio::spawn({
        let (a, url) = (a.clone(), blob(&shared.digest));
        async move { pull(&a, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pull(&b, &blob(&shared.digest)).await, 200);
    assert_eq!(leader.await.unwrap(), 200);
    // 6: the tag is past its ttl and both revalidation attempts fail: the last answer, stale.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fake.inject(
        Fault::status(503, None)
            .kind(Kind::Manifest)
            .method(http::Method::HEAD)
            .reference("v1")
            .times(2),
    );
    assert_eq!(pull(&b, &manifest).await, 200);
    // 7: revalidated by a HEAD; 8: the tag list is never cached.
    assert_eq!(pull(&b, &manifest).await, 200);
    assert_eq!(pull(&b, &berth.url("/v2/library/app/tags/list")).await, 200);

    let lines = access_log_lines(&log, 8).await;
    let seen: Vec<(&str, &str, &str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["client"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
                l["cache"].as_str().unwrap_or("-"),
                l["upstream_attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    // The joined request ends first (the leader's own client started earlier but both
    // finish with the fill); compare the joined pair as a set.
    let (mut pair, rest): (Vec<_>, Vec<_>) = seen
        .iter()
        .enumerate()
        .partition(|(i, _)| *i == 3 || *i == 4);
    pair.sort_by_key(|(_, l)| l.2);
    let pair: Vec<_> = pair.into_iter().map(|(_, l)| *l).collect();
    let rest: Vec<_> = rest.into_iter().map(|(_, l)| *l).collect();
    assert_eq!(
        pair,
        [(NODE_B, "blob", "joined", 0), (NODE_A, "blob", "miss", 1)],
        "{lines:#?}"
    );
    assert_eq!(
        rest,
        [
            (NODE_A, "manifest", "miss", 1),
            (NODE_A, "manifest", "hit", 0),
            (NODE_A, "blob", "miss", 2),
            (NODE_B, "manifest", "stale", 2),
            (NODE_B, "manifest", "revalidated", 1),
            (NODE_B, "tags", "bypass", 1),
        ],
        "{lines:#?}"
    );
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(line["registry"], "docker.io");
        assert_eq!(line["repository"], "library/app");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_let_in_by_upstream_patterns_are_listed_under_upstreams() {
    let ca = TestCa::new();
    let hub = FakeUpstream::start(Options::plain()).await;
    let (good, bad) = (
        FakeUpstream::start(Options::plain()).await,
        FakeUpstream::start(Options::plain()).await,
    );
    good.push(
        "team/app",
        "v1",
        &images::image(&ImageSpec::new(82, Format::Oci)),
    );
    bad.push(
        "team/app",
        "v1",
        &images::image(&ImageSpec::new(83, Format::Oci)),
    );
    let good_front = TlsFront::start(&ca, good.registry_addr).await;
    let bad_front = TlsFront::start(&ca, bad.registry_addr).await;
    let host = |front: &TlsFront| front.url().trim_start_matches("https://").to_string();
    let (good_host, bad_host) = (host(&good_front), host(&bad_front));
    let berth = Berth::builder()
        .top_level(&format!(
            "upstream_patterns = [{good_host:?}, {bad_host:?}]\n[upstream_defaults]\n\
             ca_file = {:?}\nmax_attempts = 1",
            ca.ca_pem.to_str().unwrap()
        ))
        .upstream(&hub)
        .start()
        .await;
    let names = |status: &Value| -> Vec<String> {
        status["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_string())
            .collect()
    };
    let configured = names(&status_json(&berth, "").await);
    assert!(configured.contains(&"docker.io".to_string()));
    assert!(
        !configured.contains(&good_host),
        "no client before the first pull"
    );

    // By path prefix and by ?ns=, one answering and one failing.
    bad.inject(Fault::status(503, None));
    assert_eq!(
        pull(
            &node(NODE_A),
            &berth.url(&format!("/v2/{good_host}/team/app/manifests/v1"))
        )
        .await,
        200
    );
    assert_eq!(
        pull(
            &node(NODE_B),
            &berth.url(&format!("/v2/team/app/manifests/v1?ns={bad_host}"))
        )
        .await,
        502
    );

    let status = status_json(&berth, "").await;
    // The configured upstreams as before, then the pattern registries by name.
    let mut patterns = vec![good_host.clone(), bad_host.clone()];
    patterns.sort();
    let mut expected = configured.clone();
    expected.extend(patterns);
    assert_eq!(names(&status), expected, "{status:#}");
    let upstream = |name: &str| {
        status["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()
            .clone()
    };
    let ok = upstream(&good_host);
    assert_eq!(ok["url"], format!("https://{good_host}/"), "{ok:#}");
    assert_eq!(ok["state"], "up", "{ok:#}");
    assert_eq!(ok["requests"], 1, "{ok:#}");
    assert_eq!(ok["failures"], 0, "{ok:#}");
    assert!(ok["last_success"].is_u64(), "{ok:#}");
    let failed = upstream(&bad_host);
    assert_eq!(failed["state"], "up", "{failed:#}");
    assert_eq!(failed["requests"], 1, "{failed:#}");
    assert_eq!(failed["failures"], 1, "{failed:#}");
    assert_eq!(failed["last_error_class"], "status_5xx", "{failed:#}");
    assert_eq!(
        strings(&image_entry(&status, &format!("{bad_host}/team/app"))["nodes"]),
        [NODE_B]
    );
    // The breaker gauge covers them too (0 = up).
    let metrics = berth.metrics_text().await;
    for name in [&good_host, &bad_host] {
        let series = format!("berth_upstream_state{{upstream=\"{name}\"}} 0");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }

    // The page and `berth status` show them with no change of their own.
    let html = reqwest::get(berth.url("/_berth/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [&good_host, &bad_host] {
        assert!(
            html.contains(&format!("data-upstream=\"{name}\"")),
            "{name} missing from the page"
        );
    }
    let out = berth_status(&berth.url(""), &[]).await;
    assert_eq!(out.code, Some(1), "a failed pull: {}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_start().starts_with(&bad_host) && l.contains("1 failed")),
        "{}",
        out.stdout
    );
}

/// With no admin configuration, `/_berth/status` is for loopback clients only: from a network
/// namespace wired to ours by a veth pair, the same berth (listening on every address)
/// answers 403 `DENIED` for the page while serving `/v2/` normally, and 200 to 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and ip: run by scripts/test"]
async fn a_non_loopback_client_gets_403_for_the_status_page_but_the_registry_api() {
    if !(crate::support::prereq::require_root()
        && crate::support::prereq::require_tools(&["ip", "curl"]))
    {
        return;
    }
    use crate::support::netns::{Spoke, in_ns, unique_id};
    let fake = FakeUpstream::start(Options::plain()).await;
    fake.push(
        "library/app",
        "1",
        &images::image(&ImageSpec::new(14, Format::Oci)),
    );
    let berth = Berth::builder()
        .listen("0.0.0.0:0".parse().unwrap())
        .upstream(&fake)
        .start()
        .await;
    let port = berth.addr.port();
    let spoke = Spoke::build(&unique_id());
    // GET from inside the namespace: (status, body).
    let from_ns = |path: &str, accept: &str| {
        let url = format!("http://{}:{port}{path}", spoke.host_ip);
        let (ns, accept) = (spoke.ns.name.clone(), format!("Accept: {accept}"));
        async move {
            let out = tokio::task::spawn_blocking(move || {
                in_ns(
                    &ns,
                    &[
                        "curl",
                        "-sS",
                        "--noproxy",
                        "*",
                        "--max-time",
                        "10",
                        "-H",
                        &accept,
                        "-w",
                        "\n%{http_code}",
                        &url,
                    ],
                    Duration::from_secs(20),
                )
            })
            .await
            .unwrap();
            out.expect_success();
            let (body, code) = out.stdout.rsplit_once('\n').unwrap();
            (code.parse::<u16>().unwrap(), body.to_string())
        }
    };

    for accept in ["application/json", "text/html"] {
        let (code, body) = from_ns("/_berth/status", accept).await;
        assert_eq!(code, 403, "{accept}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["errors"][0]["code"], "DENIED", "{body}");
        let message = error["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("loopback clients only") && message.contains("admin_token_file"),
            "{message}"
        );
    }
    // The rule is for the admin pages only: the registry API answers the same client.
    let (code, body) = from_ns("/v2/", "application/json").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = from_ns(
        "/v2/library/app/manifests/1",
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = from_ns("/v2/library/missing/manifests/1", "application/json").await;
    assert_eq!(code, 404, "{body}");
    // The pin endpoints are off without an admin token, for every client alike.
    let (code, body) = from_ns("/_berth/pins", "application/json").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("admin endpoints are off"), "{body}");

    // The same berth, from loopback: the page, which saw the namespace client as a node.
    let local = format!("http://127.0.0.1:{port}");
    let response = reqwest::Client::new()
        .get(format!("{local}/_berth/status"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status: Value = response.json().await.unwrap();
    assert_eq!(
        strings(&node_entry(&status, &spoke.ns_ip)["images"]),
        ["docker.io/library/missing"]
    );
    let pins = reqwest::get(format!("{local}/_berth/pins")).await.unwrap();
    assert_eq!(pins.status(), 404, "pins need the token, loopback or not");
    drop(spoke);
}

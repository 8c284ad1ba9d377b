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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_status_prints_failures_by_image_and_node_in_words() {
    let (berth, _fake) = faulty_mirror().await;
    let mirror = berth.url("");
    let (text, json) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
            cmd.arg("status").arg("--mirror").arg(&mirror).args(args);
            let out = crate::support::util::run(&mut cmd, Duration::from_secs(30));
            out.expect_success();
            out.stdout
        };
        (run(&[]), run(&["--json", "--since", "30m"]))
    })
    .await
    .unwrap();
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
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["since_seconds"], 1800);
    assert_eq!(report["failures"]["by_node"].as_array().unwrap().len(), 2);

    let mut bad = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    bad.args(["status", "--mirror", "ftp://x", "--since", "30m"]);
    let out = tokio::task::spawn_blocking(move || {
        crate::support::util::run(&mut bad, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(!out.success);
    assert!(out.stderr.contains("not an http(s) URL"), "{}", out.stderr);
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

//! The shipped alert rules and dashboard against a real Prometheus, and `promtool`.

use super::*;
use crate::support::util::poll;

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
    let scraped = poll(Duration::from_secs(60), || async {
        match prometheus
            .query("count_over_time(up{job=\"berth\"}[1m]) >= 5")
            .await
        {
            Ok(result) if !result.is_empty() => Ok(()),
            Ok(_) => Err("fewer than 5 scrapes".to_string()),
            Err(e) => Err(e),
        }
    })
    .await;
    assert!(
        scraped.is_ok(),
        "prometheus did not scrape berth 5 times in 60 s ({scraped:?}):\n{}",
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
        // no probe_interval in this scenario: the light probe does not run.
        "berth_probe_up",
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

/// GitHub's anchor for a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_runbook_url_leads_to_a_section_of_the_docs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/berth-alerts.yml")).unwrap(),
    )
    .unwrap();
    let mut linked = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(url) = rule["annotations"]["runbook_url"].as_str() {
                linked.push((rule["alert"].as_str().unwrap().to_string(), url.to_string()));
            }
        }
    }
    let alerts: Vec<&str> = linked.iter().map(|(alert, _)| alert.as_str()).collect();
    for required in ["BerthDown", "BerthStoreErrors", "BerthProbeFailing"] {
        assert!(alerts.contains(&required), "{required} has no runbook_url");
    }
    for (alert, url) in &linked {
        let (file, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{alert}: runbook_url {url} names no section"));
        let doc = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{alert}: runbook_url {url}: {e}"));
        // Headings outside fenced code (a `# comment` in a shell block is no heading).
        let mut in_fence = false;
        let mut anchors = Vec::new();
        for line in doc.lines() {
            if line.starts_with("```") {
                in_fence = !in_fence;
            } else if let Some(heading) = line.strip_prefix('#').filter(|_| !in_fence) {
                anchors.push(github_anchor(heading.trim_start_matches('#')));
            }
        }
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{alert}: {file} has no heading for #{anchor}"
        );
    }
}

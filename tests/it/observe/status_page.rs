//! `/_berth/status`: `?since=`, the HTML page, running fills with their progress and waiters,
//! and `upstream_patterns` registries listed under `upstreams[]`.

use super::*;

#[tokio::test]
async fn since_limits_failures_to_the_recent_past_and_html_names_them() {
    let (berth, _fake) = faulty_mirror().await;
    let recent = status_json(&berth, "?since=10m").await;
    assert_eq!(recent["since_seconds"], 600);
    assert_eq!(recent["failures"]["by_image"].as_array().unwrap().len(), 5);

    let response = berth.get("/_berth/status").await;
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

    assert_eq!(berth.status_of("/_berth/status?since=forever").await, 400);
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
    let fill = eventually(
        "a fill with 1 MiB and two waiters in /_berth/status",
        Duration::from_secs(10),
        || async {
            let status = status_json(&berth, "").await;
            match status["fills"].as_array().and_then(|f| f.first()) {
                Some(f) if f["bytes"].as_u64().unwrap_or(0) >= 1024 * 1024 && f["waiters"] == 2 => {
                    Ok(f.clone())
                }
                _ => Err(format!("fills: {}", status["fills"])),
            }
        },
    )
    .await;
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
    eventually(
        "a finished fill to leave the list",
        Duration::from_secs(10),
        || async {
            let status = status_json(&berth, "").await;
            match status["fills"].as_array().map(Vec::len) {
                Some(0) => Ok(()),
                _ => Err(format!("fills: {}", status["fills"])),
            }
        },
    )
    .await;
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
    let (_, html) = berth.get_text("/_berth/status").await;
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

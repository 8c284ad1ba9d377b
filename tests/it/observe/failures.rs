//! Where a failure is filed: each injected upstream fault under its class, image and node in
//! `/_berth/status`, and in `berth_upstream_errors_total`.

use super::*;

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
            "ca_file = {:?}\ntls_timeout = \"300ms\"\nmax_attempts = 1\nmss_fallback = []",
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

//! `berth status`: the report in words and JSON, and its exit codes.

use super::*;

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

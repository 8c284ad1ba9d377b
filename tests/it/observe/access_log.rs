//! The JSON access log: where each answer came from and what it cost upstream.

use super::*;

/// The access log's lines once `count` have been written (bounded wait).
async fn access_log_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let what = format!("{count} access log lines");
    let text = eventually(&what, Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= count {
            Ok(text)
        } else {
            Err(format!("only these:\n{text}"))
        }
    })
    .await;
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
    // B asks once the leader's fill is under way (1 MiB in, paused): it joins that fill.
    eventually(
        "the leader's fill paused at 1 MiB",
        Duration::from_secs(10),
        || async {
            let status = status_json(&berth, "").await;
            let fills = status["fills"].as_array().cloned().unwrap_or_default();
            fills
                .iter()
                .any(|f| {
                    f["digest"] == shared.digest.as_str()
                        && f["bytes"].as_u64() >= Some(1024 * 1024)
                })
                .then_some(())
                .ok_or(format!("fills: {fills:?}"))
        },
    )
    .await;
    assert_eq!(pull(&b, &blob(&shared.digest)).await, 200);
    assert_eq!(leader.await.unwrap(), 200);
    // 6: the tag is past its ttl and both revalidation attempts fail: the last answer, stale.
    // Tag ages are wall-clock (SystemTime) in berth, which a test cannot advance: the TTL
    // passing is the subject, and a sleep is a lower bound that load only lengthens.
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

//! Surviving a bad upstream path: coalesced fills, resume after resets and stalls, retries,
//! the circuit breaker. The fake upstream injects the faults per request.

use std::time::{Duration, Instant};

use crate::support::fake_upstream::{
    AfterStall, FakeUpstream, Fault, Kind, Options, Role, TlsFront,
};
use crate::support::images::{self, Blob, Format};
use crate::support::inprocess::{Berth, client, get};
use crate::support::real::TestCa;
use crate::support::util::advance_clock;
use futures::StreamExt;
use http::Method;

const MIB: u64 = 1024 * 1024;

/// GETs a blob and hashes it as it streams (50 clients × 100 MiB must not sit in memory).
async fn fetch_hash(url: &str) -> Result<String, String> {
    use sha2::Digest as _;
    let response = client().get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut hasher = sha2::Sha256::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        hasher.update(chunk.map_err(|e| e.to_string())?);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn blob_url(berth: &Berth, blob: &Blob) -> String {
    berth.url(&format!("/v2/library/big/blobs/{}", blob.digest))
}

/// `Range` headers of the requests that served bytes (the CDN when redirects are on).
fn range_requests(fake: &FakeUpstream, role: Role) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.role == role)
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cold_clients_share_one_upstream_transfer() {
    let fake = FakeUpstream::start(Options::default()).await;
    let blob = images::big_blob(100, 41);
    fake.put_blob("library/big", &blob);
    let berth = Berth::builder().upstream(&fake).start().await;
    let url = blob_url(&berth, &blob);

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                fetch_hash(&url).await
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap().as_deref(), Ok(blob.digest.as_str()));
    }
    assert_eq!(
        fake.count(Role::Cdn, Kind::Blob, Method::GET),
        1,
        "one upstream body transfer"
    );
    assert_eq!(
        fake.bytes_sent(&blob.digest),
        blob.size(),
        "the blob crossed the upstream link once"
    );
}

#[tokio::test]
async fn resets_at_several_offsets_resume_without_refetching() {
    let fake = FakeUpstream::start(Options::default()).await;
    let blob = images::big_blob(16, 42);
    fake.put_blob("library/big", &blob);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 3")
        .start()
        .await;
    // Each fault counts bytes of its own response: resets at ~1, ~8 and ~15 MiB of the blob.
    for after in [MIB, 7 * MIB, 7 * MIB] {
        fake.inject(Fault::reset_after(after).kind(Kind::Blob).role(Role::Cdn));
    }
    assert_eq!(
        fetch_hash(&blob_url(&berth, &blob)).await.as_deref(),
        Ok(blob.digest.as_str())
    );
    assert_eq!(fake.pending_faults(), 0, "all three resets fired");
    let ranges = range_requests(&fake, Role::Cdn);
    assert_eq!(ranges.len(), 3, "three resumes: {ranges:?}");
    assert!(
        ranges
            .iter()
            .all(|r| r.starts_with("bytes=") && !r.starts_with("bytes=0-")),
        "{ranges:?}"
    );
    // A reset discards what sat unread in berth's socket buffer: that much was lost per break.
    // Resuming exactly at what berth had means re-sending no more than was lost.
    let starts: Vec<u64> = ranges
        .iter()
        .map(|r| r["bytes=".len()..r.len() - 1].parse().unwrap())
        .collect();
    let sent_before_resets = MIB + 7 * MIB + 7 * MIB;
    let lost = sent_before_resets - starts[2];
    let extra = fake.bytes_sent(&blob.digest) - blob.size();
    assert!(extra <= lost, "re-transferred {extra} bytes, lost {lost}");
    // Each resume starts past the previous one: progress is kept, never restarted. (How much a
    // reset loses depends on loopback socket buffers, which can hold MiBs under load, so the
    // bound above is the one that matters, not a fraction of the blob.)
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
}

#[tokio::test]
async fn a_stall_is_detected_within_the_stall_timeout_and_resumed() {
    let fake = FakeUpstream::start(Options::default()).await;
    let blob = images::big_blob(8, 43);
    fake.put_blob("library/big", &blob);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("stall_timeout = \"1s\"")
        .start()
        .await;
    // The upstream goes silent after 2 MiB and would stay silent for a minute.
    fake.inject(
        Fault::stall(2 * MIB, Duration::from_secs(60), AfterStall::Reset)
            .kind(Kind::Blob)
            .role(Role::Cdn),
    );
    let started = Instant::now();
    assert_eq!(
        fetch_hash(&blob_url(&berth, &blob)).await.as_deref(),
        Ok(blob.digest.as_str())
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let ranges = range_requests(&fake, Role::Cdn);
    assert_eq!(ranges.len(), 1, "resumed once: {ranges:?}");
    assert!(
        berth.metric("berth_upstream_blob_bytes_total", &[]).await < (blob.size() + 3 * MIB) as f64
    );
}

#[tokio::test]
async fn an_upstream_that_ignores_range_is_reread_with_the_prefix_skipped() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(8, 44);
    fake.put_blob("library/big", &blob);
    let berth = Berth::builder().upstream(&fake).start().await;
    fake.inject(Fault::reset_after(3 * MIB).kind(Kind::Blob));
    fake.inject(Fault::ignore_range().kind(Kind::Blob));
    assert_eq!(
        fetch_hash(&blob_url(&berth, &blob)).await.as_deref(),
        Ok(blob.digest.as_str())
    );
    assert_eq!(fake.pending_faults(), 0);
}

#[tokio::test]
async fn a_slow_trickle_below_the_throughput_floor_counts_as_a_stall() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(4, 45);
    fake.put_blob("library/big", &blob);
    let config = "stall_timeout = \"10s\"\nmin_speed = 1048576\nmin_speed_window = \"1s\"";
    let berth = Berth::builder()
        .upstream(&fake)
        .config(config)
        .start()
        .await;
    // A 3 s pause: under the 10 s stall timeout, but far below 1 MiB/s over the window.
    fake.inject(Fault::stall(MIB, Duration::from_secs(3), AfterStall::Continue).kind(Kind::Blob));
    assert_eq!(
        fetch_hash(&blob_url(&berth, &blob)).await.as_deref(),
        Ok(blob.digest.as_str())
    );
    assert_eq!(
        range_requests(&fake, Role::Registry).len(),
        1,
        "the crawl was abandoned and resumed"
    );
}

#[tokio::test]
async fn transient_503_and_429_are_retried_with_backoff() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(46, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 4")
        .start()
        .await;
    fake.inject(Fault::status(503, None).kind(Kind::Manifest).times(2));
    fake.inject(Fault::status(429, Some(1)).kind(Kind::Manifest));
    let response = berth.get("/v2/library/app/manifests/1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.pending_faults(), 0);

    // Retries are bounded: a persistent 503 ends as a clear error, not a hang.
    fake.inject(Fault::status(503, None).kind(Kind::Manifest).times(10));
    let response = berth.get("/v2/library/app/manifests/other").await;
    assert_eq!(response.status(), 502);
    assert_eq!(fake.pending_faults(), 6, "4 attempts, then give up");
}

#[tokio::test]
async fn concurrent_requests_for_one_tag_share_one_upstream_request() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(47, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    fake.inject(Fault::delay_headers(Duration::from_millis(300)).kind(Kind::Manifest));
    let url = berth.url("/v2/library/app/manifests/1");
    let requests: Vec<_> = (0..20).map(|_| client().get(&url).send()).collect();
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    // Count answered requests: the token flow's first 401 is not a fetch.
    let fetched = fake
        .requests()
        .iter()
        .filter(|r| r.kind == Kind::Manifest && r.status == 200)
        .count();
    assert_eq!(fetched, 1);
}

#[tokio::test]
async fn an_open_breaker_answers_tags_from_cache_at_once_and_fails_fast_otherwise() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(48, Format::Oci);
    fake.push("library/app", "1", &image);
    let config = "tag_ttl = \"1ms\"\nheader_timeout = \"1s\"\nmax_attempts = 1\nbreaker_threshold = 2\nbreaker_cooldown = \"3s\"";
    let berth = Berth::builder()
        .upstream(&fake)
        .config(config)
        .start()
        .await;
    let url = berth.url("/v2/library/app/manifests/1");
    assert_eq!(get(&url).await.status(), 200);

    // The upstream now hangs on its next two requests: each times out, the breaker opens.
    fake.inject(
        Fault::delay_headers(Duration::from_secs(30))
            .kind(Kind::Manifest)
            .times(2),
    );
    for _ in 0..2 {
        let response = get(&url).await;
        assert_eq!(
            response.status(),
            200,
            "stale answer while the upstream hangs"
        );
    }
    // Breaker open: the stale tag comes back at once, without waiting for any timeout.
    let started = Instant::now();
    let response = get(&url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-content-digest"],
        image.index.digest.as_str()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stale tag took {:?}",
        started.elapsed()
    );
    // Uncached content fails fast with 503 + Retry-After.
    let started = Instant::now();
    let response = berth.get("/v2/library/app/manifests/never").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(1));

    // After the cooldown one request probes the (recovered) upstream and closes the breaker.
    // berth's breaker times its cooldown with tokio's clock: advanced, not slept.
    advance_clock(Duration::from_secs(3)).await;
    let before = berth
        .metric("berth_tag_lookups_total", &[("outcome", "revalidated")])
        .await;
    assert_eq!(get(&url).await.status(), 200);
    let after = berth
        .metric("berth_tag_lookups_total", &[("outcome", "revalidated")])
        .await;
    assert_eq!(after, before + 1.0, "the probe reached the upstream");
    let response = berth.get("/v2/library/app/manifests/never").await;
    assert_eq!(
        response.status(),
        404,
        "closed again: the upstream's own answer comes through"
    );
}

/// berth with one upstream behind a TLS front whose handshakes can hang; `mss_fallback` as
/// given (`"[]"`: a hung handshake is only retried, never raced by clamped ones).
async fn berth_behind_tls(
    attempts: u32,
    mss_fallback: &str,
) -> (Berth, FakeUpstream, TlsFront, TestCa, images::ImageIndex) {
    let ca = TestCa::new();
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(49, Format::Oci);
    fake.push("library/app", "1", &image);
    let front = TlsFront::start(&ca, fake.registry_addr).await;
    let extra = format!(
        "ca_file = {:?}\ntls_timeout = \"500ms\"\nmax_attempts = {attempts}\nmss_fallback = {mss_fallback}",
        ca.ca_pem.display().to_string()
    );
    let berth = Berth::builder()
        .upstream_named("docker.io", &front.url())
        .config(&extra)
        .start()
        .await;
    (berth, fake, front, ca, image)
}

#[tokio::test]
async fn a_hung_tls_handshake_times_out_and_the_retry_gets_through() {
    let (berth, _fake, front, _ca, image) = berth_behind_tls(3, "[]").await;
    front.delay_next_handshakes(1, Duration::from_secs(30));
    let started = Instant::now();
    let response = berth.get("/v2/library/app/manifests/1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-content-digest"],
        image.index.digest.as_str()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered before the hung handshake could time out"
    );
    assert!(front.accepted() >= 2, "the retry opened a new connection");
    assert!(front.handshakes() >= 1);
}

#[tokio::test]
async fn handshakes_that_always_hang_end_in_a_503_that_names_the_tls_handshake() {
    // The default mss_fallback races each hung handshake with clamped ones; they hang too, so
    // this is no black hole: nothing is clamped.
    let (berth, _fake, front, _ca, _image) = berth_behind_tls(2, "[1360, 1200]").await;
    front.delay_next_handshakes(10, Duration::from_secs(30));
    let started = Instant::now();
    let response = berth.get("/v2/library/app/manifests/1").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.unwrap();
    assert!(body.contains("TLS handshake"), "{body}");
    assert_eq!(front.handshakes(), 0);
    assert_eq!(
        front.accepted(),
        6,
        "two attempts, each on a fresh connection at full size and at each clamp"
    );
    assert_eq!(
        berth
            .metric(
                "berth_upstream_mss_fallbacks_total",
                &[("upstream", "docker.io")]
            )
            .await,
        0.0,
        "handshakes that hang at every MSS are not a black hole"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by max_attempts x tls_timeout + backoff, took {:?}",
        started.elapsed()
    );
}

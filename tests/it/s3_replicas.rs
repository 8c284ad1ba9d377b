//! Several berth processes on one S3 bucket (s3s-fs on loopback, a real S3-compatible server):
//! a blob cached by one is served by all, concurrent fills of one blob leave it intact, tag
//! records written by one are used by the others, and an S3 outage still lets pulls through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::berth::BerthProcess;
use crate::support::fake_upstream::{AfterStall, FakeUpstream, Fault, Kind, Options};
use crate::support::images::{self, Blob, Format};
use crate::support::inprocess::{Berth, BerthBuilder, client, get, sha256};
use crate::support::prereq::require_tools;
use crate::support::real::S3Server;
use crate::support::real::s3::TOOL;
use crate::support::util::eventually;
use futures::StreamExt;

const REPO: &str = "library/app";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A replica on the shared bucket; more `[store]` keys may follow with `.top_level()`.
fn replica(fake: &FakeUpstream, s3: &S3Server, tag_ttl: &str) -> BerthBuilder {
    Berth::builder()
        .default_upstream("docker.io")
        .top_level(&s3.store_toml(Some("replicas")))
        .upstream(fake)
        .tag_ttl(tag_ttl)
}

/// GETs `path` from `berth`; returns (status, sha256 of the body, body length).
async fn fetch(berth: &BerthProcess, path: &str, range: Option<&str>) -> (u16, String, u64) {
    use sha2::Digest as _;
    let mut request = client()
        .get(format!("{}{path}", berth.url()))
        .header("accept", MANIFEST_ACCEPT);
    if let Some(r) = range {
        request = request.header("range", r);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("body of {path} broke: {e}"));
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (
        status,
        format!("sha256:{}", hex::encode(hasher.finalize())),
        len,
    )
}

/// Upstream requests berth made, by kind (`blob`, `manifest`), from its `/metrics`.
fn upstream_requests(berth: &BerthProcess, kind: &str) -> f64 {
    berth.metric("berth_upstream_requests_total", &[("kind", kind)])
}

fn blob_path(blob: &Blob) -> String {
    format!("/v2/{REPO}/blobs/{}", blob.digest)
}

/// Starts an S3 server and a fake upstream holding one image with a `mib`-MiB layer.
async fn setup(mib: usize) -> Option<(S3Server, FakeUpstream, images::Image, Blob)> {
    if !require_tools(&[TOOL]) {
        return None;
    }
    let s3 = S3Server::start("berth-replicas");
    let fake = FakeUpstream::start(Options::plain()).await;
    let layer = images::big_blob(mib, 7);
    let image =
        images::image_with_layers(&images::ImageSpec::new(7, Format::Oci), vec![layer.clone()]);
    fake.push(REPO, "v1", &image);
    Some((s3, fake, image, layer))
}

/// The blob object as s3s-fs stored it, hashed.
fn stored_object_digest(s3: &S3Server, blob: &Blob) -> Option<String> {
    let file = s3.object_file(&format!("replicas/blobs/sha256/{}", blob.hex()));
    std::fs::read(file).ok().map(|bytes| sha256(&bytes))
}

/// Clients get their last byte once the blob verifies; the upload finishes after. Waits
/// (≤ 30 s) for the object, then returns its digest (s3s-fs places objects by rename).
async fn wait_for_object(s3: &S3Server, blob: &Blob) -> String {
    let file = s3.object_file(&format!("replicas/blobs/sha256/{}", blob.hex()));
    eventually(
        "the blob object in the bucket",
        Duration::from_secs(30),
        || async { file.exists() },
    )
    .await;
    stored_object_digest(s3, blob).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn a_blob_cached_by_one_replica_is_served_by_another_without_the_upstream() {
    let Some((s3, fake, image, layer)) = setup(40).await else {
        return;
    };
    let a = replica(&fake, &s3, "5m").spawn();
    let b = replica(&fake, &s3, "5m").spawn();

    let manifest_path = format!("/v2/{REPO}/manifests/v1");
    let (status, digest, _) = fetch(&a, &manifest_path, None).await;
    assert_eq!(
        (status, digest.as_str()),
        (200, image.manifest.digest.as_str())
    );
    let (status, digest, len) = fetch(&a, &blob_path(&layer), None).await;
    assert_eq!(
        (status, digest.as_str(), len),
        (200, layer.digest.as_str(), layer.size())
    );
    assert_eq!(upstream_requests(&a, "blob"), 1.0);
    assert_eq!(
        wait_for_object(&s3, &layer).await,
        layer.digest,
        "A uploaded the verified blob to the bucket"
    );
    let spool = a.dir.path().join("data/spool");
    eventually("the spool file to go", Duration::from_secs(10), || async {
        std::fs::read_dir(&spool).unwrap().next().is_none()
    })
    .await;

    // B: the tag record, the manifest and the blob all come from the bucket.
    let (status, digest, _) = fetch(&b, &manifest_path, None).await;
    assert_eq!(
        (status, digest.as_str()),
        (200, image.manifest.digest.as_str())
    );
    let (status, digest, len) = fetch(&b, &blob_path(&layer), None).await;
    assert_eq!(
        (status, digest.as_str(), len),
        (200, layer.digest.as_str(), layer.size())
    );
    // Range from S3: a span across an upload part boundary (8 MiB parts), and the tail.
    let bytes = &layer.bytes;
    let part = 16 * 1024 * 1024;
    for (header, start, end) in [
        (
            format!("bytes={}-{}", part - 5, part + 4),
            part - 5,
            part + 5,
        ),
        ("bytes=-100".to_string(), bytes.len() - 100, bytes.len()),
    ] {
        let (status, digest, len) = fetch(&b, &blob_path(&layer), Some(&header)).await;
        assert_eq!(status, 206, "{header}");
        assert_eq!(len, (end - start) as u64, "{header}");
        assert_eq!(digest, sha256(&bytes[start..end]), "{header}");
    }
    assert_eq!(
        upstream_requests(&b, "blob"),
        0.0,
        "B never asked the upstream for the blob"
    );
    assert_eq!(
        upstream_requests(&b, "manifest"),
        0.0,
        "nor for the tag or manifest"
    );
    assert_eq!(
        fake.count_kind(Kind::Blob),
        1,
        "one upstream blob transfer in all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn two_replicas_filling_one_cold_blob_at_once_store_it_intact() {
    let Some((s3, fake, _image, layer)) = setup(64).await else {
        return;
    };
    let a = Arc::new(replica(&fake, &s3, "5m").spawn());
    let b = Arc::new(replica(&fake, &s3, "5m").spawn());

    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let berth = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (barrier, path) = (barrier.clone(), blob_path(&layer));
            tokio::spawn(async move {
                barrier.wait().await;
                fetch(&berth, &path, None).await
            })
        })
        .collect();
    for c in clients {
        let (status, digest, len) = c.await.unwrap();
        assert_eq!(
            (status, digest.as_str(), len),
            (200, layer.digest.as_str(), layer.size())
        );
    }
    let fills = upstream_requests(&a, "blob") + upstream_requests(&b, "blob");
    assert!(
        (1.0..=2.0).contains(&fills),
        "each replica fills at most once: {fills}"
    );
    assert_eq!(
        wait_for_object(&s3, &layer).await,
        layer.digest,
        "the object in the bucket is the blob, whoever finished last"
    );
    // And both now serve it from the bucket.
    for berth in [&a, &b] {
        let (status, digest, _) = fetch(berth, &blob_path(&layer), None).await;
        assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));
    }
    assert_eq!(
        upstream_requests(&a, "blob") + upstream_requests(&b, "blob"),
        fills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn a_tag_refreshed_by_one_replica_is_used_by_another() {
    let Some((s3, fake, image, _layer)) = setup(1).await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let a = replica(&fake, &s3, "2s").spawn();
    let b = replica(&fake, &s3, "2s").spawn();
    let manifest_path = format!("/v2/{REPO}/manifests/v1");

    let (_, digest, _) = fetch(&a, &manifest_path, None).await;
    assert_eq!(digest, image.manifest.digest);
    let (_, digest, _) = fetch(&b, &manifest_path, None).await;
    assert_eq!(digest, image.manifest.digest);
    assert_eq!(
        upstream_requests(&b, "manifest"),
        0.0,
        "B used A's tag record"
    );

    // The tag moves upstream; after the TTL, A revalidates and writes the new record.
    let moved = images::image(&images::ImageSpec::new(8, Format::Oci));
    fake.push(REPO, "v1", &moved);
    // berth runs in other processes: their tag_ttl clock cannot be advanced, so the TTL passing
    // is the subject of this sleep (a lower bound that load only lengthens).
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let (_, digest, _) = fetch(&a, &manifest_path, None).await;
    assert_eq!(digest, moved.manifest.digest, "A saw the move");
    assert!(upstream_requests(&a, "manifest") >= 2.0);

    // B's own record is past the TTL too, but A's fresh one in the bucket answers.
    let (_, digest, _) = fetch(&b, &manifest_path, None).await;
    assert_eq!(
        digest, moved.manifest.digest,
        "B serves the digest A refreshed"
    );
    assert_eq!(
        upstream_requests(&b, "manifest"),
        0.0,
        "B asked the upstream nothing: the record A wrote within tag_ttl was enough"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn with_s3_down_pulls_still_stream_from_the_upstream() {
    let Some((mut s3, fake, image, layer)) = setup(8).await else {
        return;
    };
    let berth = replica(&fake, &s3, "5m").spawn();
    s3.stop();

    let manifest_path = format!("/v2/{REPO}/manifests/v1");
    let (status, digest, _) = fetch(&berth, &manifest_path, None).await;
    assert_eq!(
        (status, digest.as_str()),
        (200, image.manifest.digest.as_str())
    );
    let (status, digest, len) = fetch(&berth, &blob_path(&layer), None).await;
    assert_eq!(
        (status, digest.as_str(), len),
        (200, layer.digest.as_str(), layer.size())
    );

    let log = berth.stderr();
    assert!(
        log.contains("could not be stored; served uncached") && log.contains("S3 request for"),
        "the log says what failed:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(matches!(
        crate::support::util::http_get(berth.addr, "/healthz"),
        Some((200, _))
    ));

    // S3 back: the next pull is stored again and then served from the bucket.
    s3.restart();
    let (status, digest, _) = fetch(&berth, &blob_path(&layer), None).await;
    assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));
    assert_eq!(wait_for_object(&s3, &layer).await, layer.digest);
}

/// The blob's file in a berth's local hot tier.
fn hot_file(berth: &BerthProcess, blob: &Blob) -> std::path::PathBuf {
    berth.data_dir().join("blobs/sha256").join(blob.hex())
}

async fn wait_hot(berth: &BerthProcess, blob: &Blob) {
    let file = hot_file(berth, blob);
    eventually(
        "the blob in the hot tier",
        Duration::from_secs(30),
        || async { file.exists() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn the_hot_tier_serves_warm_reads_with_s3_down_and_cold_ones_from_the_upstream() {
    let Some((mut s3, fake, _image, layer)) = setup(8).await else {
        return;
    };
    let cold = images::big_blob(3, 11);
    let cold_image =
        images::image_with_layers(&images::ImageSpec::new(11, Format::Oci), vec![cold.clone()]);
    fake.push(REPO, "v2", &cold_image);
    let berth = replica(&fake, &s3, "5m").spawn();

    let (status, digest, _) = fetch(&berth, &blob_path(&layer), None).await;
    assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));
    // A fill lands in both tiers: the bucket (the truth) and the local hot tier.
    assert_eq!(wait_for_object(&s3, &layer).await, layer.digest);
    wait_hot(&berth, &layer).await;
    assert_eq!(
        sha256(&std::fs::read(hot_file(&berth, &layer)).unwrap()),
        layer.digest
    );

    // S3 gone: the hot blob is still served, whole and ranged, without the upstream.
    s3.stop();
    let before = upstream_requests(&berth, "blob");
    let (status, digest, len) = fetch(&berth, &blob_path(&layer), None).await;
    assert_eq!(
        (status, digest.as_str(), len),
        (200, layer.digest.as_str(), layer.size())
    );
    let (status, _, len) = fetch(&berth, &blob_path(&layer), Some("bytes=100-199")).await;
    assert_eq!((status, len), (206, 100));
    assert_eq!(
        upstream_requests(&berth, "blob"),
        before,
        "served from the hot tier"
    );
    // ... and a cold one streams from the upstream.
    let (status, digest, _) = fetch(&berth, &blob_path(&cold), None).await;
    assert_eq!((status, digest.as_str()), (200, cold.digest.as_str()));
    assert!(upstream_requests(&berth, "blob") > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn a_replica_promotes_what_it_reads_from_s3_into_its_hot_tier() {
    let Some((mut s3, fake, _image, layer)) = setup(8).await else {
        return;
    };
    let a = replica(&fake, &s3, "5m").spawn();
    let (status, _, _) = fetch(&a, &blob_path(&layer), None).await;
    assert_eq!(status, 200);
    assert_eq!(wait_for_object(&s3, &layer).await, layer.digest);

    let b = replica(&fake, &s3, "5m").spawn();
    assert!(!hot_file(&b, &layer).exists());
    let (status, digest, _) = fetch(&b, &blob_path(&layer), None).await;
    assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));
    assert_eq!(upstream_requests(&b, "blob"), 0.0, "read from the bucket");
    wait_hot(&b, &layer).await;

    s3.stop();
    let (status, digest, _) = fetch(&b, &blob_path(&layer), None).await;
    assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));
    assert_eq!(
        upstream_requests(&b, "blob"),
        0.0,
        "served from the promoted copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn the_hot_tier_stays_under_local_max_size_and_the_bucket_keeps_everything() {
    if !require_tools(&[TOOL]) {
        return;
    }
    let s3 = S3Server::start("berth-replicas");
    let fake = FakeUpstream::start(Options::plain()).await;
    let layers: Vec<Blob> = (0..4).map(|i| images::big_blob(1, 20 + i)).collect();
    let image = images::image_with_layers(&images::ImageSpec::new(20, Format::Oci), layers.clone());
    fake.push(REPO, "v1", &image);
    let berth = replica(&fake, &s3, "5m")
        .top_level("local_max_size = \"2600KiB\"")
        .spawn();
    for layer in &layers {
        let (status, digest, _) = fetch(&berth, &blob_path(layer), None).await;
        assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));
        assert_eq!(wait_for_object(&s3, layer).await, layer.digest);
    }
    let hot_bytes = || -> u64 {
        layers
            .iter()
            .filter_map(|l| std::fs::metadata(hot_file(&berth, l)).ok())
            .map(|m| m.len())
            .sum()
    };
    eventually(
        "the hot tier under local_max_size",
        Duration::from_secs(30),
        || async { hot_bytes() <= 2600 * 1024 },
    )
    .await;
    assert!(hot_bytes() > 0, "recent blobs stay hot");
    for layer in &layers {
        assert_eq!(
            stored_object_digest(&s3, layer).as_deref(),
            Some(layer.digest.as_str())
        );
    }
    // An evicted blob is read back from the bucket, not the upstream.
    let before = upstream_requests(&berth, "blob");
    let (status, digest, _) = fetch(&berth, &blob_path(&layers[0]), None).await;
    assert_eq!((status, digest.as_str()), (200, layers[0].digest.as_str()));
    assert_eq!(upstream_requests(&berth, "blob"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the s3s-fs S3 server: run by scripts/test"]
async fn only_if_cached_serves_a_verified_blob_whose_upload_is_still_running() {
    let Some((s3, fake, _image, layer)) = setup(4).await else {
        return;
    };
    // No hot tier: the blob is stored only once the upload to the (frozen) bucket finishes.
    fake.inject(
        Fault::stall(
            1024 * 1024,
            Duration::from_millis(1500),
            AfterStall::Continue,
        )
        .kind(Kind::Blob)
        .reference(&layer.digest),
    );
    let berth = replica(&fake, &s3, "5m")
        .top_level("local_max_size = \"0\"")
        .spawn();
    let url = format!("{}{}", berth.url(), blob_path(&layer));
    let cold = tokio::spawn({
        let url = url.clone();
        async move {
            let response = get(&url).await;
            let status = response.status().as_u16();
            (status, sha256(&response.bytes().await.unwrap()))
        }
    });
    // Once the upstream sends the blob, the fill has made its store calls; its transfer
    // pauses at 1 MiB. Freeze the bucket so the upload hangs after verification.
    eventually(
        "the upstream to send the blob (the fill started)",
        Duration::from_secs(10),
        || async { fake.bytes_sent(&layer.digest) > 0 },
    )
    .await;
    s3.pause();
    let (status, digest) = tokio::time::timeout(Duration::from_secs(30), cold)
        .await
        .expect("the cold pull ends at verification, not at the upload")
        .unwrap();
    assert_eq!((status, digest.as_str()), (200, layer.digest.as_str()));

    // Verified, still uploading: as good as cached for a prewarm check.
    let cached = |method: reqwest::Method| {
        client()
            .request(method, &url)
            .header("cache-control", "only-if-cached")
            .timeout(Duration::from_secs(10))
            .send()
    };
    let response = cached(reqwest::Method::GET).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sha256(&response.bytes().await.unwrap()), layer.digest);
    let head = cached(reqwest::Method::HEAD).await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        layer.size().to_string()
    );
    // A plain GET joins the running fill without asking the frozen bucket first.
    let started = Instant::now();
    let plain = client()
        .get(&url)
        .timeout(Duration::from_secs(8))
        .send()
        .await
        .expect("a plain GET waited on the frozen bucket");
    assert_eq!(plain.status(), 200);
    assert_eq!(sha256(&plain.bytes().await.unwrap()), layer.digest);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        stored_object_digest(&s3, &layer),
        None,
        "the upload had not finished: the answers came from the verified fill"
    );

    s3.resume();
    assert_eq!(wait_for_object(&s3, &layer).await, layer.digest);
    assert_eq!(fake.count_kind(Kind::Blob), 1, "one upstream transfer");
}

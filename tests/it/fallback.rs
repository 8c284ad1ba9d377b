//! `fallback_urls`: a second registry with the same content serves while the upstream's own
//! path is down, under the same digest verification, each with its own token dance; while the
//! upstream answers (even 404), the fallback is never asked.

use crate::support::fake_upstream::{FakeUpstream, Fault, Kind, Options, Role};
use crate::support::images::{self, Format, ImageIndex};
use crate::support::inprocess::{Berth, get, get_bytes, sha256};
use http::Method;

/// A loopback URL nothing listens on: connections are refused.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

async fn fake_with(image: &ImageIndex) -> FakeUpstream {
    let fake = FakeUpstream::start(Options::default()).await;
    fake.push("library/app", "1", image);
    fake
}

fn fallback_config(fallback: &FakeUpstream) -> String {
    format!(
        "fallback_urls = [{:?}]\nmax_attempts = 1\nbreaker_threshold = 2",
        fallback.url()
    )
}

/// berth whose docker.io is down (nothing listens) and has `fallback` as its fallback.
async fn down_upstream_with(fallback: &FakeUpstream) -> Berth {
    Berth::builder()
        .upstream_named("docker.io", &closed_url())
        .config(&fallback_config(fallback))
        .start()
        .await
}

#[tokio::test]
async fn a_down_upstream_is_served_by_its_fallback_byte_exact() {
    let image = images::multi_arch(251, Format::Oci);
    let fallback = fake_with(&image).await;
    let berth = down_upstream_with(&fallback).await;

    let (status, index) = berth.get_bytes("/v2/library/app/manifests/1").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&index));
    assert_eq!(sha256(&index), image.index.digest);
    let amd64 = image.image_for("amd64");
    let (status, manifest) = berth
        .get_bytes(&format!(
            "/v2/library/app/manifests/{}",
            amd64.manifest.digest
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&manifest), amd64.manifest.digest);
    for blob in std::iter::once(&amd64.config).chain(&amd64.layers) {
        let (status, body) = berth
            .get_bytes(&format!("/v2/library/app/blobs/{}", blob.digest))
            .await;
        assert_eq!(status, 200);
        assert_eq!(sha256(&body), blob.digest);
    }
    // The fallback did its own token dance and its CDN served the blobs.
    assert!(fallback.tokens_issued() > 0);
    assert!(fallback.count(Role::Cdn, Kind::Blob, Method::GET) > 0);

    let endpoint = fallback.registry_addr.to_string();
    let served = berth
        .metric(
            "berth_upstream_fallback_total",
            &[("upstream", "docker.io"), ("endpoint", &endpoint)],
        )
        .await;
    assert!(served >= 4.0, "berth_upstream_fallback_total = {served}");
    let (_, report) = berth.get_json("/_berth/status?format=json").await;
    let row = report["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "docker.io")
        .expect("docker.io row")
        .clone();
    let shown = &row["fallbacks"][0];
    assert_eq!(shown["url"], format!("{}/", fallback.url()), "{row}");
    assert_eq!(shown["state"], "up", "{row}");
    assert!(shown["served"].as_u64().unwrap() >= 4, "{row}");
    assert!(shown["last_served"].as_u64().is_some(), "{row}");
    let (_, html) = berth.get_text("/_berth/status").await;
    assert!(
        html.contains(&format!("data-fallback=\"{}/\"", fallback.url())),
        "{html}"
    );
}

#[tokio::test]
async fn a_fallback_that_sends_wrong_bytes_poisons_nothing() {
    let image = images::multi_arch(252, Format::Oci);
    let fallback = fake_with(&image).await;
    let berth = down_upstream_with(&fallback).await;
    let layer = &image.image_for("amd64").layers[0];
    let path = format!("/v2/library/app/blobs/{}", layer.digest);
    fallback.inject(
        Fault::corrupt(100)
            .kind(Kind::Blob)
            .reference(&layer.digest),
    );
    let response = get(&berth.url(&path)).await;
    let outcome = response.bytes().await;
    assert!(
        outcome.is_err(),
        "a digest mismatch aborts the response instead of completing it"
    );
    assert_eq!(fallback.pending_faults(), 0, "the corrupt body was sent");
    assert!(
        berth.metric("berth_verify_failures_total", &[]).await >= 1.0,
        "the mismatch was caught"
    );
    // Nothing was kept: the next pull fetches again and gets the right bytes.
    let before = fallback.count(Role::Cdn, Kind::Blob, Method::GET);
    let (status, body) = get_bytes(&berth.url(&path)).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), layer.digest);
    assert_eq!(
        fallback.count(Role::Cdn, Kind::Blob, Method::GET),
        before + 1
    );
    berth.wait_committed(&layer.digest).await;

    // A manifest by digest that does not hash to it is refused, not served or kept.
    let manifest = &image.image_for("amd64").manifest;
    let path = format!("/v2/library/app/manifests/{}", manifest.digest);
    fallback.inject(
        Fault::corrupt(10)
            .kind(Kind::Manifest)
            .reference(&manifest.digest),
    );
    let (status, _) = get_bytes(&berth.url(&path)).await;
    assert_eq!(status, 502, "a manifest that does not match its digest");
    assert_eq!(
        fallback.pending_faults(),
        0,
        "the corrupt manifest was sent"
    );
    let (status, body) = get_bytes(&berth.url(&path)).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), manifest.digest);
}

#[tokio::test]
async fn an_answering_upstream_never_asks_its_fallback() {
    let image = images::multi_arch(253, Format::Oci);
    let primary = fake_with(&image).await;
    let fallback = fake_with(&image).await;
    let berth = Berth::builder()
        .upstream_named("docker.io", &primary.url())
        .config(&fallback_config(&fallback))
        .start()
        .await;
    let (status, index) = berth.get_bytes("/v2/library/app/manifests/1").await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&index), image.index.digest);
    let layer = &image.image_for("arm64").layers[0];
    let (status, body) = berth
        .get_bytes(&format!("/v2/library/app/blobs/{}", layer.digest))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), layer.digest);
    // A 404 is the upstream's answer about the content, not a down path.
    assert_eq!(berth.status_of("/v2/library/other/manifests/1").await, 404);
    // A 5xx is a down path: then the fallback is asked.
    assert!(fallback.requests().is_empty(), "{:?}", fallback.requests());
    primary.inject(Fault::status(503, None).kind(Kind::Manifest).times(1));
    let arm64 = image.image_for("arm64");
    let path = format!("/v2/library/app/manifests/{}", arm64.manifest.digest);
    let (status, manifest) = berth.get_bytes(&path).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&manifest), arm64.manifest.digest);
    assert_eq!(primary.pending_faults(), 0, "the 503 was sent");
    assert!(fallback.count(Role::Registry, Kind::Manifest, Method::GET) > 0);
}

//! The cache never lies: what it serves under a digest hashes to that digest, whatever an
//! upstream sent as a media type, whatever happened to the stored copy, across restarts; what
//! it keeps (pins) it can walk; and fills cannot grow the cache past its limit.

use std::time::Duration;

use serde_json::json;

use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Blob, Format, ImageSpec};
use crate::support::inprocess::{Berth, client, sha256};
use crate::support::util::eventually;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A GET's status, `Docker-Content-Digest`, `Content-Type` and body.
async fn fetch(url: &str) -> (u16, String, String, bytes::Bytes) {
    let response = client().get(url).send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (digest, content_type) = (header("docker-content-digest"), header("content-type"));
    let status = response.status().as_u16();
    (
        status,
        digest,
        content_type,
        response.bytes().await.unwrap(),
    )
}

/// A manifest of `image` whose own `mediaType` is `declared`, served without Content-Type.
fn untyped_manifest(image: &images::Image, declared: &str) -> Blob {
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": declared,
        "config": image.config.descriptor(),
        "layers": image.layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Blob::new("", serde_json::to_vec(&doc).unwrap())
}

#[tokio::test]
async fn a_sniffed_media_type_with_a_newline_never_moves_where_the_body_starts() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(301, Format::Oci));
    let manifest = untyped_manifest(&image, &format!("{OCI_MANIFEST}\nx-evil: 1"));
    for blob in [&image.config, &image.layers[0], &image.layers[1]] {
        fake.put_blob("library/app", blob);
    }
    fake.put_manifest("library/app", &manifest);
    fake.tag("library/app", "1", &manifest.digest);
    let berth = Berth::builder().upstream(&fake).start().await;

    let (status, digest, content_type, body) =
        fetch(&berth.url("/v2/library/app/manifests/1")).await;
    assert_eq!(status, 200);
    assert_eq!(digest, manifest.digest);
    assert_eq!(sha256(&body), manifest.digest, "the body is the manifest's");
    assert_eq!(
        content_type, OCI_MANIFEST,
        "an invalid declared type is not kept"
    );

    // From the stored copy, after a restart: the same bytes under the same digest.
    let berth = berth.restart().await;
    let by_digest = berth.url(&format!("/v2/library/app/manifests/{}", manifest.digest));
    let (status, digest, _, body) = fetch(&by_digest).await;
    assert_eq!((status, digest.as_str()), (200, manifest.digest.as_str()));
    assert_eq!(
        sha256(&body),
        manifest.digest,
        "served whole after a restart"
    );
}

#[tokio::test]
async fn the_first_verified_media_type_of_a_digest_stays() {
    let image = images::image(&ImageSpec::new(302, Format::Oci));
    let (first, second) = (
        FakeUpstream::start(Options::plain()).await,
        FakeUpstream::start(Options::plain()).await,
    );
    first.push("library/app", "1", &image);
    // The same bytes, which a second registry serves under another media type.
    let mut relabelled = image.clone();
    relabelled.manifest.media_type = "application/json".into();
    second.push("library/app", "1", &relabelled);
    let berth = Berth::builder()
        .upstream(&first)
        .upstream_named("ghcr.io", &second.url())
        .start()
        .await;

    let (_, _, first_type, _) = fetch(&berth.url("/v2/library/app/manifests/1")).await;
    assert_eq!(first_type, OCI_MANIFEST);
    let (status, _, _, _) = fetch(&berth.url("/v2/ghcr.io/library/app/manifests/1")).await;
    assert_eq!(status, 200);
    let by_digest = format!("/v2/library/app/manifests/{}", image.manifest.digest);
    let (_, digest, content_type, body) = fetch(&berth.url(&by_digest)).await;
    assert_eq!(digest, image.manifest.digest);
    assert_eq!(sha256(&body), image.manifest.digest);
    assert_eq!(
        content_type, OCI_MANIFEST,
        "another upstream's answer did not change the type everyone gets"
    );
}

#[tokio::test]
async fn a_stored_manifest_that_no_longer_hashes_to_its_digest_is_not_served() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(303, Format::Oci));
    fake.push("library/app", "1", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    let path = format!("/v2/library/app/manifests/{}", image.manifest.digest);
    assert_eq!(berth.status_of(&path).await, 200);

    // The stored copy is damaged behind berth's back (a bad disk, a shared bucket).
    let hex = image.manifest.digest.strip_prefix("sha256:").unwrap();
    let stored = berth.data.path().join("manifests/sha256").join(hex);
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&stored, &bytes).unwrap();

    let berth = berth.restart().await;
    let (status, digest, _, body) = fetch(&berth.url(&path)).await;
    assert_eq!(
        (status, digest.as_str()),
        (200, image.manifest.digest.as_str())
    );
    assert_eq!(
        sha256(&body),
        image.manifest.digest,
        "the damaged copy is not served; the manifest is fetched again"
    );
}

const ADMIN_TOKEN: &str = "integrity-admin-token";

async fn put_pins(berth: &Berth, name: &str, manifests: &[&str]) -> (u16, String) {
    let response = client()
        .put(berth.url(&format!("/_berth/pins/{name}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "manifests": manifests }))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn admin_berth(fake: &FakeUpstream) -> Berth {
    Berth::builder()
        .top_level(&format!("admin_token = {ADMIN_TOKEN:?}"))
        .upstream(fake)
        .start()
        .await
}

#[tokio::test]
async fn a_manifest_with_null_annotations_and_urls_is_walked_when_pinned() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(304, Format::Oci));
    let mut layers: Vec<serde_json::Value> = image.layers.iter().map(Blob::descriptor).collect();
    for layer in &mut layers {
        layer["annotations"] = serde_json::Value::Null;
        layer["urls"] = serde_json::Value::Null;
    }
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "annotations": null,
        "config": image.config.descriptor(),
        "layers": layers,
    });
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&doc).unwrap());
    fake.put_blob("library/app", &image.config);
    fake.put_manifest("library/app", &manifest);
    fake.tag("library/app", "1", &manifest.digest);
    let berth = admin_berth(&fake).await;
    assert_eq!(berth.status_of("/v2/library/app/manifests/1").await, 200);

    let (status, body) = put_pins(&berth, "app", &[&manifest.digest]).await;
    assert_eq!(status, 200, "{body}");
    // Only the manifest is cached: the pin set knows its config and both layers are missing.
    let report: serde_json::Value = client()
        .get(berth.url("/_berth/status?format=json"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pin = &report["pins"][0];
    assert_eq!(pin["name"], "app", "{report}");
    assert_eq!(pin["complete"], false, "{report}");
    assert_eq!(pin["missing"], 3, "config and two layers, walked: {report}");
}

#[tokio::test]
async fn pinning_a_manifest_berth_cannot_walk_is_refused_naming_it() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let garbage = Blob::new(OCI_MANIFEST, &b"this is not a manifest"[..]);
    fake.put_manifest("library/app", &garbage);
    fake.tag("library/app", "1", &garbage.digest);
    let berth = admin_berth(&fake).await;
    assert_eq!(berth.status_of("/v2/library/app/manifests/1").await, 200);

    let (status, body) = put_pins(&berth, "app", &[&garbage.digest]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("MANIFEST_INVALID"), "{body}");
    assert!(body.contains(&garbage.digest), "names the manifest: {body}");
}

const MIB: usize = 1024 * 1024;

/// Bytes of regular files under `dir`, recursively.
fn disk_usage(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fills_of_unannounced_blobs_stay_within_max_size() {
    let fake = FakeUpstream::start(Options {
        chunked_blobs: true,
        ..Options::plain()
    })
    .await;
    // Content cached before the fills: spools make room for themselves, down to a floor.
    let warm: Vec<Blob> = (0..3).map(|i| images::big_blob(4, 310 + i)).collect();
    let cold: Vec<Blob> = (0..4).map(|i| images::big_blob(15, 320 + i)).collect();
    for blob in warm.iter().chain(&cold) {
        fake.put_blob("library/app", blob);
    }
    let berth = Berth::builder()
        .top_level("[store]\nmax_size = \"40MiB\"\nevict_interval = \"1s\"")
        .upstream(&fake)
        .start()
        .await;
    let blob_path = |b: &Blob| format!("/v2/library/app/blobs/{}", b.digest);
    for blob in &warm {
        assert_eq!(berth.get_bytes(&blob_path(blob)).await.1.len(), 4 * MIB);
        berth.wait_committed(&blob.digest).await;
    }

    // Four cold blobs of unknown size at once: 60 MiB through a 40 MiB cache.
    let data = berth.data.path().to_path_buf();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let (data, peak) = (data.clone(), peak.clone());
        tokio::spawn(async move {
            for _ in 0..2000 {
                peak.fetch_max(disk_usage(&data), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let pulls = cold.iter().map(|blob| {
        let url = berth.url(&blob_path(blob));
        async move { crate::support::inprocess::get_bytes(&url).await }
    });
    let bodies = futures::future::join_all(pulls).await;
    watcher.abort();
    for (blob, (status, body)) in cold.iter().zip(&bodies) {
        assert_eq!(*status, 200, "{}", blob.digest);
        assert_eq!(sha256(body), blob.digest, "each body whole and verified");
    }
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak <= 42 * MIB as u64,
        "cache and spools stayed within max_size (peak {peak} bytes)"
    );
    eventually(
        "the cache settles under max_size",
        Duration::from_secs(20),
        || async { disk_usage(&data) <= 40 * MIB as u64 },
    )
    .await;
}

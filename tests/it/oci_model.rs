//! The shared manifest model (`berth::oci::ManifestDoc`) reads what registries serve, fetched
//! through berth byte-exact: a Docker schema2 manifest list, an OCI index with a BuildKit
//! attestation entry, single manifests of both formats, and an artifact of an unknown type.

use berth::oci::{Digest, ManifestDoc, Platform};
use serde_json::json;

use crate::support::fake_upstream::{FakeUpstream, Options};
use crate::support::images::{self, Blob, Format, media};
use crate::support::inprocess::{Berth, client};

const REPO: &str = "library/model";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, */*";

async fn fetch(berth: &Berth, reference: &str) -> (String, Vec<u8>) {
    let response = client()
        .get(berth.url(&format!("/v2/{REPO}/manifests/{reference}")))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{reference}");
    let media_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (media_type, response.bytes().await.unwrap().to_vec())
}

fn digest(blob: &Blob) -> Digest {
    blob.digest.parse().unwrap()
}

fn platforms() -> Vec<Platform> {
    ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_lists_and_single_manifests_of_both_formats() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let berth = Berth::builder().upstream(&fake).start().await;
    for (tag, format) in [("docker", Format::Docker), ("oci", Format::Oci)] {
        let index = images::multi_arch(61, format);
        fake.push(REPO, tag, &index);
        let (_, bytes) = fetch(&berth, tag).await;
        let doc = ManifestDoc::parse(&bytes).unwrap();
        assert!(doc.is_index(), "{tag}");
        let children: Vec<Digest> = index.images.iter().map(|i| digest(&i.manifest)).collect();
        assert_eq!(doc.references().manifests, children, "{tag}");
        assert!(doc.references().blobs.is_empty());
        let chosen: Vec<Option<Digest>> = doc
            .choose(&platforms())
            .into_iter()
            .map(|(_, e)| e.map(|e| e.digest.clone()))
            .collect();
        assert_eq!(
            chosen,
            children.iter().cloned().map(Some).collect::<Vec<_>>()
        );

        let image = index.image_for("arm64");
        let (media_type, bytes) = fetch(&berth, &image.manifest.digest).await;
        assert_eq!(media_type, image.manifest.media_type);
        let doc = ManifestDoc::parse(&bytes).unwrap();
        assert!(!doc.is_index());
        let blobs: Vec<Digest> = std::iter::once(&image.config)
            .chain(&image.layers)
            .map(digest)
            .collect();
        assert_eq!(doc.references().blobs, blobs, "{tag}: config then layers");
        assert_eq!(doc.pullable_layers().count(), image.layers.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_entry_is_referenced_but_never_chosen() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let index = images::multi_arch(62, Format::Oci);
    fake.push(REPO, "base", &index);
    // BuildKit's layout: one more entry, platform unknown/unknown, annotated as an attestation.
    let (attestation, payload) = images::referrer(
        &index.images[0].manifest,
        "application/vnd.in-toto+json",
        62,
    );
    fake.put_manifest(REPO, &attestation);
    fake.put_blob(REPO, &payload);
    let mut entries: Vec<serde_json::Value> = index
        .images
        .iter()
        .map(|i| {
            let mut d = i.manifest.descriptor();
            d["platform"] = i.platform.json();
            d
        })
        .collect();
    let mut entry = attestation.descriptor();
    entry["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    entry["annotations"] = json!({
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": index.images[0].manifest.digest,
    });
    entries.push(entry);
    let with_attestation = Blob::new(
        media::OCI_INDEX,
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries}),
        )
        .unwrap(),
    );
    fake.put_manifest(REPO, &with_attestation);
    fake.tag(REPO, "attested", &with_attestation.digest);

    let berth = Berth::builder().upstream(&fake).start().await;
    let (_, bytes) = fetch(&berth, "attested").await;
    let doc = ManifestDoc::parse(&bytes).unwrap();
    assert_eq!(doc.entries().len(), 3);
    assert!(doc.entries()[2].is_attestation());
    assert!(doc.references().manifests.contains(&digest(&attestation)));
    let any_unknown: Vec<Platform> = vec!["unknown/unknown".parse().unwrap()];
    assert!(doc.choose(&any_unknown)[0].1.is_none(), "never chosen");
    assert_eq!(
        doc.choose(&platforms())[0].1.map(|e| e.digest.clone()),
        Some(digest(&index.images[0].manifest))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_of_an_unknown_type_parses_with_its_subject() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&images::ImageSpec::new(63, Format::Oci));
    fake.push(REPO, "app", &image);
    let (artifact, payload) =
        images::referrer(&image.manifest, "application/vnd.example.sbom+json", 63);
    fake.put_manifest(REPO, &artifact);
    fake.put_blob(REPO, &payload);

    let berth = Berth::builder().upstream(&fake).start().await;
    let (_, bytes) = fetch(&berth, &artifact.digest).await;
    assert_eq!(
        crate::support::inprocess::sha256(&bytes),
        artifact.digest,
        "byte-exact"
    );
    let doc = ManifestDoc::parse(&bytes).unwrap();
    assert_eq!(
        doc.artifact_type.as_deref(),
        Some("application/vnd.example.sbom+json")
    );
    assert_eq!(
        doc.subject.as_ref().map(|s| s.digest.clone()),
        Some(digest(&image.manifest))
    );
    assert!(doc.references().blobs.contains(&digest(&payload)));
}

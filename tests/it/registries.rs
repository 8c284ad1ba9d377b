//! Every registry our users name: registries allowed by `upstream_patterns` are served from
//! `https://<registry>` with `[upstream_defaults]`, by `?ns=` and by path prefix; any other
//! registry gets 404 NAME_UNKNOWN and berth connects nowhere for it; a vanity registry that
//! redirects to its origin (oci.external-secrets.io → ghcr.io) is followed; the shipped image
//! groups need nothing beyond the built-in upstreams.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::Request;
use axum::response::IntoResponse;
use http::{StatusCode, header};
use sha2::{Digest as _, Sha256};

use crate::support::fake_upstream::{FakeUpstream, Kind, Options, TlsFront};
use crate::support::images::{self, Content, Format, ImageSpec};
use crate::support::inprocess::{Berth, client};
use crate::support::real::TestCa;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// GETs `path` from berth; (status, body, Docker-Content-Digest).
async fn get(berth: &Berth, path: &str) -> (StatusCode, bytes::Bytes, Option<String>) {
    let response = client()
        .get(berth.url(path))
        .header(header::ACCEPT, ACCEPT)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, response.bytes().await.unwrap(), digest)
}

/// Pulls `repo:tag` (a single-platform image) through berth at `prefix`/`query` and checks
/// every digest.
async fn pull_and_verify(berth: &Berth, name: &str, query: &str, tag: &str, image: &dyn Content) {
    let (status, body, digest) = get(berth, &format!("/v2/{name}/manifests/{tag}{query}")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(digest.as_deref(), Some(image.root().digest.as_str()));
    assert_eq!(sha256(&body), image.root().digest);
    for blob in image.blobs() {
        let (status, body, _) =
            get(berth, &format!("/v2/{name}/blobs/{}{query}", blob.digest)).await;
        assert_eq!(status, StatusCode::OK, "{}", blob.digest);
        assert_eq!(sha256(&body), blob.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_registries_are_served_and_others_get_404_without_a_connection() {
    let ca = TestCa::new();
    let origin = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&ImageSpec::new(80, Format::Oci));
    origin.push("team/app", "v1", &image);
    let front = TlsFront::start(&ca, origin.registry_addr).await;
    let allowed = front.url().trim_start_matches("https://").to_string();
    // A port nobody is allowed to make berth connect to; it records whether anyone tried.
    let bystander = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bystander.set_nonblocking(true).unwrap();
    let refused = bystander.local_addr().unwrap().to_string();

    let berth = Berth::builder()
        .top_level(&format!(
            "upstream_patterns = [{allowed:?}, \"*.pkg.dev\"]\n[upstream_defaults]\nca_file = {:?}",
            ca.ca_pem.to_str().unwrap(),
        ))
        .upstream(&origin)
        .start()
        .await;

    // Allowed by a pattern: by ?ns= (containerd's "*" mirror) and by path prefix (podman).
    pull_and_verify(&berth, "team/app", &format!("?ns={allowed}"), "v1", &image).await;
    pull_and_verify(&berth, &format!("{allowed}/team/app"), "", "v1", &image).await;
    assert!(
        berth
            .metric("berth_upstream_requests_total", &[("upstream", &allowed)])
            .await
            > 0.0,
        "the pattern upstream is named by its registry in the metrics"
    );
    assert!(
        front.handshakes() > 0,
        "fetched over https with the defaults' CA"
    );

    // Not allowed: 404 NAME_UNKNOWN, and no connection anywhere.
    for path in [
        format!("/v2/team/app/manifests/v1?ns={refused}"),
        format!("/v2/{refused}/team/app/manifests/v1"),
        format!(
            "/v2/team/app/blobs/{}?ns={refused}",
            image.blobs()[0].digest
        ),
        "/v2/team/app/manifests/v1?ns=pkg.dev".into(),
        "/v2/team/app/manifests/v1?ns=x.pkg.dev.attacker.example".into(),
        "/v2/team/app/manifests/v1?ns=x.pkg.dev:443".into(),
    ] {
        let (status, body, _) = get(&berth, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("NAME_UNKNOWN"), "{path}: {body}");
    }
    match bystander.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("berth connected to a registry no pattern allows: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanity_registry_redirecting_to_its_origin_is_followed() {
    // The origin is ghcr.io-like: token auth, blobs redirected to a CDN.
    let ghcr = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(81, Format::Oci);
    ghcr.push("external-secrets/external-secrets", "v2.1.0", &image);

    // oci.external-secrets.io answers every request with a permanent redirect (301, as the
    // real one does) to the same path on ghcr.
    let redirects = Arc::new(AtomicUsize::new(0));
    let target = ghcr.url();
    let counter = redirects.clone();
    let vanity = axum::Router::new().fallback(move |req: Request| {
        let location = format!(
            "{target}{}",
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vanity_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, vanity).await;
    });

    let berth = Berth::builder()
        .upstream_named("oci.external-secrets.io", &vanity_url)
        .start()
        .await;
    let query = "?ns=oci.external-secrets.io";
    let name = "external-secrets/external-secrets";
    let (status, body, digest) = get(&berth, &format!("/v2/{name}/manifests/v2.1.0{query}")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(digest.as_deref(), Some(image.index.digest.as_str()));
    for manifest in image.manifests().into_iter().skip(1) {
        let (status, body, _) = get(
            &berth,
            &format!("/v2/{name}/manifests/{}{query}", manifest.digest),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sha256(&body), manifest.digest);
    }
    for blob in image.blobs() {
        let (status, body, _) =
            get(&berth, &format!("/v2/{name}/blobs/{}{query}", blob.digest)).await;
        assert_eq!(status, StatusCode::OK, "{}", blob.digest);
        assert_eq!(sha256(&body), blob.digest);
    }
    assert!(
        redirects.load(Ordering::SeqCst) > 0,
        "asked the vanity host first"
    );
    assert!(
        ghcr.count_kind(Kind::Blob) > 0,
        "the bytes came from the origin"
    );
    assert!(
        ghcr.tokens_issued() > 0,
        "the origin's token auth was answered"
    );
    server.abort();
}

#[test]
fn shipped_groups_need_only_the_builtin_upstreams() {
    let config = berth::config::Config::from_toml("").unwrap();
    let groups = berth::prewarm::Groups::shipped().unwrap();
    let mut registries = std::collections::BTreeSet::new();
    for name in groups.names() {
        for image in &groups.get(name.as_str()).unwrap().images {
            assert!(
                config.upstreams.contains_key(&image.registry),
                "group {name}: {} is not a built-in upstream",
                image.registry
            );
            registries.insert(image.registry.clone());
        }
    }
    assert!(
        registries.contains("oci.external-secrets.io"),
        "{registries:?}"
    );
}

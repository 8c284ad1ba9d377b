//! The fake upstream behaves like Docker Hub / ghcr: checked with reqwest directly, no berth.

use std::time::Duration;

use crate::support::fake_upstream::{
    AfterStall, FakeUpstream, Fault, Kind, Options, Role, SilentServer,
};
use crate::support::images::{self, Blob, Content, Format, media, sha256_digest};
use http::{Method, StatusCode, header};
use reqwest::redirect::Policy;

use crate::support::util::advance_clock;

const REPO: &str = "library/busybox";
const ALL_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// No redirects followed, no idle pool (its timers would move a paused clock).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn fake_with_busybox(opts: Options) -> (FakeUpstream, images::ImageIndex) {
    let fake = FakeUpstream::start(opts).await;
    let index = images::multi_arch(1, Format::Docker);
    fake.push(REPO, "1.36", &index);
    (fake, index)
}

/// Runs the anonymous token dance for `repo` and returns the token.
async fn token_for(fake: &FakeUpstream, repo: &str) -> String {
    let url = format!(
        "http://{}/token?service=fake&scope=repository:{repo}:pull",
        fake.token_addr
    );
    let body: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["token"].as_str().unwrap().to_string()
}

fn first_layer(index: &images::ImageIndex) -> &Blob {
    &index.images[0].layers[0]
}

#[tokio::test]
async fn unauthenticated_request_gets_bearer_challenge_naming_token_server_and_scope() {
    let (fake, _) = fake_with_busybox(Options::default()).await;
    let r = client()
        .get(format!("{}/v2/{REPO}/manifests/1.36", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:{REPO}:pull\"",
            fake.token_addr
        )
    );
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let ping = client()
        .get(format!("{}/v2/", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ping.status(),
        StatusCode::UNAUTHORIZED,
        "/v2/ is challenged too, like Docker Hub"
    );
}

#[tokio::test]
async fn token_then_manifest_by_tag_and_digest() {
    let (fake, index) = fake_with_busybox(Options::default()).await;
    let url = format!(
        "http://{}/token?service=fake&scope=repository:{REPO}:pull",
        fake.token_addr
    );
    let body: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let token = body["token"].as_str().unwrap();

    for reference in ["1.36", index.index.digest.as_str()] {
        let r = client()
            .get(format!("{}/v2/{REPO}/manifests/{reference}", fake.url()))
            .bearer_auth(token)
            .header(header::ACCEPT, ALL_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["docker-content-digest"],
            index.index.digest.as_str()
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], media::DOCKER_LIST);
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            index.index.size().to_string().as_str()
        );
        assert_eq!(sha256_digest(&r.bytes().await.unwrap()), index.index.digest);
    }
    assert_eq!(fake.count(Role::Token, Kind::Token, Method::GET), 1);
    assert_eq!(fake.count(Role::Registry, Kind::Manifest, Method::GET), 2);

    let other_repo = client()
        .get(format!("{}/v2/library/alpine/manifests/1", fake.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        other_repo.status(),
        StatusCode::UNAUTHORIZED,
        "token scoped to busybox only"
    );
    let challenge = other_repo.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn token_endpoint_demands_basic_credentials_when_configured() {
    let opts = Options {
        token_credentials: Some(("alice".into(), "s3cret".into())),
        ..Options::default()
    };
    let (fake, _) = fake_with_busybox(opts).await;
    let url = format!(
        "http://{}/token?service=fake&scope=repository:{REPO}:pull",
        fake.token_addr
    );
    let anonymous = client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = client()
        .get(&url)
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client()
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert_eq!(fake.tokens_issued(), 1);
}

#[tokio::test]
async fn expired_token_is_rejected_as_invalid_token() {
    let opts = Options {
        token_expires_in: Duration::from_secs(1),
        ..Options::default()
    };
    let (fake, index) = fake_with_busybox(opts).await;
    let token = token_for(&fake, REPO).await;
    let url = format!("{}/v2/{REPO}/manifests/{}", fake.url(), index.index.digest);
    assert_eq!(
        client()
            .head(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The fake times tokens with tokio's clock: advanced past the expiry, not slept.
    advance_clock(Duration::from_millis(1100)).await;
    let r = client()
        .head(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn blob_get_redirects_to_cdn_that_rejects_authorization() {
    let (fake, index) = fake_with_busybox(Options::default()).await;
    let token = token_for(&fake, REPO).await;
    let layer = first_layer(&index);
    let blob_url = format!("{}/v2/{REPO}/blobs/{}", fake.url(), layer.digest);
    let r = client()
        .get(&blob_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()[header::LOCATION].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("http://{}/blobs/{}", fake.cdn_addr, layer.digest)),
        "{location}"
    );

    let with_auth = client()
        .get(&location)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_auth.status(), StatusCode::BAD_REQUEST);
    assert!(
        with_auth
            .text()
            .await
            .unwrap()
            .contains("Only one auth mechanism allowed")
    );

    let without = client().get(&location).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::OK);
    assert_eq!(sha256_digest(&without.bytes().await.unwrap()), layer.digest);

    // reqwest's default policy drops Authorization on a cross-origin redirect (another port).
    let following = reqwest::Client::new()
        .get(&blob_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(following.status(), StatusCode::OK);
    assert_eq!(fake.count(Role::Cdn, Kind::Blob, Method::GET), 3);
    assert_eq!(fake.bytes_sent(&layer.digest), 2 * layer.size());

    let forged = client()
        .get(location.replace("sig=", "sig=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cdn_urls_expire() {
    let opts = Options {
        token_auth: false,
        cdn_url_ttl: Duration::from_millis(500),
        ..Options::default()
    };
    let (fake, index) = fake_with_busybox(opts).await;
    let layer = first_layer(&index);
    let r = client()
        .get(format!("{}/v2/{REPO}/blobs/{}", fake.url(), layer.digest))
        .send()
        .await
        .unwrap();
    let location = r.headers()[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(
        client().head(&location).send().await.unwrap().status(),
        StatusCode::OK
    );
    // The fake times signed URLs with tokio's clock: advanced past the expiry, not slept.
    advance_clock(Duration::from_millis(600)).await;
    let late = client().get(&location).send().await.unwrap();
    assert_eq!(late.status(), StatusCode::FORBIDDEN);
    assert!(late.text().await.unwrap().contains("Request has expired"));
}

#[tokio::test]
async fn blobs_honour_range() {
    let (fake, index) = fake_with_busybox(Options::plain()).await;
    let layer = first_layer(&index);
    let url = format!("{}/v2/{REPO}/blobs/{}", fake.url(), layer.digest);
    let total = layer.size();
    let cases = [
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, total - 1),
        ("bytes=-5", total - 5, total - 1),
        ("bytes=0-99999999", 0, total - 1),
    ];
    for (range, start, end) in cases {
        let r = client()
            .get(&url)
            .header(header::RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes {start}-{end}/{total}").as_str(),
            "{range}"
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(
            &body[..],
            &layer.bytes[start as usize..=end as usize],
            "{range}"
        );
    }
    let past_end = client()
        .get(&url)
        .header(header::RANGE, format!("bytes={total}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(past_end.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        past_end.headers()[header::CONTENT_RANGE],
        format!("bytes */{total}").as_str()
    );

    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        total.to_string().as_str()
    );
    assert_eq!(
        head.headers()["docker-content-digest"],
        layer.digest.as_str()
    );
    assert_eq!(head.headers()[header::ACCEPT_RANGES], "bytes");
}

#[tokio::test]
async fn manifest_accept_mismatch_is_404_and_head_has_headers_only() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let index = images::multi_arch(2, Format::Oci);
    fake.push("fluxcd/helm-controller", "v1.0.0", &index);
    let url = format!("{}/v2/fluxcd/helm-controller/manifests/v1.0.0", fake.url());
    let docker_only = client()
        .get(&url)
        .header(header::ACCEPT, media::DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(docker_only.status(), StatusCode::NOT_FOUND);
    assert!(
        docker_only
            .text()
            .await
            .unwrap()
            .contains("MANIFEST_UNKNOWN")
    );

    let head = client()
        .head(&url)
        .header(header::ACCEPT, media::OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_TYPE], media::OCI_INDEX);
    assert_eq!(
        head.headers()["docker-content-digest"],
        index.index.digest.as_str()
    );
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        index.index.size().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let unknown = client()
        .get(format!(
            "{}/v2/fluxcd/helm-controller/manifests/nope",
            fake.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let no_repo = client()
        .get(format!("{}/v2/busybox/manifests/1.36", fake.url()))
        .send()
        .await
        .unwrap();
    assert!(
        no_repo.text().await.unwrap().contains("NAME_UNKNOWN"),
        "Hub stores it as library/busybox"
    );
}

#[tokio::test]
async fn tags_list_paginates_with_n_last_and_link() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&images::ImageSpec::new(3, Format::Oci));
    for tag in ["a", "b", "c", "d", "e"] {
        fake.push("x/y", tag, &image);
    }
    let url = format!("{}/v2/x/y/tags/list", fake.url());
    let page1 = client().get(format!("{url}?n=2")).send().await.unwrap();
    let link = page1.headers()[header::LINK].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/x/y/tags/list?n=2&last=b>; rel=\"next\"");
    let body: serde_json::Value = page1.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"name": "x/y", "tags": ["a", "b"]}));
    let page3 = client()
        .get(format!("{url}?n=2&last=d"))
        .send()
        .await
        .unwrap();
    assert!(page3.headers().get(header::LINK).is_none());
    let body: serde_json::Value = page3.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["e"]));
}

#[tokio::test]
async fn referrers_list_manifests_whose_subject_is_the_digest() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::image(&images::ImageSpec::new(4, Format::Oci));
    fake.push("x/y", "v1", &image);
    let (sig, sig_payload) = images::referrer(
        &image.manifest,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        5,
    );
    let (sbom, _) = images::referrer(&image.manifest, "application/spdx+json", 6);
    fake.put_manifest("x/y", &sig);
    fake.put_blob("x/y", &sig_payload);
    fake.put_manifest("x/y", &sbom);
    let url = format!("{}/v2/x/y/referrers/{}", fake.url(), image.manifest.digest);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.headers()[header::CONTENT_TYPE], media::OCI_INDEX);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["manifests"].as_array().unwrap().len(), 2);
    let filtered = client()
        .get(format!("{url}?artifactType=application/spdx%2Bjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(filtered.headers()["oci-filters-applied"], "artifactType");
    let body: serde_json::Value = filtered.json().await.unwrap();
    assert_eq!(body["manifests"][0]["digest"], sbom.digest.as_str());
    assert_eq!(body["manifests"].as_array().unwrap().len(), 1);
}

/// GETs `url` and returns (bytes received, whether the body ended in an error).
async fn read_body(url: &str) -> (Vec<u8>, bool) {
    let mut r = client().get(url).send().await.unwrap();
    let mut got = Vec::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return (got, false),
            Err(_) => return (got, true),
        }
    }
}

fn big_fake_blob() -> Blob {
    Blob::new(media::OCI_LAYER_TAR, images::random_bytes(7, 1024 * 1024))
}

#[tokio::test]
async fn reset_after_n_bytes_cuts_the_connection_once() {
    let fake = FakeUpstream::start(Options {
        token_auth: false,
        ..Options::default()
    })
    .await;
    let blob = big_fake_blob();
    fake.put_blob("x/y", &blob);
    fake.inject(
        Fault::reset_after(100_000)
            .kind(Kind::Blob)
            .reference(&blob.digest),
    );
    let url = format!("{}/v2/x/y/blobs/{}", fake.url(), blob.digest);
    let location = client().get(&url).send().await.unwrap().headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let (got, errored) = read_body(&location).await;
    assert!(
        errored,
        "body must end in an error, got {} bytes cleanly",
        got.len()
    );
    // Flushed before the RST, so on loopback exactly N bytes arrive.
    assert_eq!(got.len(), 100_000);
    assert_eq!(
        &got[..],
        &blob.bytes[..got.len()],
        "bytes before the reset are genuine"
    );
    assert_eq!(fake.pending_faults(), 0);
    // The fault was for one request: the next one (new redirect) is whole.
    let location = client().get(&url).send().await.unwrap().headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let (got, errored) = read_body(&location).await;
    assert!(!errored);
    assert_eq!(sha256_digest(&got), blob.digest);
}

#[tokio::test]
async fn stall_pauses_the_body_then_continues() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = big_fake_blob();
    fake.put_blob("x/y", &blob);
    fake.inject(
        Fault::stall(65_536, Duration::from_millis(800), AfterStall::Continue).kind(Kind::Blob),
    );
    let started = tokio::time::Instant::now();
    let (got, errored) = read_body(&format!("{}/v2/x/y/blobs/{}", fake.url(), blob.digest)).await;
    assert!(!errored);
    assert_eq!(sha256_digest(&got), blob.digest);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "the stall took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stall_then_reset_delivers_a_prefix_and_an_error() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = big_fake_blob();
    fake.put_blob("x/y", &blob);
    fake.inject(Fault::stall(
        200_000,
        Duration::from_millis(300),
        AfterStall::Reset,
    ));
    let (got, errored) = read_body(&format!("{}/v2/x/y/blobs/{}", fake.url(), blob.digest)).await;
    assert!(errored);
    assert!(got.len() <= 200_000);
}

#[tokio::test]
async fn status_faults_fire_k_times_with_retry_after() {
    let (fake, index) = fake_with_busybox(Options::plain()).await;
    fake.inject(Fault::status(503, None).kind(Kind::Manifest).times(2));
    fake.inject(
        Fault::status(429, Some(7))
            .kind(Kind::Manifest)
            .reference("1.36"),
    );
    let url = format!("{}/v2/{REPO}/manifests/1.36", fake.url());
    // Sequential on purpose: faults are consumed in arrival order.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = client().get(&url).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers()[header::RETRY_AFTER], "7");
            assert!(r.text().await.unwrap().contains("TOOMANYREQUESTS"));
            seen.push(429);
        } else {
            seen.push(r.status().as_u16());
        }
    }
    assert_eq!(seen, [503, 503, 429, 200]);
    // A blob request never matched the manifest faults.
    let layer = first_layer(&index);
    let r = client()
        .head(format!("{}/v2/{REPO}/blobs/{}", fake.url(), layer.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(fake.fired_faults().len(), 3);
}

#[tokio::test]
async fn corrupt_flips_exactly_one_byte() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = big_fake_blob();
    fake.put_blob("x/y", &blob);
    fake.inject(Fault::corrupt(12_345).reference(&blob.digest));
    let (got, errored) = read_body(&format!("{}/v2/x/y/blobs/{}", fake.url(), blob.digest)).await;
    assert!(!errored);
    assert_eq!(got.len(), blob.bytes.len());
    let diffs: Vec<usize> = (0..got.len())
        .filter(|&i| got[i] != blob.bytes[i])
        .collect();
    assert_eq!(diffs, [12_345]);
    assert_ne!(sha256_digest(&got), blob.digest);
}

#[tokio::test]
async fn ignore_range_answers_200_with_the_whole_blob() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = big_fake_blob();
    fake.put_blob("x/y", &blob);
    fake.inject(Fault::ignore_range().role(Role::Registry));
    let url = format!("{}/v2/x/y/blobs/{}", fake.url(), blob.digest);
    let r = client()
        .get(&url)
        .header(header::RANGE, "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get(header::CONTENT_RANGE).is_none());
    assert_eq!(r.bytes().await.unwrap().len(), blob.bytes.len());
    let honoured = client()
        .get(&url)
        .header(header::RANGE, "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(honoured.status(), StatusCode::PARTIAL_CONTENT);
}

#[tokio::test]
async fn delay_headers_holds_the_response() {
    let (fake, _) = fake_with_busybox(Options::plain()).await;
    fake.inject(Fault::delay_headers(Duration::from_millis(700)).kind(Kind::Manifest));
    let started = tokio::time::Instant::now();
    let r = client()
        .head(format!("{}/v2/{REPO}/manifests/1.36", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn request_log_records_method_uri_headers_and_status() {
    let (fake, _) = fake_with_busybox(Options::plain()).await;
    let url = format!("{}/v2/{REPO}/manifests/1.36?ns=docker.io", fake.url());
    client()
        .get(&url)
        .header(header::USER_AGENT, "selftest/1")
        .send()
        .await
        .unwrap();
    let log = fake.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].uri,
        format!("/v2/{REPO}/manifests/1.36?ns=docker.io")
    );
    assert_eq!(log[0].kind, Kind::Manifest);
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].header("user-agent"), Some("selftest/1"));
}

#[tokio::test]
async fn silent_server_accepts_but_never_answers() {
    let silent = SilentServer::start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .get(format!("http://{}/v2/", silent.addr))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[test]
fn fixtures_are_deterministic_and_complete() {
    let a = images::multi_arch(9, Format::Oci);
    let b = images::multi_arch(9, Format::Oci);
    assert_eq!(a.index.digest, b.index.digest);
    assert_ne!(
        a.index.digest,
        images::multi_arch(10, Format::Oci).index.digest
    );
    assert_eq!(a.manifests().len(), 3);
    assert_eq!(a.blobs().len(), 6, "2 × (config + 2 layers)");
    let idx: serde_json::Value = serde_json::from_slice(&a.index.bytes).unwrap();
    let archs: Vec<&str> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    let docker = images::image(&images::ImageSpec::new(1, Format::Docker));
    assert_eq!(docker.manifest.media_type, media::DOCKER_MANIFEST);
    assert_eq!(docker.layers[0].media_type, media::DOCKER_LAYER);
    let big = images::big_blob(3, 1);
    assert_eq!(big.size(), 3 * 1024 * 1024);
    assert_ne!(
        big.bytes[..1024 * 1024],
        big.bytes[1024 * 1024..2 * 1024 * 1024]
    );
}

#[test]
fn layers_are_valid_tar_gzip_with_matching_diff_ids() {
    if !crate::support::prereq::require_tools(&["tar", "gzip"]) {
        return;
    }
    let image = images::image(&images::ImageSpec::new(11, Format::Oci));
    let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, layer) in image.layers.iter().enumerate() {
        let path = dir.path().join(format!("l{i}.tgz"));
        std::fs::write(&path, &layer.bytes).unwrap();
        let out = crate::support::util::run(
            std::process::Command::new("gzip").arg("-dc").arg(&path),
            Duration::from_secs(30),
        );
        out.expect_success();
        let tar = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .unwrap()
            .stdout;
        assert_eq!(
            sha256_digest(&tar),
            config["rootfs"]["diff_ids"][i].as_str().unwrap()
        );
        let list = crate::support::util::run(
            std::process::Command::new("tar").arg("-tzf").arg(&path),
            Duration::from_secs(30),
        );
        assert!(
            list.expect_success()
                .stdout
                .contains(&format!("layer-{i}.bin")),
            "{}",
            list.stdout
        );
    }
}

#[test]
#[ignore = "needs skopeo: run by scripts/test"]
fn layouts_are_readable_by_skopeo() {
    if !crate::support::prereq::require_tool("skopeo") {
        return;
    }
    let inspect = |src: String| {
        let mut cmd = std::process::Command::new("skopeo");
        cmd.args(["--insecure-policy", "inspect", "--raw"]).arg(src);
        sha256_digest(
            crate::support::util::run(&mut cmd, Duration::from_secs(60))
                .expect_success()
                .stdout
                .as_bytes(),
        )
    };
    let oci = tempfile::tempdir().unwrap();
    let index = images::multi_arch(12, Format::Oci);
    let image = images::image(&images::ImageSpec::new(13, Format::Oci));
    images::write_oci_layout(oci.path(), &[("multi", &index), ("single", &image)]).unwrap();
    assert_eq!(
        images::layout_digest(oci.path(), "multi").as_deref(),
        Some(index.index.digest.as_str())
    );
    assert_eq!(
        inspect(format!("oci:{}:multi", oci.path().display())),
        index.index.digest
    );
    assert_eq!(
        inspect(format!("oci:{}:single", oci.path().display())),
        image.manifest.digest
    );

    let dir = tempfile::tempdir().unwrap();
    let docker = images::multi_arch(14, Format::Docker);
    images::write_dir_layout(dir.path(), &docker).unwrap();
    assert_eq!(
        inspect(format!("dir:{}", dir.path().display())),
        docker.index.digest
    );
}

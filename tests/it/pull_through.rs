//! berth in-process against the fake Docker Hub (token server + CDN redirects): the pull API,
//! routing, caching, verification and offline behaviour.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::fake_upstream::{FakeUpstream, Fault, Kind, Options, Role};
use crate::support::images::{self, Content, Format};
use crate::support::inprocess::{Berth, client, get_bytes, sha256};
use http::Method;

const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// Pulls an image the way containerd does (resolve, index, per-platform manifest, config,
/// layers), checking every digest; returns the number of blobs fetched.
async fn pull(
    base: &str,
    repo: &str,
    tag: &str,
    query: &str,
    content: &images::ImageIndex,
) -> usize {
    let http = client();
    let resolve = http
        .head(format!("{base}/v2/{repo}/manifests/{tag}{query}"))
        .header("accept", CONTAINERD_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resolve.status(), 200, "resolve {repo}:{tag}");
    let digest = resolve.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(digest, content.index.digest);
    assert_eq!(
        resolve.headers()["content-length"].to_str().unwrap(),
        content.index.bytes.len().to_string()
    );
    let mut fetched = 0;
    for manifest in content.manifests() {
        let response = http
            .get(format!(
                "{base}/v2/{repo}/manifests/{}{query}",
                manifest.digest
            ))
            .header("accept", format!("{}, */*", manifest.media_type))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            manifest.media_type.as_str()
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(
            sha256(&body),
            manifest.digest,
            "manifest bytes are served unchanged"
        );
    }
    for blob in content.blobs() {
        let response = http
            .get(format!("{base}/v2/{repo}/blobs/{}{query}", blob.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "blob {}", blob.digest);
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256(&body), blob.digest);
        fetched += 1;
    }
    fetched
}

#[tokio::test]
async fn containerd_style_pull_through_token_auth_and_cdn() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(1, Format::Oci);
    fake.push("library/busybox", "1.37", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    let base = berth.url("");

    let blobs = pull(&base, "library/busybox", "1.37", "?ns=docker.io", &image).await;
    assert_eq!(blobs, image.blobs().len());
    assert!(
        fake.tokens_issued() >= 1,
        "berth went through the token flow"
    );
    assert_eq!(
        fake.count(Role::Cdn, Kind::Blob, Method::GET),
        blobs,
        "blobs came from the CDN redirect"
    );
    let cdn_with_auth = fake
        .requests()
        .iter()
        .filter(|r| r.role == Role::Cdn && r.header("authorization").is_some())
        .count();
    assert_eq!(cdn_with_auth, 0, "Authorization never goes to the CDN host");

    // The second pull is served from the cache: no manifest or blob request upstream.
    fake.reset_stats();
    pull(&base, "library/busybox", "1.37", "?ns=docker.io", &image).await;
    assert_eq!(fake.count_kind(Kind::Blob), 0);
    assert_eq!(fake.count_kind(Kind::Manifest), 0);
}

#[tokio::test]
async fn routes_by_ns_path_prefix_and_default_with_library_prefix() {
    let hub = FakeUpstream::start(Options::plain()).await;
    let ghcr = FakeUpstream::start(Options::plain()).await;
    let busybox = images::multi_arch(2, Format::Docker);
    let flux = images::multi_arch(3, Format::Oci);
    hub.push("library/busybox", "1.0", &busybox);
    ghcr.push("fluxcd/helm-controller", "v1.5.1", &flux);
    let berth = Berth::builder()
        .upstream(&hub)
        .upstream_named("ghcr.io", &ghcr.url())
        .start()
        .await;
    let base = berth.url("");

    // Default upstream, one-component name → library/.
    pull(&base, "busybox", "1.0", "", &busybox).await;
    // Path prefix (podman/skopeo mirrors).
    pull(&base, "ghcr.io/fluxcd/helm-controller", "v1.5.1", "", &flux).await;
    // ?ns= (containerd).
    pull(
        &base,
        "fluxcd/helm-controller",
        "v1.5.1",
        "?ns=ghcr.io",
        &flux,
    )
    .await;
    // containerd override_path sends both.
    pull(
        &base,
        "ghcr.io/fluxcd/helm-controller",
        "v1.5.1",
        "?ns=ghcr.io",
        &flux,
    )
    .await;
    assert_eq!(
        hub.count_kind(Kind::Blob),
        busybox.blobs().len(),
        "hub blobs fetched once"
    );
    assert_eq!(
        ghcr.count_kind(Kind::Blob),
        flux.blobs().len(),
        "ghcr blobs fetched once across three routes"
    );

    // Unconfigured registries are refused without any upstream traffic.
    for path in [
        "/v2/x/manifests/1?ns=evil.example",
        "/v2/evil.example/x/manifests/1",
        "/v2/localhost:5000/x/manifests/1",
    ] {
        let (status, body) = berth.get_json(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN", "{path}");
    }
}

#[tokio::test]
async fn bad_input_gets_oci_errors() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let berth = Berth::builder().upstream(&fake).start().await;
    let long_name = "a".repeat(256);
    let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let cases: Vec<(Method, String, u16, &str)> = vec![
        (
            Method::GET,
            "/v2/../etc/passwd/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/%2e%2e/etc/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a%00b/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/UPPER/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/{long_name}/manifests/latest"),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/busybox/manifests/bad:tag:x".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/busybox/manifests/-tag".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/busybox/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/busybox/blobs/md5:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/busybox/blobs/latest".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::PUT,
            "/v2/busybox/manifests/latest".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::POST,
            "/v2/busybox/blobs/uploads/".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::PATCH,
            "/v2/busybox/blobs/uploads/x".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::DELETE,
            format!("/v2/busybox/blobs/{d}"),
            405,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/v2/busybox/manifests/nope".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::GET,
            format!("/v2/busybox/blobs/{d}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/busybox/unknown/thing".into(),
            404,
            "NAME_UNKNOWN",
        ),
    ];
    for (method, path, status, code) in cases {
        // Raw bytes on the wire: an HTTP client library would normalise `..` away.
        let (got, head, body) = raw_request(berth.addr, &method, &path).await;
        assert_eq!(got, status, "{method} {path}");
        assert!(
            head.to_ascii_lowercase()
                .contains("docker-distribution-api-version: registry/2.0"),
            "{head}"
        );
        let body: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method} {path}: {body}"));
        assert_eq!(body["errors"][0]["code"], code, "{method} {path}: {body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(
        fake.count_kind(Kind::Manifest) + fake.count_kind(Kind::Blob),
        2,
        "only the two well-formed lookups went upstream"
    );
}

/// Sends one HTTP/1.1 request exactly as given; returns (status, head, body).
async fn raw_request(addr: SocketAddr, method: &Method, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn ranges_heads_and_api_version() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(4, Format::Oci);
    fake.push("library/busybox", "1.0", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    let http = client();
    let layer = &image.image_for("amd64").layers[0];
    let url = berth.url(&format!("/v2/busybox/blobs/{}", layer.digest));
    let size = layer.bytes.len() as u64;

    for round in ["cold", "warm"] {
        let head = http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200, "{round}");
        assert_eq!(
            head.headers()["content-length"],
            size.to_string().as_str(),
            "{round}"
        );
        assert_eq!(head.headers()["accept-ranges"], "bytes");
        assert_eq!(
            head.headers()["docker-content-digest"],
            layer.digest.as_str()
        );

        let part = http
            .get(&url)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206, "{round}");
        assert_eq!(
            part.headers()["content-range"],
            format!("bytes 10-19/{size}").as_str()
        );
        assert_eq!(&part.bytes().await.unwrap()[..], &layer.bytes[10..20]);

        let tail = http
            .get(&url)
            .header("range", "bytes=-5")
            .send()
            .await
            .unwrap();
        assert_eq!(tail.status(), 206);
        assert_eq!(
            &tail.bytes().await.unwrap()[..],
            &layer.bytes[layer.bytes.len() - 5..]
        );

        let past = http
            .get(&url)
            .header("range", format!("bytes={size}-"))
            .send()
            .await
            .unwrap();
        assert_eq!(past.status(), 416, "{round}");
        assert_eq!(
            past.headers()["content-range"],
            format!("bytes */{size}").as_str()
        );
    }
    let base = http.get(berth.url("/v2/")).send().await.unwrap();
    assert_eq!(base.status(), 200);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn corrupt_upstream_blob_is_never_served_whole_nor_cached() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(5, Format::Oci);
    fake.push("library/busybox", "1.0", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1")
        .start()
        .await;
    let layer = &image.image_for("amd64").layers[0];
    let url = berth.url(&format!("/v2/busybox/blobs/{}", layer.digest));
    fake.inject(
        Fault::corrupt(100)
            .kind(Kind::Blob)
            .reference(&layer.digest),
    );

    let response = crate::support::inprocess::get(&url).await;
    let outcome = response.bytes().await;
    assert!(
        outcome.is_err(),
        "a digest mismatch aborts the response instead of completing it"
    );

    // Nothing was committed: the next pull goes upstream again and gets the right bytes.
    let before = fake.count(Role::Cdn, Kind::Blob, Method::GET);
    let (status, body) = get_bytes(&url).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), layer.digest);
    assert_eq!(fake.count(Role::Cdn, Kind::Blob, Method::GET), before + 1);
}

#[tokio::test]
async fn tag_ttl_revalidates_with_head_and_follows_moves() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let first = images::multi_arch(6, Format::Oci);
    let second = images::multi_arch(7, Format::Oci);
    fake.push("team/app", "stable", &first);
    fake.push("team/app", "next", &second);
    // A 1 ms TTL makes every lookup a revalidation.
    let berth = Berth::builder()
        .upstream_named("ghcr.io", &fake.url())
        .config("tag_ttl = \"1ms\"")
        .start()
        .await;
    let http = client();
    let url = berth.url("/v2/team/app/manifests/stable?ns=ghcr.io");
    let get_digest = || async {
        http.get(&url)
            .header("accept", CONTAINERD_ACCEPT)
            .send()
            .await
            .unwrap()
            .headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    };

    assert_eq!(get_digest().await, first.index.digest);
    fake.reset_stats();
    // The record must age past its 1 ms tag_ttl. Tag ages are wall-clock (SystemTime) in berth,
    // which a test cannot advance: time passing is the subject, and a sleep is a lower bound
    // that load only lengthens.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(get_digest().await, first.index.digest);
    assert_eq!(
        fake.count(Role::Registry, Kind::Manifest, Method::HEAD),
        1,
        "unchanged tag: one HEAD"
    );
    assert_eq!(
        fake.count(Role::Registry, Kind::Manifest, Method::GET),
        0,
        "unchanged tag: no GET"
    );

    fake.tag("team/app", "stable", &second.index.digest);
    // Past tag_ttl again (wall clock, as above).
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        get_digest().await,
        second.index.digest,
        "a moved tag is followed"
    );
}

#[tokio::test]
async fn fresh_tags_are_answered_without_the_upstream() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(8, Format::Oci);
    fake.push("library/nginx", "1.27", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("tag_ttl = \"1h\"")
        .start()
        .await;
    pull(
        &berth.url(""),
        "library/nginx",
        "1.27",
        "?ns=docker.io",
        &image,
    )
    .await;
    fake.reset_stats();
    for _ in 0..5 {
        pull(&berth.url(""), "nginx", "1.27", "", &image).await;
    }
    assert_eq!(
        fake.requests().len(),
        0,
        "within tag_ttl nothing goes upstream"
    );
}

#[tokio::test]
async fn cached_content_survives_an_unreachable_upstream_and_a_restart() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(9, Format::Docker);
    fake.push("library/busybox", "1.36", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("tag_ttl = \"1ms\"\nmax_attempts = 1")
        .start()
        .await;
    pull(
        &berth.url(""),
        "library/busybox",
        "1.36",
        "?ns=docker.io",
        &image,
    )
    .await;

    // Upstream gone (its ports closed), berth restarted on the same cache.
    drop(fake);
    let berth = berth.restart().await;
    pull(
        &berth.url(""),
        "library/busybox",
        "1.36",
        "?ns=docker.io",
        &image,
    )
    .await;
    let by_digest = berth
        .status_of(&format!(
            "/v2/library/busybox/manifests/{}?ns=docker.io",
            image.index.digest
        ))
        .await;
    assert_eq!(by_digest, 200);

    // Content never cached fails clearly, fast.
    let missing = berth
        .get("/v2/library/busybox/manifests/never-seen?ns=docker.io")
        .await;
    assert_eq!(missing.status(), 503);
    assert!(missing.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_miss_streams_before_the_upstream_finishes_and_survives_client_disconnect() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let big = images::big_blob(8, 10);
    fake.put_blob("library/big", &big);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("stall_timeout = \"30s\"")
        .start()
        .await;
    // The upstream sends 1 MiB, then pauses for 3 s.
    fake.inject(
        Fault::stall(
            1 << 20,
            Duration::from_secs(3),
            crate::support::fake_upstream::AfterStall::Continue,
        )
        .kind(Kind::Blob),
    );
    let url = berth.url(&format!("/v2/big/blobs/{}", big.digest));

    let started = std::time::Instant::now();
    let mut response = crate::support::inprocess::get(&url).await;
    let first = response.chunk().await.unwrap().expect("first bytes");
    assert!(!first.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "first bytes arrive while the upstream is still sending"
    );
    drop(response); // the client goes away mid-transfer

    // The fill carries on (after the client left) and commits the verified blob.
    berth.wait_committed(&big.digest).await;
    let (status, body) = get_bytes(&url).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), big.digest);
    assert_eq!(fake.count_kind(Kind::Blob), 1);
}

#[tokio::test]
async fn tag_list_and_referrers_pass_through() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(11, Format::Oci);
    for tag in ["a", "b", "c"] {
        fake.push("library/busybox", tag, &image);
    }
    let berth = Berth::builder().upstream(&fake).start().await;
    let (status, list) = berth.get_json("/v2/busybox/tags/list?n=2&last=a").await;
    assert_eq!(status, 200);
    assert_eq!(list["tags"], serde_json::json!(["b", "c"]));
    let referrers = berth
        .get(&format!("/v2/busybox/referrers/{}", image.index.digest))
        .await;
    assert_eq!(referrers.status(), 200);
    assert_eq!(
        referrers.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
}

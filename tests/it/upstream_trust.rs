//! The upstream side under adversity: a breaker that recovers from a black hole even when its
//! probe is cancelled, content answers (404 from a CDN) that never count against health,
//! credentials that stay with their authority, and bounded work per request.

use std::time::{Duration, Instant};

use crate::support::fake_upstream::{
    AfterStall, FakeUpstream, Fault, Kind, Options, Role, TlsFront,
};
use crate::support::images::{self, Format};
use crate::support::inprocess::{Berth, client, get, status_of};
use crate::support::log_buffer::LogBuffer;
use crate::support::real::TestCa;
use crate::support::syn_gate::SynGate;
use crate::support::util::eventually;
use http::Method;

/// The reproduction, end to end: SYNs to the upstream are dropped, two cold requests
/// open the breaker, after the cooldown a tag revalidation becomes the probe and its 5 s
/// deadline drops the request future while the connect (6 s) is still pending. The black
/// hole is lifted; uncached content must be served again within cooldown + one probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_upstream_recovers_within_cooldown_and_one_probe() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(61, Format::Oci);
    fake.push("library/app", "1", &image);
    let mut gate = SynGate::start(fake.registry_addr).await;
    let settings = "breaker_threshold = 2\nbreaker_cooldown = \"3s\"\ntag_ttl = \"1s\"\n\
                    connect_timeout = \"6s\"\nmax_attempts = 1";

    // The tag is known from an earlier run that could reach the upstream directly.
    let first = Berth::builder()
        .upstream(&fake)
        .config(settings)
        .start()
        .await;
    assert_eq!(
        status_of(&first.url("/v2/library/app/manifests/1")).await,
        200
    );
    let data = first.shutdown().await;
    let berth = Berth::builder()
        .upstream_named("docker.io", &gate.url())
        .config(settings)
        .data(data)
        .start()
        .await;
    // The tag record must age past tag_ttl (1 s). Tag ages are wall-clock (SystemTime) in
    // berth, which a test cannot advance: time passing is the subject, and a sleep is a lower
    // bound that load only lengthens.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let uncached = |arch: &str| {
        berth.url(&format!(
            "/v2/library/app/manifests/{}",
            image.image_for(arch).manifest.digest
        ))
    };
    let (amd64, arm64) = (uncached("amd64"), uncached("arm64"));
    // Two cold requests time out connecting: the breaker opens.
    let (a, b) = tokio::join!(status_of(&amd64), status_of(&arm64));
    assert_eq!((a, b), (503, 503));
    let started = Instant::now();
    assert_eq!(status_of(&amd64).await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "open: fails fast"
    );

    // After the cooldown, a tag request carries the probe; its revalidation deadline (5 s)
    // fires before the connect timeout (6 s) and the last known digest is served. The cooldown
    // passing is the subject (and the runtime is multi-threaded, so its clock cannot be
    // advanced): a sleep, a lower bound that load only lengthens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    assert_eq!(
        status_of(&berth.url("/v2/library/app/manifests/1")).await,
        200
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the tag request waited for the probe's deadline, took {:?}",
        started.elapsed()
    );

    gate.lift();
    let lifted = Instant::now();
    // Bound: the cancelled probe's connect runs out (≤ 2 s left), the cooldown (3 s), one
    // successful probe; awaited for at most 30 s, then held to 12 s.
    eventually(
        "uncached content served again after the black hole was lifted",
        Duration::from_secs(30),
        || async { status_of(&amd64).await == 200 },
    )
    .await;
    assert!(
        lifted.elapsed() < Duration::from_secs(12),
        "recovered only after {:?}",
        lifted.elapsed()
    );
}

/// registry.k8s.io redirects every blob GET to its CDN, which answers 404 for a blob that
/// does not exist. That is an answer about content: 404 BLOB_UNKNOWN quickly, and the
/// upstream stays up for the next pull.
/// The status of a GET of `url` with this `Accept` header.
async fn status_with_accept(url: &str, accept: &str) -> u16 {
    client()
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_unknown_blob_behind_a_redirecting_registry_is_404_and_the_upstream_stays_up() {
    let fake = FakeUpstream::start(Options {
        token_auth: false,
        redirect_unknown_blobs: true,
        ..Options::default()
    })
    .await;
    let image = images::multi_arch(62, Format::Oci);
    fake.push("pause", "3.10", &image);
    let berth = Berth::builder()
        .upstream_named("registry.k8s.io", &fake.url())
        .config("breaker_threshold = 1\nmax_attempts = 4")
        .start()
        .await;
    let unknown = format!("sha256:{}", "0".repeat(64));
    let started = Instant::now();
    let (status, body) = berth
        .get_text(&format!("/v2/registry.k8s.io/pause/blobs/{unknown}"))
        .await;
    assert_eq!(status, 404);
    assert!(body.contains("BLOB_UNKNOWN"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retries with backoff for a missing blob, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        fake.count(Role::Cdn, Kind::Blob, Method::GET),
        2,
        "the CDN's 404 was re-asked once through a fresh redirect, then believed"
    );
    // breaker_threshold = 1: had the 404 counted, the next pull would get 503.
    let layer = &image.image_for("amd64").layers[0];
    let (status, body) = berth
        .get_bytes(&format!("/v2/registry.k8s.io/pause/blobs/{}", layer.digest))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, layer.bytes);
}

#[tokio::test]
async fn a_redirect_target_asking_for_basic_gets_no_credentials() {
    let logs = LogBuffer::default();
    let _guard = logs.install(tracing::Level::INFO);
    let fake = FakeUpstream::start(Options {
        token_credentials: Some(("alice".into(), "s3cret-pass".into())),
        cdn_basic_challenge: true,
        ..Options::default()
    })
    .await;
    let image = images::multi_arch(63, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("username = \"alice\"\npassword = \"s3cret-pass\"")
        .start()
        .await;
    let layer = &image.image_for("amd64").layers[0];
    let (status, body) = berth
        .get_text(&format!("/v2/library/app/blobs/{}", layer.digest))
        .await;
    assert!(!(200..300).contains(&status), "{status}");
    let cdn_requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.role == Role::Cdn)
        .collect();
    assert!(!cdn_requests.is_empty());
    assert!(
        cdn_requests
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "a redirect target got credentials"
    );
    // The token endpoint did get them (it is the registry's own host here).
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.role == Role::Token && r.header("authorization").is_some())
    );
    let logged = logs.text();
    for secret in ["s3cret-pass", "sig=", "fake-"] {
        assert!(!logged.contains(secret), "{secret} in the logs:\n{logged}");
        assert!(!body.contains(secret), "{secret} in the error body: {body}");
    }
}

#[tokio::test]
async fn a_token_realm_on_a_foreign_host_gets_no_credentials() {
    let fake = FakeUpstream::start(Options {
        token_credentials: Some(("alice".into(), "s3cret-pass".into())),
        // The registry is 127.0.0.1; its challenge names a realm on another host.
        token_realm_host: Some("localhost".into()),
        ..Options::default()
    })
    .await;
    let image = images::multi_arch(64, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("username = \"alice\"\npassword = \"s3cret-pass\"")
        .start()
        .await;
    let status = berth.status_of("/v2/library/app/manifests/1").await;
    assert!(!(200..300).contains(&status), "{status}");
    let token_requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.role == Role::Token)
        .collect();
    assert!(
        !token_requests.is_empty(),
        "an anonymous token was asked for"
    );
    assert!(
        token_requests
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "a foreign realm got the upstream's credentials"
    );

    // Listed in trusted_hosts, the same realm gets them and the pull works.
    let trusted = Berth::builder()
        .upstream(&fake)
        .config("username = \"alice\"\npassword = \"s3cret-pass\"\ntrusted_hosts = [\"localhost\"]")
        .start()
        .await;
    assert_eq!(trusted.status_of("/v2/library/app/manifests/1").await, 200);
}

#[tokio::test]
async fn an_https_upstream_is_never_followed_onto_plain_http() {
    let ca = TestCa::new();
    let fake = FakeUpstream::start(Options {
        token_auth: false,
        ..Options::default()
    })
    .await;
    let image = images::multi_arch(65, Format::Oci);
    fake.push("library/app", "1", &image);
    let front = TlsFront::start(&ca, fake.registry_addr).await;
    let berth = Berth::builder()
        .upstream_named("docker.io", &front.url())
        .config(&format!(
            "ca_file = {:?}\nbreaker_threshold = 1",
            ca.ca_pem.display().to_string()
        ))
        .start()
        .await;
    let layer = &image.image_for("amd64").layers[0];
    let (status, body) = berth
        .get_text(&format!("/v2/library/app/blobs/{}", layer.digest))
        .await;
    assert_eq!(status, 502);
    assert!(body.contains("plain http"), "{body}");
    assert!(
        !body.contains("sig="),
        "a signed URL in the error body: {body}"
    );
    assert_eq!(
        fake.count(Role::Cdn, Kind::Blob, Method::GET),
        0,
        "the plain-http redirect target was never contacted"
    );
    assert_eq!(
        berth.status_of("/v2/library/app/manifests/1").await,
        200,
        "a refused redirect is not a failure of the path"
    );
}

#[tokio::test]
async fn a_head_of_an_uncached_blob_asks_the_upstream_with_a_head() {
    let fake = FakeUpstream::start(Options::default()).await;
    let blob = images::big_blob(4, 66);
    fake.put_blob("library/big", &blob);
    let berth = Berth::builder().upstream(&fake).start().await;
    let response = client()
        .head(berth.url(&format!("/v2/library/big/blobs/{}", blob.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        blob.size().to_string()
    );
    assert_eq!(fake.bytes_sent(&blob.digest), 0, "nothing was downloaded");
    assert_eq!(fake.count(Role::Registry, Kind::Blob, Method::GET), 0);
    assert!(fake.count(Role::Registry, Kind::Blob, Method::HEAD) >= 1);
}

#[tokio::test]
async fn blobs_over_max_blob_size_are_refused_before_download() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(3, 67);
    fake.put_blob("library/big", &blob);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_blob_size = \"1MiB\"")
        .start()
        .await;
    let path = format!("/v2/library/big/blobs/{}", blob.digest);
    let (status, body) = berth.get_text(&path).await;
    assert_eq!(status, 502);
    assert!(body.contains("limit"), "{body}");
    assert_eq!(
        berth.status_of(&path).await,
        502,
        "nothing of it was cached"
    );
}

/// max_fills = 1 with its queue of 4: a sixth concurrent cold blob is told to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_fills_past_the_cap_and_its_queue_get_503_with_retry_after() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blobs: Vec<_> = (0..6).map(|i| images::big_blob(1, 70 + i)).collect();
    for b in &blobs {
        fake.put_blob("library/big", b);
    }
    // The first fill holds its slot for a while.
    fake.inject(
        Fault::delay_headers(Duration::from_secs(2))
            .kind(Kind::Blob)
            .reference(&blobs[0].digest),
    );
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_fills = 1")
        .start()
        .await;
    let first = tokio::spawn({
        let url = berth.url(&format!("/v2/library/big/blobs/{}", blobs[0].digest));
        async move { status_of(&url).await }
    });
    // Its upstream GET has arrived (answered 2 s later): the fill holds its slot.
    eventually(
        "the first fill's upstream GET",
        Duration::from_secs(10),
        || async { fake.count(Role::Registry, Kind::Blob, Method::GET) == 1 },
    )
    .await;
    let rest: Vec<_> = blobs[1..]
        .iter()
        .map(|b| {
            let url = berth.url(&format!("/v2/library/big/blobs/{}", b.digest));
            tokio::spawn(async move {
                let response = get(&url).await;
                (
                    response.status().as_u16(),
                    response.headers().contains_key("retry-after"),
                )
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in rest {
        outcomes.push(r.await.unwrap());
    }
    assert_eq!(first.await.unwrap(), 200);
    let refused = outcomes.iter().filter(|(s, _)| *s == 503).count();
    let served = outcomes.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((refused, served), (1, 4), "{outcomes:?}");
    assert!(outcomes.iter().all(|(s, retry)| *s != 503 || *retry));
}

#[tokio::test]
async fn a_huge_tag_page_size_is_clamped() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(68, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    assert_eq!(
        berth
            .status_of("/v2/library/app/tags/list?n=99999999999999999999")
            .await,
        200
    );
    let tags = fake
        .requests()
        .into_iter()
        .find(|r| r.uri.contains("tags/list"))
        .unwrap();
    assert!(!tags.uri.contains("n=9"), "{}", tags.uri);
    assert_eq!(
        berth.status_of("/v2/library/app/tags/list?n=50000").await,
        200
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.uri.ends_with("tags/list?n=10000")),
        "{:?}",
        fake.requests().iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_loop_of_bad_references_costs_one_upstream_request_each_briefly() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(69, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    let missing_blob = format!("sha256:{}", "1".repeat(64));
    for _ in 0..5 {
        assert_eq!(
            berth
                .status_of("/v2/library/app/manifests/no-such-tag")
                .await,
            404
        );
        assert_eq!(
            berth
                .status_of(&format!("/v2/library/app/blobs/{missing_blob}"))
                .await,
            404
        );
    }
    let asked = |kind: Kind| {
        fake.requests()
            .iter()
            .filter(|r| r.role == Role::Registry && r.kind == kind && r.status == 404)
            .count()
    };
    assert_eq!(asked(Kind::Manifest), 1, "the tag's 404 is remembered");
    assert_eq!(asked(Kind::Blob), 1, "the blob's 404 is remembered");
}

#[tokio::test]
async fn clients_differing_only_in_accept_share_one_upstream_get() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(71, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    let url = berth.url("/v2/library/app/manifests/1");
    // The tag is an index; these clients say they take only single manifests.
    for accept in [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
    ] {
        assert_eq!(status_with_accept(&url, accept).await, 200);
    }
    let gets = fake.count(Role::Registry, Kind::Manifest, Method::GET);
    assert!(
        gets <= 3,
        "one GET for the shared record and one per Accept class (2 classes), got {gets}"
    );
}

/// The same wedge through the other door: the probe is a tag-list request (passed through,
/// never cached) whose client hangs up while the connect is still pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_whose_client_hangs_up_still_settles_the_breaker() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(72, Format::Oci);
    fake.push("library/app", "1", &image);
    let mut gate = SynGate::start(fake.registry_addr).await;
    let berth = Berth::builder().upstream_named("docker.io", &gate.url()).config("breaker_threshold = 1\nbreaker_cooldown = \"2s\"\nconnect_timeout = \"3s\"\nmax_attempts = 1").start()
    .await;
    let tags = berth.url("/v2/library/app/tags/list");
    assert_eq!(status_of(&tags).await, 503, "the connect times out: open");
    // The cooldown passing is the subject (a multi-threaded runtime: its clock cannot be
    // advanced): a sleep, a lower bound that load only lengthens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The probe's client gives up after 300 ms, long before the connect timeout.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(impatient.get(&tags).send().await.is_err(), "client hung up");
    gate.lift();
    let lifted = Instant::now();
    eventually(
        "tag lists served again after the black hole was lifted",
        Duration::from_secs(10),
        || async { status_of(&tags).await == 200 },
    )
    .await;
    assert!(
        lifted.elapsed() < Duration::from_secs(8),
        "tag lists refused {:?} after the black hole was lifted",
        lifted.elapsed()
    );
}

/// One retry owner: a blob that keeps failing at the header stage costs `max_attempts`
/// upstream requests, not `max_attempts²` (two nested retry loops).
#[tokio::test]
async fn a_failing_blob_costs_max_attempts_requests_not_their_square() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let blob = images::big_blob(1, 73);
    fake.put_blob("library/big", &blob);
    fake.inject(
        Fault::status(503, Some(0))
            .kind(Kind::Blob)
            .reference(&blob.digest)
            .times(50),
    );
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 3\nbreaker_threshold = 100")
        .start()
        .await;
    let status = berth
        .status_of(&format!("/v2/library/big/blobs/{}", blob.digest))
        .await;
    assert_eq!(status, 502, "the upstream's 503s, passed on");
    assert_eq!(fake.count(Role::Registry, Kind::Blob, Method::GET), 3);
}

/// Without a Content-Length the size is only known at the end: the caps apply while reading.
#[tokio::test]
async fn a_blob_without_content_length_is_cut_off_at_the_caps() {
    let fake = FakeUpstream::start(Options {
        chunked_blobs: true,
        ..Options::plain()
    })
    .await;
    let (small, big) = (images::big_blob(1, 74), images::big_blob(3, 75));
    fake.put_blob("library/big", &small);
    fake.put_blob("library/big", &big);
    for extra in ["max_blob_size = \"2MiB\"", "[store]\nmax_size = \"2MiB\""] {
        let berth = Berth::builder().upstream(&fake).config(extra).start().await;
        let url = |b: &images::Blob| berth.url(&format!("/v2/library/big/blobs/{}", b.digest));
        let response = get(&url(&small)).await;
        assert_eq!(response.status(), 200, "{extra}");
        assert!(
            response.headers().get("content-length").is_none(),
            "chunked through"
        );
        assert_eq!(response.bytes().await.unwrap(), small.bytes);
        let response = get(&url(&big)).await;
        // Headers may have gone out before the cap was hit: then the body breaks instead.
        let status = response.status().as_u16();
        assert!(status == 200 || status == 502, "{extra}: {status}");
        let delivered_whole = status == 200 && response.bytes().await.is_ok();
        assert!(
            !delivered_whole,
            "{extra}: a too-large blob was delivered whole"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_tag_lists_share_one_upstream_request() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(69, Format::Oci);
    for tag in ["1", "2", "3"] {
        fake.push("library/app", tag, &image);
    }
    let berth = Berth::builder().upstream(&fake).start().await;
    // The upstream answers slowly, so all ten requests arrive while the first is in flight.
    fake.inject(
        Fault::delay_headers(Duration::from_millis(800))
            .kind(Kind::Tags)
            .times(1),
    );
    let url = berth.url("/v2/library/app/tags/list");
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let response = client().get(url).send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for r in requests {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert!(
        bodies
            .iter()
            .all(|b| b == &bodies[0] && b.contains("\"3\"")),
        "{bodies:?}"
    );
    let upstream = fake
        .requests()
        .iter()
        .filter(|r| r.uri.contains("tags/list"))
        .count();
    assert_eq!(
        upstream, 1,
        "one upstream request for ten identical listings"
    );
    // A later request asks again: listings change, nothing is cached.
    let (status, _) = (client().get(&url).send().await.unwrap().status(), ());
    assert_eq!(status, 200);
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.uri.contains("tags/list"))
            .count(),
        2
    );
}

#[tokio::test]
async fn invented_accept_headers_cost_one_upstream_get_per_known_class() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(73, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder().upstream(&fake).start().await;
    let url = berth.url("/v2/library/app/manifests/1");
    // The tag is an index; each client takes single OCI manifests and names a type of its own.
    for i in 0..20 {
        let accept =
            format!("application/vnd.oci.image.manifest.v1+json, application/x-made-up-{i}");
        assert_eq!(status_with_accept(&url, &accept).await, 200);
    }
    let gets = fake.count(Role::Registry, Kind::Manifest, Method::GET);
    assert!(
        gets <= 2,
        "one GET for the shared record and one for the one class, got {gets}"
    );
}

#[tokio::test]
async fn an_unknown_repositorys_tag_list_and_referrers_are_404() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let berth = Berth::builder().upstream(&fake).start().await;
    let response = berth.get("/v2/library/nothing-here/tags/list").await;
    assert_eq!(response.status(), 404, "OCI clients fall back on 404 only");
    let body = response.text().await.unwrap();
    assert!(body.contains("NAME_UNKNOWN"), "{body}");
    let referrers = format!(
        "/v2/library/nothing-here/referrers/sha256:{}",
        "a".repeat(64)
    );
    assert_eq!(berth.status_of(&referrers).await, 404);
}

/// A blob that one registry trickles and another serves at once: a client of the second never
/// waits on the first's transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_one_registry_never_waits_on_another_registrys_trickle() {
    let (evil, good) = (
        FakeUpstream::start(Options::plain()).await,
        FakeUpstream::start(Options::plain()).await,
    );
    let blob = images::big_blob(2, 74);
    evil.put_blob("library/app", &blob);
    good.put_blob("library/app", &blob);
    evil.inject(Fault::stall(1, Duration::from_secs(60), AfterStall::Continue).kind(Kind::Blob));
    let berth = Berth::builder()
        .upstream_named("evil.test", &evil.url())
        .upstream_named("good.test", &good.url())
        .start()
        .await;
    let path = |registry: &str| format!("/v2/{registry}/library/app/blobs/{}", blob.digest);
    // The first client starts the trickling fill and waits on it.
    let evil_url = berth.url(&path("evil.test"));
    let trickling = tokio::spawn(async move { get(&evil_url).await });
    eventually(
        "the trickling transfer to start",
        Duration::from_secs(10),
        || async { evil.fired_faults().len() == 1 },
    )
    .await;
    // Well under berth's 20 s stall_timeout: a client that joined the trickling fill would
    // still be waiting for it to be declared stalled.
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), berth.get_bytes(&path("good.test")))
            .await
            .expect("the good registry's client is served without waiting on the trickle");
    assert_eq!(status, 200);
    assert_eq!(crate::support::inprocess::sha256(&body), blob.digest);
    trickling.abort();
}

/// A token realm that sends its answer one byte at a time never quite stalls; the whole
/// answer still has a deadline (the upstream's header_timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_that_drips_cannot_hold_a_request() {
    let fake = FakeUpstream::start(Options {
        token_drip: Some(Duration::from_secs(2)),
        ..Options::default()
    })
    .await;
    let image = images::multi_arch(75, Format::Oci);
    fake.push("library/app", "1", &image);
    let berth = Berth::builder()
        .upstream(&fake)
        .config("header_timeout = \"3s\"\nstall_timeout = \"20s\"\nmax_attempts = 1")
        .start()
        .await;
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        berth.status_of("/v2/library/app/manifests/1"),
    )
    .await
    .expect("the request ends long before the realm finishes dripping (~5 min)");
    assert!(answered >= 500, "the pull fails: {answered}");
}

//! `berth prewarm` end to end: the real binary against a berth process whose docker.io and
//! ghcr.io upstreams are fake registries (token auth + CDN), a two-group, two-platform set,
//! pins, a second run that transfers nothing, and the offline `--check` both ways. Plus the
//! server side: `Cache-Control: only-if-cached` and the admin endpoints, in process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::{FakeUpstream, Kind, Options, Role};
use crate::support::images::{self, Blob, Content, Format, ImageSpec};
use crate::support::inprocess::{Berth, client};
use crate::support::util::eventually;
use http::Method;
use serde_json::Value;

const TOKEN: &str = "prewarm-test-admin-token-0123456789";
const UPSTREAM_BLOBS: &str = "berth_upstream_requests_total";

/// Exit code, stdout, stderr of a finished command.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `berth <args>` to completion, killed after 120 s (output through files, never a full pipe).
fn berth_cli(args: &[&str]) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env_remove("BERTH_ADMIN_TOKEN")
        .env_remove("BERTH_MIRROR_URL")
        .env_remove("BERTH_CONFIG")
        .env("BERTH_LOG", "warn");
    let out = crate::support::util::run(&mut cmd, Duration::from_secs(120));
    let ran = Ran {
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
    };
    assert!(
        !out.timed_out,
        "berth {args:?} timed out\n{}",
        ran.describe()
    );
    ran
}

/// One image of the test's group file.
struct Pushed {
    group: &'static str,
    reference: &'static str,
    content: Box<dyn Content + Send + Sync>,
}

impl Pushed {
    fn blobs(&self) -> Vec<&Blob> {
        self.content.blobs()
    }
}

fn fixtures() -> Vec<Pushed> {
    let single = images::image(&ImageSpec::new(40, Format::Oci));
    vec![
        Pushed {
            group: "flux",
            reference: "ghcr.io/fluxcd/helm-controller:v1.5.1",
            content: Box::new(images::multi_arch(41, Format::Oci)),
        },
        Pushed {
            group: "flux",
            reference: "ghcr.io/fluxcd/source-controller:v1.5.0",
            content: Box::new(images::multi_arch(42, Format::Docker)),
        },
        Pushed {
            group: "k3s",
            reference: "docker.io/rancher/mirrored-pause:3.6",
            content: Box::new(images::multi_arch(43, Format::Docker)),
        },
        // A single-platform image (a manifest, not an index) under a Docker Hub official name.
        Pushed {
            group: "k3s",
            reference: "busybox:1.37",
            content: Box::new(single),
        },
    ]
}

/// `registry/repo:tag` → (registry, repo as the registry knows it, tag).
fn split(reference: &str) -> (&'static str, String, String) {
    let (name, tag) = reference.rsplit_once(':').unwrap();
    match name.split_once('/') {
        Some(("ghcr.io", repo)) => ("ghcr.io", repo.to_string(), tag.to_string()),
        Some(("docker.io", repo)) => ("docker.io", repo.to_string(), tag.to_string()),
        _ => ("docker.io", format!("library/{name}"), tag.to_string()),
    }
}

fn write_groups_file(dir: &Path, images: &[Pushed]) -> PathBuf {
    let mut text = String::new();
    for group in ["flux", "k3s"] {
        let refs: Vec<String> = images
            .iter()
            .filter(|i| i.group == group)
            .map(|i| format!("{:?}", i.reference))
            .collect();
        text += &format!(
            "[groups.{group}]\ndescription = \"test {group}\"\nimages = [{}]\n\n",
            refs.join(", ")
        );
    }
    let path = dir.join("groups.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}\n{}", ran.describe()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_two_groups_two_platforms_pins_rerun_and_offline_check() {
    let hub = FakeUpstream::start(Options::default()).await;
    let ghcr = FakeUpstream::start(Options::default()).await;
    let images = fixtures();
    for image in &images {
        let (registry, repo, tag) = split(image.reference);
        let fake = if registry == "ghcr.io" { &ghcr } else { &hub };
        fake.push(&repo, &tag, image.content.as_ref());
    }
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let groups_file = write_groups_file(work.path(), &images);
    let berth = Berth::builder()
        .default_upstream("docker.io")
        .top_level(&format!(
            "admin_token_file = {:?}",
            token_file.to_str().unwrap()
        ))
        .upstream(&hub)
        .upstream_named("ghcr.io", &ghcr.url());
    let berth = tokio::task::block_in_place(|| berth.spawn());
    let mirror = berth.url();
    let groups = groups_file.to_str().unwrap();
    let token = token_file.to_str().unwrap();
    let warm_args = [
        "prewarm",
        "--mirror",
        &mirror,
        "--groups-file",
        groups,
        "--group",
        "flux",
        "--group",
        "k3s",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--json",
        "--admin-token-file",
        token,
    ];

    // First run: everything comes through berth from the upstreams, verified client-side.
    let started = Instant::now();
    let first = tokio::task::block_in_place(|| berth_cli(&warm_args));
    assert_eq!(first.code, Some(0), "{}", first.describe());
    eprintln!("first prewarm: {:?}", started.elapsed());
    let report = json(&first);
    let results = report["images"].as_array().unwrap();
    assert_eq!(results.len(), images.len());
    for (image, result) in images.iter().zip(results) {
        assert_eq!(result["group"], image.group);
        assert_eq!(
            result["digest"],
            image.content.root().digest.as_str(),
            "{result}"
        );
        let manifests: Vec<&str> = result["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        for m in image.content.manifests() {
            assert!(
                manifests.contains(&m.digest.as_str()),
                "{} pins {}",
                image.reference,
                m.digest
            );
        }
        assert_eq!(result["blobs"], image.blobs().len());
        let size: u64 = image.blobs().iter().map(|b| b.size()).sum::<u64>()
            + image
                .content
                .manifests()
                .iter()
                .map(|m| m.size())
                .sum::<u64>();
        assert_eq!(result["size"], size, "{}", image.reference);
        let (registry, _, _) = split(image.reference);
        let fake = if registry == "ghcr.io" { &ghcr } else { &hub };
        for blob in image.blobs() {
            assert!(
                fake.bytes_sent(&blob.digest) >= blob.size(),
                "{} came from upstream",
                blob.digest
            );
            let cached = berth.dir.path().join("data/blobs/sha256").join(blob.hex());
            assert!(cached.exists(), "{} is in berth's cache", blob.digest);
        }
    }
    assert_eq!(
        results[0]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(results[3]["platforms"], serde_json::json!(["single"]));
    let total_blobs: usize = images.iter().map(|i| i.blobs().len()).sum();
    assert_eq!(
        hub.count(Role::Cdn, Kind::Blob, Method::GET)
            + ghcr.count(Role::Cdn, Kind::Blob, Method::GET),
        total_blobs,
        "each blob fetched from the upstreams exactly once"
    );
    assert!(report["summary"]["downloaded_bytes"].as_u64().unwrap() > 0);

    // Pins: one set per group, the index and each platform's manifest.
    let pins: Value = client()
        .get(format!("{mirror}/_berth/pins"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pinned = |group: &str| -> Vec<String> {
        pins.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == group)
            .unwrap_or_else(|| panic!("pin set {group} in {pins}"))["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    for image in &images {
        for m in image.content.manifests() {
            assert!(
                pinned(image.group).contains(&m.digest),
                "{} pinned",
                m.digest
            );
        }
    }
    assert!(pins[0]["updated_unix"].as_u64().unwrap() > 1_700_000_000);

    // Second run: nothing downloaded, no upstream blob request.
    let blob_requests = berth.metric(UPSTREAM_BLOBS, &[("kind", "blob")]);
    assert!(blob_requests > 0.0, "metric name is right");
    hub.reset_stats();
    ghcr.reset_stats();
    let started = Instant::now();
    let second = tokio::task::block_in_place(|| berth_cli(&warm_args));
    assert_eq!(second.code, Some(0), "{}", second.describe());
    eprintln!("second prewarm: {:?}", started.elapsed());
    let report = json(&second);
    assert_eq!(report["summary"]["downloaded_bytes"], 0, "{report}");
    for result in report["images"].as_array().unwrap() {
        assert_eq!(result["result"], "cached", "{result}");
    }
    assert_eq!(
        berth.metric(UPSTREAM_BLOBS, &[("kind", "blob")]),
        blob_requests
    );
    assert_eq!(hub.count_kind(Kind::Blob) + ghcr.count_kind(Kind::Blob), 0);

    // Upstreams gone: --check must say ready from the cache alone, asking nobody.
    drop(hub);
    drop(ghcr);
    let all_upstream = berth.metric(UPSTREAM_BLOBS, &[]);
    let check_args = [
        "prewarm",
        "--check",
        "--mirror",
        &mirror,
        "--groups-file",
        groups,
        "--group",
        "flux",
        "--group",
        "k3s",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
    ];
    let check = tokio::task::block_in_place(|| berth_cli(&check_args));
    assert_eq!(check.code, Some(0), "{}", check.describe());
    assert!(
        check.stdout.contains("ready: all 4 images"),
        "{}",
        check.describe()
    );
    assert_eq!(
        berth.metric(UPSTREAM_BLOBS, &[]),
        all_upstream,
        "--check asked no upstream"
    );

    // The same readiness for a group derived from rendered manifests.
    let manifests_dir = work.path().join("rendered");
    std::fs::create_dir_all(&manifests_dir).unwrap();
    std::fs::write(
        manifests_dir.join("flux.yaml"),
        "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: helm\n          image: ghcr.io/fluxcd/helm-controller:v1.5.1\n",
    )
    .unwrap();
    let from_manifests = tokio::task::block_in_place(|| {
        berth_cli(&[
            "prewarm",
            "--check",
            "--mirror",
            &mirror,
            "--from-manifests",
            manifests_dir.to_str().unwrap(),
            "--json",
        ])
    });
    assert_eq!(
        from_manifests.code,
        Some(0),
        "{}",
        from_manifests.describe()
    );
    let report = json(&from_manifests);
    assert_eq!(report["images"][0]["group"], "manifests");
    assert_eq!(report["images"][0]["result"], "ready");

    // One cached layer deleted: not ready, naming the image and the layer.
    let helm = &images[0];
    let lost = (*helm.blobs().last().unwrap()).clone();
    std::fs::remove_file(berth.dir.path().join("data/blobs/sha256").join(lost.hex())).unwrap();
    let check = tokio::task::block_in_place(|| berth_cli(&check_args));
    eprintln!("--check after deleting a layer:\n{}", check.stdout);
    assert_eq!(check.code, Some(1), "{}", check.describe());
    let missing_line = check.stdout.lines().next().unwrap_or_default().to_string();
    assert!(
        missing_line.contains(helm.reference) && missing_line.contains(&lost.digest),
        "the first line names the image and the layer: {}",
        check.describe()
    );
    assert!(missing_line.contains("layer"), "{missing_line}");
    assert!(
        check.stdout.contains("NOT READY: 1 of 4 images"),
        "{}",
        check.describe()
    );
    assert!(
        !berth
            .dir
            .path()
            .join("data/blobs/sha256")
            .join(lost.hex())
            .exists(),
        "--check never starts a fill"
    );
    assert_eq!(berth.metric(UPSTREAM_BLOBS, &[]), all_upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_prewarm_still_warms_the_configured_platforms() {
    let hub = FakeUpstream::start(Options::plain()).await;
    let image = images::multi_arch(50, Format::Oci);
    hub.push("library/busybox", "1.37", &image);
    let work = tempfile::tempdir().unwrap();
    let groups = work.path().join("g.toml");
    std::fs::write(&groups, "[groups.tools]\nimages = [\"busybox:1.37\"]\n").unwrap();
    // The nodes' platforms come from a berth.toml: only arm64 here.
    let nodes = work.path().join("berth.toml");
    std::fs::write(&nodes, "platforms = [\"linux/arm64\"]\n").unwrap();
    let berth = Berth::builder()
        .default_upstream("docker.io")
        .upstream(&hub);
    let berth = tokio::task::block_in_place(|| berth.spawn());
    let ran = tokio::task::block_in_place(|| {
        berth_cli(&[
            "prewarm",
            "--mirror",
            &berth.url(),
            "--groups-file",
            groups.to_str().unwrap(),
            "--config",
            nodes.to_str().unwrap(),
        ])
    });
    assert_eq!(ran.code, Some(0), "{}", ran.describe());
    assert!(
        ran.stdout.contains("pins not recorded: no admin token"),
        "{}",
        ran.describe()
    );
    assert!(ran.stdout.contains("linux/arm64"), "{}", ran.describe());
    // Only the chosen platform was fetched.
    let arm = image.image_for("arm64");
    let amd = image.image_for("amd64");
    assert!(hub.bytes_sent(&arm.layers[0].digest) > 0);
    assert_eq!(hub.bytes_sent(&amd.layers[0].digest), 0);
    assert!(
        ran.stderr.contains("busybox"),
        "one line per image without a terminal: {}",
        ran.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_unreachable_mirror_give_one_line_errors_naming_the_fix() {
    let work = tempfile::tempdir().unwrap();
    let groups = work.path().join("g.toml");
    std::fs::write(
        &groups,
        "[groups.flux]\nimages = [\"ghcr.io/fluxcd/helm-controller:v1.5.1\"]\n",
    )
    .unwrap();
    let bad_ref = work.path().join("bad.toml");
    std::fs::write(
        &bad_ref,
        "[groups.flux]\nimages = [\"ghcr.io/FluxCD/helm-controller:v1.5.1\"]\n",
    )
    .unwrap();
    let dead = format!("http://127.0.0.1:{}", crate::support::util::free_port());
    let (g, b) = (groups.to_str().unwrap(), bad_ref.to_str().unwrap());
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--mirror", &dead, "--groups-file", g, "--group", "fluxx"],
            vec!["unknown group `fluxx`", "known groups: flux"],
        ),
        (
            vec!["--mirror", &dead, "--groups-file", b],
            vec![
                "ghcr.io/FluxCD/helm-controller:v1.5.1",
                "registry/repository:tag",
            ],
        ),
        (
            vec!["--mirror", &dead, "--groups-file", g],
            vec![&dead, "berth serve", "--mirror"],
        ),
        (
            vec!["--mirror", &dead, "--groups-file", g, "--check"],
            vec![&dead, "berth serve"],
        ),
        (
            vec!["--mirror", &dead, "--groups-file", g, "--platform", "amd64"],
            vec!["--platform", "linux/amd64"],
        ),
        (vec!["--groups-file", g], vec!["--mirror http://"]),
        (
            vec!["--mirror", "10.0.0.1:5000", "--groups-file", g],
            vec!["http://10.27.27.10:5000"],
        ),
    ];
    for (args, needles) in cases {
        let ran = berth_cli(&[&["prewarm"], args.as_slice()].concat());
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.describe());
        let stderr = ran.stderr.trim();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("berth: "), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?}: `{needle}` in {stderr}");
        }
    }
}

#[tokio::test]
async fn only_if_cached_answers_from_the_cache_or_504_and_never_asks_upstream() {
    let fake = FakeUpstream::start(Options::default()).await;
    let image = images::multi_arch(60, Format::Oci);
    fake.push("library/busybox", "1.37", &image);
    // A tag is always past its TTL here: a normal pull would revalidate it upstream.
    let berth = Berth::builder()
        .upstream(&fake)
        .config("tag_ttl = \"1ns\"")
        .start()
        .await;
    let http = client();
    let layer = &image.images[0].layers[0];
    let paths = [
        "/v2/library/busybox/manifests/1.37?ns=docker.io".to_string(),
        format!(
            "/v2/library/busybox/manifests/{}?ns=docker.io",
            image.index.digest
        ),
        format!("/v2/library/busybox/blobs/{}?ns=docker.io", layer.digest),
        "/v2/library/busybox/tags/list?ns=docker.io".to_string(),
    ];
    for path in &paths {
        for method in [Method::GET, Method::HEAD] {
            let response = http
                .request(method.clone(), berth.url(path))
                .header("cache-control", "only-if-cached")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 504, "{method} {path}");
            if method == Method::GET {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
                assert!(
                    body["errors"][0]["message"]
                        .as_str()
                        .unwrap()
                        .contains("not cached")
                );
            }
        }
    }
    assert!(
        fake.requests().is_empty(),
        "no upstream request: {:?}",
        fake.requests()
    );

    // Fill the cache normally, then every cached path answers 200 with the header, upstream silent.
    for path in &paths[..3] {
        let response = http.get(berth.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.bytes().await.unwrap();
    }
    // A fill's last byte leaves once the blob is verified; its commit (a rename) follows a
    // moment later. Wait for it (bounded) before asking the cache alone.
    eventually(
        "the blob to answer an only-if-cached HEAD",
        Duration::from_secs(10),
        || async {
            let committed = http
                .head(berth.url(&paths[2]))
                .header("cache-control", "only-if-cached")
                .send()
                .await
                .unwrap();
            committed.status() == 200
        },
    )
    .await;
    fake.reset_stats();
    for path in &paths[..3] {
        let response = http
            .get(berth.url(path))
            .header("cache-control", "max-age=0, only-if-cached")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.bytes().await.unwrap();
    }
    let response = http
        .head(berth.url(&paths[2]))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-length"],
        layer.size().to_string().as_str()
    );
    assert!(
        fake.requests().is_empty(),
        "stale tag answered without revalidation: {:?}",
        fake.requests()
    );
}

#[tokio::test]
async fn admin_endpoints_are_404_without_a_token_and_401_with_a_wrong_one() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let digest = images::sha256_digest(b"x");
    let body = serde_json::json!({ "manifests": [digest] });
    let http = client();

    let closed = Berth::builder().upstream(&fake).start().await;
    let put = http
        .put(closed.url("/_berth/pins/flux"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 404);
    let get = http
        .get(closed.url("/_berth/pins"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404);

    let open = Berth::builder()
        .top_level(&format!("admin_token = {TOKEN:?}"))
        .upstream(&fake)
        .start()
        .await;
    let url = open.url("/_berth/pins/flux");
    assert_eq!(
        http.put(&url).json(&body).send().await.unwrap().status(),
        401
    );
    let wrong = http
        .put(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        http.get(open.url("/_berth/pins"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let bad_name = http
        .put(open.url("/_berth/pins/Bad_Name"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_name.status(), 400);
    let bad_body = http
        .put(&url)
        .bearer_auth(TOKEN)
        .body("{\"manifests\":[\"nope\"]}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_body.status(), 400);

    let ok = http
        .put(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let sets: Value = http
        .get(open.url("/_berth/pins"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sets[0]["name"], "flux");
    assert_eq!(sets[0]["manifests"], serde_json::json!([digest]));
    // Stored where eviction (another module) reads it.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(open.data.path().join("pins/flux")).unwrap())
            .unwrap();
    assert_eq!(stored["manifests"], serde_json::json!([digest]));
}

/// The same walk against Debian's real docker-registry (TLS, test CA) as the upstream of both
/// docker.io and ghcr.io, images pushed with skopeo: warm, re-run without a blob download, then
/// `--check` ready with the registry stopped.
#[test]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
fn prewarm_through_a_real_registry_then_ready_with_it_stopped() {
    if !crate::support::prereq::require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let ca = crate::support::real::TestCa::new();
    let mut registry = crate::support::real::DockerRegistry::start(Some(&ca));
    let pause = images::multi_arch(70, Format::Docker);
    let helm = images::multi_arch(71, Format::Oci);
    crate::support::real::skopeo::push(
        &pause,
        &format!("{}/rancher/mirrored-pause:3.6", registry.host()),
        Some(&ca),
    );
    crate::support::real::skopeo::push(
        &helm,
        &format!("{}/fluxcd/helm-controller:v1.5.1", registry.host()),
        Some(&ca),
    );
    let berth = Berth::builder()
        .default_upstream("docker.io")
        .upstream_named("docker.io", &registry.url())
        .ca_file(&ca.ca_pem)
        .upstream_named("ghcr.io", &registry.url())
        .ca_file(&ca.ca_pem)
        .spawn();
    let work = tempfile::tempdir().unwrap();
    let groups = work.path().join("groups.toml");
    std::fs::write(
        &groups,
        "[groups.k3s]\nimages = [\"docker.io/rancher/mirrored-pause:3.6\"]\n\
         [groups.flux]\nimages = [\"ghcr.io/fluxcd/helm-controller:v1.5.1\"]\n",
    )
    .unwrap();
    let mirror = berth.url();
    let args = |check: bool| {
        let mut a = vec![
            "prewarm",
            "--mirror",
            &mirror,
            "--groups-file",
            groups.to_str().unwrap(),
            "--json",
        ];
        if check {
            a.push("--check");
        }
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run_args = |check: bool| {
        let owned = args(check);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        berth_cli(&refs)
    };

    let first = run_args(false);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let report = json(&first);
    // No --group: every group of the file, in name order.
    assert_eq!(report["images"][0]["digest"], helm.index.digest.as_str());
    assert_eq!(report["images"][1]["digest"], pause.index.digest.as_str());
    let blobs = pause.blobs().len() + helm.blobs().len();
    assert_eq!(
        registry.blob_gets(),
        blobs,
        "each blob downloaded from the registry once"
    );

    let second = run_args(false);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert_eq!(json(&second)["summary"]["downloaded_bytes"], 0);
    assert_eq!(registry.blob_gets(), blobs, "the re-run downloads no blob");

    registry.stop();
    let check = run_args(true);
    assert_eq!(check.code, Some(0), "{}", check.describe());
    assert_eq!(json(&check)["ok"], true);
}

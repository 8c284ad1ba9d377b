//! What the cluster pulled: berth remembers each image pulled through it (tag, digest served,
//! platforms fetched, nodes by name), across restarts; `berth prewarm --from-history` warms it
//! and `--check --from-history` is the rebuild gate; `pin_history` keeps it from eviction.

use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::support::fake_upstream::{FakeUpstream, Kind, Options, Role};
use crate::support::images::{self, Blob, Format};
use crate::support::inprocess::{Berth, client};
use crate::support::util::{CmdOutput, eventually, run};

const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// Pulls `repository:tag` through `berth` as containerd does for linux/`arch`: HEAD the tag,
/// GET the index, GET the platform's manifest, GET its config and layers; `user_agent` names
/// the client.
async fn pull(
    berth: &Berth,
    repository: &str,
    tag: &str,
    index: &images::ImageIndex,
    arch: &str,
    user_agent: &str,
) {
    let get = |path: String, method: reqwest::Method| {
        let url = berth.url(&path);
        async move {
            let response = client()
                .request(method, url)
                .header("accept", CONTAINERD_ACCEPT)
                .header("user-agent", user_agent)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{} {}",
                response.status(),
                path
            );
            response.bytes().await.unwrap()
        }
    };
    let manifests = format!("/v2/{repository}/manifests");
    get(format!("{manifests}/{tag}"), reqwest::Method::HEAD).await;
    get(
        format!("{manifests}/{}", index.index.digest),
        reqwest::Method::GET,
    )
    .await;
    let image = index.image_for(arch);
    get(
        format!("{manifests}/{}", image.manifest.digest),
        reqwest::Method::GET,
    )
    .await;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        get(
            format!("/v2/{repository}/blobs/{}", blob.digest),
            reqwest::Method::GET,
        )
        .await;
    }
}

const CONTAINERD: &str = "containerd/v1.7.20";

async fn history(berth: &Berth, query: &str) -> Value {
    let (status, body) = berth.get_json(&format!("/_berth/history{query}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn the_history_remembers_what_the_cluster_pulled_by_platform_and_node_across_restarts() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let (app, tool) = (
        images::multi_arch(501, Format::Oci),
        images::multi_arch(502, Format::Oci),
    );
    fake.push("library/app", "1", &app);
    fake.push("library/tool", "2", &tool);
    let berth = Berth::builder()
        .top_level("[nodes]\n\"127.0.0.1\" = \"cp1\"")
        .upstream(&fake)
        .start()
        .await;
    pull(&berth, "library/app", "1", &app, "amd64", CONTAINERD).await;
    // berth prewarm's own requests are not the cluster's pulls.
    pull(
        &berth,
        "library/tool",
        "2",
        &tool,
        "amd64",
        "berth-prewarm/0.1.0",
    )
    .await;

    let report = history(&berth, "?since=1h").await;
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "only the cluster's pull: {report}");
    let image = &images[0];
    assert_eq!(image["registry"], "docker.io");
    assert_eq!(image["repository"], "library/app");
    assert_eq!(image["tag"], "1");
    assert_eq!(image["digest"], app.index.digest.as_str());
    assert_eq!(
        image["platforms"],
        serde_json::json!(["linux/amd64"]),
        "{report}"
    );
    assert_eq!(image["pulls"], 1);
    assert_eq!(
        image["nodes"],
        serde_json::json!([{"address": "127.0.0.1", "name": "cp1"}])
    );

    let berth = berth.restart().await;
    let again = history(&berth, "").await;
    assert_eq!(
        again["images"], report["images"],
        "the history survives a restart"
    );
}

/// `berth <args>` to completion (≤ 120 s).
fn berth_cli(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env_remove("BERTH_ADMIN_TOKEN")
        .env_remove("BERTH_MIRROR_URL")
        .env("BERTH_LOG", "warn");
    let out = run(&mut cmd, Duration::from_secs(120));
    assert!(!out.timed_out, "berth {args:?} timed out: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_from_history_warms_the_pulled_platforms_and_the_gate_names_what_is_missing() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let app = images::multi_arch(503, Format::Oci);
    fake.push("library/app", "1", &app);
    let berth = Berth::builder().upstream(&fake).start().await;
    // The node resolved the tag and fetched its platform's manifest; the layers were not
    // downloaded yet (a pull cut short).
    let head = client()
        .head(berth.url("/v2/library/app/manifests/1"))
        .header("accept", CONTAINERD_ACCEPT)
        .send()
        .await
        .unwrap();
    assert!(head.status().is_success());
    let amd64 = app.image_for("amd64");
    let path = format!("/v2/library/app/manifests/{}", amd64.manifest.digest);
    assert_eq!(berth.status_of(&path).await, 200);

    let mirror = format!("http://{}", berth.addr);
    let gate = |berth_args: Vec<&'static str>| {
        let mirror = mirror.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["prewarm", "--mirror", &mirror];
            args.extend(berth_args);
            berth_cli(&args)
        })
    };
    let check = gate(vec!["--check", "--from-history", "--since", "1h"])
        .await
        .unwrap();
    assert_eq!(check.code, Some(1), "layers missing: {check:?}");
    assert!(check.stdout.contains("library/app"), "{check:?}");
    assert!(
        check.stdout.contains(&amd64.layers[0].digest),
        "names the layer: {check:?}"
    );

    let warm = gate(vec!["--from-history"]).await.unwrap();
    assert_eq!(warm.code, Some(0), "{warm:?}");
    let check = gate(vec!["--check", "--from-history", "--since", "1h"])
        .await
        .unwrap();
    assert_eq!(check.code, Some(0), "ready: {check:?}");
    let arm64 = app.image_for("arm64");
    assert_eq!(
        fake.bytes_sent(&arm64.layers[0].digest),
        0,
        "only the platform the cluster pulled was warmed"
    );

    // One cached layer lost: the gate fails naming the image and the layer.
    std::fs::remove_file(berth.blob_file(&amd64.layers[1].digest)).unwrap();
    let check = gate(vec!["--check", "--from-history"]).await.unwrap();
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.stdout.contains(&amd64.layers[1].digest), "{check:?}");
    assert_eq!(
        fake.count(Role::Registry, Kind::Blob, Method::GET)
            + fake.count(Role::Cdn, Kind::Blob, Method::GET),
        amd64.layers.len() + 1,
        "the gate itself fetched nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_history_keeps_what_the_cluster_pulled_out_of_eviction() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let app = images::multi_arch(504, Format::Oci);
    fake.push("library/app", "1", &app);
    let fillers: Vec<Blob> = (0..6).map(|i| images::big_blob(1, 510 + i)).collect();
    for blob in &fillers {
        fake.put_blob("library/filler", blob);
    }
    let berth = Berth::builder()
        .top_level(
            "[store]\nmax_size = \"3MiB\"\nevict_interval = \"200ms\"\npin_history = \"30d\"",
        )
        .upstream(&fake)
        .start()
        .await;
    pull(&berth, "library/app", "1", &app, "amd64", CONTAINERD).await;
    let amd64 = app.image_for("amd64");
    for layer in &amd64.layers {
        berth.wait_committed(&layer.digest).await;
    }
    // Six MiB through a 3 MiB cache: something must go, but not what the cluster pulled.
    for blob in &fillers {
        let (status, _) = berth
            .get_bytes(&format!("/v2/library/filler/blobs/{}", blob.digest))
            .await;
        assert_eq!(status, 200);
        berth.wait_committed(&blob.digest).await;
    }
    eventually(
        "eviction to bring the cache under max_size",
        Duration::from_secs(20),
        || async {
            fillers
                .iter()
                .filter(|b| berth.blob_file(&b.digest).exists())
                .count()
                < fillers.len()
        },
    )
    .await;
    for layer in std::iter::once(&amd64.config).chain(&amd64.layers) {
        assert!(
            berth.blob_file(&layer.digest).exists(),
            "{} was pulled by the cluster and kept",
            layer.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_show_in_the_status_report_berth_status_and_the_access_log() {
    let fake = FakeUpstream::start(Options::plain()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.jsonl");
    let berth = Berth::builder()
        .top_level(&format!(
            "access_log = {:?}\n[nodes]\n\"127.0.0.1\" = \"cp1\"",
            log.display().to_string()
        ))
        .upstream(&fake)
        .start()
        .await;
    assert_eq!(
        berth.status_of("/v2/library/missing/manifests/1").await,
        404
    );
    let (_, report) = berth.get_json("/_berth/status?format=json").await;
    let node = &report["failures"]["by_node"][0];
    assert_eq!(
        (&node["node"], &node["name"]),
        (&Value::from("127.0.0.1"), &Value::from("cp1")),
        "{report}"
    );
    assert_eq!(
        report["failures"]["by_image"][0]["nodes"],
        serde_json::json!(["cp1"])
    );

    let mirror = format!("http://{}", berth.addr);
    let status = tokio::task::spawn_blocking(move || berth_cli(&["status", "--mirror", &mirror]))
        .await
        .unwrap();
    assert_eq!(status.code, Some(1), "{status:?}");
    assert!(
        status.stdout.contains("cp1 (127.0.0.1)"),
        "{}",
        status.stdout
    );

    let line = eventually("the access log line", Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("library/missing"))
    })
    .await;
    let line: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(line["node"], "cp1");
}

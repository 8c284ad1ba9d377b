//! Seeing every pull: injected upstream faults show up under their class in
//! `berth_upstream_errors_total` and in `/_berth/status` under the right image and node; the
//! breaker gauge; `berth status` and its exit codes; `upstream_patterns` registries under
//! `upstreams[]`; the loopback-only rule from a client in another network namespace; the page
//! in a real browser; alert rules and the dashboard against a real Prometheus.
//!
//! One file per topic; the helpers and the fault scenario they share are here.

mod access_log;
mod admin_access;
mod breaker;
mod browser;
mod failures;
mod prometheus;
mod status_cli;
mod status_page;

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::fake_upstream::{AfterStall, FakeUpstream, Fault, Kind, Options, TlsFront};
use crate::support::images::{self, Format, ImageSpec};
use crate::support::inprocess::Berth;
use crate::support::real::TestCa;
use crate::support::util::eventually;

const NODE_A: &str = "127.0.0.2";
const NODE_B: &str = "127.0.0.3";

/// A client whose requests come from `address` (a node of the cluster, as berth sees it).
fn node(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(address.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET `url` from `client`, reading the whole body; a body that breaks is fine here.
async fn pull(client: &reqwest::Client, url: &str) -> u16 {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

/// A berth whose admin pages need `Authorization: Bearer s3cret-admin-token` (and the
/// directory holding its token file, to keep).
async fn token_guarded(fake: &FakeUpstream) -> (Berth, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let berth = Berth::builder()
        .top_level(&format!(
            "admin_token_file = {:?}",
            token_file.to_str().unwrap()
        ))
        .upstream(fake)
        .start()
        .await;
    (berth, dir)
}

async fn status_json(berth: &Berth, query: &str) -> Value {
    let (status, report) = berth.get_json(&format!("/_berth/status{query}")).await;
    assert_eq!(status, 200, "{report:#}");
    report
}

fn image_entry<'a>(status: &'a Value, image: &str) -> &'a Value {
    status["failures"]["by_image"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["image"] == image)
        .unwrap_or_else(|| panic!("{image} not among the failed images: {status:#}"))
}

fn node_entry<'a>(status: &'a Value, node: &str) -> &'a Value {
    status["failures"]["by_node"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == node)
        .unwrap_or_else(|| panic!("{node} not among the failing nodes: {status:#}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// The fault scenario shared by the tests: five images, each broken its own way, pulled by
/// two nodes. Returns berth and the fake (which must outlive the pulls).
async fn faulty_mirror() -> (Berth, FakeUpstream) {
    let fake = FakeUpstream::start(Options::plain()).await;
    for (repo, tag, seed) in [("library/five", "five", 1), ("library/rate", "rate", 2)] {
        fake.push(
            repo,
            tag,
            &images::image(&ImageSpec::new(seed, Format::Oci)),
        );
    }
    let berth = Berth::builder()
        .upstream(&fake)
        .config("max_attempts = 1\nbreaker_threshold = 100\nstall_timeout = \"1s\"")
        .start()
        .await;
    fake.inject(Fault::status(503, None).reference("five").times(2));
    fake.inject(Fault::status(429, None).reference("rate"));
    let mut blob_urls = Vec::new();
    let faults = [
        ("library/reset", Fault::reset_after(0)),
        (
            "library/stall",
            Fault::stall(0, Duration::from_secs(5), AfterStall::Reset),
        ),
        ("library/corrupt", Fault::corrupt(10)),
    ];
    for (i, (repo, fault)) in faults.into_iter().enumerate() {
        let blob = images::big_blob(1, 100 + i as u64);
        fake.put_blob(repo, &blob);
        fake.inject(fault.kind(Kind::Blob).reference(&blob.digest));
        blob_urls.push(berth.url(&format!("/v2/{repo}/blobs/{}", blob.digest)));
    }
    let (a, b) = (node(NODE_A), node(NODE_B));
    let five = berth.url("/v2/library/five/manifests/five");
    // An upstream 5xx is a bad gateway; unreachable would be 503.
    assert_eq!(pull(&a, &five).await, 502);
    assert_eq!(pull(&b, &five).await, 502);
    assert_eq!(
        pull(&b, &berth.url("/v2/library/rate/manifests/rate")).await,
        429
    );
    pull(&a, &blob_urls[0]).await;
    pull(&b, &blob_urls[1]).await;
    pull(&a, &blob_urls[2]).await;
    (berth, fake)
}

/// Runs `berth status --mirror <mirror> <args>` (≤ 30 s) off the async runtime, so an
/// in-process berth keeps answering.
async fn berth_status(mirror: &str, args: &[&str]) -> crate::support::util::CmdOutput {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("status").arg("--mirror").arg(mirror).args(args);
    tokio::task::spawn_blocking(move || {
        crate::support::util::run(&mut cmd, Duration::from_secs(30))
    })
    .await
    .unwrap()
}

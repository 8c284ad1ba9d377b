//! Helm charts and Flux artifacts through berth with a real OCI artifact client that nobody
//! here wrote (the ORAS Python SDK, from PyPI): pushed to a real registry (Debian's
//! docker-registry), listed and pulled byte-exact through berth by path prefix, prewarmed and
//! pinned, then listed and pulled again with the registry gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::inprocess::Berth;
use crate::support::prereq::require_tools;
use crate::support::real::DockerRegistry;
use crate::support::util::{CmdOutput, run};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/oras/oras_client.py")
}

/// The SDK must be there: `scripts/test` pip-installs it.
fn require_oras() {
    require_tools(&["python3"]);
    let probe = run(
        Command::new("python3").args(["-c", "import oras.client"]),
        Duration::from_secs(30),
    );
    assert!(
        probe.success,
        "missing prerequisite: the ORAS Python SDK (`pip install oras`; scripts/test installs it): {}",
        probe.stderr
    );
}

fn oras(args: &[&str]) -> CmdOutput {
    let out = run(
        Command::new("python3").arg(script()).args(args),
        Duration::from_secs(180),
    );
    assert!(out.success, "oras {args:?}: {out:?}");
    out
}

fn tags(host: &str, repo: &str, n: Option<&str>) -> Vec<String> {
    let mut args = vec!["tags", host, repo];
    args.extend(n);
    serde_json::from_str(oras(&args).stdout.trim()).unwrap()
}

/// Pulls `reference` through `host` into a fresh dir; the one file's bytes.
fn pull(host: &str, reference: &str) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let pulled = oras(&["pull", host, reference, out.path().to_str().unwrap()]);
    let file = pulled
        .stdout
        .lines()
        .next()
        .expect("a file pulled")
        .to_string();
    std::fs::read(file).unwrap()
}

const TOKEN: &str = "artifacts-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs docker-registry and the ORAS Python SDK: run by scripts/test"]
async fn helm_charts_and_flux_artifacts_through_berth_then_with_the_registry_gone() {
    require_tools(&["docker-registry"]);
    require_oras();
    let mut registry = tokio::task::block_in_place(|| DockerRegistry::start(None));
    let work = tempfile::tempdir().unwrap();
    let pushed = |reference: &str, kind: &str| {
        let out = oras(&[
            "push",
            &registry.host(),
            reference,
            kind,
            work.path().to_str().unwrap(),
        ]);
        std::fs::read(out.stdout.trim()).unwrap()
    };
    let (chart_old, chart, flux) = tokio::task::block_in_place(|| {
        (
            pushed("org/podinfo:6.5.0", "helm"),
            pushed("org/podinfo:6.7.1", "helm"),
            pushed("org/manifests:v1.2.3", "flux"),
        )
    });
    let berth = Berth::builder()
        .top_level(&format!("admin_token = {TOKEN:?}"))
        .upstream_named("ghcr.io", &registry.url())
        .start()
        .await;
    let host = berth.addr.to_string();

    // Flux resolves a semver range from the tag list, then pulls the artifact.
    let (listed, got_chart, got_old, got_flux) = tokio::task::block_in_place(|| {
        (
            tags(&host, "ghcr.io/org/podinfo", None),
            pull(&host, "ghcr.io/org/podinfo:6.7.1"),
            pull(&host, "ghcr.io/org/podinfo:6.5.0"),
            pull(&host, "ghcr.io/org/manifests:v1.2.3"),
        )
    });
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, ["6.5.0", "6.7.1"]);
    assert!(
        got_chart == chart && got_old == chart_old,
        "charts byte-exact"
    );
    assert!(got_flux == flux, "the Flux artifact byte-exact");

    // berth prewarm takes charts in a group, and pins them.
    let groups = work.path().join("groups.toml");
    std::fs::write(
        &groups,
        "[groups.charts]\nimages = [\"ghcr.io/org/podinfo:6.7.1\", \"ghcr.io/org/manifests:v1.2.3\"]\n",
    )
    .unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let prewarm = |check: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args([
            "prewarm",
            "--mirror",
            &format!("http://{host}"),
            "--groups-file",
        ])
        .arg(&groups)
        .arg("--admin-token-file")
        .arg(&token_file)
        .env("BERTH_LOG", "warn");
        if check {
            cmd.arg("--check");
        }
        run(&mut cmd, Duration::from_secs(120))
    };
    let warmed = tokio::task::block_in_place(|| prewarm(false));
    assert_eq!(warmed.code, Some(0), "{warmed:?}");
    assert!(warmed.stdout.contains("pinned"), "{warmed:?}");

    // The registry is gone: the list is served stale, the artifacts from the cache.
    registry.stop();
    let (listed_offline, offline_chart, ready) = tokio::task::block_in_place(|| {
        (
            tags(&host, "ghcr.io/org/podinfo", None),
            pull(&host, "ghcr.io/org/podinfo:6.7.1"),
            prewarm(true),
        )
    });
    let mut offline = listed_offline;
    offline.sort();
    assert_eq!(offline, sorted, "the tag list while the registry is down");
    assert!(offline_chart == chart);
    assert_eq!(
        ready.code,
        Some(0),
        "the gate says ready offline: {ready:?}"
    );
}

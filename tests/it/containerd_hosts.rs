//! Issue 6's proof with real containerd: `berth containerd-hosts` writes the `hosts.toml` tree,
//! a private containerd pulls images of docker.io, ghcr.io, quay.io and registry.k8s.io through
//! berth with it, the re-pull touches no upstream, and with berth stopped containerd falls back
//! to each registry's `server`.
//!
//! Each registry name is its own Debian `docker-registry` (plain HTTP, so containerd can reach
//! the `server` fallback without extra trust), holding one image that exists nowhere else: a
//! request routed to the wrong upstream would fail the pull.
//!
//! containerd is driven with `ctr images pull --hosts-dir <tree>`, which resolves hosts through
//! the same `hosts.toml` code as the CRI plugin's `config_path` (Debian ships no `crictl`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::berth::BerthProcess;
use crate::support::images::{self, Content, Format, ImageIndex};
use crate::support::inprocess::Berth;
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{Containerd, DockerRegistry, PullPlatform, skopeo};
use crate::support::util::run;

/// One registry name, the repository and tag pulled from it, and its image format.
const IMAGES: [(&str, &str, &str, Format); 4] = [
    ("docker.io", "library/busybox", "1.36", Format::Docker),
    ("ghcr.io", "fluxcd/helm-controller", "v1.5.1", Format::Oci),
    (
        "quay.io",
        "prometheus/node-exporter",
        "v1.8.2",
        Format::Docker,
    ),
    ("registry.k8s.io", "pause", "3.10", Format::Oci),
];

struct Origin {
    name: &'static str,
    reference: String,
    index: ImageIndex,
    registry: DockerRegistry,
}

fn origins() -> Vec<Origin> {
    IMAGES
        .iter()
        .enumerate()
        .map(|(i, (name, repo, tag, format))| {
            let registry = DockerRegistry::start(None);
            let index = images::multi_arch(600 + i as u64, *format);
            skopeo::push(&index, &format!("{}/{repo}:{tag}", registry.host()), None);
            Origin {
                name,
                reference: format!("{name}/{repo}:{tag}"),
                index,
                registry,
            }
        })
        .collect()
}

/// `berth containerd-hosts --config <berth.toml> --mirror-url <berth> --output <dir>`.
fn generate_tree(config: &Path, mirror_url: &str, out: &Path) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("containerd-hosts")
        .arg("--config")
        .arg(config)
        .args(["--mirror-url", mirror_url])
        .arg("--output")
        .arg(out);
    run(&mut cmd, Duration::from_secs(30)).expect_success();
}

/// Every `/v2/<name>/...` request URI berth's request log shows (tower-http logs `uri=` at debug).
fn logged_request_uris(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("started processing request"))
        .filter_map(|l| l.split("uri=").nth(1))
        .filter_map(|rest| rest.split([' ', '}']).next())
        .filter(|uri| uri.starts_with("/v2/") && uri.len() > "/v2/".len())
        .map(String::from)
        .collect()
}

fn upstream_requests_total(berth: &BerthProcess) -> f64 {
    berth.metric("berth_upstream_requests_total", &[])
}

fn pull_all(containerd: &Containerd, origins: &[Origin], hosts: &Path) {
    for o in origins {
        let out = containerd.pull(&o.reference, hosts, PullPlatform::All);
        assert!(
            out.success,
            "pull of {} failed:\n{}\n{}\ncontainerd log tail:\n{}",
            o.reference,
            out.stdout,
            out.stderr,
            tail(&containerd.log(), 40)
        );
        assert_eq!(
            containerd.image_digest(&o.reference).as_deref(),
            Some(o.index.index.digest.as_str()),
            "{} resolved to the wrong digest",
            o.reference
        );
    }
    let have = containerd.content_digests();
    for o in origins {
        for blob in o.index.manifests().into_iter().chain(o.index.blobs()) {
            assert!(
                have.contains(&blob.digest),
                "{}: {} missing from containerd's content store",
                o.reference,
                blob.digest
            );
        }
    }
}

/// How many requests each origin registry has logged so far.
fn access_log_lens(origins: &[Origin]) -> Vec<usize> {
    origins
        .iter()
        .map(|o| o.registry.access_log().len())
        .collect()
}

fn forget_all(containerd: &Containerd, origins: &[Origin]) {
    for o in origins {
        containerd.forget(&o.reference);
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
#[ignore = "needs root, containerd, docker-registry, skopeo: run by scripts/test"]
fn containerd_pulls_four_registries_through_a_generated_tree_and_falls_back_without_berth() {
    if !(require_tools(&["docker-registry", "skopeo", "containerd", "ctr"])
        && require_root("containerd mounts snapshots"))
    {
        return;
    }
    let origins = origins();
    let mut berth = origins
        .iter()
        .fold(Berth::builder().default_upstream("docker.io"), |b, o| {
            b.upstream_named(o.name, &o.registry.url())
        })
        .spawn();
    let hosts = tempfile::tempdir().unwrap();
    generate_tree(
        &berth.dir.path().join("berth.toml"),
        &berth.url(),
        hosts.path(),
    );
    for o in &origins {
        let file = hosts.path().join(o.name).join("hosts.toml");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{} not generated: {e}", file.display()));
        assert!(
            text.contains(&format!("server = \"{}\"", o.registry.url())),
            "{}: `server` is not the configured upstream:\n{text}",
            file.display()
        );
        assert!(
            text.contains(&format!("[host.\"{}\"]", berth.url())),
            "{}: no [host] entry for berth:\n{text}",
            file.display()
        );
    }

    let containerd = Containerd::start();
    pull_all(&containerd, &origins, hosts.path());

    // Every request containerd sent berth carried ?ns=<its registry>.
    let uris = logged_request_uris(&berth.stderr());
    assert!(
        uris.len() >= origins.len() * 3,
        "too few requests logged: {uris:?}"
    );
    for uri in &uris {
        assert!(
            origins
                .iter()
                .any(|o| uri.ends_with(&format!("ns={}", o.name))),
            "request without ?ns=<registry>: {uri}"
        );
    }
    // Each registry served its own image through berth, and berth never forwarded `ns`.
    for o in &origins {
        let log = o.registry.access_log();
        let repo = o
            .reference
            .split_once('/')
            .unwrap()
            .1
            .split(':')
            .next()
            .unwrap();
        assert!(
            log.iter()
                .any(|e| e.is_blob() && e.uri.starts_with(&format!("/v2/{repo}/"))),
            "{} never served a blob of {repo} to berth",
            o.name
        );
        assert!(log.iter().all(|e| !e.uri.contains("ns=")), "{}", o.name);
        assert!(
            berth.metric(
                "berth_upstream_requests_total",
                &[("upstream", o.name), ("kind", "blob")]
            ) > 0.0,
            "berth counted no blob fetch for {}",
            o.name
        );
    }

    // The re-pull is answered from berth's cache alone: not one upstream request.
    let upstream_before = upstream_requests_total(&berth);
    let registry_before = access_log_lens(&origins);
    forget_all(&containerd, &origins);
    pull_all(&containerd, &origins, hosts.path());
    assert_eq!(
        upstream_requests_total(&berth),
        upstream_before,
        "the re-pull made upstream requests"
    );
    for (o, before) in origins.iter().zip(registry_before) {
        assert_eq!(
            o.registry.access_log().len(),
            before,
            "{} saw requests during the re-pull",
            o.name
        );
    }

    // Fallback: with berth gone, containerd pulls straight from each `server`.
    berth.stop();
    let registry_before = access_log_lens(&origins);
    forget_all(&containerd, &origins);
    pull_all(&containerd, &origins, hosts.path());
    for (o, before) in origins.iter().zip(registry_before) {
        let log = o.registry.access_log();
        assert!(
            log[before..].iter().any(|e| e.is_blob() && e.status < 400),
            "{}: the fallback pull did not come from the registry itself",
            o.name
        );
    }
}

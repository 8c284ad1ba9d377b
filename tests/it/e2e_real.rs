//! End to end with real components: Debian's docker-registry (TLS, test CA) as the upstream of
//! both `docker.io` and `ghcr.io`, the berth binary in front, and real clients (a private
//! containerd via `ctr`, skopeo). Needs root and the tools `scripts/test` installs.

use std::path::Path;
use std::time::Duration;

use crate::support::berth::BerthProcess;
use crate::support::images::{self, Blob, Content, Format, ImageIndex, sha256_digest};
use crate::support::inprocess::Berth;
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{
    Containerd, DockerRegistry, ProxyConfig, PullPlatform, TestCa, skopeo, write_hosts_toml,
};

const BUSYBOX: &str = "library/busybox";
const BUSYBOX_TAG: &str = "1.36";
const HELM: &str = "fluxcd/helm-controller";
const HELM_TAG: &str = "v1.0.0";

/// docker-registry over TLS holding a Docker-format busybox and an OCI-format helm-controller,
/// both multi-arch, pushed with skopeo trusting the test CA.
struct Upstream {
    ca: TestCa,
    registry: DockerRegistry,
    busybox: ImageIndex,
    helm: ImageIndex,
}

fn upstream_with_images() -> Upstream {
    let ca = TestCa::new();
    let registry = DockerRegistry::start(Some(&ca));
    let busybox = images::multi_arch(101, Format::Docker);
    let helm = images::multi_arch(202, Format::Oci);
    skopeo::push(
        &busybox,
        &format!("{}/{BUSYBOX}:{BUSYBOX_TAG}", registry.host()),
        Some(&ca),
    );
    skopeo::push(
        &helm,
        &format!("{}/{HELM}:{HELM_TAG}", registry.host()),
        Some(&ca),
    );
    Upstream {
        ca,
        registry,
        busybox,
        helm,
    }
}

/// berth with `docker.io` and `ghcr.io` both on the registry. The default upstream is a dead
/// `quay.io`, so any request berth routes by `?ns=` / path prefix shows up under its own label.
fn berth_for(up: &Upstream, tag_ttl: Option<&str>) -> BerthProcess {
    let mut berth = Berth::builder().default_upstream("quay.io");
    for name in ["docker.io", "ghcr.io"] {
        berth = berth
            .upstream_named(name, &up.registry.url())
            .ca_file(&up.ca.ca_pem);
        if let Some(ttl) = tag_ttl {
            berth = berth.tag_ttl(ttl);
        }
    }
    berth
        .upstream_named("quay.io", "https://127.0.0.1:1")
        .spawn()
}

fn have_tools(containerd: bool) -> bool {
    let mut tools = vec!["docker-registry", "skopeo"];
    if containerd {
        tools.extend(["containerd", "ctr"]);
    }
    require_tools(&tools) && (!containerd || require_root("containerd mounts snapshots"))
}

/// Asserts every object of `content` sits in the layout at `dir` with the right hash.
fn assert_layout_holds(dir: &Path, content: &dyn Content) {
    for blob in content.manifests().into_iter().chain(content.blobs()) {
        let path = dir.join("blobs/sha256").join(blob.hex());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(sha256_digest(&bytes), blob.digest);
    }
}

fn digests(blobs: &[&Blob]) -> Vec<String> {
    blobs.iter().map(|b| b.digest.clone()).collect()
}

fn upstream_requests(berth: &BerthProcess, upstream: &str, kind: &str) -> f64 {
    berth.metric(
        "berth_upstream_requests_total",
        &[("upstream", upstream), ("kind", kind)],
    )
}

/// The harness itself, without berth: skopeo pushes over TLS with the test CA and containerd
/// pulls and unpacks straight from docker-registry. If this fails, berth is not to blame.
#[test]
#[ignore = "needs root, containerd, docker-registry, skopeo: run by scripts/test"]
fn harness_containerd_pulls_directly_from_tls_registry() {
    if !have_tools(true) {
        return;
    }
    let up = upstream_with_images();
    let containerd = Containerd::start();
    let hosts = tempfile::tempdir().unwrap();
    let host = up.registry.host();
    let dir = hosts.path().join(&host);
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  ca = \"{}\"\n",
        up.ca.ca_pem.display()
    );
    std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    let reference = format!("{host}/{HELM}:{HELM_TAG}");
    containerd
        .pull(&reference, hosts.path(), PullPlatform::All)
        .expect_success();
    assert_eq!(
        containerd.image_digest(&reference).as_deref(),
        Some(up.helm.index.digest.as_str())
    );
    let mut have = containerd.content_digests();
    have.sort();
    let mut want = digests(&up.helm.manifests());
    want.extend(digests(&up.helm.blobs()));
    want.sort();
    assert_eq!(have, want);
}

/// docker-registry in proxy mode (`proxy: remoteurl:`) in front of the TLS registry: the
/// baseline later benchmarks compare berth with.
#[test]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
fn harness_registry_proxy_mode_pulls_through() {
    if !have_tools(false) {
        return;
    }
    let up = upstream_with_images();
    let proxy = ProxyConfig {
        remote_url: up.registry.url(),
        credentials: None,
        ca_file: Some(up.ca.ca_pem.clone()),
    };
    let mirror = DockerRegistry::start_with(None, Some(&proxy));
    let raw = skopeo::inspect_raw(&format!("{}/{HELM}:{HELM_TAG}", mirror.host()));
    assert_eq!(
        sha256_digest(raw.expect_success().stdout.as_bytes()),
        up.helm.index.digest
    );
    assert!(
        up.registry
            .access_log()
            .iter()
            .any(|e| e.method == "GET" && e.uri == format!("/v2/{HELM}/manifests/{HELM_TAG}"))
    );
}

/// Issue acceptance (i): containerd pulls `docker.io/…` and `ghcr.io/…` through berth via
/// hosts.toml (`?ns=` routing); a re-pull after wiping containerd's store costs no upstream
/// blob request.
#[test]
#[ignore = "needs root, containerd, docker-registry, skopeo: run by scripts/test"]
fn containerd_pulls_through_berth_by_ns_and_repull_hits_only_the_cache() {
    if !have_tools(true) {
        return;
    }
    let up = upstream_with_images();
    let berth = berth_for(&up, None);
    let containerd = Containerd::start();
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        "docker.io",
        "https://registry-1.docker.io",
        &berth.url(),
    );
    write_hosts_toml(hosts.path(), "ghcr.io", "https://ghcr.io", &berth.url());
    let busybox_ref = format!("docker.io/{BUSYBOX}:{BUSYBOX_TAG}");
    let helm_ref = format!("ghcr.io/{HELM}:{HELM_TAG}");
    let pull_both = || {
        containerd
            .pull(&busybox_ref, hosts.path(), PullPlatform::One("linux/amd64"))
            .expect_success();
        containerd
            .pull(&helm_ref, hosts.path(), PullPlatform::All)
            .expect_success();
        assert_eq!(
            containerd.image_digest(&busybox_ref).as_deref(),
            Some(up.busybox.index.digest.as_str())
        );
        assert_eq!(
            containerd.image_digest(&helm_ref).as_deref(),
            Some(up.helm.index.digest.as_str())
        );
        let have = containerd.content_digests();
        let amd64 = up.busybox.image_for("amd64");
        for want in digests(&amd64.manifests())
            .iter()
            .chain(&digests(&amd64.blobs()))
        {
            assert!(
                have.contains(want),
                "busybox amd64 object {want} missing from containerd"
            );
        }
        for want in digests(&up.helm.manifests())
            .iter()
            .chain(&digests(&up.helm.blobs()))
        {
            assert!(
                have.contains(want),
                "helm-controller object {want} missing from containerd"
            );
        }
    };
    pull_both();

    // Routing by ns: both registries were fetched under their own upstream, never the default.
    for upstream in ["docker.io", "ghcr.io"] {
        assert!(
            upstream_requests(&berth, upstream, "manifest") > 0.0,
            "no manifest fetch for {upstream}"
        );
        assert!(
            upstream_requests(&berth, upstream, "blob") > 0.0,
            "no blob fetch for {upstream}"
        );
    }
    // containerd really sent `?ns=` (berth logs request URIs at debug level, BERTH_LOG=debug).
    let stderr = berth.stderr();
    for ns in ["?ns=docker.io", "?ns=ghcr.io"] {
        assert!(stderr.contains(ns), "berth's request log shows no {ns}");
    }
    let dead = berth.metric("berth_upstream_requests_total", &[("upstream", "quay.io")]);
    assert_eq!(dead, 0.0, "requests fell through to the default upstream");
    let log = up.registry.access_log();
    for repo in [BUSYBOX, HELM] {
        assert!(
            log.iter()
                .any(|e| e.uri.starts_with(&format!("/v2/{repo}/"))),
            "registry never saw {repo}"
        );
    }
    assert!(
        log.iter().all(|e| !e.uri.contains("ns=")),
        "berth must not forward ?ns= upstream"
    );

    let blob_gets = up.registry.blob_gets();
    let blob_metric = upstream_requests(&berth, "docker.io", "blob")
        + upstream_requests(&berth, "ghcr.io", "blob");
    containerd.forget(&busybox_ref);
    containerd.forget(&helm_ref);
    pull_both();
    assert_eq!(
        up.registry.blob_gets(),
        blob_gets,
        "re-pull fetched blobs from the registry again"
    );
    let blob_metric_after = upstream_requests(&berth, "docker.io", "blob")
        + upstream_requests(&berth, "ghcr.io", "blob");
    assert_eq!(
        blob_metric_after, blob_metric,
        "berth counted new upstream blob requests"
    );
}

/// Issue acceptance (ii): skopeo pulls through the path-prefix route
/// `/v2/<registry>/<repo>/…`, digests preserved.
#[test]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
fn skopeo_pulls_through_the_path_prefix_route() {
    if !have_tools(false) {
        return;
    }
    let up = upstream_with_images();
    let berth = berth_for(&up, None);
    let dir = tempfile::tempdir().unwrap();
    let src = format!("{}/ghcr.io/{HELM}:{HELM_TAG}", berth.host());
    skopeo::pull_to_layout(&src, dir.path(), HELM_TAG).expect_success();
    assert_eq!(
        images::layout_digest(dir.path(), HELM_TAG).as_deref(),
        Some(up.helm.index.digest.as_str())
    );
    assert_layout_holds(dir.path(), &up.helm);
    assert!(upstream_requests(&berth, "ghcr.io", "manifest") > 0.0);

    // docker.io one-component names get `library/`.
    let raw = skopeo::inspect_raw(&format!("{}/docker.io/busybox:{BUSYBOX_TAG}", berth.host()));
    assert_eq!(
        sha256_digest(raw.expect_success().stdout.as_bytes()),
        up.busybox.index.digest
    );
}

/// Issue acceptance (iii): once cached, pulls by tag and by digest work with the upstream dead.
#[test]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
fn cached_image_pulls_by_tag_and_digest_with_upstream_down() {
    if !have_tools(false) {
        return;
    }
    let mut up = upstream_with_images();
    let berth = berth_for(&up, None);
    let by_tag = format!("{}/ghcr.io/{HELM}:{HELM_TAG}", berth.host());
    let warm = tempfile::tempdir().unwrap();
    skopeo::pull_to_layout(&by_tag, warm.path(), HELM_TAG).expect_success();

    up.registry.stop();
    let cold = tempfile::tempdir().unwrap();
    skopeo::pull_to_layout(&by_tag, cold.path(), HELM_TAG).expect_success();
    assert_eq!(
        images::layout_digest(cold.path(), HELM_TAG).as_deref(),
        Some(up.helm.index.digest.as_str())
    );
    assert_layout_holds(cold.path(), &up.helm);

    let by_digest = format!("{}/ghcr.io/{HELM}@{}", berth.host(), up.helm.index.digest);
    let pinned = tempfile::tempdir().unwrap();
    skopeo::pull_to_layout(&by_digest, pinned.path(), "pinned").expect_success();
    assert_layout_holds(pinned.path(), &up.helm);
}

/// Past the tag TTL with the upstream down, berth serves the last known tag (stale) rather
/// than failing the pull.
#[test]
#[ignore = "needs docker-registry, skopeo: run by scripts/test"]
fn expired_tag_is_served_stale_when_upstream_is_down() {
    if !have_tools(false) {
        return;
    }
    let mut up = upstream_with_images();
    let berth = berth_for(&up, Some("1s"));
    let by_tag = format!("{}/ghcr.io/{HELM}:{HELM_TAG}", berth.host());
    skopeo::pull_to_layout(&by_tag, tempfile::tempdir().unwrap().path(), HELM_TAG).expect_success();
    up.registry.stop();
    // berth runs in another process: its TTL clock cannot be advanced, so let 1 s pass.
    std::thread::sleep(Duration::from_millis(1500));
    let raw = skopeo::inspect_raw(&by_tag);
    assert_eq!(
        sha256_digest(raw.expect_success().stdout.as_bytes()),
        up.helm.index.digest
    );
}

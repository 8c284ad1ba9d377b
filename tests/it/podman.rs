//! Another real client: Debian's podman pulls through berth with a `registries.conf` mirror
//! entry, as CRI-O nodes would (`[[registry]] location = "quay.io"` with
//! `[[registry.mirror]] location = "<berth>/quay.io"`: berth's path-prefix routing). The
//! image and its config come out with the digests pushed; the second pull asks no upstream.
//!
//! quay.io is Debian's docker-registry here (berth's upstream for that name), so the pull can
//! only succeed through berth: podman has no route to the real quay.io from the test, and
//! the image exists nowhere else.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::berth::BerthProcess;
use crate::support::images::{self, Content, Format};
use crate::support::inprocess::Berth;
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{DockerRegistry, skopeo};
use crate::support::util::{CmdOutput, run};

/// The registries.conf the README shows, for a mirror at `berth` (host:port).
fn registries_conf(berth: &str) -> String {
    format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\n\
         location = \"quay.io\"\n\n\
         [[registry.mirror]]\n\
         location = \"{berth}/quay.io\"\n\
         # berth in this test serves plain HTTP\n\
         insecure = true\n"
    )
}

/// podman with its own storage, run dir, registries.conf and signature policy under `dir`,
/// so the machine's configuration and images are neither used nor touched.
pub(crate) fn podman(dir: &Path, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .args(args)
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .env("TMPDIR", dir.join("tmp"));
    run(&mut cmd, Duration::from_secs(180))
}

/// Every `/v2/<name>/...` request URI in berth's request log (tower-http, debug level).
fn logged_request_uris(berth: &BerthProcess) -> Vec<String> {
    berth
        .stderr()
        .lines()
        .filter(|l| l.contains("started processing request"))
        .filter_map(|l| l.split("uri=").nth(1))
        .filter_map(|rest| rest.split([' ', '}']).next().map(String::from))
        .filter(|uri| uri.starts_with("/v2/") && uri.len() > "/v2/".len())
        .collect()
}

#[test]
#[ignore = "needs root, podman, docker-registry, skopeo: run by scripts/test"]
fn podman_pulls_through_a_registries_conf_mirror_and_repulls_from_the_cache() {
    if !(require_tools(&["podman", "docker-registry", "skopeo"])
        && require_root("podman runs rootful here"))
    {
        return;
    }
    let registry = DockerRegistry::start(None);
    let index = images::multi_arch(730, Format::Docker);
    let (repo, tag) = ("prometheus/node-exporter", "v1.8.2");
    skopeo::push(&index, &format!("{}/{repo}:{tag}", registry.host()), None);
    let berth = Berth::builder()
        .default_upstream("quay.io")
        .upstream_named("quay.io", &registry.url())
        .spawn();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(
        dir.path().join("registries.conf"),
        registries_conf(&berth.host()),
    )
    .unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let policy_arg = format!("--signature-policy={}", policy.display());
    let reference = format!("quay.io/{repo}:{tag}");
    let amd64 = index.image_for("amd64");

    let pull = || {
        let out = podman(
            dir.path(),
            &[
                "pull",
                "--arch",
                "amd64",
                "--os",
                "linux",
                &policy_arg,
                &reference,
            ],
        );
        out.expect_success();
        // podman's image ID is the config blob's digest.
        let id = podman(
            dir.path(),
            &["image", "inspect", "--format", "{{.Id}}", &reference],
        );
        id.expect_success();
        assert_eq!(
            format!("sha256:{}", id.stdout.trim()),
            amd64.config.digest,
            "podman stored a different image"
        );
        let digests = podman(
            dir.path(),
            &[
                "image",
                "inspect",
                "--format",
                "{{range .RepoDigests}}{{println .}}{{end}}",
                &reference,
            ],
        );
        digests.expect_success();
        assert!(
            digests
                .stdout
                .lines()
                .any(|l| l == format!("quay.io/{repo}@{}", index.index.digest)),
            "the pulled tag resolved to another index: {}",
            digests.stdout
        );
    };

    pull();
    let uris = logged_request_uris(&berth);
    assert!(!uris.is_empty(), "podman sent berth nothing");
    for uri in &uris {
        assert!(
            uri.starts_with("/v2/quay.io/"),
            "podman's request did not carry the registry in the path: {uri}"
        );
    }
    for blob in amd64.blobs() {
        assert!(
            uris.iter()
                .any(|u| u.ends_with(&format!("/blobs/{}", blob.digest))),
            "{} did not come through berth",
            blob.digest
        );
    }

    // Second pull with the image removed locally: berth's cache alone serves it.
    let upstream_before = berth.metric("berth_upstream_requests_total", &[]);
    let registry_before = registry.access_log().len();
    podman(dir.path(), &["rmi", "--force", &reference]).expect_success();
    pull();
    let repull = &logged_request_uris(&berth)[uris.len()..];
    for blob in amd64.blobs() {
        assert!(
            repull
                .iter()
                .any(|u| u.ends_with(&format!("/blobs/{}", blob.digest))),
            "the second pull did not fetch {} from berth again: {repull:?}",
            blob.digest
        );
    }
    assert_eq!(
        berth.metric("berth_upstream_requests_total", &[]),
        upstream_before,
        "the second pull made upstream requests"
    );
    assert_eq!(registry.access_log().len(), registry_before);
}

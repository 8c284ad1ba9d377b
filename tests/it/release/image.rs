//! `scripts/image` writes berth's image as an OCI layout (no Docker daemon); podman loads and
//! runs it with the example config, as the unprivileged user `berth`, and the berth inside
//! serves its own image, pushed to a real registry (Debian's docker-registry), byte-exact.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::podman::podman;
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::{DockerRegistry, skopeo};
use crate::support::util::{free_port, http_get, poll_blocking, run};

/// The uid `scripts/image` gives the user `berth`.
const BERTH_UID: &str = "10001";

/// An OCI image layout on disk, read back as a client would.
struct Layout(PathBuf);

impl Layout {
    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        std::fs::read(self.0.join("blobs/sha256").join(hex)).unwrap()
    }

    fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).unwrap()
    }

    /// The one manifest index.json names.
    fn manifest_digest(&self) -> String {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.0.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Bytes of every blob, each checked against the digest that names it.
    fn verified_size(&self) -> u64 {
        let mut total = 0;
        for entry in std::fs::read_dir(self.0.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                entry.file_name().to_str().unwrap(),
                "a blob does not hash to its name"
            );
            total += bytes.len() as u64;
        }
        total
    }
}

/// The names in a gzip tar layer (through Debian's tar, as a runtime unpacks it).
fn layer_listing(layer: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.tar.gz");
    std::fs::write(&file, layer).unwrap();
    let out = run(
        Command::new("tar").arg("-tvzf").arg(&file),
        Duration::from_secs(60),
    );
    out.expect_success();
    out.stdout
}

/// This process's hard RLIMIT_NOFILE: a container may not be given more.
fn hard_open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap_or(65536)
}

/// A container started by this test, removed (by name) when dropped.
struct Container<'a> {
    podman_dir: &'a Path,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = podman(
            self.podman_dir,
            &["rm", "--force", "--time", "5", &self.name],
        );
    }
}

/// `curl` GET of a berth URL to a file: (HTTP status, body).
fn curl(url: &str, accept: &str) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = run(
        Command::new("curl")
            .args(["-sS", "--noproxy", "*", "-w", "%{http_code}", "-H"])
            .arg(format!("Accept: {accept}"))
            .arg("-o")
            .arg(&body)
            .arg(url),
        Duration::from_secs(60),
    );
    out.expect_success();
    (
        out.stdout.trim().parse().unwrap(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

#[test]
#[ignore = "needs root, podman, docker-registry, skopeo, curl: run by scripts/test"]
fn podman_runs_the_image_as_berth_and_it_serves_its_own_image() {
    if !(require_tools(&["podman", "docker-registry", "skopeo", "curl", "python3"])
        && require_root("podman runs rootful here"))
    {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout(dir.path().join("layout"));
    let archive = dir.path().join("berth.oci.tar");

    // The image, from the test build of berth.
    let built = run(
        Command::new(root.join("scripts/image"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_berth"))
            .arg("--out")
            .arg(&layout.0)
            .args(["--tag", "test", "--archive"])
            .arg(&archive),
        Duration::from_secs(300),
    );
    built.expect_success();
    eprintln!("scripts/image: {}", built.stdout.trim());
    let size = layout.verified_size();
    let manifest_digest = layout.manifest_digest();
    let manifest = layout.json(&manifest_digest);
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config = layout.json(&config_digest);
    assert_eq!(config["config"]["User"], format!("{BERTH_UID}:{BERTH_UID}"));
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let listing = layer_listing(&layout.blob(&layer_digest));
    for path in [
        "usr/local/bin/berth",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/berth/berth.toml",
    ] {
        assert!(listing.contains(path), "the layer lacks {path}:\n{listing}");
    }
    // Small: a debug build (12.6 MB: its code without debug info, glibc, the CA bundle).
    assert!(size < 40_000_000, "the image is {size} bytes");

    // Debian's docker-registry is quay.io for the berth in the container; the image is in it.
    let registry = DockerRegistry::start(None);
    skopeo::push_from(
        &format!("oci:{}:test", layout.0.display()),
        &format!("{}/berth/berth:test", registry.host()),
        None,
    );

    // The example config (what the README's `berth serve` documents), on a free port on the
    // host network, with quay.io at the local registry.
    let port = free_port();
    let example = std::fs::read_to_string(root.join("config/berth.toml")).unwrap();
    let config_file = dir.path().join("berth.toml");
    let ours = example
        .replace(
            "listen = \"0.0.0.0:5000\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "url = \"https://quay.io\"",
            &format!("url = \"{}\"", registry.url()),
        );
    assert!(ours.contains(&format!(":{port}\"")) && ours.contains(&registry.url()));
    std::fs::write(&config_file, ours).unwrap();

    let podman_dir = dir.path().join("podman");
    std::fs::create_dir_all(podman_dir.join("tmp")).unwrap();
    std::fs::write(podman_dir.join("registries.conf"), "").unwrap();
    let loaded = podman(&podman_dir, &["load", "--input", archive.to_str().unwrap()]);
    loaded.expect_success();
    // podman's image ID is the config's digest: the image it loaded is the one written.
    let id = config_digest.strip_prefix("sha256:").unwrap();
    podman(&podman_dir, &["image", "inspect", id]).expect_success();

    let open_files = hard_open_files_limit().min(65536);
    let container = Container {
        podman_dir: &podman_dir,
        name: format!("berth-image-test-{port}"),
    };
    podman(
        &podman_dir,
        &[
            "run",
            "--detach",
            "--name",
            &container.name,
            "--network",
            "host",
            // podman's default limits (nofile 1048576, nproc 4194304) exceed what a test
            // machine may set (runc fails with EPERM); berth needs far fewer.
            "--ulimit",
            &format!("nofile={open_files}:{open_files}"),
            "--ulimit",
            "nproc=4096:4096",
            "--volume",
            &format!("{}:/etc/berth/berth.toml:ro", config_file.display()),
            id,
        ],
    )
    .expect_success();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answered = poll_blocking(Duration::from_secs(60), || {
        matches!(http_get(addr, "/v2/"), Some((200, _)))
    });
    if answered.is_err() {
        let logs = podman(&podman_dir, &["logs", &container.name]);
        panic!(
            "berth in the container never answered /v2/:\n{}{}",
            logs.stdout, logs.stderr
        );
    }

    // It runs as berth, not root: the uid of the container's process, seen from the host.
    let pid = podman(
        &podman_dir,
        &["inspect", "--format", "{{.State.Pid}}", &container.name],
    );
    pid.expect_success();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.stdout.trim())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace().skip(1).all(|uid| uid == BERTH_UID),
        "berth runs as {uids}"
    );

    // berth pulls its own image through itself: manifest and layer, byte-exact, the layer
    // cached (under /var/lib/berth, written as berth) and served again from the cache.
    let base = format!("http://{addr}/v2/quay.io/berth/berth");
    let (code, body) = curl(
        &format!("{base}/manifests/test"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        body,
        layout.blob(&manifest_digest),
        "the manifest changed on the way"
    );
    for _ in 0..2 {
        let (code, body) = curl(&format!("{base}/blobs/{layer_digest}"), "*/*");
        assert_eq!(code, 200);
        assert!(
            body == layout.blob(&layer_digest),
            "the layer changed on the way"
        );
    }
    let (_, metrics) = curl(&format!("http://{addr}/metrics"), "text/plain");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("berth_cache_lookups_total{kind=\"blob\",result=\"hit\"}")
            && !l.ends_with(" 0")),
        "the second layer GET was not a cache hit:\n{metrics}"
    );
    let build_info = format!(
        "berth_build_info{{version=\"{}\",commit=",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build_info), "{metrics}");
}

/// `scripts/image` run on `binary` into `out`: its output.
fn build_image(binary: &Path, out: &Path) -> crate::support::util::CmdOutput {
    run(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image"))
            .arg("--binary")
            .arg(binary)
            .arg("--out")
            .arg(out),
        Duration::from_secs(300),
    )
}

#[test]
#[ignore = "needs python3, strip (binutils): run by scripts/test"]
fn the_same_binary_gives_the_same_image_digest() {
    if !require_tools(&["python3", "strip", "ldd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_berth"));
    let digests: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            let out = dir.path().join(name);
            build_image(binary, &out).expect_success();
            Layout(out).manifest_digest()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "two builds of one binary differ");
}

#[test]
fn a_file_that_is_not_berth_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (binary, says) in [
        (
            Path::new("/nonexistent/berth"),
            "no binary at /nonexistent/berth",
        ),
        (
            Path::new("/etc/passwd"),
            "/etc/passwd is not an ELF executable",
        ),
    ] {
        let out = build_image(binary, &dir.path().join("out"));
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(says), "{}", out.stderr);
        assert!(
            out.stderr.contains("--binary"),
            "no fix named: {}",
            out.stderr
        );
    }
}

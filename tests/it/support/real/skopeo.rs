//! skopeo invocations: push an OCI layout into a registry, pull from a registry into a layout.
//! Always `--insecure-policy` (no dependence on /etc/containers/policy.json).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::super::images::{self, Content};
use super::super::util::{CmdOutput, run};
use super::tls::TestCa;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Pushes `content` to `docker://<dest>` (`host:port/repo:tag`) with skopeo, via an OCI
/// layout (OCI media types) or a `dir:` layout (Docker schema2), digests preserved. Trusts
/// `ca` for the destination, or plain HTTP when `None`. Panics on failure.
pub fn push(content: &dyn Content, dest: &str, ca: Option<&TestCa>) {
    let dir = tempfile::tempdir().unwrap();
    let src = if images::is_oci(content) {
        images::write_oci_layout(dir.path(), &[("push", content)]).unwrap();
        format!("oci:{}:push", dir.path().display())
    } else {
        images::write_dir_layout(dir.path(), content).unwrap();
        format!("dir:{}", dir.path().display())
    };
    push_from(&src, dest, ca);
}

/// `skopeo copy --all --preserve-digests <src> docker://<dest>` (src: `oci:<dir>:<tag>`,
/// `dir:<dir>`, …). Panics on failure.
pub fn push_from(src: &str, dest: &str, ca: Option<&TestCa>) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--retry-times",
        "0",
    ]);
    match ca {
        Some(ca) => cmd.arg("--dest-cert-dir").arg(&ca.cert_dir),
        None => cmd.arg("--dest-tls-verify=false"),
    };
    cmd.arg(src).arg(format!("docker://{dest}"));
    run(&mut cmd, TIMEOUT).expect_success();
}

/// `skopeo copy --all --preserve-digests --src-tls-verify=false docker://<src> oci:<dir>:<tag>`
/// (plain HTTP or unverified TLS). Returns the output; check `success`.
pub fn pull_to_layout(src: &str, dir: &Path, tag: &str) -> CmdOutput {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--retry-times",
        "0",
    ])
    .arg("--src-tls-verify=false")
    .arg(format!("docker://{src}"))
    .arg(format!("oci:{}:{tag}", dir.display()));
    run(&mut cmd, TIMEOUT)
}

/// `skopeo inspect --raw` of a remote reference (plain HTTP / unverified TLS).
pub fn inspect_raw(src: &str) -> CmdOutput {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--retry-times",
        "0",
        "--tls-verify=false",
    ])
    .arg(format!("docker://{src}"));
    run(&mut cmd, Duration::from_secs(60))
}

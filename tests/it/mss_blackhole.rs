//! A real path-MTU black hole, built from network namespaces (`support::netns::Lab`), and
//! berth's `tcp_mss` clamp.
//!
//! Topology (names suffixed with the test's pid; everything is torn down on drop, even on
//! panic):
//!
//! ```text
//!   berth-<id>                 router-<id>                          up-<id>
//!   vb<id> 10.99.1.2 ──veth── vrb<id> 10.99.1.1 (MTU 1400!)
//!   MTU 1500                   vru<id> 10.99.2.1 ──veth── vu<id> 10.99.2.2  python3 http.server :8080
//!                              ip_forward=1, ICMP frag-needed DROPped (OUTPUT + FORWARD)
//! ```
//!
//! berth's interface is 1500, so without the clamp it advertises MSS 1460; the upstream then
//! sends 1500-byte DF packets that the router cannot forward toward berth (egress MTU 1400), and
//! the "fragmentation needed" ICMP that would fix it is dropped: the transfer stalls forever
//! (small responses still get through). With `tcp_mss = 1360` berth's SYN advertises 1360 and
//! the upstream's segments fit the 1400-byte hop.
//!
//! Needs root, `ip`, `iptables`, `curl`, `python3`: skipped locally without them, fails under
//! `CI=true`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::inprocess::Berth;
use crate::support::netns::{Lab, Proc, UP_IP, in_ns, unique_id};
use crate::support::prereq::{require_root, require_tools, which};
use crate::support::util::wait_until;
use sha2::{Digest, Sha256};

const UP_PORT: u16 = 8080;
/// berth's listen port inside its own namespace (private, so a fixed port cannot clash).
pub(crate) const BERTH_PORT: u16 = 5000;
const NARROW_MTU: u32 = 1400;
const CLAMP_MSS: u32 = 1360;
const BLOB_SIZE: usize = 16 << 20;
const REPO_BLOB_DIR: &str = "v2/library/big/blobs";

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// `curl` inside `ns`; returns (exit code or -1 on timeout, elapsed, stderr).
pub(crate) fn curl(ns: &str, url: &str, out: &Path, max_time: u64) -> (i32, Duration, String) {
    let start = Instant::now();
    let max = max_time.to_string();
    let out = in_ns(
        ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            &max,
            url,
            "-o",
            out.to_str().unwrap(),
            "-w",
            "%{http_code} %{size_download}\n",
        ],
        Duration::from_secs(max_time + 10),
    );
    let code = if out.success {
        0
    } else if out.timed_out {
        -1
    } else {
        // `run` only keeps success; recover curl's code from its "curl: (NN)" message.
        out.stderr
            .split("curl: (")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(1)
    };
    (
        code,
        start.elapsed(),
        format!("{}{}", out.stdout, out.stderr),
    )
}

pub(crate) fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_hex(&b))
}

/// Starts berth inside `ns` with `config` and waits (≤ 30 s) for `GET /v2/` to answer there.
pub(crate) fn start_berth(ns: &str, dir: &Path, config: &str) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let config_path = dir.join("berth.toml");
    std::fs::write(&config_path, config).unwrap();
    let listen = format!("127.0.0.1:{BERTH_PORT}");
    crate::support::netns::berth_in(ns, dir, &config_path, &listen, BERTH_PORT)
}

/// The config, rendered by the builder; berth itself starts inside the lab's namespace (see
/// [`start_berth`]), which the builder's ways of starting do not reach. `extra`: transport keys.
fn berth_config(extra: &str) -> String {
    Berth::builder()
        .default_upstream("docker.io")
        .upstream_named("docker.io", &format!("http://{UP_IP}:{UP_PORT}"))
        .config("stall_timeout = \"2s\"\nmax_attempts = 2")
        .config(extra)
        .toml()
}

#[test]
#[ignore = "needs root, network namespaces, iptables: run by scripts/test"]
fn large_blob_through_pmtu_black_hole_needs_the_mss_clamp() {
    if !require_root("network namespaces") || !require_tools(&["ip", "iptables", "curl", "python3"])
    {
        return;
    }
    let t0 = Instant::now();
    let id = unique_id();
    let tmp = tempfile::tempdir().unwrap();

    // Upstream content: a big random blob at its registry path, and a small file.
    let blob = random_bytes(BLOB_SIZE);
    let hex = sha256_hex(&blob);
    let digest = format!("sha256:{hex}");
    let root = tmp.path().join("upstream");
    std::fs::create_dir_all(root.join(REPO_BLOB_DIR)).unwrap();
    std::fs::write(root.join(REPO_BLOB_DIR).join(&digest), &blob).unwrap();
    std::fs::write(root.join("small"), random_bytes(500)).unwrap();
    drop(blob);

    // Declared before the processes, so it is dropped (namespaces deleted) after them.
    let net = Lab::build(&id, NARROW_MTU);
    eprintln!("[{:?}] namespaces built: {:?}", t0.elapsed(), net.all());

    let python = which("python3").unwrap();
    let mut server = Proc::spawn(
        &net.up,
        &[
            python.to_str().unwrap(),
            "-m",
            "http.server",
            &UP_PORT.to_string(),
            "--bind",
            UP_IP,
            "--directory",
            root.to_str().unwrap(),
        ],
        &[],
        tmp.path().join("http.log"),
    );

    // Small responses cross the narrow hop (this also waits for the server to listen).
    let small_out = tmp.path().join("small.out");
    let upstream = format!("http://{UP_IP}:{UP_PORT}");
    wait_until(
        "a 500-byte file to arrive from the upstream namespace",
        Duration::from_secs(20),
        || {
            server.assert_running("python3 http.server");
            let (code, _, _) = curl(&net.berth, &format!("{upstream}/small"), &small_out, 2);
            (code == 0 && std::fs::metadata(&small_out).is_ok_and(|m| m.len() == 500)).then_some(())
        },
    );
    eprintln!(
        "[{:?}] upstream ready; small file crosses the hop",
        t0.elapsed()
    );

    // The black hole is real: a plain (MSS 1460) download of the big blob stalls.
    let blob_path = format!("{REPO_BLOB_DIR}/{digest}");
    let direct_out = tmp.path().join("direct.out");
    let (code, took, msg) = curl(
        &net.berth,
        &format!("{upstream}/{blob_path}"),
        &direct_out,
        10,
    );
    eprintln!(
        "[{:?}] direct download: curl exit {code} after {took:?}: {msg}",
        t0.elapsed()
    );
    assert!(
        code != 0 || file_sha256(&direct_out).as_deref() != Some(hex.as_str()),
        "the direct download succeeded, so there is no black hole to test: {msg}"
    );

    let blob_url = format!("http://127.0.0.1:{BERTH_PORT}/{blob_path}");

    // 1. Without the clamp (and without the fallback that finds one): berth's fill stalls, is
    //    reported as a stall, and the client's response does not carry a correct body.
    {
        let dir = tmp.path().join("unclamped");
        let mut berth = start_berth(&net.berth, &dir, &berth_config("mss_fallback = []"));
        let out = dir.join("blob.out");
        let (code, took, msg) = curl(&net.berth, &blob_url, &out, 40);
        let got = file_sha256(&out);
        eprintln!(
            "[{:?}] unclamped fetch through berth: curl exit {code} after {took:?}: {msg}",
            t0.elapsed()
        );
        assert!(
            code != 0 || got.as_deref() != Some(hex.as_str()),
            "without tcp_mss the fill should not deliver a correct body, but it did: {msg}\n\
             berth stderr:\n{}",
            berth.stderr()
        );
        assert_ne!(
            code,
            28,
            "berth should abort the client's response after its attempts stall, not leave it \
             hanging until curl's --max-time; berth stderr:\n{}",
            berth.stderr()
        );
        let log = wait_until("berth to report the stall", Duration::from_secs(10), || {
            let log = berth.stderr();
            log.contains("stalled").then_some(log)
        });
        berth.assert_running("berth (unclamped)");
        eprintln!(
            "berth (unclamped) warnings:\n{}",
            log.lines()
                .filter(|l| l.contains("stalled") || l.contains("resuming"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // 2. With the clamp (fresh data dir): the same fetch completes and verifies.
    {
        let dir = tmp.path().join("clamped");
        let mut berth = start_berth(
            &net.berth,
            &dir,
            &berth_config(&format!("tcp_mss = {CLAMP_MSS}")),
        );
        let out = dir.join("blob.out");
        let (code, took, msg) = curl(&net.berth, &blob_url, &out, 40);
        eprintln!(
            "[{:?}] clamped fetch through berth: curl exit {code} after {took:?}: {msg}",
            t0.elapsed()
        );
        assert_eq!(
            code,
            0,
            "with tcp_mss = {CLAMP_MSS} the fetch should complete: {msg}\nberth stderr:\n{}",
            berth.stderr()
        );
        assert_eq!(
            file_sha256(&out).as_deref(),
            Some(hex.as_str()),
            "the body through berth must hash to the digest; berth stderr:\n{}",
            berth.stderr()
        );
        berth.assert_running("berth (clamped)");
        let log = berth.stderr();
        assert!(
            !log.contains("stalled"),
            "with the clamp berth should not stall; berth stderr:\n{log}"
        );
    }
    // 3. Default config: the transfer that stalls before its first byte is resumed on a
    //    connection clamped to the first `mss_fallback` step, and completes.
    {
        let dir = tmp.path().join("default");
        let mut berth = start_berth(&net.berth, &dir, &berth_config(""));
        let out = dir.join("blob.out");
        let (code, took, msg) = curl(&net.berth, &blob_url, &out, 60);
        eprintln!(
            "[{:?}] default-config fetch through berth: curl exit {code} after {took:?}: {msg}",
            t0.elapsed()
        );
        assert_eq!(code, 0, "{msg}\nberth stderr:\n{}", berth.stderr());
        assert_eq!(
            file_sha256(&out).as_deref(),
            Some(hex.as_str()),
            "berth stderr:\n{}",
            berth.stderr()
        );
        berth.assert_running("berth (default config)");
        let log = berth.stderr();
        assert!(
            log.contains("path MTU black hole") && log.contains("stalled before its first byte"),
            "the clamp is logged with its cause:\n{log}"
        );
    }
    eprintln!("[{:?}] done", t0.elapsed());
}

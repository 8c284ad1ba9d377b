//! Our users' first symptom: a PMTU black hole that eats the TLS handshake itself.
//!
//! The lab of [`crate::mss_blackhole`] (a 1400-byte hop toward berth, ICMP "fragmentation
//! needed" dropped), with an HTTPS upstream whose certificate flight does not fit in one
//! 1400-byte packet (a leaf certificate padded with subject names, ~3 KB). TCP connects and
//! small packets cross, but the server's certificate flight is sent in full-size segments and
//! never arrives: handshakes time out, as they do for our users.
//!
//! - `berth probe` names it: `pmtu_black_hole`, exit 1, the handshake comparison as evidence,
//!   the largest working MSS and the path MTU in bytes on the wire; the same lab with a
//!   1500-byte hop is `healthy`; a server that never answers or resets every handshake is not
//!   called a black hole.
//! - `berth serve` with a default config heals it: a fresh 32 MiB layer arrives byte-exact, the
//!   clamp is logged, counted and shown on the status page; with `mss_fallback = []` the same
//!   pull fails, so the fallback is what makes it work.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::mss_blackhole::{BERTH_PORT, file_sha256, random_bytes, sha256_hex, start_berth};
use crate::support::inprocess::Berth;
use crate::support::netns::{Lab, Proc, UP_IP, in_ns, unique_id};
use crate::support::prereq::{require_root, require_tools, which};
use crate::support::real::tls::TestCa;
use crate::support::util::wait_until;

const TLS_PORT: u16 = 8443;
/// Accepts TCP, never says a word: every handshake times out, at every MSS.
const SILENT_PORT: u16 = 8444;
/// Accepts TCP and resets it.
const RESET_PORT: u16 = 8445;
const NARROW_MTU: u32 = 1400;
const LAYER_SIZE: usize = 32 << 20;
const REPO_BLOB_DIR: &str = "v2/library/big/blobs";

/// A static HTTPS server: each connection's handshake runs on its own thread, so a handshake
/// lost in the hole does not hold the others; plus the silent and the resetting listener.
const SERVERS_PY: &str = r#"
import functools, http.server, socket, ssl, struct, sys, threading
ip, port, silent, reset, root, cert, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def finish_request(self, request, address):
        request.settimeout(60)
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        self.RequestHandlerClass(tls, address, self)
def listen(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, p))
    s.listen(64)
    return s
def silent_loop(s):
    held = []
    while True:
        c, _ = s.accept()
        held.append(c)
def reset_loop(s):
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
threading.Thread(target=silent_loop, args=(listen(silent),), daemon=True).start()
threading.Thread(target=reset_loop, args=(listen(reset),), daemon=True).start()
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
Server((ip, port), handler).serve_forever()
"#;

/// A CA whose server certificate names the upstream's address and enough padding names that
/// the certificate flight needs several full-size segments.
fn big_flight_ca() -> TestCa {
    let padding: Vec<String> = (0..80)
        .map(|i| format!("padding-{i:03}-so-the-certificate-flight-is-big.berth.test"))
        .collect();
    let mut names = vec![UP_IP];
    names.extend(padding.iter().map(String::as_str));
    let ca = TestCa::for_names(&names);
    let cert_len = std::fs::metadata(&ca.cert_pem).unwrap().len();
    assert!(
        cert_len > 3000,
        "the certificate is only {cert_len} bytes of PEM"
    );
    ca
}

/// `berth probe` inside `ns`, the text report on stdout (shown) and the JSON one in a file:
/// (exit code, report).
fn probe(ns: &str, dir: &Path, config: &str, targets: &[String]) -> (i32, serde_json::Value) {
    let config_path = dir.join("probe.toml");
    std::fs::write(&config_path, config).unwrap();
    let json_path = dir.join("probe.json");
    let mut args = vec![
        env!("CARGO_BIN_EXE_berth").to_string(),
        "probe".into(),
        "--config".into(),
        config_path.to_str().unwrap().into(),
        "--out".into(),
        json_path.to_str().unwrap().into(),
        "--no-user-named".into(),
        "--rounds".into(),
        "2".into(),
        "--interval".into(),
        "0s".into(),
        "--image".into(),
        "none".into(),
        "--tls-timeout".into(),
        "3s".into(),
        "--connect-timeout".into(),
        "3s".into(),
    ];
    for t in targets {
        args.extend(["--target".into(), t.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = in_ns(ns, &args, Duration::from_secs(180));
    assert!(!out.timed_out, "berth probe did not finish: {}", out.stderr);
    eprintln!("--- berth probe\n{}", out.stdout);
    let json = std::fs::read_to_string(&json_path).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("probe JSON: {e}\n{}\n{}", out.stdout, out.stderr));
    (out.code.unwrap_or(-1), report)
}

fn verdicts(report: &serde_json::Value) -> Vec<(String, String, Option<u64>)> {
    report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_string(),
                v["target"].as_str().unwrap().to_string(),
                v["recommended_mss"].as_u64(),
            )
        })
        .collect()
}

/// A config with one upstream at the lab's HTTPS server.
fn config(ca: &TestCa, extra: &str) -> String {
    Berth::builder()
        .default_upstream("lab.registry")
        .upstream_named("lab.registry", &format!("https://{UP_IP}:{TLS_PORT}"))
        .ca_file(&ca.ca_pem)
        .config(extra)
        .toml()
}

/// `curl` for the blob inside `ns`: (exit code, seconds to the first byte, sha256 of the body).
fn fetch(ns: &str, url: &str, out: &Path, max_time: u64) -> (i32, f64, Option<String>) {
    let max = max_time.to_string();
    let got = in_ns(
        ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            &max,
            "-o",
            out.to_str().unwrap(),
            "-w",
            "%{time_starttransfer}",
            url,
        ],
        Duration::from_secs(max_time + 10),
    );
    let ttfb = got.stdout.trim().parse().unwrap_or(-1.0);
    let code = if got.success { 0 } else { 1 };
    (code, ttfb, file_sha256(out))
}

fn get_text(ns: &str, url: &str) -> String {
    in_ns(
        ns,
        &["curl", "-sS", "--max-time", "5", url],
        Duration::from_secs(15),
    )
    .stdout
}

#[test]
#[ignore = "needs root, network namespaces, iptables, python3: run by scripts/test"]
fn a_handshake_black_hole_is_named_by_the_probe_and_healed_by_a_default_berth() {
    if !require_root("network namespaces") || !require_tools(&["ip", "iptables", "curl", "python3"])
    {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ca = big_flight_ca();

    let layer = random_bytes(LAYER_SIZE);
    let hex = sha256_hex(&layer);
    let digest = format!("sha256:{hex}");
    let root = tmp.path().join("upstream");
    std::fs::create_dir_all(root.join(REPO_BLOB_DIR)).unwrap();
    std::fs::write(root.join(REPO_BLOB_DIR).join(&digest), &layer).unwrap();
    std::fs::write(root.join("v2/index.html"), "{}").unwrap();
    drop(layer);
    let script = tmp.path().join("servers.py");
    std::fs::write(&script, SERVERS_PY).unwrap();

    let start_servers = |lab: &Lab, name: &str| {
        let mut server = Proc::spawn(
            &lab.up,
            &[
                which("python3").unwrap().to_str().unwrap(),
                script.to_str().unwrap(),
                UP_IP,
                &TLS_PORT.to_string(),
                &SILENT_PORT.to_string(),
                &RESET_PORT.to_string(),
                root.to_str().unwrap(),
                ca.cert_pem.to_str().unwrap(),
                ca.key_pem.to_str().unwrap(),
            ],
            &[],
            tmp.path().join(format!("{name}-servers.log")),
        );
        // TCP reaches the server (small packets cross the hop in both labs).
        wait_until(
            "the lab's HTTPS server to accept TCP",
            Duration::from_secs(20),
            || {
                server.assert_running("the lab's servers");
                let up = in_ns(
                    &lab.berth,
                    &[
                        "bash",
                        "-c",
                        &format!("exec 3<>/dev/tcp/{UP_IP}/{TLS_PORT}"),
                    ],
                    Duration::from_secs(5),
                );
                up.success.then_some(())
            },
        );
        server
    };

    // 1. The hole: the probe names it, and berth heals it.
    {
        let lab = Lab::build(&unique_id(), NARROW_MTU);
        let _servers = start_servers(&lab, "narrow");

        // The symptom is real: a plain TLS client's handshake does not complete.
        let direct = in_ns(
            &lab.berth,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--cacert",
                ca.ca_pem.to_str().unwrap(),
                "-o",
                "/dev/null",
                &format!("https://{UP_IP}:{TLS_PORT}/v2/"),
            ],
            Duration::from_secs(15),
        );
        assert!(
            !direct.success,
            "the handshake crossed the hop, so there is no black hole to test"
        );

        let dir = tmp.path().join("probe-narrow");
        std::fs::create_dir_all(&dir).unwrap();
        let (code, report) = probe(&lab.berth, &dir, &config(&ca, ""), &[]);
        eprintln!(
            "[{:?}] probe through the hole: exit {code}\n{}",
            t0.elapsed(),
            serde_json::to_string_pretty(&report["verdicts"]).unwrap()
        );
        let found = verdicts(&report);
        let hole = found
            .iter()
            .find(|(kind, _, _)| kind == "pmtu_black_hole")
            .unwrap_or_else(|| panic!("no pmtu_black_hole verdict: {found:?}"));
        assert_eq!(hole.1, UP_IP);
        let mss = hole.2.expect("a recommended MSS");
        assert!(
            mss <= 1360,
            "recommended MSS {mss} does not fit a 1400-byte hop"
        );
        assert_eq!(code, 1, "a verdict that names a problem exits 1");
        let handshakes = &report["targets"][0]["handshakes"];
        assert_eq!(
            handshakes["path_mtu"].as_u64(),
            Some(u64::from(NARROW_MTU)),
            "the path MTU, in bytes on the wire: {handshakes}"
        );
        assert_eq!(handshakes["largest_mss"].as_u64(), Some(mss));

        // berth serve, default config: the layer arrives whole and the clamp is reported.
        let dir = tmp.path().join("serve-default");
        let mut berth = start_berth(&lab.berth, &dir, &config(&ca, ""));
        let blob_url = format!("http://127.0.0.1:{BERTH_PORT}/v2/library/big/blobs/{digest}");
        let out = dir.join("layer.out");
        let (code, ttfb, sha) = fetch(&lab.berth, &blob_url, &out, 90);
        eprintln!(
            "[{:?}] default-config berth through the hole: curl exit {code}, first byte after {ttfb:.2} s",
            t0.elapsed()
        );
        assert_eq!(code, 0, "berth stderr:\n{}", berth.stderr());
        assert_eq!(
            sha.as_deref(),
            Some(hex.as_str()),
            "the layer must arrive byte-exact"
        );
        berth.assert_running("berth (default config)");
        let log = berth.stderr();
        let warning = log
            .lines()
            .find(|l| l.contains("path MTU black hole"))
            .unwrap_or_else(|| panic!("the clamp is logged:\n{log}"));
        eprintln!("berth's warning: {warning}");
        assert!(
            warning.contains("1360") && warning.contains("lab.registry"),
            "{warning}"
        );
        let status = in_ns(
            &lab.berth,
            &[
                env!("CARGO_BIN_EXE_berth"),
                "status",
                "--mirror",
                &format!("http://127.0.0.1:{BERTH_PORT}"),
            ],
            Duration::from_secs(20),
        );
        eprintln!("--- berth status\n{}", status.stdout);
        assert!(
            status.stdout.contains("black hole: clamped to MSS 1360"),
            "{}{}",
            status.stdout,
            status.stderr
        );
        let metrics = get_text(
            &lab.berth,
            &format!("http://127.0.0.1:{BERTH_PORT}/metrics"),
        );
        assert!(
            metrics.contains("berth_upstream_mss{upstream=\"lab.registry\"} 1360"),
            "{metrics}"
        );
        assert!(
            metrics.contains("berth_upstream_mss_fallbacks_total{upstream=\"lab.registry\"} 1"),
            "{metrics}"
        );
        let status: serde_json::Value = serde_json::from_str(&get_text(
            &lab.berth,
            &format!("http://127.0.0.1:{BERTH_PORT}/_berth/status?format=json"),
        ))
        .unwrap();
        assert_eq!(
            status["upstreams"][0]["black_hole"]["mss"], 1360,
            "{status}"
        );
        let page = get_text(
            &lab.berth,
            &format!("http://127.0.0.1:{BERTH_PORT}/_berth/status"),
        );
        assert!(
            page.contains("black hole: clamped to MSS 1360"),
            "status page:\n{page}"
        );
        drop(berth);

        // The fallback is what makes it work: without it the same pull fails.
        let dir = tmp.path().join("serve-no-fallback");
        let mut berth = start_berth(
            &lab.berth,
            &dir,
            &config(
                &ca,
                "mss_fallback = []\nmax_attempts = 2\ntls_timeout = \"4s\"",
            ),
        );
        let out = dir.join("layer.out");
        let (code, _, sha) = fetch(&lab.berth, &blob_url, &out, 60);
        assert!(
            code != 0 || sha.as_deref() != Some(hex.as_str()),
            "with mss_fallback = [] the pull should fail; berth stderr:\n{}",
            berth.stderr()
        );
        berth.assert_running("berth (no fallback)");
        assert!(!berth.stderr().contains("path MTU black hole"));
        eprintln!("[{:?}] without the fallback the pull failed", t0.elapsed());

        // Servers that never answer or reset every handshake are not a black hole.
        let dir = tmp.path().join("probe-refusing");
        std::fs::create_dir_all(&dir).unwrap();
        let targets = [SILENT_PORT, RESET_PORT].map(|p| format!("https://{UP_IP}:{p}/v2/"));
        let (code, report) = probe(&lab.berth, &dir, &config(&ca, ""), &targets);
        let found = verdicts(&report);
        eprintln!(
            "[{:?}] silent and resetting servers: exit {code}: {found:?}",
            t0.elapsed()
        );
        assert!(
            found.iter().all(|(kind, _, _)| kind != "pmtu_black_hole"),
            "a server that fails every handshake at every MSS is not a black hole: {found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(kind, _, _)| kind == "tls_handshake_timeouts"),
            "the silent server's handshakes time out: {found:?}"
        );
    }

    // 2. The same lab with a 1500-byte hop: healthy.
    {
        let lab = Lab::build(&unique_id(), 1500);
        let _servers = start_servers(&lab, "wide");
        let dir = tmp.path().join("probe-wide");
        std::fs::create_dir_all(&dir).unwrap();
        let (code, report) = probe(&lab.berth, &dir, &config(&ca, ""), &[]);
        let found = verdicts(&report);
        eprintln!(
            "[{:?}] probe at MTU 1500: exit {code}: {found:?}",
            t0.elapsed()
        );
        assert_eq!(
            found.first().map(|v| v.0.as_str()),
            Some("healthy"),
            "{found:?}"
        );
        assert_eq!(code, 0);
    }
}

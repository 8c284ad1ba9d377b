//! `berth probe` against real network paths the test builds.
//!
//! - In the black-hole lab (`support::netns::Lab`: client ns, router with a 1400-MTU hop whose
//!   ICMP frag-needed is dropped, upstream ns running the fake registry behind TLS with token
//!   auth, a CDN redirect and a 16 MiB layer): `pmtu_black_hole` with an MSS ≤ 1360, exit 1.
//!   The same lab with a 1500 hop: `healthy`, exit 0. `compare` names the bulk difference.
//! - An unresolvable name inside a namespace whose resolver is its own loopback (no DNS query
//!   leaves the machine): `dns`.
//! - On loopback: a TLS front that holds handshakes → `tls_handshake_timeout`; a listener that
//!   resets → `reset`.
//!
//! The namespace tests need root, `ip` and `iptables` and are `#[ignore]`d (scripts/test runs
//! them). No test probes a public endpoint: every run names its targets or its config.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::{FakeUpstream, Options, TlsFront};
use crate::support::images::{self, Format, ImageSpec};
use crate::support::netns::{InNetns, Lab, Netns, UP_IP, unique_id};
use crate::support::prereq::{require_root, require_tools};
use crate::support::real::TestCa;
use crate::support::util::run;
use serde_json::Value;

const TLS_PORT: u16 = 8443;
const IMAGE: &str = "lab.test/big:1";

fn berth() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// What a `berth probe` run left: exit code (`None`: killed at the deadline) and output.
struct ProbeRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `berth probe <args>` (in `ns` when given) with a deadline.
fn probe(ns: Option<&str>, args: &[&str], timeout: Duration) -> ProbeRun {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, berth()]);
            c
        }
        None => Command::new(berth()),
    };
    let start = Instant::now();
    let out = run(
        cmd.arg("probe").args(args).env("BERTH_LOG", "warn"),
        timeout,
    );
    eprintln!(
        "berth probe {args:?}: exit {:?} after {:?}",
        out.code,
        start.elapsed()
    );
    ProbeRun {
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn read_report(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn verdict_kinds(report: &Value) -> Vec<String> {
    report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

fn failures(report: &Value, class: &str) -> u64 {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["failures"][class].as_u64().unwrap_or(0))
        .sum()
}

/// Ports of the TLS fronts in the upstream namespace (its own, so fixed ports cannot clash).
const TOKEN_TLS_PORT: u16 = 7443;
const CDN_TLS_PORT: u16 = 9443;

/// Starts the fake registry (token auth, CDN redirect) on the upstream namespace's address,
/// registry, token endpoint and CDN each behind TLS, and pushes an image with one 16 MiB layer.
/// Returns the servers and the CA certificate (PEM) the fronts' certificate chains to.
fn start_upstream(lab: &Lab) -> (InNetns, Vec<u8>) {
    InNetns::start(&lab.up, move || async move {
        let ip = UP_IP.parse().unwrap();
        let opts = Options {
            public_token_url: Some(format!("https://{UP_IP}:{TOKEN_TLS_PORT}")),
            public_cdn_url: Some(format!("https://{UP_IP}:{CDN_TLS_PORT}")),
            ..Options::default()
        };
        let fake = FakeUpstream::start_on(opts, ip).await;
        let layer = images::big_blob(16, 111);
        let image = images::image_with_layers(&ImageSpec::new(111, Format::Oci), vec![layer]);
        fake.push("big", "1", &image);
        let ca = TestCa::for_names(&[UP_IP]);
        let mut fronts = Vec::new();
        for (port, backend) in [
            (TLS_PORT, fake.registry_addr),
            (TOKEN_TLS_PORT, fake.token_addr),
            (CDN_TLS_PORT, fake.cdn_addr),
        ] {
            let bind = format!("{UP_IP}:{port}").parse().unwrap();
            fronts.push(TlsFront::start_on(&ca, bind, backend).await);
        }
        let pem = std::fs::read(&ca.ca_pem).unwrap();
        (pem, (fake, fronts, ca))
    })
}

fn lab_config(dir: &Path, ca_pem: &[u8]) -> std::path::PathBuf {
    let path = dir.join("berth.toml");
    let ca = dir.join("lab-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(
        &path,
        format!(
            "[upstreams.\"lab.test\"]\nurl = \"https://{UP_IP}:{TLS_PORT}\"\nca_file = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    path
}

/// One probe run in a fresh lab with the given narrow-hop MTU; returns (exit code, report).
fn lab_run(id: &str, narrow_mtu: u32, dir: &Path) -> (Option<i32>, Value, String) {
    let lab = Lab::build(id, narrow_mtu);
    let (_servers, ca_pem) = start_upstream(&lab);
    let config = lab_config(dir, &ca_pem);
    let out = dir.join(format!("probe-{narrow_mtu}.json"));
    let output = probe(
        Some(&lab.berth),
        &[
            "--config",
            config.to_str().unwrap(),
            "--no-user-named",
            "--image",
            IMAGE,
            "--rounds",
            "3",
            "--interval",
            "200ms",
            "--bulk-bytes",
            "4MiB",
            "--stall-timeout",
            "3s",
            "--header-timeout",
            "5s",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(180),
    );
    eprintln!(
        "--- probe with a {narrow_mtu} hop\n{}\n{}",
        output.stdout, output.stderr
    );
    (output.code, read_report(&out), output.stdout)
}

#[test]
#[ignore = "needs root, network namespaces, iptables: run by scripts/test"]
fn black_hole_lab_names_the_cause_and_compare_names_the_bulk_difference() {
    if !require_root("network namespaces") || !require_tools(&["ip", "iptables"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 1. The black hole.
    let (code, report, text) = lab_run(&unique_id(), 1400, dir.path());
    assert_eq!(code, Some(1), "a black hole is a problem: exit 1");
    let kinds = verdict_kinds(&report);
    let hole = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "pmtu_black_hole")
        .unwrap_or_else(|| panic!("no pmtu_black_hole among {kinds:?}"));
    let mss = hole["recommended_mss"].as_u64().expect("a recommended MSS");
    assert!(mss <= 1360, "recommended MSS {mss} must fit a 1400 hop");
    assert!(
        hole["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("--set-mss {mss}"))
    );
    let runs = report["bulk"][0]["runs"].as_array().unwrap();
    assert_eq!(runs[0]["mss"], Value::Null);
    // Lost full-size segments: the body stalls, or the headers (sharing the first full
    // segment with the body) never arrive.
    let default_outcome = runs[0]["outcome"].as_str().unwrap().to_string();
    assert!(
        ["stall", "header_timeout"].contains(&default_outcome.as_str()),
        "default MSS stalls: {runs:?}"
    );
    assert!(
        runs[1..].iter().all(|r| r["outcome"] == "complete"),
        "every clamp completes: {runs:?}"
    );
    // Small requests did cross: registry (TLS), token endpoint and CDN all answered.
    let roles: Vec<&str> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["registry", "token", "cdn"], "discovered targets");
    assert_eq!(failures(&report, "tls_handshake_timeout"), 0);
    let pmtu = &report["path"]["destinations"][0];
    assert_eq!(pmtu["address"], UP_IP);
    assert_eq!(
        pmtu["path_mtu"], 1400,
        "DF probes find the narrow hop: {pmtu}"
    );
    assert!(text.contains("pmtu_black_hole"), "text report:\n{text}");

    // 2. The same lab, healthy.
    let (code, healthy, _) = lab_run(&unique_id(), 1500, dir.path());
    assert_eq!(verdict_kinds(&healthy), ["healthy"]);
    assert_eq!(code, Some(0));
    let runs = healthy["bulk"][0]["runs"].as_array().unwrap();
    assert!(runs.iter().all(|r| r["outcome"] == "complete"), "{runs:?}");
    assert_eq!(healthy["path"]["destinations"][0]["path_mtu"], 1500);

    // 3. compare names the difference.
    let out = run(
        Command::new(berth()).args([
            "probe",
            "compare",
            dir.path().join("probe-1400.json").to_str().unwrap(),
            dir.path().join("probe-1500.json").to_str().unwrap(),
        ]),
        Duration::from_secs(20),
    );
    out.expect_success();
    eprintln!("--- compare\n{}", out.stdout);
    let diff = out.stdout.split("differences that matter").nth(1).unwrap();
    assert!(
        diff.contains(&format!("bulk transfer of {IMAGE} at MSS default"))
            && diff.contains("probe-1500")
            && diff.contains(&default_outcome),
        "compare should name the default-MSS bulk difference:\n{}",
        out.stdout
    );
    assert!(diff.contains("path MTU to"), "{}", out.stdout);
}

#[test]
#[ignore = "needs root and network namespaces: run by scripts/test"]
fn an_unresolvable_name_is_a_dns_failure() {
    if !require_root("network namespaces") || !require_tools(&["ip"]) {
        return;
    }
    // The namespace's resolver is its own 127.0.0.1, where nothing listens.
    let ns = Netns::create(&format!("dns-{}", unique_id()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dns.json");
    let output = probe(
        Some(&ns.name),
        &[
            "--target",
            "https://registry.berth-probe.invalid/v2/",
            "--image",
            "none",
            "--rounds",
            "2",
            "--interval",
            "100ms",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    eprintln!("{}\n{}", output.stdout, output.stderr);
    let report = read_report(&out);
    assert_eq!(output.code, Some(1));
    assert_eq!(failures(&report, "dns"), 2, "one per round");
    assert_eq!(report["targets"][0]["dns"]["failures"], 2);
    assert!(verdict_kinds(&report).contains(&"dns_slow_or_failing".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_front_that_holds_handshakes_is_a_handshake_timeout() {
    let ca = TestCa::new();
    let fake = FakeUpstream::start(Options::plain()).await;
    let front = TlsFront::start(&ca, fake.registry_addr).await;
    front.delay_next_handshakes(10, Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[upstreams.\"lab.test\"]\nurl = \"{}\"\nca_file = \"{}\"\n",
            front.url(),
            ca.ca_pem.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("tls.json");
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--no-user-named",
        "--image",
        "none",
        "--rounds",
        "2",
        "--interval",
        "100ms",
        "--tls-timeout",
        "1s",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        probe(None, &args, Duration::from_secs(60))
    })
    .await
    .unwrap();
    eprintln!("{}\n{}", output.stdout, output.stderr);
    let report = read_report(&out);
    assert_eq!(output.code, Some(1));
    let registry = &report["targets"][0];
    assert_eq!(registry["role"], "registry");
    assert_eq!(registry["failures"]["tls_handshake_timeout"], 2);
    assert!(
        registry["families"]["ipv4"]["connect"]["samples"].as_u64() == Some(2),
        "TCP connects succeeded: {registry}"
    );
    assert!(front.accepted() >= 2);
    assert_eq!(front.handshakes(), 0);
    assert!(verdict_kinds(&report).contains(&"tls_handshake_timeouts".to_string()));
}

#[test]
fn a_listener_that_resets_is_a_reset() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Resets at most 8 connections (the probe makes 2), then stops.
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        for _ in 0..8 {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            // Reset once the client has spoken (its TLS hello), or after 2 s of silence.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = std::io::Read::read(&mut &s, &mut [0u8; 1024]);
            drop(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reset.json");
    let target = format!("https://{addr}/v2/");
    let output = probe(
        None,
        &[
            "--target",
            &target,
            "--image",
            "none",
            "--rounds",
            "2",
            "--interval",
            "100ms",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    eprintln!("{}\n{}", output.stdout, output.stderr);
    let report = read_report(&out);
    assert_eq!(output.code, Some(1));
    assert_eq!(failures(&report, "reset"), 2, "{}", output.stdout);
    assert!(verdict_kinds(&report).contains(&"resets".to_string()));
    // Unblock the server thread if it still waits for connections.
    for _ in 0..8 {
        let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    }
    server.join().unwrap();
}

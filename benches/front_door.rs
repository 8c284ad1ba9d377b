//! `cargo bench --bench front_door`: what HTTPS costs at berth's front door. Two berth
//! processes over one upstream (Debian's `docker-registry` holding a 200 MiB layer), one plain
//! HTTP, one HTTPS (test CA), both warmed first; then, alternating between them in one run:
//! warm 200 MiB blob downloads (MiB/s) and sequential manifest GETs by tag on a kept-alive
//! connection (p50/p99 ms). HTTPS is measured over HTTP/2 (what ALPN picks, as containerd does)
//! and forced HTTP/1.1.
//!
//! Environment: `BENCH_ROUNDS` (default 5) blob downloads per variant; `BERTH_BIN` overrides the
//! berth binary.

// The modules shared with the pull bench carry what that bench needs too.
#![allow(dead_code)]

#[path = "pull/client.rs"]
mod client;
#[path = "pull/processes.rs"]
mod processes;
#[path = "pull/report.rs"]
mod report;
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use report::{median_of, quantile};
use support::images::{self, Content, Format, ImageSpec};
use support::real::{TestCa, skopeo};
use support::util::{free_port, kill_child};

const BLOB_MIB: usize = 200;
const REPO: &str = "library/bench";
const TAG: &str = "latest";
const MANIFEST_GETS: usize = 2000;

/// A berth child process, killed on drop.
struct Berth {
    base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Berth {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

fn start_berth(upstream: &str, tls: Option<&TestCa>) -> Berth {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut toml = format!(
        "default_upstream = \"docker.io\"\n\n[upstreams.\"docker.io\"]\nurl = \"{upstream}\"\n"
    );
    if let Some(ca) = tls {
        toml += &format!(
            "\n[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            ca.cert_pem.display().to_string(),
            ca.key_pem.display().to_string()
        );
    }
    std::fs::write(dir.path().join("berth.toml"), toml).unwrap();
    let child = Command::new(processes::berth_binary())
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("berth.toml"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("spawn berth");
    let scheme = if tls.is_some() { "https" } else { "http" };
    Berth {
        base: format!("{scheme}://{addr}"),
        child,
        _dir: dir,
    }
}

fn client(ca: Option<&Path>, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(180));
    if let Some(ca) = ca {
        let root = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        builder = builder.add_root_certificate(root);
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

struct Variant {
    name: &'static str,
    base: String,
    client: reqwest::Client,
    mib_per_s: Vec<f64>,
    manifest_ms: Vec<f64>,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("front_door bench: built; run it with `cargo bench --bench front_door`");
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    eprintln!("front_door bench: loading a {BLOB_MIB} MiB layer into the upstream registry…");
    let layer = images::big_blob(BLOB_MIB, 7);
    let image = images::image_with_layers(&ImageSpec::new(7, Format::Oci), vec![layer.clone()]);
    let upstream = processes::start_registry(None);
    skopeo::push(
        &image as &dyn Content,
        &format!("{}/{REPO}:{TAG}", upstream.addr),
        None,
    );
    let blob: Bytes = layer.bytes.clone();
    let ca = TestCa::new();
    let plain = start_berth(&upstream.url(), None);
    let tls = start_berth(&upstream.url(), Some(&ca));
    let mut variants = vec![
        Variant {
            name: "HTTP/1.1 (plain)",
            base: plain.base.clone(),
            client: client(None, true),
            mib_per_s: Vec::new(),
            manifest_ms: Vec::new(),
        },
        Variant {
            name: "HTTPS, HTTP/2 (ALPN)",
            base: tls.base.clone(),
            client: client(Some(&ca.ca_pem), false),
            mib_per_s: Vec::new(),
            manifest_ms: Vec::new(),
        },
        Variant {
            name: "HTTPS, HTTP/1.1",
            base: tls.base.clone(),
            client: client(Some(&ca.ca_pem), true),
            mib_per_s: Vec::new(),
            manifest_ms: Vec::new(),
        },
    ];
    let blob_path = format!("/v2/{REPO}/blobs/{}", layer.digest);
    let manifest_path = format!("/v2/{REPO}/manifests/{TAG}");
    rt.block_on(async {
        // Ready, then warm: one cold pull through each berth fills its cache.
        for v in &variants {
            let started = Instant::now();
            loop {
                let ok = v.client.get(format!("{}/v2/", v.base)).send().await;
                if ok.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{} not ready",
                    v.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let cold = client::download(&v.client, &format!("{}{blob_path}", v.base), &blob).await;
            assert!(cold.correct, "{}: cold pull {}", v.name, cold.outcome());
        }
        // Fills commit after the last byte is sent: let them land before measuring warm.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for round in 0..rounds {
            for v in &mut variants {
                let d = client::download(&v.client, &format!("{}{blob_path}", v.base), &blob).await;
                assert!(d.correct, "{} round {round}: {}", v.name, d.outcome());
                v.mib_per_s.push(d.mib_per_s());
            }
        }
        for v in &mut variants {
            let url = format!("{}{manifest_path}", v.base);
            let (_, gets) = client::manifest_latencies(&v.client, &url, MANIFEST_GETS)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            v.manifest_ms = gets.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        }
    });

    let mut out = format!(
        "front door: warm {BLOB_MIB} MiB blob ({rounds} downloads each, median) and {MANIFEST_GETS} \
         sequential warm manifest GETs on one kept-alive connection, same run\n\n\
         | variant | blob MiB/s (median) | manifest GET p50 ms | manifest GET p99 ms |\n|---|---|---|---|\n"
    );
    let base_mib = median_of(&mut variants[0].mib_per_s.clone());
    let base_p50 = quantile(&mut variants[0].manifest_ms.clone(), 0.5);
    for v in &mut variants {
        let mib = median_of(&mut v.mib_per_s);
        let p50 = quantile(&mut v.manifest_ms, 0.5);
        let p99 = quantile(&mut v.manifest_ms, 0.99);
        out += &format!(
            "| {} | {mib:.0} ({:+.0} %) | {p50:.3} ({:+.0} %) | {p99:.3} |\n",
            v.name,
            (mib / base_mib - 1.0) * 100.0,
            (p50 / base_p50 - 1.0) * 100.0
        );
    }
    println!("{out}");
}

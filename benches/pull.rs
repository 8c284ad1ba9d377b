//! `cargo bench --bench pull`: berth against Debian's `docker-registry` in proxy mode, same
//! upstream, same data, same run. See `benches/README.md`.
//!
//! - [`scenarios`]: the five measurements, each on a fresh mirror behind its own relay.
//! - [`relay`]: the counting TCP relay between mirror and upstream (and its reset fault).
//! - [`processes`]: upstream registry, berth, proxy registry as child processes, killed on drop.
//! - [`client`]: checked blob downloads, manifest latency, `wrk`.
//! - [`report`]: medians, ratios, the markdown table.
//!
//! Environment: `BENCH_RUNS` (default 2) repeats every scenario set; `BERTH_BIN` overrides
//! the berth binary (default: the release binary cargo builds for this bench).

#[path = "pull/client.rs"]
mod client;
#[path = "pull/processes.rs"]
mod processes;
#[path = "pull/relay.rs"]
mod relay;
#[path = "pull/report.rs"]
mod report;
#[path = "pull/scenarios.rs"]
mod scenarios;
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::Instant;

use processes::MirrorKind;
use report::Report;
use scenarios::Fixture;

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench` to check that it builds
    // and starts; the measurement itself is for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("pull bench: built; run it with `cargo bench --bench pull`");
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    check_prerequisites();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    eprintln!(
        "pull bench: loading a {} MiB layer into the upstream registry…",
        scenarios::BLOB_MIB
    );
    let fx = Fixture::build();
    let mut report = Report::default();
    for run in 1..=runs {
        run_once(&rt, &fx, run, &mut report);
    }
    add_context_notes(&mut report, runs, started);
    let md = report.to_markdown("berth vs distribution proxy: pull bench");
    println!("{md}");
    write_report(&md);
}

/// One scenario set for both mirrors; the order alternates between runs so neither mirror
/// always goes first on a warming machine.
fn run_once(rt: &tokio::runtime::Runtime, fx: &Fixture, run: usize, report: &mut Report) {
    let mut order = MirrorKind::ALL;
    if run % 2 == 0 {
        order.reverse();
    }
    let direct = match scenarios::direct_download(rt, fx) {
        Ok(d) => {
            report.note(format!(
                "run {run}: one direct 200 MiB download from the upstream registry took {:.2} s",
                d.as_secs_f64()
            ));
            Some(d)
        }
        Err(e) => {
            report.note(format!("run {run}: direct download failed: {e}"));
            None
        }
    };
    for kind in order {
        eprintln!("run {run}: {} — warm blob and manifest…", kind.label());
        scenarios::warm(rt, fx, kind, report);
        eprintln!("run {run}: {} — 20 concurrent cold clients…", kind.label());
        scenarios::concurrent_cold(rt, fx, kind, direct, report);
        eprintln!("run {run}: {} — upstream reset at 100 MiB…", kind.label());
        scenarios::reset_midway(rt, fx, kind, report);
    }
}

fn check_prerequisites() {
    let berth = processes::berth_binary();
    assert!(
        berth.is_file(),
        "berth binary not found at {} (run `cargo build --release`)",
        berth.display()
    );
    for tool in ["docker-registry", "skopeo", "wrk"] {
        assert!(
            support::prereq::which(tool).is_some(),
            "`{tool}` not installed (apt-get install -y docker-registry skopeo wrk)"
        );
    }
}

fn add_context_notes(report: &mut Report, runs: usize, started: Instant) {
    report.note(format!(
        "{runs} run(s); cells show the median over runs in bold, each run's figure in brackets; \
         per-run figures are themselves medians/percentiles as the metric says. Total bench time {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    report.note(format!(
        "Machine: {} CPU(s), shared with other work; everything on 127.0.0.1, plain HTTP; berth binary {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        processes::berth_binary().display()
    ));
    report.note(
        "Upstream bytes are counted by a TCP relay between each mirror and the upstream registry \
         (response heads included), the same way for both mirrors.",
    );
    report.note(
        "Manifest by tag: berth answers from its tag cache within tag_ttl (5m default); \
         distribution's proxy asks the upstream (HEAD) on every tag request, so its manifest \
         latency includes an upstream round trip. That is by design, not noise.",
    );
}

fn write_report(md: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let path = dir.join("bench-pull.md");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, md)) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

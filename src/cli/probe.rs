//! `berth probe` and `berth probe compare`: glue from flags to [`crate::probe`].

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::config::{Config, Overrides, parse_size};
use crate::oci::Platform;
use crate::prewarm::references::ImageRef;
use crate::probe::{self, Plan, Progress, compare, timing::Deadlines};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProbeArgs {
    #[command(subcommand)]
    command: Option<ProbeCommand>,
    /// berth.toml: its upstreams (and their CA files, MSS, credentials) are the targets, beside
    /// the endpoints users name (auth.docker.io, api.doppler.com, ...; see --no-user-named).
    /// Without it: the built-in upstreams.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Probe only this URL (repeatable); a 401/403 answer counts as a working path.
    #[arg(long = "target", value_name = "URL")]
    targets: Vec<String>,
    /// Leave out the endpoints users name in their runbooks (ghcr.io, auth.docker.io, quay.io,
    /// registry.k8s.io, api.doppler.com): only the config's upstreams and what they point at.
    #[arg(long)]
    no_user_named: bool,
    /// Image whose largest layer is downloaded at each MSS (repeatable) [default: probe_images
    /// of the config]. `--image none` skips bulk transfers.
    #[arg(long = "image", value_name = "REF")]
    images: Vec<String>,
    /// Request rounds per target (1–100).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Pause between rounds.
    #[arg(long, default_value = "2s", value_parser = humantime_serde::re::humantime::parse_duration)]
    interval: Duration,
    /// MSS clamps to try bulk transfers with, besides the system default (repeatable).
    #[arg(long = "mss", value_name = "N", default_values_t = [1360u32, 1200])]
    mss: Vec<u32>,
    /// Bytes of each layer to download per transfer.
    #[arg(long, default_value = "8MiB")]
    bulk_bytes: String,
    /// TCP connect deadline per address.
    #[arg(long, default_value = "5s", value_parser = humantime_serde::re::humantime::parse_duration)]
    connect_timeout: Duration,
    /// TLS handshake deadline, after the TCP connect.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    tls_timeout: Duration,
    /// From request sent to response headers.
    #[arg(long, default_value = "15s", value_parser = humantime_serde::re::humantime::parse_duration)]
    header_timeout: Duration,
    /// No body bytes for this long is a stall.
    #[arg(long, default_value = "5s", value_parser = humantime_serde::re::humantime::parse_duration)]
    stall_timeout: Duration,
    /// Platform whose manifest is picked from an image index [default: this host's].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Print the JSON report instead of the text one.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to FILE (for `berth probe compare`).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ProbeCommand {
    /// Set two or more `--json` reports side by side (host vs VM vs worker) and say which
    /// differences matter.
    Compare {
        #[arg(required = true, num_args = 2.., value_name = "REPORT.json")]
        reports: Vec<PathBuf>,
    },
}

/// Exit 0: healthy; 1: a verdict names a problem; 2: usage or setup error.
pub fn main(args: ProbeArgs) -> ExitCode {
    let result = match &args.command {
        Some(ProbeCommand::Compare { reports }) => run_compare(reports).map(|()| true),
        None => run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            super::print_error(&e);
            ExitCode::from(2)
        }
    }
}

fn run_compare(paths: &[PathBuf]) -> anyhow::Result<()> {
    let reports = paths
        .iter()
        .map(|p| compare::load(p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    print!("{}", compare::compare(&reports));
    Ok(())
}

fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        _ => "amd64",
    };
    format!("linux/{arch}")
        .parse()
        .expect("a valid platform string")
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn add(&self, steps: u64) {
        self.0.inc_length(steps);
    }
    fn step(&self, what: &str) {
        self.0.set_message(what.to_string());
        self.0.inc(1);
    }
}

fn run(args: ProbeArgs) -> anyhow::Result<bool> {
    let config = Config::load(args.config.as_deref(), &Overrides::default())?;
    if !(1..=100).contains(&args.rounds) {
        bail!("--rounds {} is out of range; use 1 to 100", args.rounds);
    }
    if args.interval > Duration::from_secs(3600) {
        bail!("--interval is longer than an hour; use e.g. --interval 10s");
    }
    if let Some(bad) = args.mss.iter().find(|m| !(536..=9000).contains(*m)) {
        bail!("--mss {bad} is out of range; an MSS is 536 to 9000 (1360 suits most black holes)");
    }
    let bulk_bytes = parse_size(&args.bulk_bytes)
        .map_err(|e| anyhow::anyhow!("--bulk-bytes: {e}"))?
        .clamp(64 * 1024, 1 << 30);
    let targets = args
        .targets
        .iter()
        .map(|t| probe::targets::parse_target(t).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let image_texts: Vec<String> = if args.images.is_empty() {
        config.probe.images.clone()
    } else {
        args.images.clone()
    };
    let images = image_texts
        .iter()
        .filter(|i| i.as_str() != "none")
        .map(|i| i.parse::<ImageRef>().context("--image / probe_images"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let platform = match &args.platform {
        Some(p) => p
            .parse::<Platform>()
            .map_err(|e| anyhow::anyhow!("--platform: {e}"))?,
        None => host_platform(),
    };
    let plan = Plan {
        with_user_named: !args.no_user_named,
        discover: targets.is_empty(),
        config,
        targets,
        images,
        rounds: args.rounds,
        interval: args.interval,
        msses: args.mss.clone(),
        bulk_bytes,
        deadlines: Deadlines {
            connect: args.connect_timeout,
            tls: args.tls_timeout,
            header: args.header_timeout,
            stall: args.stall_timeout,
        },
        platform,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {wide_msg}")
                .expect("a valid template"),
        );
        let progress = Bar(bar);
        let report = runtime.block_on(probe::run(&plan, &progress))?;
        progress.0.finish_and_clear();
        report
    } else {
        runtime.block_on(probe::run(&plan, &probe::NoProgress))?
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write --out {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.render());
    }
    Ok(report.healthy())
}

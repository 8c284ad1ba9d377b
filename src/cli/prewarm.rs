//! `berth prewarm`: glue from flags to [`crate::prewarm`].

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::config::{Config, DEFAULT_PLATFORMS};
use crate::oci::Platform;
use crate::prewarm::{self, Group, Groups, Mode, Plan, Progress};

use super::mirror_access::MirrorAccess;

const USER_AGENT: &str = concat!("berth-prewarm/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, clap::Args)]
pub struct PrewarmArgs {
    #[command(flatten)]
    access: MirrorAccess,
    /// Group file (TOML, `[groups.<name>] images = [...]`) [default: the built-in groups].
    #[arg(long)]
    groups_file: Option<PathBuf>,
    /// Group to prewarm (repeatable) [default: every group of the file].
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// Also (with --group) or only prewarm the `image:` references in rendered YAML under DIR.
    #[arg(long, value_name = "DIR")]
    from_manifests: Option<PathBuf>,
    /// Platform to fetch (repeatable) [default: `platforms` of --config, else linux/amd64 and linux/arm64].
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<String>,
    /// berth.toml to read `platforms` (the nodes' platforms) from.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Images pulled at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Fetch nothing: say whether the cache alone can serve every chosen image (exit 0 if ready).
    #[arg(long)]
    check: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

/// Exit 0: all warm (or ready); 1: an image failed (or not ready); 2: usage, config or mirror error.
pub fn main(args: PrewarmArgs) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            super::print_error(&e);
            ExitCode::from(2)
        }
    }
}

fn run(args: PrewarmArgs) -> anyhow::Result<bool> {
    let client = args.access.client(USER_AGENT)?;
    let plan = Plan {
        groups: groups(&args)?,
        platforms: platforms(&args)?,
        concurrency: args.concurrency,
        mode: if args.check { Mode::Check } else { Mode::Warm },
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(prewarm::run(&client, &plan, &progress))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.render());
    }
    Ok(report.success())
}

fn groups(args: &PrewarmArgs) -> anyhow::Result<Vec<Group>> {
    let file = match &args.groups_file {
        Some(path) => Groups::load(path)?,
        None => Groups::shipped()?,
    };
    let mut chosen = match (&args.from_manifests, args.groups.is_empty()) {
        // Only the derived group, unless groups were named too.
        (Some(_), true) => Vec::new(),
        _ => file.select(&args.groups)?,
    };
    if let Some(dir) = &args.from_manifests {
        let images = prewarm::manifests_scan::scan(dir)?;
        chosen.push(Group {
            name: "manifests".parse().expect("valid group name"),
            description: format!("image: references under {}", dir.display()),
            images,
        });
    }
    if chosen.iter().all(|g| g.images.is_empty()) {
        bail!("no images chosen; name a group with --group (see --groups-file)");
    }
    Ok(chosen)
}

fn platforms(args: &PrewarmArgs) -> anyhow::Result<Vec<Platform>> {
    if !args.platforms.is_empty() {
        return args
            .platforms
            .iter()
            .map(|p| {
                p.parse::<Platform>()
                    .map_err(|e| anyhow::anyhow!("--platform: {e}"))
            })
            .collect();
    }
    match &args.config {
        Some(path) => Ok(Config::platforms_from_file(path)?),
        None => Ok(DEFAULT_PLATFORMS
            .iter()
            .map(|p| p.parse().expect("valid default platform"))
            .collect()),
    }
}

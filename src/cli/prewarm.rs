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
    /// Also (with --group) or only prewarm what the cluster pulled through the mirror (its pull
    /// history), each image for the platforms the cluster fetched; with --check, the gate
    /// before a rebuild.
    #[arg(long)]
    from_history: bool,
    /// With --from-history: only what was pulled in this recent past, e.g. 30d, 12h
    /// [default: all the mirror remembers].
    #[arg(long, value_name = "DURATION", requires = "from_history")]
    since: Option<String>,
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
    let since = args
        .since
        .as_deref()
        .map(|text| {
            crate::units::parse_window(text, crate::config::MAX_HISTORY).with_context(|| {
                format!(
                    "--since `{text}` is not a duration; write e.g. 12h, 7d or 30d (at most 366d)"
                )
            })
        })
        .transpose()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut groups = groups(&args)?;
    let mut image_platforms = std::collections::HashMap::new();
    if args.from_history {
        let history = runtime
            .block_on(client.history(since))
            .map_err(|e| anyhow::anyhow!("cannot read the mirror's pull history: {e}"))?;
        let (group, platforms) = prewarm::history_group(&history);
        if group.images.is_empty() && groups.is_empty() {
            bail!(
                "the mirror's pull history has no image{}; pull through it first, or name a --group",
                since.map_or(String::new(), |s| format!(
                    " from the last {}",
                    crate::units::human_duration(s.as_secs())
                ))
            );
        }
        groups.push(group);
        image_platforms = platforms;
    }
    let plan = Plan {
        groups,
        platforms: platforms(&args)?,
        image_platforms,
        concurrency: args.concurrency,
        mode: if args.check { Mode::Check } else { Mode::Warm },
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
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
    let derived = args.from_manifests.is_some() || args.from_history;
    let mut chosen = match (derived, args.groups.is_empty()) {
        // Only the derived groups, unless groups were named too.
        (true, true) => Vec::new(),
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
    if !args.from_history && chosen.iter().all(|g| g.images.is_empty()) {
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

//! `berth cache stats | verify | gc`: inspect and tend the disk cache. Glue only; the work is
//! in `store::{stats, verify, evict}`.
//!
//! All three are safe while `berth serve` runs on the same data_dir: they never rewrite an
//! object, only unlink or rename whole files (a reader keeps what it has open), and gc leaves
//! spool and temp files alone unless they have not changed for an hour.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::client::BerthClient;
use crate::config::{Config, Overrides, parse_size};
use crate::store::DiskStore;
use crate::store::evict::{Evictor, Plan};
use crate::store::{scan, stats, verify};
use crate::units::human_bytes as human;

/// Spool and temp files unchanged this long belong to no live fill.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Size, object counts, pinned bytes; the hit ratio of a running berth with --mirror.
    Stats(StatsArgs),
    /// Re-hash every blob and manifest; move mismatches to <data_dir>/quarantine/ (exit 1 if any).
    Verify(CacheArgs),
    /// Delete orphaned spool/temp files and, with a max_size, evict LRU unpinned content.
    Gc(GcArgs),
}

#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// Config file (TOML); gives data_dir and [store] max_size.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Cache directory [default: from the config, else ./data].
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// A running berth (e.g. http://127.0.0.1:5000) whose /metrics give the hit ratio.
    #[arg(long)]
    mirror: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Size limit to evict down to (e.g. 50GiB) [default: [store] max_size].
    #[arg(long)]
    max_size: Option<String>,
}

pub fn run(command: CacheCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match command {
            CacheCommand::Stats(args) => stats(args).await,
            CacheCommand::Verify(args) => verify(args).await,
            CacheCommand::Gc(args) => gc(args).await,
        }
    })
}

fn load(args: &CacheArgs) -> anyhow::Result<Config> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..Overrides::default()
    };
    Ok(Config::load(args.config.as_deref(), &overrides)?)
}

fn attach(data_dir: &Path) -> anyhow::Result<Arc<DiskStore>> {
    anyhow::ensure!(
        data_dir.is_dir(),
        "{} is not a berth cache directory; pass --data-dir",
        data_dir.display()
    );
    let store = DiskStore::attach(data_dir)
        .with_context(|| format!("cannot read the cache in {}", data_dir.display()))?;
    Ok(Arc::new(store))
}

async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let config = load(&args.cache)?;
    let store = attach(&config.data_dir)?;
    let stats = stats::collect(&store).await?;
    let hit_ratio = match &args.mirror {
        Some(url) => Some(hit_ratio(url).await?),
        None => None,
    };
    if args.json {
        let mut value = serde_json::to_value(&stats)?;
        value["data_dir"] = config.data_dir.display().to_string().into();
        value["max_size"] = config.store.max_size.into();
        value["hit_ratio"] = hit_ratio.flatten().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let limit = config.store.max_size.map_or("unbounded".to_string(), human);
    println!("data_dir   {}", config.data_dir.display());
    println!(
        "total      {} of max_size {limit}",
        human(stats.total_bytes)
    );
    println!("blobs      {} ({})", stats.blobs, human(stats.blob_bytes));
    println!(
        "manifests  {} ({})",
        stats.manifests,
        human(stats.manifest_bytes)
    );
    println!("tags       {}", stats.tags);
    println!(
        "pinned     {} in {} pin set(s){}",
        human(stats.pinned_bytes),
        stats.pin_sets,
        match stats.pinned_missing {
            0 => String::new(),
            n => format!(", {n} pinned manifest(s) not cached"),
        }
    );
    match hit_ratio {
        Some(Some(ratio)) => println!(
            "hit ratio  {:.1} % (since that berth started)",
            ratio * 100.0
        ),
        Some(None) => println!("hit ratio  unknown (no lookups yet)"),
        None => println!(
            "hit ratio  unknown (pass --mirror http://<berth>:5000 to ask a running berth)"
        ),
    }
    Ok(())
}

/// Hits / lookups from a running berth's `berth_cache_lookups_total`.
async fn hit_ratio(mirror: &str) -> anyhow::Result<Option<f64>> {
    let url = url::Url::parse(mirror)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .with_context(|| {
            format!("--mirror `{mirror}` is not an http(s) URL; write e.g. http://127.0.0.1:5000")
        })?;
    let client = BerthClient::builder(url).build()?;
    let text = client
        .metrics_text()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the metrics of {mirror}: {}", e.detail()))?;
    let (mut hits, mut total) = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("berth_cache_lookups_total{"))
    {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        total += value;
        if line.contains("result=\"hit\"") {
            hits += value;
        }
    }
    Ok((total > 0.0).then(|| hits / total))
}

async fn verify(args: CacheArgs) -> anyhow::Result<()> {
    let config = load(&args)?;
    attach(&config.data_dir)?;
    let root = config.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || verify::verify_all(&root)).await??;
    for bad in &report.bad {
        println!(
            "BAD {} ({}): {} → moved to {}",
            bad.digest,
            bad.key,
            bad.problem,
            bad.quarantined.display()
        );
    }
    println!(
        "verified {} object(s), {}; {} bad",
        report.checked,
        human(report.bytes),
        report.bad.len()
    );
    anyhow::ensure!(
        report.bad.is_empty(),
        "{} object(s) did not match their digest and were quarantined; the next pull re-fetches them",
        report.bad.len()
    );
    Ok(())
}

async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let config = load(&args.cache)?;
    let max_size = match &args.max_size {
        Some(text) => Some(parse_size(text).map_err(|e| anyhow::anyhow!("--max-size: {e}"))?),
        None => config.store.max_size,
    };
    let store = attach(&config.data_dir)?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };

    let leftovers = [config.data_dir.join("spool"), config.data_dir.join("tmp")];
    for (path, size) in scan::stale_files(&leftovers, ORPHAN_AGE)? {
        if !args.dry_run {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot delete {}", path.display()));
                }
            }
        }
        println!("{verb} orphan {} ({})", path.display(), human(size));
    }

    let evictor = Evictor::new(store.clone(), max_size);
    let plan = evictor.plan().await?;
    if plan.victims.is_empty() {
        let limit = max_size.map_or("no max_size".to_string(), |m| {
            format!("max_size {}", human(m))
        });
        println!(
            "cache holds {} ({limit}): nothing to evict",
            human(plan.total)
        );
        return Ok(());
    }
    if args.dry_run {
        print_victims(verb, &plan);
        println!(
            "{verb} {} object(s), {}: {} → {} (pinned {})",
            plan.victims.len(),
            human(plan.victim_bytes()),
            human(plan.total),
            human(plan.total - plan.victim_bytes()),
            human(plan.pinned_bytes)
        );
        return Ok(());
    }
    let evicted = evictor.apply(&plan)?;
    print_victims(verb, &plan);
    println!(
        "{verb} {} object(s), {}; cache now {}",
        evicted.objects,
        human(evicted.bytes),
        human(plan.total - evicted.bytes)
    );
    Ok(())
}

/// `1.5 GiB`, `300 KiB`, `12 B`.
/// One line per object a gc run evicts (or, with `--dry-run`, would evict).
fn print_victims(verb: &str, plan: &Plan) {
    for victim in &plan.victims {
        println!(
            "{verb} {} {} ({})",
            victim.kind.dir(),
            victim.digest,
            human(victim.size)
        );
    }
}

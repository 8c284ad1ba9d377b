//! `berth probe`: prove where the egress path breaks, before and after every network change.
//!
//! A run: path facts ([`path`]) → targets ([`targets`]: upstreams' `/v2/`, their token
//! endpoints from the 401 challenge) → bulk transfers of each image's largest layer at the
//! default MSS and each clamp ([`bulk`], which also finds the blob CDN host) → paced rounds of
//! one timed request per target address ([`timing`], failures named by [`crate::failure`]) →
//! handshakes at each MSS where TLS handshakes timed out ([`handshakes`]) → path MTU
//! by DF probes toward every address ([`pmtu`]) → verdicts ([`verdict`], a pure function) →
//! [`report`] (text or JSON). [`compare`] sets reports from several hosts side by side;
//! [`light`] is `berth serve`'s periodic probe of each upstream's `/v2/` (`probe_interval`).
//!
//! Everything is bounded: rounds, targets, addresses per name, bytes per transfer, and a
//! deadline on every network step.

pub mod bulk;
pub mod compare;
pub mod handshakes;
pub mod light;
pub mod path;
pub mod pmtu;
pub mod report;
pub mod targets;
pub mod timing;
pub mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use url::Url;

use crate::config::Config;
use crate::failure::{ErrorClass, Failure, How};
use crate::oci::Platform;
use crate::prewarm::references::ImageRef;
use crate::upstream::Connector;
use bulk::BulkPlan;
use path::Destination;
use report::{AddressTimings, DnsReport, Report, Settings, Stats, TargetReport, Timings};
use targets::{Role, Target};
use timing::{Deadlines, Sample};

/// Addresses whose path MTU is measured per run.
const MAX_DESTINATIONS: usize = 16;

/// What one run does, validated by the CLI.
pub struct Plan {
    pub config: Config,
    /// No config file was given: also probe the endpoints users name.
    pub with_user_named: bool,
    pub targets: Vec<Url>,
    pub images: Vec<ImageRef>,
    pub rounds: u32,
    pub interval: Duration,
    pub msses: Vec<u32>,
    pub bulk_bytes: u64,
    pub deadlines: Deadlines,
    pub platform: Platform,
    /// Discover token endpoints and CDN hosts (off with explicit `--target`s).
    pub discover: bool,
}

/// Where a run reports its steps (a progress bar on a terminal, nothing otherwise).
pub trait Progress: Sync {
    fn add(&self, steps: u64);
    fn step(&self, what: &str);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn add(&self, _: u64) {}
    fn step(&self, _: &str) {}
}

/// Samples of one target across rounds.
#[derive(Default)]
struct Collected {
    dns_ms: Vec<f64>,
    dns_failures: u32,
    dns_error: Option<String>,
    addresses: Vec<SocketAddr>,
    samples: Vec<(SocketAddr, Sample)>,
}

/// Up to two addresses of each family, so both get tested without probing a whole CDN pool.
fn pick_addresses(all: &[SocketAddr]) -> Vec<SocketAddr> {
    let v4 = all
        .iter()
        .filter(|a| a.is_ipv4())
        .take(timing::MAX_ADDRESSES / 2);
    let v6 = all
        .iter()
        .filter(|a| a.is_ipv6())
        .take(timing::MAX_ADDRESSES / 2);
    v4.chain(v6).copied().collect()
}

/// How the probe dials each target: berth's upstream connector with the target's upstream
/// (its CA and address rule), or built-in settings for a URL no upstream owns; the probe's
/// deadlines, no MSS clamp (the rounds measure the path as the system dials it).
struct Dialers {
    upstreams: HashMap<String, crate::config::Upstream>,
    tls: HashMap<Option<String>, Arc<rustls::ClientConfig>>,
    deadlines: Deadlines,
}

impl Dialers {
    fn new(config: &Config, deadlines: Deadlines) -> anyhow::Result<Dialers> {
        let mut tls = HashMap::new();
        tls.insert(None, Arc::new(crate::upstream::tls_config(None, true)?));
        for (name, u) in &config.upstreams {
            let config = crate::upstream::tls_config(u.ca_file.as_deref(), true)
                .map_err(|e| anyhow::anyhow!("upstreams.{name}.ca_file: {e}"))?;
            tls.insert(Some(name.clone()), Arc::new(config));
        }
        Ok(Dialers {
            upstreams: config.upstreams.clone().into_iter().collect(),
            tls,
            deadlines,
        })
    }

    fn for_target(&self, t: &Target) -> Connector {
        self.for_target_at(t, None)
    }

    /// The target's connector with an MSS clamp (`None`: the system default).
    fn for_target_at(&self, t: &Target, mss: Option<u32>) -> Connector {
        let upstream = t
            .upstream
            .as_ref()
            .and_then(|name| self.upstreams.get(name))
            .cloned()
            .unwrap_or_else(|| crate::config::Upstream::at(t.url.clone()));
        let tls = self
            .tls
            .get(&t.upstream)
            .or_else(|| self.tls.get(&None))
            .cloned()
            .expect("the default TLS config is always present");
        let upstream = timing::probe_upstream(&upstream, mss, &self.deadlines);
        Connector::new(&upstream, tls)
    }
}

/// One round for one target: resolve, then one request per picked address.
async fn probe_target(t: &Target, connector: Connector, d: Deadlines, c: &mut Collected) {
    let (took, resolved) = timing::resolve(&t.host(), t.port()).await;
    match resolved {
        Err(e) => {
            c.dns_failures += 1;
            c.dns_error = Some(e);
        }
        Ok(addrs) => {
            c.dns_ms.push(took);
            for a in &addrs {
                if !c.addresses.contains(a) {
                    c.addresses.push(*a);
                }
            }
            for addr in pick_addresses(&addrs) {
                let sample =
                    timing::request_once(&t.url, addr, &connector, d, t.any_answer_ok()).await;
                c.samples.push((addr, sample));
            }
        }
    }
}

fn family(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "ipv4" } else { "ipv6" }
}

fn timings<'a>(samples: impl Iterator<Item = &'a Sample>) -> Timings {
    let mut t = Timings::default();
    let (mut connect, mut tls, mut ttfb, mut total) = (vec![], vec![], vec![], vec![]);
    for s in samples {
        t.attempts += 1;
        match s.failure {
            Some(f) => *t.failures.entry(f.name()).or_default() += 1,
            None => t.ok += 1,
        }
        connect.extend(s.connect_ms);
        tls.extend(s.tls_ms);
        ttfb.extend(s.ttfb_ms);
        total.extend(s.total_ms.filter(|_| s.failure.is_none()));
    }
    t.connect = Stats::of(&connect);
    t.tls = Stats::of(&tls);
    t.ttfb = Stats::of(&ttfb);
    t.total = Stats::of(&total);
    t
}

fn target_report(t: &Target, c: &Collected) -> TargetReport {
    let all = timings(c.samples.iter().map(|(_, s)| s));
    let mut failures = all.failures.clone();
    if c.dns_failures > 0 {
        failures.insert(Failure::plain(ErrorClass::Dns).name(), c.dns_failures);
    }
    let mut families = BTreeMap::new();
    for fam in ["ipv4", "ipv6"] {
        let f = timings(
            c.samples
                .iter()
                .filter(|(a, _)| family(a) == fam)
                .map(|(_, s)| s),
        );
        if f.attempts > 0 {
            families.insert(fam.to_string(), f);
        }
    }
    let mut addresses = Vec::new();
    for addr in &c.addresses {
        let mine: Vec<&Sample> = c
            .samples
            .iter()
            .filter(|(a, _)| a == addr)
            .map(|(_, s)| s)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let last = mine.last().expect("not empty");
        addresses.push(AddressTimings {
            address: addr.ip().to_string(),
            family: family(addr).into(),
            timings: timings(mine.iter().copied()),
            last_status: mine.iter().rev().find_map(|s| s.status),
            last_error: last.error.clone(),
        });
    }
    TargetReport {
        url: t.url.to_string(),
        host: t.host(),
        role: t.role.as_str().into(),
        upstream: t.upstream.clone(),
        dns: DnsReport {
            lookups: c.dns_ms.len() as u32 + c.dns_failures,
            failures: c.dns_failures,
            time: Stats::of(&c.dns_ms),
            addresses: c.addresses.iter().map(|a| a.ip().to_string()).collect(),
            last_error: c.dns_error.clone(),
        },
        attempts: all.attempts + c.dns_failures,
        ok: all.ok,
        failures,
        families,
        addresses,
        handshakes: None,
    }
}

/// The handshake comparison for each https target whose handshakes timed out, at the first
/// address where they did.
async fn compare_handshakes(
    list: &[Target],
    collected: &[Collected],
    reports: &mut [TargetReport],
    dialers: &Dialers,
    clamps: &[u32],
    progress: &dyn Progress,
) {
    let timed_out = Failure {
        class: ErrorClass::TlsHandshake,
        how: How::TimedOut,
    };
    for ((t, c), report) in list.iter().zip(collected).zip(reports) {
        let Some(addr) = c
            .samples
            .iter()
            .find(|(_, s)| s.failure == Some(timed_out))
            .map(|(a, _)| *a)
        else {
            continue;
        };
        progress.step(&format!("handshakes at each MSS {}", t.url));
        let comparison =
            handshakes::compare(&t.host(), addr, clamps, |mss| dialers.for_target_at(t, mss)).await;
        report.handshakes = Some(comparison);
    }
}

/// Token endpoints named by each registry's 401 (one request per registry target).
async fn discover_tokens(list: &mut Vec<Target>, dialers: &Dialers, d: Deadlines) {
    let registries: Vec<Target> = list
        .iter()
        .filter(|t| t.role == Role::Registry)
        .cloned()
        .collect();
    let found = join_all(registries.iter().map(|t| async {
        let (_, addrs) = timing::resolve(&t.host(), t.port()).await;
        let addr = *addrs.ok()?.first()?;
        let s = timing::request_once(&t.url, addr, &dialers.for_target(t), d, false).await;
        Some((
            t.upstream.clone(),
            targets::token_endpoint(s.challenge.as_deref()?)?,
        ))
    }))
    .await;
    for (upstream, url) in found.into_iter().flatten() {
        targets::push(list, url, Role::Token, upstream);
    }
}

/// Every address the targets resolved to so far, with the hosts that resolved to it.
fn addresses_of(list: &[Target], collected: &[Collected]) -> BTreeMap<IpAddr, Vec<String>> {
    let mut hosts_of: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for (t, c) in list.iter().zip(collected) {
        for a in &c.addresses {
            let hosts = hosts_of.entry(a.ip()).or_default();
            if !hosts.contains(&t.host()) {
                hosts.push(t.host());
            }
        }
    }
    hosts_of
}

/// Route and DF-measured path MTU toward each address.
async fn destinations(hosts_of: BTreeMap<IpAddr, Vec<String>>) -> Vec<Destination> {
    let work = hosts_of
        .into_iter()
        .take(MAX_DESTINATIONS)
        .map(|(ip, hosts)| async move {
            let mut d = Destination {
                address: ip.to_string(),
                hosts,
                device: None,
                gateway: None,
                source: None,
                route_mtu: None,
                path_mtu: None,
                path_mtu_note: String::new(),
            };
            match path::route_to(ip).await {
                Ok((device, gateway, source, mtu)) => {
                    (d.device, d.gateway, d.source, d.route_mtu) = (device, gateway, source, mtu);
                }
                Err(e) => d.path_mtu_note = format!("route unknown: {e}; "),
            }
            if ip.is_loopback() {
                d.path_mtu_note.push_str("loopback, not probed");
                return d;
            }
            let route_mtu = d.route_mtu.unwrap_or(1500);
            match tokio::task::spawn_blocking(move || pmtu::measure(ip, route_mtu)).await {
                Ok(Ok(mtu)) => {
                    d.path_mtu = Some(mtu);
                    d.path_mtu_note.push_str("DF probes (ICMP echo)");
                }
                Ok(Err(e)) => d.path_mtu_note.push_str(&format!("not measured: {e}")),
                Err(e) => d.path_mtu_note.push_str(&format!("not measured: {e}")),
            }
            d
        });
    join_all(work).await
}

fn ipv6_egress(reports: &[TargetReport], has_v6_route: bool) -> String {
    let v6: Vec<&Timings> = reports
        .iter()
        .filter_map(|t| t.families.get("ipv6"))
        .collect();
    if v6.iter().any(|f| f.ok > 0) {
        "works".into()
    } else if !v6.is_empty() {
        "fails".into()
    } else if !has_v6_route {
        "no_route".into()
    } else {
        "untested (no AAAA among the targets)".into()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// One round: every target concurrently, one request per picked address.
async fn run_round(
    list: &[Target],
    collected: &mut [Collected],
    dialers: &Dialers,
    d: Deadlines,
    progress: &dyn Progress,
    round: u32,
) {
    join_all(list.iter().zip(collected.iter_mut()).map(|(t, c)| {
        let connector = dialers.for_target(t);
        async move {
            probe_target(t, connector, d, c).await;
            progress.step(&format!("round {round} {}", t.url));
        }
    }))
    .await;
}

/// Runs the whole probe. `Err` only when it cannot start (bad TLS settings).
pub async fn run(plan: &Plan, progress: &dyn Progress) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at =
        humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let d = plan.deadlines;
    let dialers = Dialers::new(&plan.config, d)?;
    let mut notes = Vec::new();

    let mut list = targets::initial(&plan.config, &plan.targets, plan.with_user_named);
    let (mut facts, ()) = tokio::join!(path::local_facts(), async {
        if plan.discover {
            discover_tokens(&mut list, &dialers, d).await;
        }
    });

    // Bulk transfers, one image at a time (parallel transfers would disturb each other).
    let mut msses: Vec<Option<u32>> = vec![None];
    msses.extend(plan.msses.iter().map(|m| Some(*m)));
    let bulk_plan = BulkPlan {
        msses,
        bytes: plan.bulk_bytes,
        deadlines: d,
        platform: plan.platform.clone(),
    };
    let mut bulk = Vec::new();
    for image in &plan.images {
        let Some(upstream) = plan.config.upstream(&image.registry) else {
            notes.push(format!(
                "{image}: no upstream for {} in the config, bulk transfer skipped",
                image.registry
            ));
            continue;
        };
        progress.add(bulk_plan.msses.len() as u64);
        let report = bulk::probe_image(image, upstream, &bulk_plan, || {
            progress.step(&format!("bulk {image}"))
        })
        .await;
        if plan.discover {
            if let Some(origin) = report.blob_origin.as_deref() {
                if let Ok(url) = Url::parse(origin) {
                    targets::push(&mut list, url, Role::Cdn, Some(upstream.name.clone()));
                }
            }
        }
        bulk.push(report);
    }

    // Paced rounds over every target.
    let rounds = plan.rounds.max(1);
    progress.add(u64::from(rounds) * list.len() as u64);
    let mut collected: Vec<Collected> = list.iter().map(|_| Collected::default()).collect();
    run_round(&list, &mut collected, &dialers, d, progress, 1).await;
    // DF probes toward the addresses of the first round run alongside the later rounds.
    let first_addresses = addresses_of(&list, &collected);
    let later_rounds = async {
        for round in 2..=rounds {
            tokio::time::sleep(plan.interval).await;
            run_round(&list, &mut collected, &dialers, d, progress, round).await;
        }
    };
    let ((), measured) = tokio::join!(later_rounds, destinations(first_addresses));
    let mut target_reports: Vec<TargetReport> = list
        .iter()
        .zip(&collected)
        .map(|(t, c)| target_report(t, c))
        .collect();
    compare_handshakes(
        &list,
        &collected,
        &mut target_reports,
        &dialers,
        &plan.msses,
        progress,
    )
    .await;

    facts.destinations = measured;
    let has_v6_route = facts.default_routes.iter().any(|r| r.family == "ipv6");
    facts.ipv6_egress = ipv6_egress(&target_reports, has_v6_route);

    let mut report = Report {
        version: report::REPORT_VERSION,
        berth_version: env!("CARGO_PKG_VERSION").into(),
        host: hostname(),
        started_at,
        duration_ms: 0,
        settings: Settings {
            rounds,
            interval_ms: plan.interval.as_millis() as u64,
            mss: plan.msses.clone(),
            bulk_bytes: plan.bulk_bytes,
            connect_timeout_ms: d.connect.as_millis() as u64,
            tls_timeout_ms: d.tls.as_millis() as u64,
            header_timeout_ms: d.header.as_millis() as u64,
            stall_timeout_ms: d.stall.as_millis() as u64,
        },
        path: facts,
        targets: target_reports,
        bulk,
        verdicts: Vec::new(),
        notes,
    };
    report.verdicts = verdict::verdicts(&verdict::Evidence::from_report(&report));
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

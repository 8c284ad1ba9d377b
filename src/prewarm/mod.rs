//! `berth prewarm`: pull image groups through a running berth exactly as containerd would, pin
//! what was resolved, and (`--check`) say whether the cache alone could serve them.
//!
//! A client of the mirror's HTTP API (it may run on another host); the mirror's own code does
//! the caching. Pieces: [`groups`] (group file), [`references`] (image references),
//! [`manifests_scan`] (`--from-manifests`), [`walk`] (the containerd-like walk), [`admin`]
//! (pins), [`report`] (table/JSON), [`progress`] (bars or lines), [`error`]. The HTTP to the
//! mirror is [`crate::client`]'s.

pub mod admin;
pub mod error;
pub mod groups;
pub mod manifests_scan;
pub mod progress;
pub mod references;
pub mod report;
pub mod walk;

use std::time::Instant;

use futures::StreamExt;

use crate::client::{BerthClient, ClientError};
use crate::oci::Platform;

pub use error::PullError;
pub use groups::{Group, GroupError, Groups};
pub use progress::Progress;
pub use report::Report;
pub use walk::Mode;

/// What one run does, parsed and validated by the CLI.
pub struct Plan {
    pub groups: Vec<Group>,
    pub platforms: Vec<Platform>,
    /// Images to fetch for other platforms than `platforms` (what the history says the
    /// cluster pulled of them).
    pub image_platforms: std::collections::HashMap<references::ImageRef, Vec<Platform>>,
    pub concurrency: usize,
    pub mode: Mode,
}

/// The group of what the cluster pulled in a window (`--from-history`): each image as it was
/// pulled (by tag, or by digest), with the platforms fetched of it.
pub fn history_group(
    report: &crate::history::HistoryReport,
) -> (
    Group,
    std::collections::HashMap<references::ImageRef, Vec<Platform>>,
) {
    let mut images = Vec::new();
    let mut platforms = std::collections::HashMap::new();
    for pulled in &report.images {
        let Some(image) = references::ImageRef::pulled(pulled) else {
            continue;
        };
        let of_image: Vec<Platform> = pulled
            .platforms
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        if !of_image.is_empty() {
            platforms.insert(image.clone(), of_image);
        }
        if !images.contains(&image) {
            images.push(image);
        }
    }
    let group = Group {
        name: "history".parse().expect("a valid group name"),
        description: match report.since_seconds {
            Some(s) => format!(
                "what the cluster pulled in the last {}",
                crate::units::human_duration(s)
            ),
            None => "what the cluster pulled".into(),
        },
        images,
    };
    (group, platforms)
}

/// Runs the plan; `Err` only when the mirror cannot be used at all.
pub async fn run(
    client: &BerthClient,
    plan: &Plan,
    progress: &Progress,
) -> Result<Report, PullError> {
    let started = Instant::now();
    ping(client).await?;
    let jobs: Vec<(usize, &Group, &references::ImageRef)> = plan
        .groups
        .iter()
        .flat_map(|g| g.images.iter().map(move |i| (g, i)))
        .enumerate()
        .map(|(n, (g, i))| (n, g, i))
        .collect();
    let mut images: Vec<(usize, walk::ImageOutcome)> = futures::stream::iter(jobs)
        .map(|(n, group, image)| async move {
            let bar = progress.image(&format!("{} {image}", group.name));
            let platforms = plan.image_platforms.get(image).unwrap_or(&plan.platforms);
            let outcome = walk::pull(
                client,
                group.name.as_str(),
                image,
                platforms,
                plan.mode,
                &bar,
            )
            .await;
            bar.done(&report::line(&outcome, plan.mode));
            (n, outcome)
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    progress.finish();
    images.sort_by_key(|(n, _)| *n);
    let images: Vec<walk::ImageOutcome> = images.into_iter().map(|(_, o)| o).collect();
    // The mirror going away mid-run is one error, not a table of identical failures.
    if let Some(e) = images
        .iter()
        .filter_map(|i| i.error.as_ref())
        .find(|e| e.is_about_the_mirror())
    {
        return Err(e.clone());
    }

    let mut pins = Vec::new();
    let mut pins_skipped = None;
    if plan.mode == Mode::Warm {
        if client.has_admin_token() {
            for group in &plan.groups {
                let digests: Vec<_> = images
                    .iter()
                    .filter(|i| i.group == group.name.as_str() && i.error.is_none())
                    .flat_map(|i| i.manifests.iter().cloned())
                    .collect();
                if !digests.is_empty() {
                    pins.push(admin::record(client, &group.name, &digests).await);
                }
            }
        } else {
            pins_skipped = Some(
                "no admin token; pass --admin-token-file FILE or set BERTH_ADMIN_TOKEN so eviction keeps these images".into(),
            );
        }
    }
    Ok(Report {
        mode: plan.mode,
        mirror: client.base().to_string(),
        images,
        pins,
        pins_skipped,
        elapsed: started.elapsed(),
    })
}

/// Is a registry listening at the mirror URL, and does it let us in?
async fn ping(client: &BerthClient) -> Result<(), PullError> {
    let url = client.base().to_string();
    match client.ping().await {
        Ok(()) => Ok(()),
        Err(ClientError::Status { status: 401, .. }) => Err(PullError::Unauthorized { url }),
        Err(ClientError::Status { status, .. }) => Err(PullError::NotARegistry { url, status }),
        Err(e) => Err(PullError::from_client(client.base(), "GET /v2/", e)),
    }
}

//! Bulk transfer: an image's largest layer, downloaded (a few MiB of it) on fresh connections,
//! once with the system's MSS and once per clamp. A path MTU black hole shows as a stall at the
//! default MSS and a clean transfer with a smaller one.
//!
//! Uses berth's own [`UpstreamClient`] (token auth, CDN redirects, TCP_MAXSEG connector), one
//! new client per transfer so no pooled connection carries over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{BulkReport, BulkRun, mss_label};
use super::timing::{Deadlines, probe_upstream};
use crate::config::Upstream;
use crate::failure::{ErrorClass, Failure};
use crate::metrics::Metrics;
use crate::oci::{Digest, MANIFEST_MEDIA_TYPES, ManifestDoc, Platform, Reference};
use crate::prewarm::references::ImageRef;
use crate::upstream::{UpstreamClient, UpstreamError};

/// No transfer runs longer than this, however slowly it moves.
const MAX_TRANSFER_TIME: Duration = Duration::from_secs(120);
/// An index pointing at an index pointing at … is refused past this depth.
const MAX_INDEX_DEPTH: usize = 2;

pub struct BulkPlan {
    pub msses: Vec<Option<u32>>,
    pub bytes: u64,
    pub deadlines: Deadlines,
    pub platform: Platform,
}

/// Resolves the largest layer, then runs one transfer per MSS.
pub async fn probe_image(
    image: &ImageRef,
    upstream: &Upstream,
    plan: &BulkPlan,
    mut on_run: impl FnMut(),
) -> BulkReport {
    let mut report = BulkReport {
        image: image.to_string(),
        upstream: upstream.name.clone(),
        layer: None,
        layer_size: None,
        blob_host: None,
        blob_origin: None,
        runs: Vec::new(),
        error: None,
    };
    let (digest, size) = match find_layer(image, upstream, plan).await {
        Ok(found) => found,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.layer = Some(digest.to_string());
    report.layer_size = Some(size);
    for mss in &plan.msses {
        let (run, host) = transfer(image, upstream, &digest, size, *mss, plan).await;
        if report.blob_host.is_none() {
            report.blob_host = host.as_ref().and_then(|u| u.host_str().map(str::to_string));
            report.blob_origin = host.map(|u| u.origin().ascii_serialization());
        }
        report.runs.push(run);
        on_run();
    }
    report
}

/// The largest layer, looked up at the upstream's own MSS first and then at each clamp of the
/// plan: behind a black hole the manifest (or the token) may not arrive at full size either,
/// and the transfers at every MSS still have to be timed.
async fn find_layer(
    image: &ImageRef,
    upstream: &Upstream,
    plan: &BulkPlan,
) -> Result<(Digest, u64), String> {
    let mut clamps = vec![upstream.transport.tcp_mss];
    clamps.extend(plan.msses.iter().filter(|m| m.is_some()));
    clamps.dedup();
    let mut first_error = None;
    for mss in clamps {
        let resolver = UpstreamClient::new(
            probe_upstream(upstream, mss, &plan.deadlines),
            Arc::new(Metrics::default()),
        )
        .map_err(|e| format!("cannot set up a client: {e}"))?;
        match largest_layer(&Arc::new(resolver), image, &plan.platform).await {
            Ok(found) => return Ok(found),
            Err(e) => {
                let e = format!("{e} (at MSS {})", mss_label(mss));
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| "no MSS to try".into()))
}

async fn fetch_manifest(
    client: &Arc<UpstreamClient>,
    image: &ImageRef,
    reference: &Reference,
) -> Result<ManifestDoc, String> {
    let fetched = client
        .fetch_manifest(&image.repository, reference, &MANIFEST_MEDIA_TYPES)
        .await
        .map_err(|e| format!("manifest {reference}: {e}"))?;
    ManifestDoc::parse(&fetched.bytes)
        .map_err(|e| format!("manifest {reference} is not a manifest: {e}"))
}

/// (digest, size) of the largest layer of the image for `platform` (or the index's first entry).
async fn largest_layer(
    client: &Arc<UpstreamClient>,
    image: &ImageRef,
    platform: &Platform,
) -> Result<(Digest, u64), String> {
    let mut manifest = fetch_manifest(client, image, &image.reference()).await?;
    for _ in 0..MAX_INDEX_DEPTH {
        if !manifest.is_index() {
            break;
        }
        let wanted = std::slice::from_ref(platform);
        let chosen = manifest
            .choose(wanted)
            .into_iter()
            .find_map(|(_, d)| d)
            .or_else(|| manifest.entries().first())
            .ok_or("the image index lists no manifest")?
            .digest
            .clone();
        manifest = fetch_manifest(client, image, &Reference::Digest(chosen)).await?;
    }
    manifest
        .pullable_layers()
        .max_by_key(|l| l.size)
        .map(|l| (l.digest.clone(), l.size))
        .ok_or_else(|| "the manifest lists no layers".to_string())
}

/// One transfer on a fresh client; returns the run and the URL the bytes came from. A break
/// that the stream resumed still counts: the run is then not `complete`.
async fn transfer(
    image: &ImageRef,
    upstream: &Upstream,
    digest: &Digest,
    size: u64,
    mss: Option<u32>,
    plan: &BulkPlan,
) -> (BulkRun, Option<url::Url>) {
    let want = plan.bytes.min(size);
    let start = Instant::now();
    let mut run = BulkRun {
        mss,
        outcome: "complete".into(),
        bytes: 0,
        seconds: 0.0,
        mib_per_s: 0.0,
        error: None,
    };
    let mut source = None;
    let mut interrupted: Option<(u32, UpstreamError)> = None;
    let result = tokio::time::timeout(MAX_TRANSFER_TIME, async {
        let client = Arc::new(
            UpstreamClient::new(
                probe_upstream(upstream, mss, &plan.deadlines),
                Arc::new(Metrics::default()),
            )
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?,
        );
        let mut stream = client
            .fetch_blob(&image.repository, digest, None, 0)
            .await?;
        source = stream.source().cloned();
        while run.bytes < want {
            let next = stream.next().await;
            if let (n, Some(e)) = stream.interruptions() {
                interrupted = Some((n, e.clone()));
            }
            match next? {
                Some(chunk) => run.bytes += chunk.len() as u64,
                None => break,
            }
        }
        Ok::<(), UpstreamError>(())
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    run.seconds = (elapsed * 1000.0).round() / 1000.0;
    run.mib_per_s = if elapsed > 0.0 {
        (run.bytes as f64 / (1024.0 * 1024.0) / elapsed * 100.0).round() / 100.0
    } else {
        0.0
    };
    match result {
        Err(_) => {
            run.outcome = Failure::plain(ErrorClass::Stall).name();
            run.error = Some(format!("not done after {MAX_TRANSFER_TIME:?}"));
        }
        Ok(Err(e)) => {
            run.outcome = e.failure().name();
            run.error = Some(e.to_string());
        }
        Ok(Ok(())) if run.bytes < want => {
            run.outcome = Failure::plain(ErrorClass::Reset).name();
            run.error = Some(format!("body ended after {} of {want} bytes", run.bytes));
        }
        Ok(Ok(())) => {
            if let Some((n, e)) = interrupted {
                run.outcome = e.failure().name();
                run.error = Some(format!("broke {n} times and was resumed; last: {e}"));
            }
        }
    }
    (run, source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::How;

    #[test]
    fn upstream_errors_are_reported_by_the_failure_vocabulary() {
        let connect = |class, how| UpstreamError::Connect {
            failure: Failure::new(class, how),
            cause: "x".into(),
        };
        let cases = [
            (UpstreamError::Stalled(Duration::from_secs(5)), "stall"),
            (
                connect(ErrorClass::TlsHandshake, How::TimedOut),
                "tls_handshake_timeout",
            ),
            (
                connect(ErrorClass::Connect, How::TimedOut),
                "connect_timeout",
            ),
            (
                connect(ErrorClass::Connect, How::Refused),
                "connect_refused",
            ),
            (
                UpstreamError::Timeout("no response headers".into()),
                "header_timeout",
            ),
            (UpstreamError::Transport("connection reset".into()), "reset"),
            (
                UpstreamError::TooManyRequests { retry_after: None },
                "http_429",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.failure().name(), want, "{e}");
        }
    }
}

//! Bulk transfer: an image's largest layer, downloaded (a few MiB of it) on fresh connections,
//! once with the system's MSS and once per clamp. A path MTU black hole shows as a stall at the
//! default MSS and a clean transfer with a smaller one.
//!
//! Uses berth's own [`UpstreamClient`] (token auth, CDN redirects, TCP_MAXSEG connector), one
//! new client per transfer so no pooled connection carries over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::failure::FailureClass;
use super::report::{BulkReport, BulkRun};
use super::timing::Deadlines;
use crate::config::Upstream;
use crate::metrics::Metrics;
use crate::oci::{Digest, MANIFEST_MEDIA_TYPES, ManifestDoc, Platform, Reference};
use crate::prewarm::references::ImageRef;
use crate::upstream::ErrorClass;
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

/// The upstream's settings with probe semantics: one attempt, the probe's deadlines and the
/// given MSS clamp.
fn probe_upstream(upstream: &Upstream, mss: Option<u32>, d: &Deadlines) -> Upstream {
    let mut u = upstream.clone();
    u.transport.max_attempts = 1;
    u.transport.connect_timeout = d.connect;
    u.transport.tls_timeout = d.tls;
    u.transport.header_timeout = d.header;
    u.transport.stall_timeout = d.stall;
    u.transport.tcp_mss = mss;
    u.transport.min_speed = 0;
    u
}

fn class_of(e: &UpstreamError) -> FailureClass {
    match e {
        UpstreamError::Stalled(_) => FailureClass::Stall,
        UpstreamError::Timeout(m) if m.contains("TLS handshake") => {
            FailureClass::TlsHandshakeTimeout
        }
        UpstreamError::Timeout(m) if m.contains("TCP connect") => FailureClass::ConnectTimeout,
        UpstreamError::Timeout(_) => FailureClass::HeaderTimeout,
        UpstreamError::Transport(m) => {
            let m = m.to_ascii_lowercase();
            if m.contains("refused") {
                FailureClass::ConnectRefused
            } else if m.contains("unreachable") {
                FailureClass::ConnectUnreachable
            } else if m.contains("certificate") || m.contains("tls") {
                FailureClass::TlsError
            } else {
                FailureClass::Reset
            }
        }
        // The connector says which phase failed; the message says how.
        UpstreamError::Connect { class, cause } => {
            let timed_out = cause.contains("timed out");
            let cause = cause.to_ascii_lowercase();
            match class {
                ErrorClass::Dns => FailureClass::Dns,
                ErrorClass::TlsHandshake if timed_out => FailureClass::TlsHandshakeTimeout,
                ErrorClass::TlsHandshake => FailureClass::TlsError,
                _ if timed_out => FailureClass::ConnectTimeout,
                _ if cause.contains("refused") => FailureClass::ConnectRefused,
                _ if cause.contains("unreachable") => FailureClass::ConnectUnreachable,
                _ => FailureClass::ConnectRefused,
            }
        }
        UpstreamError::NotFound => FailureClass::Http(404),
        UpstreamError::Denied { status } | UpstreamError::Status { status, .. } => {
            FailureClass::Http(*status)
        }
        UpstreamError::TooManyRequests { .. } => FailureClass::Http(429),
        UpstreamError::Protocol(_)
        | UpstreamError::Down { .. }
        | UpstreamError::TooLarge { .. }
        | UpstreamError::Refused(_) => FailureClass::Protocol,
    }
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
    let resolver = match UpstreamClient::new(
        probe_upstream(upstream, upstream.transport.tcp_mss, &plan.deadlines),
        Arc::new(Metrics::default()),
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            report.error = Some(format!("cannot set up a client: {e}"));
            return report;
        }
    };
    let (digest, size) = match largest_layer(&resolver, image, &plan.platform).await {
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
            run.outcome = FailureClass::Stall.name();
            run.error = Some(format!("not done after {MAX_TRANSFER_TIME:?}"));
        }
        Ok(Err(e)) => {
            run.outcome = class_of(&e).name();
            run.error = Some(e.to_string());
        }
        Ok(Ok(())) if run.bytes < want => {
            run.outcome = FailureClass::Reset.name();
            run.error = Some(format!("body ended after {} of {want} bytes", run.bytes));
        }
        Ok(Ok(())) => {
            if let Some((n, e)) = interrupted {
                run.outcome = class_of(&e).name();
                run.error = Some(format!("broke {n} times and was resumed; last: {e}"));
            }
        }
    }
    (run, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_map_to_classes() {
        let cases = [
            (
                UpstreamError::Stalled(Duration::from_secs(5)),
                FailureClass::Stall,
            ),
            (
                UpstreamError::Timeout("TLS handshake with x:443 timed out".into()),
                FailureClass::TlsHandshakeTimeout,
            ),
            (
                UpstreamError::Timeout("TCP connect to x:443 timed out".into()),
                FailureClass::ConnectTimeout,
            ),
            (
                UpstreamError::Timeout("no response headers".into()),
                FailureClass::HeaderTimeout,
            ),
            (
                UpstreamError::Transport("Connection refused (os error 111)".into()),
                FailureClass::ConnectRefused,
            ),
            (
                UpstreamError::Transport("body read failed: connection reset".into()),
                FailureClass::Reset,
            ),
            (
                UpstreamError::TooManyRequests { retry_after: None },
                FailureClass::Http(429),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(class_of(&e), want, "{e}");
        }
    }
}

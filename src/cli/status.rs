//! `berth status`: a running berth's status report in a terminal (or as JSON), e.g. what a
//! rebuild workflow prints when a rollout fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::status::{StatusReport, render_text};

/// The report is small; a mirror that takes longer is itself the news.
const TIMEOUT: Duration = Duration::from_secs(15);
const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// URL of a running berth (its admin address if it has `admin_listen`).
    #[arg(long, env = "BERTH_MIRROR")]
    mirror: String,
    /// Print the JSON report (stable keys) instead of text.
    #[arg(long)]
    json: bool,
    /// Only failures of this recent past, e.g. 30m, 2h [default: since berth started].
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// File holding the mirror's admin token (needed unless you are on the mirror's host).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

/// Exit 0: no failures in the window and no upstream down; 1: the report lists failures or an
/// upstream is down (printed in full all the same); 2: no report (bad flags, mirror
/// unreachable, 401/403, not a status report).
pub fn main(args: StatusArgs) -> ExitCode {
    match run(args) {
        Ok(report) if needs_attention(&report) => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            super::print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// What a rebuild workflow branches on: failed pulls in the report's window, or an upstream
/// whose breaker is open.
fn needs_attention(report: &StatusReport) -> bool {
    !report.failures.by_image.is_empty()
        || !report.failures.by_node.is_empty()
        || report.upstreams.iter().any(|u| u.state == "down")
}

/// Fetches and prints the report; returns it for the exit status.
fn run(args: StatusArgs) -> anyhow::Result<StatusReport> {
    let mut url = url::Url::parse(&args.mirror)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .with_context(|| {
            format!(
                "--mirror `{}` is not an http(s) URL; write e.g. http://10.27.27.10:5000",
                args.mirror
            )
        })?;
    url.set_path("/_berth/status");
    url.set_query(None);
    if let Some(since) = &args.since {
        if crate::units::parse_window(since, crate::status::MAX_SINCE).is_none() {
            bail!(
                "--since `{since}` is not a duration; write e.g. 90s, 30m, 2h or 1d (at most 7d)"
            );
        }
        url.query_pairs_mut().append_pair("since", since);
    }
    let token = match &args.admin_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("BERTH_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let body = runtime.block_on(fetch(url.clone(), token))?;
    let report: StatusReport = serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not answer with a berth status report"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(report)
}

async fn fetch(url: url::Url, token: Option<String>) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("cannot build an HTTP client")?;
    let mut request = client
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = token {
        request = request.bearer_auth(token.trim());
    }
    let mut response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is berth running there?"))?;
    match response.status().as_u16() {
        200 => {}
        401 => bail!(
            "{url} wants the admin token; pass --admin-token-file (the mirror's admin_token_file)"
        ),
        403 => bail!(
            "{url} serves its status to loopback only; run this on the mirror's host or set admin_token_file there and pass --admin-token-file"
        ),
        404 => bail!("{url} has no status page; is it berth 0.1 or later?"),
        s => bail!("{url} answered HTTP {s}"),
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("the answer from {url} broke off"))?
    {
        if body.len() + chunk.len() > MAX_REPORT_BYTES {
            bail!("{url} sent more than {MAX_REPORT_BYTES} bytes; that is not a status report");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{CacheStatus, Failures, NodeFailures, UpstreamStatus};

    fn report(states: &[&str], failures: Failures) -> StatusReport {
        StatusReport {
            version: "0".into(),
            generated_at: 100,
            started_at: 0,
            since_seconds: None,
            requests: 1,
            upstreams: states
                .iter()
                .map(|state| UpstreamStatus {
                    name: format!("{state}.example"),
                    url: format!("https://{state}.example/"),
                    state: state.to_string(),
                    requests: 0,
                    failures: 0,
                    last_success: None,
                    last_error_at: None,
                    last_error_class: None,
                    last_error: None,
                    p50_ms: None,
                    ratelimit_remaining: None,
                })
                .collect(),
            failures,
            fills: vec![],
            cache: CacheStatus::default(),
            pins: vec![],
        }
    }

    #[test]
    fn a_down_upstream_or_a_failed_pull_needs_attention() {
        assert!(!needs_attention(&report(
            &["up", "probing"],
            Failures::default()
        )));
        assert!(needs_attention(&report(
            &["up", "down"],
            Failures::default()
        )));
        let failed = Failures {
            by_image: vec![],
            by_node: vec![NodeFailures {
                node: "10.0.0.1".into(),
                count: 1,
                images: vec!["docker.io/library/app".into()],
                last_at: 90,
            }],
        };
        assert!(needs_attention(&report(&["up"], failed)));
    }
}

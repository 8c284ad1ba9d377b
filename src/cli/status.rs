//! `berth status`: a running berth's status report in a terminal (or as JSON), e.g. what a
//! rebuild workflow prints when a rollout fails.

use std::process::ExitCode;

use anyhow::{Context as _, anyhow};

use super::mirror_access::{MirrorAccess, explain_refusal};
use crate::client::ClientError;
use crate::status::{StatusReport, render_text};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    access: MirrorAccess,
    /// Print the JSON report (stable keys) instead of text.
    #[arg(long)]
    json: bool,
    /// Only failures of this recent past, e.g. 30m, 2h [default: since berth started].
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
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
    let client = args
        .access
        .client(concat!("berth-status/", env!("CARGO_PKG_VERSION")))?;
    let since = match &args.since {
        Some(since) => Some(crate::units::parse_window(since, crate::status::MAX_SINCE).with_context(|| {
            format!(
                "--since `{since}` is not a duration; write e.g. 90s, 30m, 2h or 1d (at most 7d)"
            )
        })?),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(client.status(since)).map_err(explain)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(report)
}

/// One line: why there is no report, and the fix.
fn explain(e: ClientError) -> anyhow::Error {
    if let Some(fix) = explain_refusal(&e) {
        return anyhow!(fix);
    }
    match e {
        ClientError::Unreachable { url, cause } => {
            anyhow!("cannot reach {url} ({cause}); is berth running there?")
        }
        ClientError::Status {
            url, status: 401, ..
        } => anyhow!(
            "{url} wants the admin token; pass --admin-token-file (the mirror's admin_token_file)"
        ),
        ClientError::Status {
            url, status: 403, ..
        } => anyhow!(
            "{url} serves its status to loopback only; run this on the mirror's host or set admin_token_file there and pass --admin-token-file"
        ),
        ClientError::Status {
            url, status: 404, ..
        } => anyhow!(
            "{url} has no status page; is it berth 0.1 or later, and if it has admin_listen, did you pass --admin-url?"
        ),
        ClientError::Status { url, status, .. } => anyhow!("{url} answered HTTP {status}"),
        ClientError::Invalid { url, message } => {
            anyhow!("{url} did not answer with a berth status report: {message}")
        }
        e => anyhow!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Failures, NodeFailures, UpstreamStatus};

    fn report(states: &[&str], failures: Failures) -> StatusReport {
        StatusReport {
            generated_at: 100,
            requests: 1,
            upstreams: states
                .iter()
                .map(|state| UpstreamStatus {
                    name: format!("{state}.example"),
                    url: format!("https://{state}.example/"),
                    state: state.to_string(),
                    ..UpstreamStatus::default()
                })
                .collect(),
            failures,
            ..StatusReport::default()
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
                name: None,
                node: "10.0.0.1".into(),
                count: 1,
                images: vec!["docker.io/library/app".into()],
                last_at: 90,
            }],
        };
        assert!(needs_attention(&report(&["up"], failed)));
    }
}

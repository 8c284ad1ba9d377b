//! The pulling side: blob downloads checked byte for byte, sequential manifest requests with
//! per-request latency, and `wrk` for manifest load.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use crate::support::util::run;

pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(180))
        .build()
        .expect("reqwest client")
}

/// One blob download.
#[derive(Clone, Debug)]
pub struct Download {
    pub status: Option<u16>,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Every byte equal to the expected blob, and all of it.
    pub correct: bool,
    pub error: Option<String>,
}

impl Download {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }

    /// A short human description: "ok", "HTTP 502", "error after 100.0 MiB: …".
    pub fn outcome(&self) -> String {
        match (&self.error, self.status) {
            _ if self.correct => "ok".into(),
            (Some(e), _) => format!("error after {:.1} MiB: {e}", mib(self.bytes)),
            (None, Some(s)) if s != 200 => format!("HTTP {s}"),
            (None, _) => format!("wrong body ({:.1} MiB)", mib(self.bytes)),
        }
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// GETs `url` and compares the streamed body to `expected` chunk by chunk (a memcmp, so the
/// check costs far less than the transfer; no buffering of the body).
pub async fn download(client: &reqwest::Client, url: &str, expected: &Bytes) -> Download {
    let start = Instant::now();
    let mut d = Download {
        status: None,
        bytes: 0,
        elapsed: Duration::ZERO,
        correct: false,
        error: None,
    };
    match client.get(url).send().await {
        Err(e) => d.error = Some(error_chain(&e)),
        Ok(resp) => {
            d.status = Some(resp.status().as_u16());
            if resp.status().is_success() {
                read_and_compare(resp, expected, &mut d).await;
            }
        }
    }
    d.elapsed = start.elapsed();
    d
}

async fn read_and_compare(resp: reqwest::Response, expected: &Bytes, d: &mut Download) {
    let mut matches = true;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                let at = d.bytes as usize;
                let end = at + chunk.len();
                matches &= end <= expected.len() && expected[at..end] == chunk[..];
                d.bytes = end as u64;
            }
            Err(e) => {
                d.error = Some(error_chain(&e));
                return;
            }
        }
    }
    d.correct = matches && d.bytes == expected.len() as u64;
}

/// The innermost cause (reqwest's outer layers say little: "error decoding response body").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut innermost = e;
    while let Some(inner) = innermost.source() {
        innermost = inner;
    }
    innermost.to_string()
}

/// Latencies of `n` sequential HEAD and `n` sequential GET requests of a manifest by tag,
/// interleaved (HEAD, GET, HEAD, GET, …). Fails on the first non-200 answer.
pub async fn manifest_latencies(
    client: &reqwest::Client,
    url: &str,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let mut heads = Vec::with_capacity(n);
    let mut gets = Vec::with_capacity(n);
    for _ in 0..n {
        heads.push(timed_request(client.head(url)).await?);
        gets.push(timed_request(client.get(url)).await?);
    }
    Ok((heads, gets))
}

async fn timed_request(req: reqwest::RequestBuilder) -> Result<Duration, String> {
    let start = Instant::now();
    let resp = req
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    resp.bytes().await.map_err(|e| error_chain(&e))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("HTTP {status}"));
    }
    Ok(start.elapsed())
}

/// What `wrk --latency` reports.
#[derive(Clone, Debug)]
pub struct WrkResult {
    pub p50: Duration,
    pub p99: Duration,
    pub requests_per_s: f64,
    pub non_2xx: u64,
}

/// `wrk -t2 -c<connections> -d<secs>s --latency` GETting `url` with the manifest Accept header.
pub fn run_wrk(url: &str, connections: u32, secs: u64) -> Result<WrkResult, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
    ])
    .args(["-H", &format!("Accept: {MANIFEST_ACCEPT}")])
    .arg(url);
    let out = run(&mut cmd, Duration::from_secs(secs + 30));
    if !out.success {
        return Err(format!("wrk failed: {}{}", out.stderr, out.stdout));
    }
    parse_wrk(&out.stdout).ok_or_else(|| format!("unparsable wrk output:\n{}", out.stdout))
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let percentile = |p: &str| {
        text.lines()
            .map(str::split_whitespace)
            .find_map(|mut w| (w.next() == Some(p)).then(|| w.next().and_then(parse_wrk_duration)))
            .flatten()
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(WrkResult {
        p50: percentile("50%")?,
        p99: percentile("99%")?,
        requests_per_s: field("Requests/sec:")?,
        non_2xx: field("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64,
    })
}

/// `310.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = s.split_at(split);
    let value: f64 = value.parse().ok()?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk_output() {
        let text = "  Latency Distribution\n     50%  310.00us\n     75%    1.02ms\n     90%    2.00ms\n     99%    3.50ms\n  1000 requests in 10.00s, 1.00MB read\nRequests/sec:   4321.50\nTransfer/sec:    100.00KB\n";
        let r = super::parse_wrk(text).unwrap();
        assert_eq!(r.p50.as_micros(), 310);
        assert_eq!(r.p99.as_micros(), 3500);
        assert_eq!(r.requests_per_s, 4321.5);
    }
}

//! The HTTP client of one running berth (prewarm is a client of berth, possibly on another
//! host): reqwest, the mirror's base URL, `?ns=` routing, and the mirror's OCI error bodies.

use std::time::Duration;

use http::StatusCode;
use url::Url;

use crate::oci::{Digest, ErrorBody};

const USER_AGENT: &str = concat!("berth-prewarm/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error(
        "cannot reach the mirror at {url} ({cause}); start it with `berth serve` or point --mirror at a running berth"
    )]
    MirrorUnreachable { url: String, cause: String },
    #[error(
        "{url} does not answer like a registry (GET /v2/ → {status}); point --mirror at a running berth"
    )]
    NotARegistry { url: String, status: u16 },
    #[error("the mirror answered {status} for {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{what} hashes to {actual}, expected {expected}")]
    Verification {
        what: String,
        actual: Digest,
        expected: Digest,
    },
}

/// An HTTP client of one running berth.
#[derive(Clone)]
pub struct MirrorClient {
    http: reqwest::Client,
    base: Url,
}

impl MirrorClient {
    pub fn new(base: Url) -> Result<MirrorClient, PullError> {
        let http = reqwest::Client::builder()
            .no_proxy() // the mirror is on the private network, never behind the egress proxy
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| PullError::MirrorUnreachable {
                url: base.to_string(),
                cause: cause(&e),
            })?;
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(MirrorClient { http, base })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /v2/`: is a registry listening there at all?
    pub async fn ping(&self) -> Result<(), PullError> {
        let url = self.url("v2/", None);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status() != StatusCode::OK {
            return Err(PullError::NotARegistry {
                url: self.base.to_string(),
                status: response.status().as_u16(),
            });
        }
        Ok(())
    }

    pub(super) fn url(&self, path: &str, ns: Option<&str>) -> Url {
        let mut url = self.base.join(path).unwrap_or_else(|_| self.base.clone());
        if let Some(ns) = ns {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        url
    }

    pub(super) fn unreachable(&self, e: &reqwest::Error) -> PullError {
        PullError::MirrorUnreachable {
            url: self.base.to_string(),
            cause: cause(e),
        }
    }
}

/// Passes a 2xx response on; otherwise the mirror's OCI error message.
pub(super) async fn ok_or_status(
    response: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, PullError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let summary = serde_json::from_slice::<ErrorBody>(&body)
        .ok()
        .and_then(|b| b.summary());
    let message = match summary {
        Some(summary) => summary,
        None if body.is_empty() => "(no body)".into(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string(),
    };
    Err(PullError::Status {
        what: what.to_string(),
        status,
        message,
    })
}

/// The innermost cause of an error ("Connection refused (os error 111)"), not reqwest's wrapper.
pub(super) fn cause(e: &dyn std::error::Error) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

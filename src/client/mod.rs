//! The one client of berth's own HTTP API: what `berth prewarm`, `berth status`, `berth cache
//! stats --mirror` and a fleet follower (streaming a leader replica's fill) call. The only module
//! that names reqwest.
//!
//! Callers name no header and build no URL: they call typed methods — the registry API as
//! containerd calls it ([`registry`]: `?ns=<registry>` routing, containerd's `Accept`,
//! `Cache-Control: only-if-cached` for [`Lookup::CacheOnly`]), the admin API ([`admin`]: status,
//! pins, metrics) and a peer's fill ([`peer`]). How the client reaches the berth — trusted CAs, a
//! client certificate, Basic credentials, the admin token — is one [`Access`], built once.
//!
//! Registry calls send the Basic credentials, admin calls the admin token (to the admin URL,
//! which is the mirror URL unless the berth serves `/_berth/` on its `admin_listen`), peer calls
//! the fill's lease token. No proxy: a berth is on the private network.

mod access;
mod admin;
mod error;
mod peer;
mod registry;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use url::Url;

use crate::oci::ErrorBody;

pub use access::{Access, load_certificates, load_private_key, verify_client};
pub use error::ClientError;
pub use peer::{BLOB_SIZE_HEADER, PeerFill};
pub use registry::{BlobHead, Lookup, Manifest, ManifestHead};

/// Bytes of a non-2xx body read for its error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A client of one running berth (or, for peer fills, of the replicas of a fleet).
#[derive(Clone)]
pub struct BerthClient {
    http: reqwest::Client,
    /// The registry API, `/metrics`; ends with `/`.
    base: Url,
    /// `/_berth/*`; ends with `/`.
    admin: Url,
    basic: Option<access::Basic>,
    admin_token: Option<String>,
    /// The longest wait for a response head or for the next bytes of a body.
    idle: Duration,
    /// Whether this client presents a certificate, and whether a server asked for one.
    presents_certificate: bool,
    certificate_asked: access::CertificateAsked,
}

/// Sets up a [`BerthClient`]: its [`Access`], admin URL and timeouts.
pub struct BerthClientBuilder {
    base: Url,
    admin: Option<Url>,
    access: Access,
    connect_timeout: Duration,
    read_timeout: Duration,
    user_agent: &'static str,
}

impl BerthClient {
    /// A client of the berth at `base` (e.g. `https://10.27.27.10:5000`).
    pub fn builder(base: Url) -> BerthClientBuilder {
        BerthClientBuilder {
            base,
            admin: None,
            access: Access::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The mirror's URL (registry API).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Where `/_berth/*` is asked.
    pub fn admin_base(&self) -> &Url {
        &self.admin
    }

    /// Does it send an admin token (so admin calls may succeed)?
    pub fn has_admin_token(&self) -> bool {
        self.admin_token.is_some()
    }

    /// `base` + path segments (each pushed as one segment, so `/` inside one is escaped).
    fn url(base: &Url, segments: &[&str]) -> Url {
        let mut url = base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends `request`; no answer (or a TLS refusal) is an error sorted by what to fix.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, ClientError> {
        request.send().await.map_err(|e| {
            match ClientError::from_send(url.as_str(), &e) {
                // A server that asked for a certificate we do not have and then hung up refused
                // us for it, however the refusal reached us.
                ClientError::Unreachable { url, cause }
                    if self.certificate_asked.get() && !self.presents_certificate =>
                {
                    ClientError::ClientCertificate {
                        url,
                        cause: format!("it asked for one, none was given: {cause}"),
                    }
                }
                e => e,
            }
        })
    }

    /// Passes a 2xx response on; otherwise the berth's OCI error message (or the body's start).
    async fn ok(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let url = response.url().to_string();
        let status = response.status().as_u16();
        let body = read_bounded(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
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
        Err(ClientError::Status {
            url,
            status,
            message,
        })
    }
}

impl BerthClientBuilder {
    /// Trust, client certificate and credentials.
    pub fn access(mut self, access: Access) -> BerthClientBuilder {
        self.access = access;
        self
    }

    /// Ask `/_berth/*` here (a berth with `admin_listen`) [default: the mirror URL].
    pub fn admin_url(mut self, url: Url) -> BerthClientBuilder {
        self.admin = Some(url);
        self
    }

    /// How long to wait for a connection [default 10 s].
    pub fn connect_timeout(mut self, timeout: Duration) -> BerthClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a response head or for the next bytes of a body [default 300 s].
    pub fn read_timeout(mut self, timeout: Duration) -> BerthClientBuilder {
        self.read_timeout = timeout;
        self
    }

    pub fn user_agent(mut self, user_agent: &'static str) -> BerthClientBuilder {
        self.user_agent = user_agent;
        self
    }

    pub fn build(self) -> Result<BerthClient, ClientError> {
        let base = directory(self.base)?;
        let admin = match self.admin {
            Some(url) => directory(url)?,
            None => base.clone(),
        };
        let (tls, certificate_asked) = self.access.tls_config()?;
        let http = reqwest::Client::builder()
            .no_proxy() // a berth is on the private network, never behind the egress proxy
            .use_preconfigured_tls(tls)
            .user_agent(self.user_agent)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(BerthClient {
            http,
            base,
            admin,
            basic: self.access.basic().cloned(),
            admin_token: self.access.admin_token().map(str::to_string),
            idle: self.read_timeout,
            presents_certificate: self.access.presents_certificate(),
            certificate_asked,
        })
    }
}

/// An http(s) URL with a host, its path ending in `/` (a berth may sit under a path prefix).
fn directory(mut url: Url) -> Result<Url, ClientError> {
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ClientError::Setup(format!(
            "`{url}` is not an http(s) URL; write e.g. http://10.27.27.10:5000"
        )));
    }
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// A response body, chunk by chunk; no bytes within the client's read timeout is an error.
pub struct Body {
    url: String,
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    idle: Duration,
    size: Option<u64>,
}

impl Body {
    fn new(response: reqwest::Response, idle: Duration) -> Body {
        Body {
            url: response.url().to_string(),
            size: response.content_length(),
            inner: response.bytes_stream().boxed(),
            idle,
        }
    }

    /// The body's length, if the server said (`Content-Length`).
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The next chunk; `Ok(None)` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        match tokio::time::timeout(self.idle, self.inner.next()).await {
            Err(_) => Err(ClientError::Stalled {
                url: self.url.clone(),
                idle: self.idle,
            }),
            Ok(None) => Ok(None),
            Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
            Ok(Some(Err(e))) => Err(ClientError::from_body(&self.url, &e)),
        }
    }
}

/// The whole body, refused beyond `limit` bytes (checked as it arrives, not by its header).
async fn read_bounded(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ClientError> {
    let url = response.url().to_string();
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::from_body(&url, &e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::Invalid {
                url,
                message: format!("sent more than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_path_prefix_and_escape_nothing_they_should_not() {
        let client = BerthClient::builder("https://mirror.lan:5000/berth".parse().unwrap())
            .admin_url("http://127.0.0.1:5001".parse().unwrap())
            .build()
            .unwrap();
        assert_eq!(client.base().as_str(), "https://mirror.lan:5000/berth/");
        assert_eq!(client.admin_base().as_str(), "http://127.0.0.1:5001/");
        let url = BerthClient::url(
            client.base(),
            &["v2", "library", "busybox", "manifests", "sha256:ab"],
        );
        assert_eq!(
            url.as_str(),
            "https://mirror.lan:5000/berth/v2/library/busybox/manifests/sha256:ab"
        );
        let url = BerthClient::url(client.admin_base(), &["_berth", "pins", "a/b"]);
        assert_eq!(url.as_str(), "http://127.0.0.1:5001/_berth/pins/a%2Fb");
    }

    #[test]
    fn only_http_urls_with_a_host_make_a_client() {
        for bad in ["ftp://x/", "unix:/run/berth.sock"] {
            let e = BerthClient::builder(bad.parse().unwrap())
                .build()
                .err()
                .unwrap();
            assert!(e.to_string().contains("not an http(s) URL"), "{e}");
        }
    }
}

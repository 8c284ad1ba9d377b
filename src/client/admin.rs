//! The admin API (`/_berth/*` on the admin URL, with the admin token) and `/metrics`.

use std::time::Duration;

use http::header::ACCEPT;
use url::Url;

use super::{BerthClient, ClientError, read_bounded};
use crate::history::HistoryReport;
use crate::oci::Digest;
use crate::status::StatusReport;
use crate::store::pins::PinName;

/// The report is small; a berth that takes longer is itself the news.
const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
/// A bigger answer is not a status report.
const MAX_STATUS_BYTES: usize = 32 * 1024 * 1024;
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_METRICS_BYTES: usize = 32 * 1024 * 1024;

impl BerthClient {
    /// `GET /_berth/status[?since=…]`: the status report, of failures `since` ago or, without,
    /// since the berth started. A non-200 answer is `Err(Status)` (401: the admin token is
    /// missing or wrong; 403: loopback only; 404: no status page here).
    pub async fn status(&self, since: Option<Duration>) -> Result<StatusReport, ClientError> {
        self.admin_report("status", since, "a status report").await
    }

    /// `GET /_berth/history[?since=…]`: the images the cluster pulled (all the berth
    /// remembers without `since`).
    pub async fn history(&self, since: Option<Duration>) -> Result<HistoryReport, ClientError> {
        self.admin_report("history", since, "a pull history").await
    }

    /// `GET /_berth/<endpoint>[?since=…]` as JSON: one of berth's reports, bounded in size.
    async fn admin_report<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        since: Option<Duration>,
        what: &str,
    ) -> Result<T, ClientError> {
        let mut url = BerthClient::url(&self.admin, &["_berth", endpoint]);
        if let Some(since) = since {
            url.query_pairs_mut()
                .append_pair("since", &format!("{}s", since.as_secs()));
        }
        let request = self
            .admin_request(reqwest::Method::GET, &url)
            .header(ACCEPT, "application/json")
            .timeout(STATUS_TIMEOUT);
        let response = BerthClient::ok(self.send(request, &url).await?).await?;
        let body = read_bounded(response, MAX_STATUS_BYTES)
            .await
            .map_err(|e| match e {
                ClientError::Invalid { url, message } => ClientError::Invalid {
                    url,
                    message: format!("{message}; that is not {what}"),
                },
                e => e,
            })?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Invalid {
            url: url.to_string(),
            message: format!("not {what} of berth's ({e})"),
        })
    }

    /// `PUT /_berth/pins/<group>`: records `manifests` as the group's pin set, so eviction keeps
    /// them. A non-2xx answer is `Err(Status)` (404: the berth has no admin token; 401: it
    /// refused ours).
    pub async fn put_pins(&self, group: &PinName, manifests: &[Digest]) -> Result<(), ClientError> {
        let url = BerthClient::url(&self.admin, &["_berth", "pins", group.as_str()]);
        let request = self
            .admin_request(reqwest::Method::PUT, &url)
            .json(&serde_json::json!({ "manifests": manifests }));
        BerthClient::ok(self.send(request, &url).await?).await?;
        Ok(())
    }

    /// `GET /metrics` (on the mirror URL): the Prometheus text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let url = BerthClient::url(&self.base, &["metrics"]);
        let request = self.http.get(url.clone()).timeout(METRICS_TIMEOUT);
        let response = BerthClient::ok(self.send(request, &url).await?).await?;
        let body = read_bounded(response, MAX_METRICS_BYTES).await?;
        String::from_utf8(body).map_err(|_| ClientError::Invalid {
            url: url.to_string(),
            message: "the metrics are not UTF-8 text".into(),
        })
    }

    /// An admin request: the admin token as bearer, when given.
    fn admin_request(&self, method: reqwest::Method, url: &Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url.clone());
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

//! A fleet follower's call: `GET /_berth/fills/<digest>?from=N` on the replica leading the
//! fill, with the lease's token. The leader answers with the fill's bytes from `from` on, as
//! they arrive, and the whole blob's size in [`BLOB_SIZE_HEADER`].

use url::Url;

use super::{BerthClient, Body, ClientError};
use crate::oci::Digest;

/// The whole blob's size, sent by the leader beside the (possibly partial) body.
pub const BLOB_SIZE_HEADER: &str = "x-berth-blob-size";

/// A leader's running fill, from the requested offset on.
pub struct PeerFill {
    /// The whole blob's size, if the leader knows it.
    pub total: Option<u64>,
    /// Ends when the leader's fill is verified; no bytes within the read timeout is an error.
    pub body: Body,
}

impl BerthClient {
    /// Streams the fill of `digest` that the replica at `leader` (its `advertise_url`, as the
    /// lease names it) runs, from byte `from` on. No response head within the read timeout is
    /// an error.
    pub async fn peer_fill(
        &self,
        leader: &str,
        token: &str,
        digest: &Digest,
        from: u64,
    ) -> Result<PeerFill, ClientError> {
        let base = Url::parse(leader)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| ClientError::Invalid {
                url: leader.to_string(),
                message: "the lease names no http(s) URL".into(),
            })?;
        let base = super::directory(base)?;
        let mut url = BerthClient::url(&base, &["_berth", "fills", &digest.to_string()]);
        url.query_pairs_mut().append_pair("from", &from.to_string());
        let request = self.http.get(url.clone()).bearer_auth(token);
        let response = tokio::time::timeout(self.idle, self.send(request, &url))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.to_string(),
                cause: format!("no answer within {:?}", self.idle),
            })??;
        let response = BerthClient::ok(response).await?;
        let total = response
            .headers()
            .get(BLOB_SIZE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Ok(PeerFill {
            total,
            body: Body::new(response, self.idle),
        })
    }
}

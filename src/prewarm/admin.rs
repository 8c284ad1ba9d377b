//! Recording pin sets on the mirror: `PUT /_berth/pins/<group>` with the admin token.

use http::StatusCode;
use serde::Serialize;

use crate::mirror::PinName;
use crate::oci::Digest;

use super::client::{MirrorClient, cause};

/// Whether one group's pins were recorded, and if not, why (one line).
#[derive(Debug, Clone, Serialize)]
pub struct PinOutcome {
    pub group: String,
    pub manifests: usize,
    pub recorded: bool,
    pub message: String,
}

pub async fn record(
    client: &MirrorClient,
    token: &str,
    group: &PinName,
    manifests: &[Digest],
) -> PinOutcome {
    let url = client
        .base()
        .join(&format!("_berth/pins/{group}"))
        .unwrap_or_else(|_| client.base().clone());
    let body = serde_json::json!({ "manifests": manifests });
    let result = client
        .http()
        .put(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    let (recorded, message) = match result {
        Ok(r) if r.status().is_success() => (true, "pinned".to_string()),
        Ok(r) if r.status() == StatusCode::NOT_FOUND => (
            false,
            "the mirror has no admin token; set admin_token_file in its berth.toml".into(),
        ),
        Ok(r) if r.status() == StatusCode::UNAUTHORIZED => (
            false,
            "the mirror refused the admin token; pass the one in its admin_token_file".into(),
        ),
        Ok(r) => (false, format!("the mirror answered {}", r.status())),
        Err(e) => (false, format!("cannot reach the mirror: {}", cause(&e))),
    };
    PinOutcome {
        group: group.to_string(),
        manifests: manifests.len(),
        recorded,
        message,
    }
}

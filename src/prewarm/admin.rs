//! Recording pin sets on the mirror (`PUT /_berth/pins/<group>` with the admin token).

use serde::Serialize;

use crate::client::{BerthClient, ClientError};
use crate::mirror::PinName;
use crate::oci::Digest;

/// Whether one group's pins were recorded, and if not, why (one line).
#[derive(Debug, Clone, Serialize)]
pub struct PinOutcome {
    pub group: String,
    pub manifests: usize,
    pub recorded: bool,
    pub message: String,
}

/// Pins `manifests` as `group` (the client carries the admin token).
pub async fn record(client: &BerthClient, group: &PinName, manifests: &[Digest]) -> PinOutcome {
    let (recorded, message) = match client.put_pins(group, manifests).await {
        Ok(()) => (true, "pinned".to_string()),
        Err(e) => (false, why_not(&e)),
    };
    PinOutcome {
        group: group.to_string(),
        manifests: manifests.len(),
        recorded,
        message,
    }
}

fn why_not(e: &ClientError) -> String {
    match e {
        ClientError::Status { status: 404, .. } => {
            "the mirror has no admin token; set admin_token_file in its berth.toml".into()
        }
        ClientError::Status { status: 401, .. } => {
            "the mirror refused the admin token; pass the one in its admin_token_file".into()
        }
        ClientError::Status { status, .. } => match http::StatusCode::from_u16(*status) {
            Ok(status) => format!("the mirror answered {status}"),
            Err(_) => format!("the mirror answered {status}"),
        },
        ClientError::Unreachable { cause, .. } | ClientError::Broken { cause, .. } => {
            format!("cannot reach the mirror: {cause}")
        }
        e => format!("cannot reach the mirror: {}", e.detail()),
    }
}

//! `/_berth/` admin endpoints (pins). Not reachable (404) unless an admin token is configured;
//! a missing or wrong `Authorization: Bearer <token>` gets 401. The token is checked before a
//! byte of the body is read, and a body is read only up to [`MAX_BODY_BYTES`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};

use crate::mirror::{Mirror, PinName};
use crate::oci::{Digest, ErrorCode};

use super::ApiError;

/// A pin set of 10 000 manifests is about 750 KiB of JSON.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Body of `PUT /_berth/pins/<name>`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    manifests: Vec<Digest>,
}

pub async fn put_pins(
    State(mirror): State<Arc<Mirror>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(denied) = authorize(&mirror, &headers) {
        return denied.into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let message = format!(
                "the body is larger than {MAX_BODY_BYTES} bytes or was cut off; send fewer manifests per pin set"
            );
            return ApiError::new(ErrorCode::SizeInvalid, message)
                .with_status(http::StatusCode::PAYLOAD_TOO_LARGE)
                .into_response();
        }
    };
    let name: PinName = match name.parse() {
        Ok(n) => n,
        Err(e) => return ApiError::new(ErrorCode::NameInvalid, e.to_string()).into_response(),
    };
    let request: PinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("body must be {{\"manifests\":[\"sha256:…\"]}}: {e}");
            return ApiError::new(ErrorCode::ManifestInvalid, message).into_response();
        }
    };
    match mirror.put_pins(name, request.manifests).await {
        Ok(set) => axum::Json(set).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn list_pins(State(mirror): State<Arc<Mirror>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&mirror, &headers) {
        return denied.into_response();
    }
    match mirror.pins().await {
        Ok(sets) => axum::Json(sets).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn authorize(mirror: &Mirror, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &mirror.config().admin_token else {
        let message = "admin endpoints are off: set admin_token_file in berth.toml";
        return Err(ApiError::new(ErrorCode::NameUnknown, message));
    };
    let offered = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match offered {
        Some(offered) if token.matches(offered) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong admin token (Authorization: Bearer <admin_token>)",
        )
        .with_header(WWW_AUTHENTICATE, "Bearer realm=\"berth-admin\"")),
    }
}

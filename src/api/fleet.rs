//! `GET /_berth/fills/<digest>?from=N`: another replica on the shared bucket streams a fill
//! this replica leads. The bearer token comes from the fill's lease in the bucket; anything
//! else (no token, a wrong one, no running fill) is a plain 404.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use crate::fleet::BLOB_SIZE_HEADER;
use crate::mirror::Mirror;
use crate::oci::Digest;

#[derive(Deserialize)]
pub struct From {
    #[serde(default)]
    from: u64,
}

pub async fn peer_fill(
    State(mirror): State<Arc<Mirror>>,
    Path(digest): Path<String>,
    Query(query): Query<From>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (Some(token), Ok(digest)) = (token, digest.parse::<Digest>()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match mirror.peer_fill(&digest, token, query.from).await {
        Some((total, stream)) => {
            let mut response = Response::new(Body::from_stream(stream));
            if let Some(total) = total {
                response
                    .headers_mut()
                    .insert(BLOB_SIZE_HEADER, http::HeaderValue::from(total));
            }
            response
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

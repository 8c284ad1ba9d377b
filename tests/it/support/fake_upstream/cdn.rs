//! The blob CDN: serves `GET/HEAD /blobs/<digest>?sig=…` from signed, expiring URLs and, like
//! S3 presigned URLs, refuses any request that also carries `Authorization`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderMap, Method, StatusCode, Uri, header};

use super::conn::ConnHandle;
use super::faults::Target;
use super::respond::{header_fault, record, serve_bytes};
use super::stats::{Kind, Role};
use super::{Shared, lock};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/blobs/{digest}", any(serve))
        .layer(axum::middleware::from_fn_with_state(
            (shared.clone(), Role::Cdn),
            record,
        ))
        .with_state(shared)
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(digest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if shared.opts.cdn_basic_challenge && !headers.contains_key(header::AUTHORIZATION) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"cdn\"")],
            "credentials, please",
        )
            .into_response();
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed",
        );
    }
    let sig = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "sig")
            .map(|(_, v)| v.into_owned())
    });
    let valid = sig.and_then(|s| lock(&shared.cdn_signatures).get(&s).cloned());
    match valid {
        Some((d, expires)) if d == digest && expires > tokio::time::Instant::now() => {}
        Some((d, _)) if d == digest => {
            return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
        }
        _ => {
            return s3_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Signature does not match",
            );
        }
    }
    let refs = [digest.as_str()];
    let target = Target {
        role: Role::Cdn,
        kind: Kind::Blob,
        method: &method,
        references: &refs,
    };
    if let Some(response) = header_fault(&shared, &target).await {
        return response;
    }
    let blob = {
        let repos = lock(&shared.repos);
        repos.values().find_map(|r| {
            r.blobs
                .get(&digest)
                .or_else(|| r.manifests.get(&digest))
                .cloned()
        })
    };
    match blob {
        Some(blob) => serve_bytes(&shared, &target, &blob, &headers, conn),
        None => s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        ),
    }
}

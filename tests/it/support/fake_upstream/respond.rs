//! Pieces every fake server shares: serving, request recording, errors, byte ranges, faults.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::conn::{ConnHandle, KillableListener, faulty_body};
use super::faults::{Action, Stage, Target};
use super::stats::{Kind, LoggedRequest, Role};
use super::{Shared, lock};
use crate::support::images::Blob;

pub fn spawn(listener: TcpListener, router: Router) -> JoinHandle<()> {
    let app = router.into_make_service_with_connect_info::<ConnHandle>();
    tokio::spawn(async move {
        let _ = axum::serve(KillableListener(listener), app).await;
    })
}

/// Middleware: counts the request on arrival, logs it with its status once answered.
pub async fn record(
    State((shared, role)): State<(Arc<Shared>, Role)>,
    req: Request,
    next: Next,
) -> Response {
    let kind = Kind::of_path(role, req.uri().path());
    let method = req.method().clone();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    *lock(&shared.stats)
        .counts
        .entry((role, kind, method.clone()))
        .or_default() += 1;
    let mut response = next.run(req).await;
    if role == Role::Registry {
        response.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
    }
    let status = response.status().as_u16();
    lock(&shared.stats).log.push(LoggedRequest {
        role,
        kind,
        method,
        uri,
        headers,
        status,
    });
    response
}

/// `{"errors":[{"code","message","detail"}]}` with `status`.
pub fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Applies a header-stage fault, if one is queued for `target`: returns the response to send
/// instead (for a status fault) after any delay.
pub async fn header_fault(shared: &Shared, target: &Target<'_>) -> Option<Response> {
    let action = lock(&shared.faults).take(Stage::Headers, target)?;
    match action {
        Action::DelayHeaders(d) => {
            // The injected fault itself: a slow upstream holding its answer.
            tokio::time::sleep(d).await;
            None
        }
        Action::Status { code, retry_after } => {
            let status = StatusCode::from_u16(code).expect("valid status code");
            let oci_code = if code == 429 {
                "TOOMANYREQUESTS"
            } else {
                "UNAVAILABLE"
            };
            let mut r = oci_error(status, oci_code, "fault injected by test");
            if let Some(secs) = retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            Some(r)
        }
        _ => unreachable!("body-stage action at header stage"),
    }
}

/// Serves `blob` (GET/HEAD) honouring `Range`, applying any queued body-stage fault.
pub fn serve_bytes(
    shared: &Arc<Shared>,
    target: &Target<'_>,
    blob: &Blob,
    req_headers: &HeaderMap,
    conn: ConnHandle,
) -> Response {
    let total = blob.size();
    let fault = if target.method == Method::GET {
        lock(&shared.faults).take(Stage::Body, target)
    } else {
        None
    };
    let range = match (&fault, req_headers.get(header::RANGE)) {
        (Some(Action::IgnoreRange), _) | (_, None) => None,
        (_, Some(v)) => match parse_range(v.to_str().unwrap_or(""), total) {
            Some(r) => Some(r),
            None => {
                let mut r = oci_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "RANGE_INVALID",
                    "bad range",
                );
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    format!("bytes */{total}").parse().unwrap(),
                );
                return r;
            }
        },
    };
    let (status, data) = match range {
        Some((start, end)) => (
            StatusCode::PARTIAL_CONTENT,
            blob.bytes.slice(start as usize..=end as usize),
        ),
        None => (StatusCode::OK, blob.bytes.clone()),
    };
    let mut headers = HeaderMap::new();
    let content_type = if target.kind == Kind::Manifest {
        blob.media_type.as_str()
    } else {
        "application/octet-stream"
    };
    // A manifest stored without a media type goes out without Content-Type (berth then
    // reads the manifest's own mediaType).
    if !content_type.is_empty() {
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    }
    if !(shared.opts.chunked_blobs && target.kind == Kind::Blob) {
        headers.insert(header::CONTENT_LENGTH, data.len().into());
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert("docker-content-digest", blob.digest.parse().unwrap());
    headers.insert(
        header::ETAG,
        format!("\"{}\"", blob.digest).parse().unwrap(),
    );
    if let Some((start, end)) = range {
        headers.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}").parse().unwrap(),
        );
    }
    if target.method == Method::HEAD {
        return (status, headers).into_response();
    }
    let (stats_shared, digest) = (shared.clone(), blob.digest.clone());
    let on_sent = move |n: u64| {
        *lock(&stats_shared.stats)
            .blob_bytes_sent
            .entry(digest.clone())
            .or_default() += n;
    };
    (status, headers, faulty_body(data, fault, conn, on_sent)).into_response()
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive (start, end); `None` if unsatisfiable.
pub fn parse_range(value: &str, total: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (total.saturating_sub(n), total - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            total - 1
        } else {
            b.parse::<u64>().ok()?.min(total - 1)
        };
        (start, end)
    };
    (start <= end && start < total).then_some((start, end))
}

pub fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

/// RFC 3339 UTC timestamp of now (for the token's `issued_at`), without a date crate.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

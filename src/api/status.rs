//! `GET /_berth/status`: the status report as HTML for a browser, or JSON with
//! `Accept: application/json` (or `?format=json`). `?since=30m` limits failures to the recent
//! past. Served to loopback clients, or to anyone with the admin token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};

use super::ApiError;
use crate::mirror::Mirror;
use crate::oci::ErrorCode;

pub async fn status(State(mirror): State<Arc<Mirror>>, request: Request) -> Response {
    if let Err(denied) = authorize(&mirror, &request) {
        return denied.into_response();
    }
    let mut json = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().unwrap_or("").trim() == "application/json");
    let mut since = None;
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        match key.as_ref() {
            "format" => json = value == "json",
            "since" => match crate::units::parse_window(&value, crate::status::MAX_SINCE) {
                Some(d) => since = Some(d),
                None => {
                    let message = format!(
                        "since={value:?} is not a duration: use e.g. 90s, 30m, 2h or 1d (at most 7d)"
                    );
                    return ApiError::new(ErrorCode::Unsupported, message)
                        .with_status(http::StatusCode::BAD_REQUEST)
                        .into_response();
                }
            },
            _ => {}
        }
    }
    let report = mirror.status(since).await;
    if json {
        ([(CACHE_CONTROL, "no-store")], axum::Json(report)).into_response()
    } else {
        (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, "no-store"),
            ],
            crate::status::render_html(&report),
        )
            .into_response()
    }
}

/// `GET /_berth/history[?since=30d]`: the images the cluster pulled (JSON), under the status
/// page's access rules.
pub async fn history(State(mirror): State<Arc<Mirror>>, request: Request) -> Response {
    if let Err(denied) = authorize(&mirror, &request) {
        return denied.into_response();
    }
    let mut since = None;
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        if key == "since" {
            match crate::units::parse_window(&value, crate::config::MAX_HISTORY) {
                Some(d) => since = Some(d),
                None => {
                    let message = format!(
                        "since={value:?} is not a duration: use e.g. 2h, 7d or 30d (at most 366d)"
                    );
                    return ApiError::new(ErrorCode::Unsupported, message)
                        .with_status(http::StatusCode::BAD_REQUEST)
                        .into_response();
                }
            }
        }
    }
    let report = mirror.history().report(since, &mirror.config().nodes);
    ([(CACHE_CONTROL, "no-store")], axum::Json(report)).into_response()
}

/// The admin endpoints' rules: the admin token when one is configured; else, with
/// `admin_listen`, whoever reaches that listener (this route is only there then); else
/// loopback clients only (the page names client addresses and images).
fn authorize(mirror: &Mirror, request: &Request) -> Result<(), ApiError> {
    let config = mirror.config();
    if config.admin_token.is_some() {
        return super::admin::authorize(mirror, request.headers());
    }
    if config.server.admin_listen.is_some() {
        return Ok(());
    }
    let loopback = super::record::client_address(request).is_some_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Denied,
            "the status page is served to loopback clients only; set admin_token_file or \
             [server] admin_listen in berth.toml to reach it from elsewhere",
        )
        .with_status(http::StatusCode::FORBIDDEN))
    }
}

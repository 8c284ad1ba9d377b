//! The only module that names axum: one catch-all `/v2/` route, parsed once into an [`OciPath`].

mod admin;
mod error;
mod fleet;
mod handlers;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use http::HeaderValue;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;

use crate::mirror::Mirror;

pub fn router(mirror: Arc<Mirror>) -> Router {
    Router::new()
        .route("/v2", any(handlers::dispatch))
        .route("/v2/", any(handlers::dispatch))
        .route("/v2/{*rest}", any(handlers::dispatch))
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/_berth/pins", get(admin::list_pins))
        .route("/_berth/pins/{name}", put(admin::put_pins))
        .route("/_berth/fills/{digest}", get(fleet::peer_fill))
        .fallback(handlers::not_found)
        .with_state(mirror)
        .layer(SetResponseHeaderLayer::overriding(
            http::HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ))
        // 5xx are logged once, with the reason, by `ApiError`; a 504 (`only-if-cached`) is
        // an answer, not a failure.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(catch_panic())
}

/// A panic in a handler becomes a 500 with an OCI error body, never a dropped connection.
/// (Shared work — singleflights, fills — runs in its own tasks and contains its own panics.)
fn catch_panic() -> CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    CatchPanicLayer::custom(panic_response as fn(Box<dyn std::any::Any + Send>) -> Response)
}

fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked; answered 500");
    ApiError::internal("internal error while handling the request").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_an_oci_error() {
        let app: Router = Router::new()
            .route(
                "/v2/boom",
                get(|| async {
                    if true {
                        panic!("bug");
                    }
                    "unreachable"
                }),
            )
            .layer(catch_panic());
        let response = app
            .oneshot(
                http::Request::get("/v2/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "UNKNOWN", "{json}");
    }
}

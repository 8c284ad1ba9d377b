//! The only module that names axum: one catch-all `/v2/` route, parsed once into an [`OciPath`],
//! behind the [`Door`] (allowed networks, Basic users); the admin endpoints beside it or on
//! their own listener.

mod admin;
mod door;
mod error;
mod fleet;
mod handlers;
mod record;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use http::HeaderValue;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use door::Door;
pub use error::ApiError;

use crate::mirror::Mirror;

/// Every endpoint on one router, without the door's checks (in-process callers and tests).
pub fn router(mirror: Arc<Mirror>) -> Router {
    layered(
        registry_routes()
            .merge(service_routes())
            .merge(admin_routes())
            .fallback(handlers::not_found)
            .with_state(mirror.clone()),
        mirror,
    )
}

/// What `berth serve` listens with: the registry API (and `/metrics`, `/healthz`) behind the
/// door, with the admin endpoints merged in, or, with `admin_listen`, as a second router.
pub fn front_door(mirror: Arc<Mirror>, door: Arc<Door>) -> (Router, Option<Router>) {
    let registry =
        registry_routes().route_layer(from_fn_with_state(door.clone(), door::authenticate));
    let public = registry.merge(service_routes());
    if door.server.admin_listen.is_some() {
        let public = public
            .fallback(handlers::not_found)
            .with_state(mirror.clone())
            .layer(from_fn_with_state(door.clone(), door::allow));
        let admin = admin_routes()
            .fallback(handlers::not_found)
            .with_state(mirror.clone());
        (
            layered(public, mirror.clone()),
            Some(layered(admin, mirror)),
        )
    } else {
        let public = public
            .merge(admin_routes())
            .fallback(handlers::not_found)
            .with_state(mirror.clone())
            .layer(from_fn_with_state(door, door::allow));
        (layered(public, mirror), None)
    }
}

fn registry_routes() -> Router<Arc<Mirror>> {
    Router::new()
        .route("/v2", any(handlers::dispatch))
        .route("/v2/", any(handlers::dispatch))
        .route("/v2/{*rest}", any(handlers::dispatch))
}

/// `/metrics`, `/healthz`, and the fills other replicas stream from this one (lease token; on
/// the main listener, since peers reach each other by `advertise_url`).
fn service_routes() -> Router<Arc<Mirror>> {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/_berth/fills/{digest}", get(fleet::peer_fill))
}

fn admin_routes() -> Router<Arc<Mirror>> {
    Router::new()
        .route("/_berth/pins", get(admin::list_pins))
        .route("/_berth/pins/{name}", put(admin::put_pins))
        .route("/_berth/status", get(status::status))
        .route("/_berth/history", get(status::history))
}

fn layered(router: Router, mirror: Arc<Mirror>) -> Router {
    router
        // Outside the door: refused requests are counted too (as client requests, not pulls).
        .layer(from_fn_with_state(mirror, record::record))
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

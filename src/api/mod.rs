//! The only module that names axum: one catch-all `/v2/` route, parsed once into an [`OciPath`].

mod admin;
mod error;
mod handlers;
mod record;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, put};
use http::HeaderValue;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;
pub use status::parse_since;

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
        .route("/_berth/status", get(status::status))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            mirror.clone(),
            record::record,
        ))
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
}

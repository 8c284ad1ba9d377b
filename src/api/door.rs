//! Who may use the API: the `[server] allow` networks, then, for `/v2/`, the `users_file`
//! users (401 `UNAUTHORIZED` + `WWW-Authenticate: Basic realm="berth"`; 429
//! `TOOMANYREQUESTS` + `Retry-After` when logins are queued full or the client guessed too
//! often).
//!
//! `allow` is enforced by [`crate::server`] at accept: a client outside it never gets this far.
//! The check here is a second line (403 `DENIED`) for a listener served without it, and logs
//! nothing per request: what a refused client sent must not reach the log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};

use super::ApiError;
use crate::config::ServerConfig;
use crate::oci::ErrorCode;
use crate::server::PeerAddr;
use crate::server::users::{Login, Users};

/// What the door checks; shared by every request.
pub struct Door {
    pub server: ServerConfig,
    pub users: Option<Arc<Users>>,
}

/// 403 for clients outside `allow`. Requests that did not come through [`crate::server`] carry
/// no address and are not checked (in-process callers).
pub async fn allow(State(door): State<Arc<Door>>, request: Request, next: Next) -> Response {
    if let Some(PeerAddr(peer)) = request.extensions().get::<PeerAddr>().copied() {
        if !door.server.allows(peer.ip()) {
            // No line per request (a flood would be a flood of lines), and never the path.
            tracing::debug!(client = %peer.ip(), "refused a request: the client's address is outside [server] allow");
            return ApiError::new(
                ErrorCode::Denied,
                format!(
                    "{} may not use this mirror (not in its allowed networks)",
                    peer.ip().to_canonical()
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// 401 without valid Basic credentials of a `users_file` user; 429 when the login cannot be
/// checked now (see [`crate::server::users`]).
pub async fn authenticate(State(door): State<Arc<Door>>, request: Request, next: Next) -> Response {
    let Some(users) = &door.users else {
        return next.run(request).await;
    };
    let offered = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let client = request
        .extensions()
        .get::<PeerAddr>()
        .map(|PeerAddr(peer)| peer.ip());
    let (message, wait) = match users.authenticate(offered, client).await {
        Login::User(_) => return next.run(request).await,
        Login::Refused => {
            let message = if offered.is_some() {
                "wrong user name or password"
            } else {
                "this mirror needs a user name and password (HTTP Basic)"
            };
            return ApiError::new(ErrorCode::Unauthorized, message)
                .with_header(WWW_AUTHENTICATE, "Basic realm=\"berth\"")
                .into_response();
        }
        Login::Busy(wait) => ("too many logins are being checked right now", wait),
        Login::Throttled(wait) => ("too many wrong logins from this address", wait),
    };
    // Whole seconds, at least one (Retry-After takes no fractions).
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    ApiError::new(
        ErrorCode::TooManyRequests,
        format!("{message}; retry in {secs} s"),
    )
    .with_header(RETRY_AFTER, secs)
    .into_response()
}

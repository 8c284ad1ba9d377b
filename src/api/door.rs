//! Who may use the API: the `[server] allow` networks (403 `DENIED`), then, for `/v2/`, the
//! `users_file` users (401 `UNAUTHORIZED` + `WWW-Authenticate: Basic realm="berth"`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};

use super::ApiError;
use crate::config::ServerConfig;
use crate::oci::ErrorCode;
use crate::server::PeerAddr;
use crate::server::users::Users;

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
            // No line per request (a flood would be a flood of lines), and never the path:
            // server refuses such clients at accept and logs them as a count.
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

/// 401 without valid Basic credentials of a `users_file` user.
pub async fn authenticate(State(door): State<Arc<Door>>, request: Request, next: Next) -> Response {
    let Some(users) = &door.users else {
        return next.run(request).await;
    };
    let offered = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if users.authenticate(offered).await.is_none() {
        let message = if offered.is_some() {
            "wrong user name or password"
        } else {
            "this mirror needs a user name and password (HTTP Basic)"
        };
        return ApiError::new(ErrorCode::Unauthorized, message)
            .with_header(WWW_AUTHENTICATE, "Basic realm=\"berth\"")
            .into_response();
    }
    next.run(request).await
}

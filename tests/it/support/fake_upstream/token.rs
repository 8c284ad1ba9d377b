//! The token server (`GET /token?service=&scope=`) and the registry's Bearer check.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use http::{HeaderMap, StatusCode, Uri, header};
use serde_json::json;

use super::respond::{oci_error, record, rfc3339_now};
use super::stats::Role;
use super::{Grant, Shared, lock};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/token", get(issue))
        .layer(axum::middleware::from_fn_with_state(
            (shared.clone(), Role::Token),
            record,
        ))
        .with_state(shared)
}

async fn issue(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some((user, pass)) = &shared.opts.token_credentials {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(expected.as_str())
        {
            let body = json!({"details": "incorrect username or password"}).to_string();
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"fake\"")],
                body,
            )
                .into_response();
        }
    }
    let query = uri.query().unwrap_or("");
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let token = format!("fake-{:032x}", rand::random::<u128>());
    let expires = tokio::time::Instant::now() + shared.opts.token_expires_in;
    lock(&shared.tokens).insert(token.clone(), Grant { scopes, expires });
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": shared.opts.token_expires_in.as_secs(),
        "issued_at": rfc3339_now(),
    });
    let body = body.to_string();
    match shared.opts.token_drip {
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Some(every) => {
            // One byte, then one more per `every`: the body never stalls for long, never ends soon.
            let bytes = body.into_bytes();
            let drip = futures::stream::unfold(0usize, move |i| {
                let byte = bytes.get(i).copied();
                async move {
                    let byte = byte?;
                    if i > 0 {
                        tokio::time::sleep(every).await;
                    }
                    Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![byte])),
                        i + 1,
                    ))
                }
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(drip),
            )
                .into_response()
        }
    }
}

/// `None` if the request carries a live token whose scopes allow pulling `name` (any token for
/// `/v2/`); else the 401 a real registry sends, with the challenge to follow.
pub fn bearer_challenge(
    shared: &Shared,
    headers: &HeaderMap,
    name: Option<&str>,
) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut error = None;
    if let Some(token) = presented {
        match lock(&shared.tokens).get(token) {
            Some(g) if g.expires <= tokio::time::Instant::now() => error = Some("invalid_token"),
            Some(g) if name.is_none_or(|n| g.scopes.iter().any(|s| allows_pull(s, n))) => {
                return None;
            }
            Some(_) => error = Some("insufficient_scope"),
            None => error = Some("invalid_token"),
        }
    }
    let mut challenge = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        shared.token_url, shared.opts.service
    );
    if let Some(n) = name {
        challenge.push_str(&format!(",scope=\"repository:{n}:pull\""));
    }
    if let Some(e) = error {
        challenge.push_str(&format!(",error=\"{e}\""));
    }
    let mut r = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
    Some(r)
}

/// `repository:<name>:pull` or `repository:<name>:pull,push`.
fn allows_pull(scope: &str, name: &str) -> bool {
    let mut parts = scope.rsplitn(2, ':');
    let actions = parts.next().unwrap_or("");
    let resource = parts.next().unwrap_or("");
    resource == format!("repository:{name}") && actions.split(',').any(|a| a == "pull" || a == "*")
}

//! The registry API: `/v2/`, manifests, blobs, tags/list, referrers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use serde_json::{Value, json};

use super::conn::ConnHandle;
use super::faults::Target;
use super::respond::{empty, header_fault, oci_error, record, serve_bytes};
use super::stats::{Kind, Role};
use super::{Shared, lock, token};
use crate::support::images::media;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2/", any(handle))
        .route("/v2/{*rest}", any(handle))
        .layer(axum::middleware::from_fn_with_state(
            (shared.clone(), Role::Registry),
            record,
        ))
        .with_state(shared)
}

/// A registry path parsed once; names contain `/`, so split from the right.
enum Route {
    Ping,
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    Tags { name: String },
    Referrers { name: String, digest: String },
    Unknown,
}

impl Route {
    fn parse(path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Route::Unknown;
        };
        if rest.is_empty() {
            return Route::Ping;
        }
        let split = |sep: &str| {
            rest.rsplit_once(sep)
                .map(|(n, r)| (n.to_string(), r.to_string()))
        };
        if let Some((name, reference)) = split("/manifests/") {
            Route::Manifest { name, reference }
        } else if let Some((name, digest)) = split("/blobs/") {
            Route::Blob { name, digest }
        } else if let Some(name) = rest.strip_suffix("/tags/list") {
            Route::Tags {
                name: name.to_string(),
            }
        } else if let Some((name, digest)) = split("/referrers/") {
            Route::Referrers { name, digest }
        } else {
            Route::Unknown
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
            Route::Ping | Route::Unknown => None,
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let route = Route::parse(uri.path());
    if shared.opts.token_auth {
        if let Some(challenge) = token::bearer_challenge(&shared, &headers, route.name()) {
            return challenge;
        }
    }
    let kind = Kind::of_path(Role::Registry, uri.path());
    let resolved = match &route {
        Route::Manifest { name, reference } => resolve(&shared, name, reference),
        _ => None,
    };
    let refs: Vec<&str> = match &route {
        Route::Manifest { reference, .. } => [Some(reference.as_str()), resolved.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
        Route::Blob { digest, .. } | Route::Referrers { digest, .. } => vec![digest.as_str()],
        _ => vec![],
    };
    let target = Target {
        role: Role::Registry,
        kind,
        method: &method,
        references: &refs,
    };
    if let Some(response) = header_fault(&shared, &target).await {
        return response;
    }
    if method != Method::GET && method != Method::HEAD {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the fake is pull-only",
        );
    }
    match &route {
        Route::Ping => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        Route::Manifest { name, .. } => {
            manifest(&shared, &target, name, resolved.clone(), &headers, conn)
        }
        Route::Blob { name, digest } => blob(&shared, &target, name, digest, &headers, conn),
        Route::Tags { name } => tags(&shared, name, &uri),
        Route::Referrers { name, digest } => referrers(&shared, name, digest, &uri),
        Route::Unknown => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no such route"),
    }
}

/// Tag or digest → the stored manifest's digest.
fn resolve(shared: &Shared, name: &str, reference: &str) -> Option<String> {
    let repos = lock(&shared.repos);
    let repo = repos.get(name)?;
    if reference.starts_with("sha256:") {
        repo.manifests
            .contains_key(reference)
            .then(|| reference.to_string())
    } else {
        repo.tags.get(reference).cloned()
    }
}

fn name_unknown(name: &str) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        &format!("repository {name} not known to registry"),
    )
}

fn manifest(
    shared: &Arc<Shared>,
    target: &Target<'_>,
    name: &str,
    resolved: Option<String>,
    headers: &HeaderMap,
    conn: ConnHandle,
) -> Response {
    if !lock(&shared.repos).contains_key(name) {
        return name_unknown(name);
    }
    let found = resolved.and_then(|d| lock(&shared.repos).get(name)?.manifests.get(&d).cloned());
    let Some(manifest) = found else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    if !accepts(headers, &manifest.media_type) {
        let msg = format!(
            "{} found, but the Accept header does not include it",
            manifest.media_type
        );
        return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &msg);
    }
    let mut response = serve_bytes(shared, target, &manifest, headers, conn);
    if let Some(remaining) = shared.opts.ratelimit_remaining {
        let value = format!("{remaining};w=21600");
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            response.headers_mut().insert("ratelimit-remaining", value);
        }
        response.headers_mut().insert(
            "ratelimit-limit",
            http::HeaderValue::from_static("100;w=21600"),
        );
    }
    response
}

/// No `Accept` at all, `*/*`, or the exact media type among the listed ones.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut listed = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .peekable();
    if listed.peek().is_none() || media_type.is_empty() {
        return true;
    }
    listed.any(|t| t == "*/*" || t == media_type)
}

fn blob(
    shared: &Arc<Shared>,
    target: &Target<'_>,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    conn: ConnHandle,
) -> Response {
    let found = {
        let repos = lock(&shared.repos);
        let Some(repo) = repos.get(name) else {
            return name_unknown(name);
        };
        repo.blobs
            .get(digest)
            .or_else(|| repo.manifests.get(digest))
            .cloned()
    };
    let redirect_anyway = shared.opts.cdn_redirect && shared.opts.redirect_unknown_blobs;
    if found.is_none() && !redirect_anyway {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        );
    }
    if shared.opts.cdn_redirect {
        let signature = format!("{:032x}", rand::random::<u128>());
        let expires = tokio::time::Instant::now() + shared.opts.cdn_url_ttl;
        lock(&shared.cdn_signatures).insert(signature.clone(), (digest.to_string(), expires));
        let location = format!("{}/blobs/{digest}?sig={signature}", shared.cdn_url);
        let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
        r.headers_mut()
            .insert(header::LOCATION, location.parse().unwrap());
        return r;
    }
    match found {
        Some(blob) => serve_bytes(shared, target, &blob, headers, conn),
        None => oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        ),
    }
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn tags(shared: &Shared, name: &str, uri: &Uri) -> Response {
    let all: Vec<String> = match lock(&shared.repos).get(name) {
        Some(repo) => repo.tags.keys().cloned().collect(),
        None => return name_unknown(name),
    };
    let last = query_param(uri, "last");
    let n = query_param(uri, "n").and_then(|n| n.parse::<usize>().ok());
    let after: Vec<String> = all
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let page: Vec<String> = after
        .iter()
        .take(n.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"name": name, "tags": page}).to_string(),
    )
        .into_response();
    if let (Some(n), Some(tail)) = (n, page.last()) {
        if after.len() > page.len() {
            let link = format!("</v2/{name}/tags/list?n={n}&last={tail}>; rel=\"next\"");
            r.headers_mut().insert(header::LINK, link.parse().unwrap());
        }
    }
    r
}

fn referrers(shared: &Shared, name: &str, digest: &str, uri: &Uri) -> Response {
    let filter = query_param(uri, "artifactType");
    let manifests: Vec<Value> = {
        let repos = lock(&shared.repos);
        let Some(repo) = repos.get(name) else {
            return name_unknown(name);
        };
        let mut found: Vec<Value> = repo
            .manifests
            .values()
            .filter_map(|m| {
                let doc: Value = serde_json::from_slice(&m.bytes).ok()?;
                if doc["subject"]["digest"].as_str() != Some(digest) {
                    return None;
                }
                let artifact_type = doc["artifactType"]
                    .as_str()
                    .or(doc["config"]["mediaType"].as_str())?
                    .to_string();
                if filter.as_ref().is_some_and(|f| *f != artifact_type) {
                    return None;
                }
                let mut d = m.descriptor();
                d["artifactType"] = json!(artifact_type);
                if doc.get("annotations").is_some() {
                    d["annotations"] = doc["annotations"].clone();
                }
                Some(d)
            })
            .collect();
        found.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        found
    };
    let body = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests});
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, media::OCI_INDEX)],
        body.to_string(),
    )
        .into_response();
    if filter.is_some() {
        r.headers_mut()
            .insert("oci-filters-applied", "artifactType".parse().unwrap());
    }
    r
}

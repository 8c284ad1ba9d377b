//! Request handlers: extract, one call into `mirror`, map to a response.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::header::{
    ACCEPT, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use super::ApiError;
use super::record::PullTarget;
use crate::history::ManifestPull;
use crate::mirror::{BlobQuery, BlobStream, ListingBody, Lookup, Manifest, Mirror, MirrorError};
use crate::oci::{ByteRange, Digest, Endpoint, ErrorCode, OciPath, Want};
use crate::server::zero_copy::FileSender;
use crate::store::{ByteStream, file_span};

const DIGEST_HEADER: &str = "docker-content-digest";

pub async fn dispatch(
    State(mirror): State<Arc<Mirror>>,
    peer: Option<axum::Extension<crate::server::PeerAddr>>,
    file_sender: Option<axum::Extension<FileSender>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut pulled = None;
    let client =
        peer.map(|axum::Extension(crate::server::PeerAddr(addr))| addr.ip().to_canonical());
    let request = Incoming {
        method: &method,
        uri: &uri,
        headers: &headers,
        client,
        file_sender: file_sender.map(|axum::Extension(sender)| sender),
    };
    let mut response = match handle(&mirror, &request, &mut pulled).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    if let Some(pulled) = pulled {
        response.extensions_mut().insert(pulled);
    }
    // The upstream failed (or no longer has a pinned tag) and the last known answer was
    // served: say so (RFC 9111's stale warning), as the log and the metrics do.
    if response.status().is_success()
        && crate::trace::current_result() == Some(crate::trace::CacheResult::Stale)
    {
        response.headers_mut().insert(
            http::header::WARNING,
            HeaderValue::from_static("110 berth \"Response is Stale\""),
        );
    }
    response
}

/// What a `/v2/` request is, as the handler reads it.
struct Incoming<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    client: Option<std::net::IpAddr>,
    /// On plain HTTP/1: file spans can go to the socket with `sendfile`.
    file_sender: Option<FileSender>,
}

impl Incoming<'_> {
    /// `berth prewarm` warms and checks the cache: not a pull of the cluster's.
    fn is_prewarm(&self) -> bool {
        self.headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with("berth-prewarm/"))
    }
}

async fn handle(
    mirror: &Arc<Mirror>,
    request: &Incoming<'_>,
    pulled: &mut Option<PullTarget>,
) -> Result<Response, ApiError> {
    let (method, uri, headers) = (request.method, request.uri, request.headers);
    let want = match *method {
        Method::GET => Want::Body,
        Method::HEAD => Want::Headers,
        _ => return Ok(read_only(method)),
    };
    let (name, endpoint) = match OciPath::parse(uri.path())? {
        OciPath::Base => return Ok(axum::Json(serde_json::json!({})).into_response()),
        OciPath::Endpoint { name, endpoint } => (name, endpoint),
    };
    let query = Query::parse(uri.query())?;
    // Until routing succeeds, the registry is what the client named.
    *pulled = Some(PullTarget::named(&name, &endpoint, query.ns.as_deref()));
    let target = mirror.route(&name, query.ns.as_deref())?;
    if let Some(pulled) = pulled.as_mut() {
        pulled.registry = target.upstream_name().to_string();
        pulled.repository = target.repo.to_string();
    }
    let lookup = lookup(headers);
    match endpoint {
        Endpoint::Tags | Endpoint::Referrers(_) if lookup == Lookup::CacheOnly => {
            Err(MirrorError::NotCached("tag lists and referrers are never cached".into()).into())
        }
        Endpoint::Manifest(reference) => {
            let accept = accept_list(headers);
            let manifest = mirror
                .manifest(&target, &reference, &accept, lookup)
                .await?;
            if !request.is_prewarm() {
                mirror.history().record(ManifestPull {
                    registry: target.upstream_name(),
                    repository: target.repo.as_str(),
                    tag: match &reference {
                        crate::oci::Reference::Tag(tag) => Some(tag.as_str()),
                        crate::oci::Reference::Digest(_) => None,
                    },
                    digest: &manifest.digest,
                    bytes: &manifest.bytes,
                    client: request.client,
                });
            }
            manifest_response(&manifest)
        }
        Endpoint::Blob(digest) => {
            let range = headers
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(ByteRange::parse);
            let query = BlobQuery {
                want,
                range,
                lookup,
            };
            let blob = mirror.blob(&target, &digest, query).await?;
            let body = blob.body.map(|stream| {
                let bytes = match (stream, &request.file_sender) {
                    (BlobStream::Spans { spans, .. }, Some(sender)) => sender.frames(spans).boxed(),
                    (BlobStream::Spans { spans, read_chunk }, None) => {
                        file_span::into_bytes(spans, read_chunk)
                    }
                    (BlobStream::Bytes(bytes), _) => bytes,
                };
                Body::from_stream(counted(mirror, bytes))
            });
            built(blob_response(&digest, blob.range, blob.total, body))
        }
        Endpoint::Tags => {
            let listing = mirror
                .tag_list(&target, query.tags_query().as_deref())
                .await?;
            built(passthrough_response(listing, "application/json"))
        }
        Endpoint::Referrers(digest) => {
            let listing = mirror
                .referrers(&target, &digest, query.referrers_query().as_deref())
                .await?;
            built(passthrough_response(listing, crate::oci::OCI_INDEX))
        }
    }
}

/// 405 for anything but GET and HEAD, saying which methods there are.
fn read_only(method: &Method) -> Response {
    let mut response = ApiError::new(
        ErrorCode::Unsupported,
        format!("{method} is not supported: berth is a read-only mirror"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn manifest_response(manifest: &Manifest) -> Result<Response, ApiError> {
    let content_type = media_type_header(&manifest.media_type).ok_or_else(|| {
        ApiError::hidden(
            StatusCode::BAD_GATEWAY,
            "the upstream gave this manifest an invalid media type (details in berth's log)",
            format!("invalid manifest media type {:?}", manifest.media_type),
        )
    })?;
    built(
        Response::builder()
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, manifest.bytes.len())
            .header(DIGEST_HEADER, manifest.digest.to_string())
            .body(Body::from(manifest.bytes.clone())),
    )
}

/// The blob's bytes (or their stand-ins), counted into `berth_served_bytes_total` as hyper
/// takes them.
fn counted(mirror: &Mirror, bytes: ByteStream) -> ByteStream {
    let served = mirror.metrics().served_bytes.clone();
    bytes
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                served.inc_by(chunk.len() as u64);
            }
        })
        .boxed()
}

/// A response, or a 500 naming the failure: a builder error never becomes an empty 200.
fn built(response: http::Result<Response>) -> Result<Response, ApiError> {
    response.map_err(|e| {
        ApiError::hidden(
            StatusCode::INTERNAL_SERVER_ERROR,
            "berth could not build the response (details in berth's log)",
            format!("response builder: {e}"),
        )
    })
}

/// A media type as a `Content-Type` value, or `None` when it is not a valid one
/// ([`crate::oci::is_media_type`]): untrusted text must not become a header unchecked.
fn media_type_header(media_type: &str) -> Option<HeaderValue> {
    crate::oci::is_media_type(media_type)
        .then(|| HeaderValue::from_str(media_type).ok())
        .flatten()
}

fn blob_response(
    digest: &Digest,
    range: Option<(u64, u64)>,
    total: Option<u64>,
    body: Option<Body>,
) -> http::Result<Response> {
    let mut builder = Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(ACCEPT_RANGES, "bytes")
        .header(DIGEST_HEADER, digest.to_string());
    match (range, total) {
        (Some((start, end)), Some(total)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_RANGE, format!("bytes {start}-{end}/{total}"))
                .header(CONTENT_LENGTH, end - start + 1);
        }
        (_, Some(total)) => builder = builder.header(CONTENT_LENGTH, total),
        (_, None) => {}
    }
    builder.body(body.unwrap_or_else(Body::empty))
}

fn passthrough_response(
    listing: ListingBody,
    default_type: &'static str,
) -> http::Result<Response> {
    // An upstream's invalid Content-Type is replaced by what the endpoint always returns.
    let content_type = listing
        .content_type
        .as_deref()
        .and_then(media_type_header)
        .unwrap_or(HeaderValue::from_static(default_type));
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .body(Body::from_stream(listing.body))
}

/// `Cache-Control: only-if-cached` (RFC 9111): answer from the cache or 504, never go upstream.
fn lookup(headers: &HeaderMap) -> Lookup {
    let only_if_cached = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"));
    if only_if_cached {
        Lookup::CacheOnly
    } else {
        Lookup::Normal
    }
}

/// At most this many `Accept` entries are read, each at most this long; the rest is ignored
/// (real clients send fewer than ten).
const MAX_ACCEPT_ENTRIES: usize = 64;
const MAX_MEDIA_TYPE_LEN: usize = 255;

/// The client's `Accept` list as bare media types (parameters such as `q=` dropped), capped
/// and deduplicated in linear time.
fn accept_list(headers: &HeaderMap) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty() && t.len() <= MAX_MEDIA_TYPE_LEN)
        .filter(|t| seen.insert(*t))
        .take(MAX_ACCEPT_ENTRIES)
        .map(str::to_string)
        .collect()
}

/// Page sizes above this are asked of the upstream as this.
const MAX_TAGS_PAGE: u64 = 10_000;

/// The query parameters berth understands; the rest are ignored.
struct Query {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
    artifact_type: Option<String>,
}

impl Query {
    /// The parameters berth reads; a `?ns=` that is not a registry host name is refused
    /// before it reaches a log, a record or an error message.
    fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query {
            ns: None,
            n: None,
            last: None,
            artifact_type: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "ns" => q.ns = Some(value.into_owned()),
                "n" => q.n = Some(value.into_owned()),
                "last" => q.last = Some(value.into_owned()),
                "artifactType" => q.artifact_type = Some(value.into_owned()),
                _ => {}
            }
        }
        if q.ns
            .as_deref()
            .is_some_and(|ns| !crate::oci::is_registry_name(ns))
        {
            return Err(ApiError::new(
                ErrorCode::NameInvalid,
                "the ns query parameter is not a registry host name (such as docker.io or registry.local:5000)",
            ));
        }
        Ok(q)
    }

    fn tags_query(&self) -> Option<String> {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = self.n.as_deref().and_then(|n| n.trim().parse::<u64>().ok()) {
            out.append_pair("n", &n.min(MAX_TAGS_PAGE).to_string());
        }
        if let Some(last) = &self.last {
            out.append_pair("last", last);
        }
        Some(out.finish()).filter(|s| !s.is_empty())
    }

    fn referrers_query(&self) -> Option<String> {
        let t = self.artifact_type.as_ref()?;
        Some(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", t)
                .finish(),
        )
    }
}

pub async fn metrics(State(mirror): State<Arc<Mirror>>) -> Response {
    mirror.refresh_gauges();
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        mirror.metrics().encode(),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> Response {
    ApiError::new(
        ErrorCode::NameUnknown,
        format!("no such endpoint: {}", uri.path()),
    )
    .into_response()
}

//! Every request, counted and timed to its last byte: `berth_client_requests_total`, the
//! latency histogram, and (for pulls) an entry in the pull record and the access log. The
//! handler says what was pulled ([`PullTarget`]) and `ApiError` why it failed
//! ([`FailureFact`]), both as response extensions; the mirror notes the cache result and
//! counts upstream attempts in the request's [`Trace`]; the body wrapper records once, when
//! the body ends, fails or is dropped.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use tokio::time::Instant;

use super::error::FailureFact;
use crate::coalesce::ReaderError;
use crate::failure::ErrorClass;
use crate::mirror::Mirror;
use crate::oci::Endpoint;
use crate::pulls::Pull;
use crate::server::PeerAddr;
use crate::trace::{self, Trace};

/// What a `/v2/` request asked for, set by the handler once the path is parsed.
#[derive(Debug, Clone)]
pub struct PullTarget {
    pub registry: String,
    pub repository: String,
    pub reference: String,
    pub kind: &'static str,
}

impl PullTarget {
    /// What the client named, before routing: the registry of `?ns=` (already checked to be
    /// a registry name) or of the path's first component.
    pub fn named(name: &str, endpoint: &Endpoint, ns: Option<&str>) -> PullTarget {
        let reference = match endpoint {
            Endpoint::Manifest(r) => r.to_string(),
            Endpoint::Blob(d) | Endpoint::Referrers(d) => d.to_string(),
            Endpoint::Tags => String::new(),
        };
        let registry = ns.unwrap_or_else(|| name.split_once('/').map_or("-", |(first, _)| first));
        PullTarget {
            registry: registry.to_string(),
            repository: name.to_string(),
            reference,
            kind: endpoint.kind(),
        }
    }
}

pub async fn record(State(mirror): State<Arc<Mirror>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = SystemTime::now();
    let client = client_address(&request);
    let route_kind = route_kind(request.uri().path());
    let trace = Arc::new(Trace::default());
    let mut response = trace::scope(trace.clone(), next.run(request)).await;
    let target = response.extensions_mut().remove::<PullTarget>();
    let failure = response.extensions_mut().remove::<FailureFact>();
    let node = client
        .and_then(|ip| mirror.config().nodes.name(ip))
        .map(str::to_string);
    let pending = Pending {
        mirror,
        started,
        endpoint: target.as_ref().map_or(route_kind, |t| t.kind),
        status: response.status().as_u16(),
        trace,
        pull: target.map(|t| Pull {
            at,
            client,
            node,
            registry: t.registry,
            repository: t.repository,
            reference: t.reference,
            kind: t.kind,
            status: response.status().as_u16(),
            error_class: failure.as_ref().and_then(|f| f.class),
            error: failure.map(|f| f.message),
            bytes: 0,
            duration: Default::default(),
            cache: None,
            upstream_attempts: 0,
        }),
    };
    let (parts, body) = response.into_parts();
    let body = Body::new(RecordedBody {
        inner: body,
        bytes: 0,
        pending: Some(pending),
    });
    Response::from_parts(parts, body)
}

/// The client's address: the connection's peer as the front door saw it (no proxy headers:
/// berth is not behind one). `None` for in-process callers.
pub(super) fn client_address(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<PeerAddr>()
        .map(|PeerAddr(addr)| addr.ip().to_canonical())
}

fn route_kind(path: &str) -> &'static str {
    if path.starts_with("/v2") {
        "base"
    } else if path.starts_with("/_berth/") {
        "admin"
    } else if path == "/metrics" || path == "/healthz" {
        "service"
    } else {
        "other"
    }
}

struct Pending {
    mirror: Arc<Mirror>,
    started: Instant,
    endpoint: &'static str,
    status: u16,
    /// Written by the mirror while it serves (also from the fill it started).
    trace: Arc<Trace>,
    pull: Option<Pull>,
}

impl Pending {
    fn finish(self, bytes: u64, body_error: Option<(Option<ErrorClass>, String)>) {
        let duration = self.started.elapsed();
        let metrics = self.mirror.metrics();
        metrics.client_request(self.endpoint, self.status, duration.as_secs_f64());
        let Some(mut pull) = self.pull else {
            return;
        };
        pull.bytes = bytes;
        pull.duration = duration;
        pull.cache = self.trace.cache_result();
        pull.upstream_attempts = self.trace.upstream_attempts();
        if let Some((class, cause)) = body_error {
            // The headers said 200 but the body broke (a fill that failed mid-transfer).
            pull.status = 502;
            pull.error_class = class.or(pull.error_class).or(Some(ErrorClass::Other));
            pull.error = Some(cause);
        }
        if pull.error_class == Some(ErrorClass::Store) {
            metrics.store_errors.inc();
        }
        self.mirror.pulls().add(pull);
    }
}

/// The class and message of a body that broke: the fill's own error when it failed.
fn body_failure(e: &axum::Error) -> (Option<ErrorClass>, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let fill = s.downcast_ref::<ReaderError>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<ReaderError>())
        });
        if let Some(fill) = fill {
            return (crate::mirror::fill_failure_class(fill), fill.to_string());
        }
        source = s.source();
    }
    (None, e.to_string())
}

struct RecordedBody {
    inner: Body,
    bytes: u64,
    pending: Option<Pending>,
}

impl HttpBody for RecordedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(pending) = this.pending.take() {
                    pending.finish(this.bytes, Some(body_failure(e)));
                }
            }
            Poll::Ready(None) => {
                if let Some(pending) = this.pending.take() {
                    pending.finish(this.bytes, None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body dropped before its end (HEAD, a client that hung up) is recorded with what was sent.
impl Drop for RecordedBody {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish(self.bytes, None);
        }
    }
}

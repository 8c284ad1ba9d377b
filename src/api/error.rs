//! OCI error responses: `{"errors":[{"code","message","detail"}]}` with the conventional status.
//! Every conversion is written out, so an upstream 404 can never turn into a 500.
//! What a client reads names no upstream URL, CDN address, signed URL or token: the causes of
//! upstream and storage failures go to berth's log only.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_RANGE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use crate::failure::ErrorClass;
use crate::mirror::MirrorError;
use crate::oci::{ErrorBody, ErrorCode, ErrorEntry, PathError};

/// Longest message a client reads (and the pull record keeps).
const MAX_MESSAGE_BYTES: usize = crate::pulls::MAX_ERROR_BYTES;

fn clipped(mut message: String) -> String {
    crate::text::clip_owned(&mut message, MAX_MESSAGE_BYTES);
    message
}

/// Where the cause of a failure is, for the client.
const SEE_LOG: &str = "details in berth's log";

/// How long a client should wait after berth could not reach an upstream.
const UNREACHABLE_RETRY_AFTER_SECS: u64 = 10;

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Logged with the failure, never sent: may name internal hosts or signed URLs.
    detail: Option<String>,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    /// For the pull record (see `record.rs`); never sent to the client.
    class: Option<ErrorClass>,
}

/// A failed response's class and full cause (unredacted: the status page is for admins), as a
/// response extension for the pull record.
#[derive(Debug, Clone)]
pub struct FailureFact {
    pub class: Option<ErrorClass>,
    pub message: String,
}

impl ApiError {
    /// `message` may quote what the client sent: it is clipped to a few hundred bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: clipped(message.into()),
            detail: None,
            headers: Vec::new(),
            class: None,
        }
    }

    /// A 500 `UNKNOWN`: a bug, contained.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN",
            message: clipped(message.into()),
            detail: None,
            headers: Vec::new(),
            class: None,
        }
    }

    /// A failure whose cause stays in the log; the client reads `message` only.
    pub(crate) fn hidden(
        status: StatusCode,
        message: impl Into<String>,
        detail: String,
    ) -> ApiError {
        ApiError {
            status,
            code: if status == StatusCode::INTERNAL_SERVER_ERROR {
                "UNKNOWN"
            } else {
                ErrorCode::Unavailable.as_str()
            },
            message: clipped(message.into()),
            detail: Some(detail),
            headers: Vec::new(),
            class: None,
        }
    }

    fn with_class(mut self, class: ErrorClass) -> ApiError {
        self.class = Some(class);
        self
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub(crate) fn with_header(mut self, name: http::HeaderName, value: impl ToString) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        let code = match &e {
            PathError::NotFound(_) => ErrorCode::NameUnknown,
            PathError::Name(_) => ErrorCode::NameInvalid,
            PathError::Digest(_) => ErrorCode::DigestInvalid,
        };
        ApiError::new(code, e.to_string()).with_class(ErrorClass::Client)
    }
}

impl From<MirrorError> for ApiError {
    fn from(e: MirrorError) -> Self {
        let message = e.to_string();
        let class = e.class();
        let error = match e {
            MirrorError::UnknownRegistry(_) => ApiError::new(ErrorCode::NameUnknown, message),
            MirrorError::InvalidName(_) => ApiError::new(ErrorCode::NameInvalid, message),
            MirrorError::ManifestUnknown { .. } => {
                ApiError::new(ErrorCode::ManifestUnknown, message)
            }
            MirrorError::BlobUnknown { .. } => ApiError::new(ErrorCode::BlobUnknown, message),
            // OCI 1.1 clients fall back (to the referrers tag schema) on a 404 only.
            MirrorError::ListingUnknown { .. } => ApiError::new(ErrorCode::NameUnknown, message),
            MirrorError::Unwalkable { .. } => ApiError::new(ErrorCode::ManifestInvalid, message),
            MirrorError::RepositoryRefused { .. } => ApiError::new(ErrorCode::Denied, message),
            MirrorError::Denied { .. } => ApiError::new(ErrorCode::NameUnknown, message),
            MirrorError::RateLimited { retry_after, .. } => {
                let wait = retry_after.map_or(60, |d| d.as_secs().max(1));
                ApiError::new(ErrorCode::TooManyRequests, message).with_header(RETRY_AFTER, wait)
            }
            MirrorError::Unreachable {
                ref upstream,
                ref cause,
                retry_after,
                ..
            } => unreachable_upstream(upstream, cause, retry_after, message),
            MirrorError::BadUpstream {
                ref upstream,
                ref cause,
                ..
            } => ApiError::hidden(
                StatusCode::BAD_GATEWAY,
                format!("{upstream} failed: {} ({SEE_LOG})", redact(cause)),
                message,
            ),
            MirrorError::Verification {
                ref upstream,
                ref cause,
            } => ApiError::hidden(
                StatusCode::BAD_GATEWAY,
                format!(
                    "content from {upstream} failed verification: {} ({SEE_LOG})",
                    redact(cause)
                ),
                message,
            ),
            MirrorError::ManifestTooLarge => ApiError::new(ErrorCode::ManifestInvalid, message)
                .with_status(StatusCode::BAD_GATEWAY),
            MirrorError::RangeNotSatisfiable { size } => {
                ApiError::new(ErrorCode::RangeInvalid, message)
                    .with_header(CONTENT_RANGE, format!("bytes */{size}"))
            }
            // RFC 9111 §5.2.1.7: only-if-cached and not stored → 504.
            MirrorError::NotCached(_) => ApiError::new(ErrorCode::Unavailable, message)
                .with_status(StatusCode::GATEWAY_TIMEOUT),
            MirrorError::Busy { retry_after, .. } => ApiError::new(ErrorCode::Unavailable, message)
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_header(RETRY_AFTER, retry_after.as_secs().max(1)),
            MirrorError::TooLarge {
                ref upstream,
                ref cause,
            }
            | MirrorError::Refused {
                ref upstream,
                ref cause,
            } => ApiError::hidden(
                StatusCode::BAD_GATEWAY,
                format!("{upstream}: {} ({SEE_LOG})", redact(cause)),
                message,
            ),
            MirrorError::Store(_) | MirrorError::Internal(_) => ApiError::hidden(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("berth's cache storage failed or berth hit an internal error ({SEE_LOG})"),
                message,
            ),
        };
        error.with_class(class)
    }
}

/// A 503 with `Retry-After` (the open breaker's remaining cooldown, else a default wait): the
/// client reads the redacted cause, the log gets the whole `message`.
fn unreachable_upstream(
    upstream: &str,
    cause: &str,
    retry_after: Option<std::time::Duration>,
    message: String,
) -> ApiError {
    ApiError::hidden(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{upstream} is unreachable and the content is not cached: {} ({SEE_LOG})",
            redact(cause)
        ),
        message,
    )
    .with_header(
        RETRY_AFTER,
        retry_after.map_or(UNREACHABLE_RETRY_AFTER_SECS, |d| d.as_secs().max(1)),
    )
}

/// The cause of an upstream failure as a client may read it: what went wrong (`TLS handshake
/// with <host> timed out`), without the URLs (signed CDN links, token realms) or the hosts and
/// addresses berth talks to.
fn redact(cause: &str) -> String {
    cause
        .split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| "()<>,;\"'`".contains(c));
            if bare.contains("://") || bare.contains('?') && bare.contains('=') {
                word.replace(bare, "<url>")
            } else if looks_like_host(bare) {
                word.replace(bare, "<host>")
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `registry.internal`, `cdn.example.com:443`, `10.0.0.5:5000`, `[::1]:443`, `::1`; not `1.5s`
/// or `HTTP/1.1`.
fn looks_like_host(word: &str) -> bool {
    if word.parse::<std::net::IpAddr>().is_ok() || word.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let host = match word.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => word,
    };
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()))
        || host != word && host.parse::<std::net::IpAddr>().is_ok()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 504 is the expected answer to `only-if-cached` for what is not stored.
        if self.status.is_server_error() && self.status != StatusCode::GATEWAY_TIMEOUT {
            tracing::warn!(status = %self.status, code = self.code, message = %self.message,
                detail = self.detail.as_deref().unwrap_or(""), "request failed");
        }
        let fact = FailureFact {
            class: self.class,
            message: self.detail.clone().unwrap_or_else(|| self.message.clone()),
        };
        let body = ErrorBody {
            errors: vec![ErrorEntry {
                code: self.code.to_string(),
                message: self.message,
                detail: serde_json::Value::Null,
            }],
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(fact);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_keep_what_failed_and_lose_where() {
        for (cause, shown) in [
            (
                "upstream timed out: TLS handshake with registry.internal:5000 timed out",
                "upstream timed out: TLS handshake with <host> timed out",
            ),
            (
                "upstream connection failed: redirect target cdn.example.com answered 403 Forbidden (expired URL?)",
                "upstream connection failed: redirect target <host> answered 403 Forbidden (expired URL?)",
            ),
            (
                "token endpoint https://auth.example/token?scope=repo:x:pull&sig=abc did not answer",
                "token endpoint <url> did not answer",
            ),
            (
                "no response headers from 10.1.2.3 within 1.5s",
                "no response headers from <host> within 1.5s",
            ),
            ("connect to [::1]:443 refused", "connect to <host> refused"),
            ("upstream answered HTTP 500", "upstream answered HTTP 500"),
            (
                "HTTP/1.1 stalled: no bytes for 20s",
                "HTTP/1.1 stalled: no bytes for 20s",
            ),
        ] {
            assert_eq!(redact(cause), shown, "{cause}");
        }
    }
}

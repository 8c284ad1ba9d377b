//! OCI error responses: `{"errors":[{"code","message","detail"}]}` with the conventional status.
//! Every conversion is written out, so an upstream 404 can never turn into a 500.

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_RANGE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use crate::mirror::MirrorError;
use crate::oci::{ErrorBody, ErrorCode, ErrorEntry, PathError};

/// How long a client should wait after berth could not reach an upstream.
const UNREACHABLE_RETRY_AFTER_SECS: u64 = 10;

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// A 500 `UNKNOWN`: a bug, contained.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN",
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn with_status(mut self, status: StatusCode) -> ApiError {
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
        ApiError::new(code, e.to_string())
    }
}

impl From<MirrorError> for ApiError {
    fn from(e: MirrorError) -> Self {
        let message = e.to_string();
        match e {
            MirrorError::UnknownRegistry(_) => ApiError::new(ErrorCode::NameUnknown, message),
            MirrorError::InvalidName(_) => ApiError::new(ErrorCode::NameInvalid, message),
            MirrorError::ManifestUnknown { .. } => {
                ApiError::new(ErrorCode::ManifestUnknown, message)
            }
            MirrorError::BlobUnknown { .. } => ApiError::new(ErrorCode::BlobUnknown, message),
            MirrorError::Denied { .. } => ApiError::new(ErrorCode::NameUnknown, message),
            MirrorError::RateLimited { retry_after, .. } => {
                let wait = retry_after.map_or(60, |d| d.as_secs().max(1));
                ApiError::new(ErrorCode::TooManyRequests, message).with_header(RETRY_AFTER, wait)
            }
            MirrorError::Unreachable { retry_after, .. } => {
                ApiError::new(ErrorCode::Unavailable, message)
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    .with_header(
                        RETRY_AFTER,
                        retry_after.map_or(UNREACHABLE_RETRY_AFTER_SECS, |d| d.as_secs().max(1)),
                    )
            }
            MirrorError::BadUpstream { .. } | MirrorError::Verification { .. } => {
                ApiError::new(ErrorCode::Unavailable, message).with_status(StatusCode::BAD_GATEWAY)
            }
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
            MirrorError::TooLarge { .. } | MirrorError::Refused { .. } => {
                ApiError::new(ErrorCode::Unavailable, message).with_status(StatusCode::BAD_GATEWAY)
            }
            MirrorError::Store(_) | MirrorError::Internal(_) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "UNKNOWN",
                message,
                headers: Vec::new(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 504 is the expected answer to `only-if-cached` for what is not stored.
        if self.status.is_server_error() && self.status != StatusCode::GATEWAY_TIMEOUT {
            tracing::warn!(status = %self.status, code = self.code, message = %self.message, "request failed");
        }
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
        response
    }
}

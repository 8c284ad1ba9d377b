//! The class of an upstream failure: a small closed set, so it can label a metric and group
//! failures on the status page, and say in words what went wrong.

use super::UpstreamError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ErrorClass {
    #[serde(rename = "dns")]
    Dns,
    #[serde(rename = "connect")]
    Connect,
    #[serde(rename = "tls_handshake")]
    TlsHandshake,
    #[serde(rename = "header_timeout")]
    HeaderTimeout,
    #[serde(rename = "stall")]
    Stall,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "status_5xx")]
    Status5xx,
    #[serde(rename = "status_429")]
    Status429,
    #[serde(rename = "verify")]
    Verify,
    #[serde(rename = "denied")]
    Denied,
    #[serde(rename = "not_found")]
    NotFound,
    #[serde(rename = "protocol")]
    Protocol,
    #[serde(rename = "too_large")]
    TooLarge,
    #[serde(rename = "breaker_open")]
    BreakerOpen,
    #[serde(rename = "refused")]
    Refused,
    #[serde(rename = "store")]
    Store,
    #[serde(rename = "busy")]
    Busy,
    #[serde(rename = "not_cached")]
    NotCached,
    #[serde(rename = "client")]
    Client,
    #[serde(rename = "other")]
    Other,
}

impl ErrorClass {
    /// The label value (`berth_upstream_errors_total{class=...}`) and JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Dns => "dns",
            ErrorClass::Connect => "connect",
            ErrorClass::TlsHandshake => "tls_handshake",
            ErrorClass::HeaderTimeout => "header_timeout",
            ErrorClass::Stall => "stall",
            ErrorClass::Reset => "reset",
            ErrorClass::Status5xx => "status_5xx",
            ErrorClass::Status429 => "status_429",
            ErrorClass::Verify => "verify",
            ErrorClass::Denied => "denied",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Protocol => "protocol",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::BreakerOpen => "breaker_open",
            ErrorClass::Refused => "refused",
            ErrorClass::Store => "store",
            ErrorClass::Busy => "busy",
            ErrorClass::NotCached => "not_cached",
            ErrorClass::Client => "client",
            ErrorClass::Other => "other",
        }
    }

    /// What a person reads in `berth status` and on the status page.
    pub fn in_words(self) -> &'static str {
        match self {
            ErrorClass::Dns => "name lookup failed",
            ErrorClass::Connect => "TCP connect failed or timed out",
            ErrorClass::TlsHandshake => "TLS handshake failed or timed out",
            ErrorClass::HeaderTimeout => "no response headers in time",
            ErrorClass::Stall => "transfer stalled mid-body",
            ErrorClass::Reset => "connection reset or closed early",
            ErrorClass::Status5xx => "upstream server error (5xx)",
            ErrorClass::Status429 => "rate limited by the upstream (429)",
            ErrorClass::Verify => "content did not match its digest",
            ErrorClass::Denied => "access denied (credentials?)",
            ErrorClass::NotFound => "not found upstream",
            ErrorClass::Protocol => "upstream broke the protocol",
            ErrorClass::TooLarge => "larger than berth's limit",
            ErrorClass::BreakerOpen => "upstream marked down (breaker open)",
            ErrorClass::Refused => "refused by berth's upstream rules",
            ErrorClass::Store => "local storage failed",
            ErrorClass::Busy => "too many downloads running (berth's fill cap)",
            ErrorClass::NotCached => "not cached (only-if-cached)",
            ErrorClass::Client => "bad request from the client",
            ErrorClass::Other => "other failure",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl UpstreamError {
    pub fn class(&self) -> ErrorClass {
        match self {
            UpstreamError::NotFound => ErrorClass::NotFound,
            UpstreamError::Denied { .. } => ErrorClass::Denied,
            UpstreamError::TooManyRequests { .. } => ErrorClass::Status429,
            UpstreamError::Status { status, .. } if *status >= 500 => ErrorClass::Status5xx,
            UpstreamError::Status { .. } => ErrorClass::Protocol,
            // Refined by the connector's phase once the client carries it (dns/connect/tls).
            UpstreamError::Connect { class, .. } => *class,
            // A connection that worked and then broke (reset, closed early, body read failed).
            UpstreamError::Transport(_) => ErrorClass::Reset,
            UpstreamError::Timeout(_) => ErrorClass::HeaderTimeout,
            UpstreamError::Stalled(_) => ErrorClass::Stall,
            UpstreamError::Protocol(_) => ErrorClass::Protocol,
            UpstreamError::Down { .. } => ErrorClass::BreakerOpen,
            UpstreamError::TooLarge { .. } => ErrorClass::TooLarge,
            UpstreamError::Refused(_) => ErrorClass::Refused,
        }
    }
}

/// A connector failure tagged with its phase, carried inside the `io::Error` hyper hands back.
#[derive(Debug)]
pub(super) struct PhaseError {
    pub class: ErrorClass,
    message: String,
}

impl PhaseError {
    /// Wraps `e` (keeping its kind) as a failure of the `class` phase.
    pub fn wrap(class: ErrorClass, e: std::io::Error) -> std::io::Error {
        let kind = e.kind();
        std::io::Error::new(
            kind,
            PhaseError {
                class,
                message: e.to_string(),
            },
        )
    }
}

impl std::fmt::Display for PhaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PhaseError {}

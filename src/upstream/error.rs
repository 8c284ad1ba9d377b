//! Upstream failures, shaped by what the caller must decide: retry, serve stale, or tell the client.

use std::time::Duration;

use super::class::PhaseError;
use crate::failure::Failure;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused access (HTTP {status}); check the upstream's credentials")]
    Denied { status: u16 },
    #[error("upstream rate limit (HTTP 429)")]
    TooManyRequests { retry_after: Option<Duration> },
    #[error("upstream answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("upstream connection failed: {0}")]
    Transport(String),
    /// No connection: name lookup, TCP connect or TLS handshake failed (`failure` says which
    /// and how).
    #[error("upstream connection failed: {cause}")]
    Connect { failure: Failure, cause: String },
    #[error("upstream timed out: {0}")]
    Timeout(String),
    #[error("upstream transfer stalled: no bytes for {0:?}")]
    Stalled(Duration),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream is marked down after repeated failures; next probe in {retry_after:?}")]
    Down { retry_after: Duration },
    /// Bigger than a limit berth sets (manifest size, `max_blob_size`).
    #[error("larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// berth's own rules forbid following the upstream here (downgrade, private address).
    #[error("refused by berth's upstream rules: {0}")]
    Refused(String),
}

impl UpstreamError {
    /// Worth another attempt: the network or the upstream's momentary state, not the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Transport(_)
            | UpstreamError::Connect { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Stalled(_) => true,
            UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::Status { status, .. } => *status >= 500,
            UpstreamError::NotFound
            | UpstreamError::Denied { .. }
            | UpstreamError::Protocol(_)
            | UpstreamError::TooLarge { .. }
            | UpstreamError::Refused(_) => false,
            // Failing fast is the point of an open breaker.
            UpstreamError::Down { .. } => false,
        }
    }

    /// Does this say the path to the upstream is unhealthy (DNS, connect, TLS, timeouts,
    /// resets, 5xx, 429), as opposed to an answer about the content (404, 401/403, too big)?
    pub fn counts_against_health(&self) -> bool {
        match self {
            UpstreamError::Transport(_)
            | UpstreamError::Connect { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Stalled(_) => true,
            UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::TooManyRequests { retry_after }
            | UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn from_hyper(e: hyper_util::client::legacy::Error) -> UpstreamError {
        // The connector's io::Error (timeouts, refused, TLS) sits in the source chain.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                // The connector tags its failures with the phase (dns, connect, TLS).
                if let Some(phase) = io.get_ref().and_then(|i| i.downcast_ref::<PhaseError>()) {
                    return UpstreamError::Connect {
                        failure: phase.failure,
                        cause: phase.to_string(),
                    };
                }
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return UpstreamError::Timeout(io.to_string());
                }
                // The connector's address rule (see connector.rs), not a network failure.
                if io.kind() == std::io::ErrorKind::PermissionDenied {
                    return UpstreamError::Refused(io.to_string());
                }
                return UpstreamError::Transport(io.to_string());
            }
            source = s.source();
        }
        UpstreamError::Transport(e.to_string())
    }
}

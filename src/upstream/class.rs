//! How the upstream client files its errors under berth's one failure vocabulary
//! ([`crate::failure`]), and the connector's phase tag that carries a failure through hyper.

use super::UpstreamError;
use crate::failure::{ErrorClass, Failure, How};

impl UpstreamError {
    pub fn class(&self) -> ErrorClass {
        self.failure().class
    }

    /// The class, and how it happened where the client knows (a refused connect, a timed-out
    /// handshake, the status that answered).
    pub fn failure(&self) -> Failure {
        match self {
            UpstreamError::NotFound => Failure::new(ErrorClass::NotFound, How::Status(404)),
            UpstreamError::Denied { status } => {
                Failure::new(ErrorClass::Denied, How::Status(*status))
            }
            UpstreamError::TooManyRequests { .. } => Failure::status(429),
            UpstreamError::Status { status, .. } if *status >= 500 => Failure::status(*status),
            UpstreamError::Status { status, .. } => {
                Failure::new(ErrorClass::Protocol, How::Status(*status))
            }
            // The connector tags its failures with the phase (dns, connect, TLS) and how.
            UpstreamError::Connect { failure, .. } => *failure,
            // A connection that worked and then broke (reset, closed early, body read failed).
            UpstreamError::Transport(_) => Failure::plain(ErrorClass::Reset),
            UpstreamError::Timeout(_) => Failure::new(ErrorClass::HeaderTimeout, How::TimedOut),
            UpstreamError::Stalled(_) => Failure::plain(ErrorClass::Stall),
            UpstreamError::Protocol(_) => Failure::plain(ErrorClass::Protocol),
            UpstreamError::Down { .. } => Failure::plain(ErrorClass::BreakerOpen),
            UpstreamError::TooLarge { .. } => Failure::plain(ErrorClass::TooLarge),
            UpstreamError::Refused(_) => Failure::plain(ErrorClass::Refused),
        }
    }
}

/// The failure the connector tagged `e` with (its phase and how), if it did.
pub fn connect_failure(e: &std::io::Error) -> Option<Failure> {
    e.get_ref()?.downcast_ref::<PhaseError>().map(|p| p.failure)
}

/// A connector failure tagged with its phase, carried inside the `io::Error` hyper hands back.
#[derive(Debug)]
pub(super) struct PhaseError {
    pub failure: Failure,
    message: String,
}

impl PhaseError {
    /// Wraps `e` (keeping its kind) as a failure of the `phase`, refined by the error's kind.
    pub fn wrap(phase: ErrorClass, e: std::io::Error) -> std::io::Error {
        let kind = e.kind();
        std::io::Error::new(
            kind,
            PhaseError {
                failure: Failure::of_io(phase, &e),
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

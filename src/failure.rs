//! One vocabulary of failure, shared by every layer that names one: the upstream client files
//! its errors under it, metrics label by it, the pull record and the status page group by it,
//! and `berth probe` reports it. A leaf: it imports nothing of berth's.
//!
//! [`ErrorClass`] is the small closed set (a metric label, a status-page column);
//! [`Failure`] is a class refined by how a connection failed or what status answered, as
//! finely as the path diagnosis needs (`connect_refused`, `tls_handshake_timeout`, `http_503`).

use std::io;

/// The class of a failure: a small closed set, so it can label a metric and group failures on
/// the status page, and say in words what went wrong.
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

/// A failure named as finely as the path diagnosis needs: its class, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Failure {
    pub class: ErrorClass,
    pub how: How,
}

/// How a failure of some class happened, where that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum How {
    /// Nothing finer to say than the class.
    Plain,
    TimedOut,
    Refused,
    /// No route to the host or network (EHOSTUNREACH / ENETUNREACH).
    Unreachable,
    /// The peer or a middlebox reset the connection (RST, or closed mid-message).
    Reset,
    /// The far end answered with this HTTP status.
    Status(u16),
}

impl Failure {
    pub const fn new(class: ErrorClass, how: How) -> Failure {
        Failure { class, how }
    }

    pub const fn plain(class: ErrorClass) -> Failure {
        Failure::new(class, How::Plain)
    }

    /// The far end answered `status`: classed as the upstream client files it.
    pub fn status(status: u16) -> Failure {
        let class = match status {
            404 | 410 => ErrorClass::NotFound,
            401 | 403 => ErrorClass::Denied,
            429 => ErrorClass::Status429,
            s if s >= 500 => ErrorClass::Status5xx,
            _ => ErrorClass::Protocol,
        };
        Failure::new(class, How::Status(status))
    }

    /// An I/O error while `phase` (dns, connect, TLS, waiting for headers, reading a body) ran:
    /// the class stays the phase's (a metric label); the error's kind says how.
    pub fn of_io(phase: ErrorClass, e: &io::Error) -> Failure {
        let how = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => How::Reset,
            io::ErrorKind::ConnectionRefused => How::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => How::Unreachable,
            io::ErrorKind::TimedOut => How::TimedOut,
            _ => How::Plain,
        };
        Failure::new(phase, how)
    }

    /// The key `berth probe` reports (`connect_timeout`, `tls_error`, `http_503`, …).
    pub fn name(self) -> String {
        let name = match (self.class, self.how) {
            (_, How::Status(status)) => return format!("http_{status}"),
            (ErrorClass::Dns, _) => "dns",
            (_, How::Reset) => "reset",
            (_, How::Refused) => "connect_refused",
            (_, How::Unreachable) => "connect_unreachable",
            (ErrorClass::Connect, How::TimedOut) => "connect_timeout",
            (ErrorClass::Connect, _) => "connect_unreachable",
            (ErrorClass::TlsHandshake, How::TimedOut) => "tls_handshake_timeout",
            (ErrorClass::TlsHandshake, _) => "tls_error",
            (ErrorClass::HeaderTimeout, _) => "header_timeout",
            (ErrorClass::Stall, _) => "stall",
            (ErrorClass::Reset, _) => "reset",
            _ => "protocol_error",
        };
        name.to_string()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The first `io::Error` in an error's source chain (hyper and rustls wrap them).
pub fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..16 {
        let s = source?;
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_probe_reports_documented_keys() {
        let cases = [
            (Failure::status(503), "http_503"),
            (Failure::status(404), "http_404"),
            (
                Failure::new(ErrorClass::TlsHandshake, How::TimedOut),
                "tls_handshake_timeout",
            ),
            (Failure::plain(ErrorClass::TlsHandshake), "tls_error"),
            (
                Failure::new(ErrorClass::Connect, How::Refused),
                "connect_refused",
            ),
            (
                Failure::new(ErrorClass::Connect, How::TimedOut),
                "connect_timeout",
            ),
            (Failure::plain(ErrorClass::Dns), "dns"),
            (Failure::plain(ErrorClass::TooLarge), "protocol_error"),
        ];
        for (failure, name) in cases {
            assert_eq!(failure.name(), name, "{failure:?}");
        }
        assert_eq!(Failure::status(429).class, ErrorClass::Status429);
        assert_eq!(Failure::status(502).class, ErrorClass::Status5xx);
    }

    #[test]
    fn io_errors_are_classed_by_kind_then_phase() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let during_tls = Failure::of_io(ErrorClass::TlsHandshake, &reset);
        assert_eq!(
            during_tls.class,
            ErrorClass::TlsHandshake,
            "the phase labels the metric"
        );
        assert_eq!(during_tls.name(), "reset", "the probe names what happened");
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            Failure::of_io(ErrorClass::TlsHandshake, &timed_out).name(),
            "tls_handshake_timeout"
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Failure::of_io(ErrorClass::Connect, &refused).name(),
            "connect_refused"
        );
        let wrapped = io::Error::other(reset);
        assert_eq!(
            io_source(&wrapped).map(io::Error::kind),
            Some(io::ErrorKind::Other)
        );
    }
}

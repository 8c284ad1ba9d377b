//! What went wrong on one request, named so a person knows which layer of the path to look at.

use std::fmt;
use std::io;

/// One failure class per failed request or transfer; the report counts them per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The name did not resolve (or resolved to nothing).
    Dns,
    ConnectTimeout,
    ConnectRefused,
    /// No route to the host or network (EHOSTUNREACH / ENETUNREACH).
    ConnectUnreachable,
    TlsHandshakeTimeout,
    TlsError,
    /// Connected (and handshaken) but no response headers in time.
    HeaderTimeout,
    /// The peer or a middlebox reset the connection (RST, or closed mid-message).
    Reset,
    /// A body stopped moving for the stall timeout.
    Stall,
    /// An HTTP status that says the far end is unhappy (5xx, 429, 404 …).
    Http(u16),
    /// An answer berth cannot use (bad redirect, a downgrade it refuses, over a size limit).
    Protocol,
}

impl FailureClass {
    pub fn name(self) -> String {
        match self {
            FailureClass::Dns => "dns".into(),
            FailureClass::ConnectTimeout => "connect_timeout".into(),
            FailureClass::ConnectRefused => "connect_refused".into(),
            FailureClass::ConnectUnreachable => "connect_unreachable".into(),
            FailureClass::TlsHandshakeTimeout => "tls_handshake_timeout".into(),
            FailureClass::TlsError => "tls_error".into(),
            FailureClass::HeaderTimeout => "header_timeout".into(),
            FailureClass::Reset => "reset".into(),
            FailureClass::Stall => "stall".into(),
            FailureClass::Http(status) => format!("http_{status}"),
            FailureClass::Protocol => "protocol_error".into(),
        }
    }

    /// The class of an I/O error on an established (or establishing) connection.
    pub fn of_io(e: &io::Error) -> Option<FailureClass> {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Some(FailureClass::Reset),
            io::ErrorKind::ConnectionRefused => Some(FailureClass::ConnectRefused),
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Some(FailureClass::ConnectUnreachable)
            }
            _ => None,
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    fn names_are_the_documented_keys() {
        assert_eq!(FailureClass::Http(503).name(), "http_503");
        assert_eq!(
            FailureClass::TlsHandshakeTimeout.name(),
            "tls_handshake_timeout"
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(FailureClass::of_io(&reset), Some(FailureClass::Reset));
        let wrapped = io::Error::other(reset);
        assert_eq!(
            io_source(&wrapped).map(io::Error::kind),
            Some(io::ErrorKind::Other)
        );
    }
}

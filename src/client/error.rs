//! What can go wrong talking to a berth, shaped by what the caller tells its user: the local
//! setup, the network, the server's certificate, our certificate, an answer, a body.

use std::time::Duration;

/// One failed call. `url` is the request's URL (the file's path for [`ClientError::Setup`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A CA file, certificate or key that does not load, a URL that is not http(s).
    #[error("{0}")]
    Setup(String),
    /// No answer: refused, no route, DNS, a timeout before the response head.
    #[error("cannot reach {url} ({cause})")]
    Unreachable { url: String, cause: String },
    /// The server's certificate does not verify against the trusted roots (or not for its name).
    #[error("{url} presented a certificate this client does not trust ({cause})")]
    Untrusted { url: String, cause: String },
    /// The server wants a client certificate, or refused ours.
    #[error("{url} refused the connection for want of an accepted client certificate ({cause})")]
    ClientCertificate { url: String, cause: String },
    /// A non-2xx answer; `message` is the OCI error's summary or the start of the body.
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// An answer that breaks the protocol: a header missing, a body over its bound.
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
    /// A body that sent no bytes within the idle bound.
    #[error("{url}: no bytes for {idle:?}")]
    Stalled { url: String, idle: Duration },
    /// A body whose connection broke.
    #[error("{url}: transfer broke: {cause}")]
    Broken { url: String, cause: String },
}

impl ClientError {
    /// The HTTP status of a non-2xx answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What went wrong without the URL (for callers that name the server themselves).
    pub fn detail(&self) -> String {
        match self {
            ClientError::Setup(message) => message.clone(),
            ClientError::Unreachable { cause, .. } => cause.clone(),
            ClientError::Untrusted { cause, .. } => format!("untrusted certificate: {cause}"),
            ClientError::ClientCertificate { cause, .. } => {
                format!("client certificate refused: {cause}")
            }
            ClientError::Status {
                status, message, ..
            } => format!("answered {status}: {message}"),
            ClientError::Invalid { message, .. } => message.clone(),
            ClientError::Stalled { idle, .. } => format!("no bytes for {idle:?}"),
            ClientError::Broken { cause, .. } => format!("transfer broke: {cause}"),
        }
    }

    /// A failed send, sorted by what the user must fix: trust, client certificate, or reach.
    pub(super) fn from_send(url: &str, e: &reqwest::Error) -> ClientError {
        let url = url.to_string();
        let cause = innermost(e);
        match tls_problem(e) {
            Some(TlsProblem::ServerCertificate) => ClientError::Untrusted { url, cause },
            Some(TlsProblem::ClientCertificate) => ClientError::ClientCertificate { url, cause },
            None => ClientError::Unreachable { url, cause },
        }
    }

    /// A body that broke after its head arrived.
    pub(super) fn from_body(url: &str, e: &reqwest::Error) -> ClientError {
        match ClientError::from_send(url, e) {
            ClientError::Unreachable { url, cause } => ClientError::Broken { url, cause },
            other => other,
        }
    }
}

enum TlsProblem {
    ServerCertificate,
    ClientCertificate,
}

/// The alerts a server sends when it wants a client certificate or refuses ours.
const CLIENT_CERTIFICATE_ALERTS: [rustls::AlertDescription; 8] = [
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::AccessDenied,
    rustls::AlertDescription::HandshakeFailure,
];

/// Did the handshake fail on the server's certificate, or the server (TLS 1.3 says so after the
/// handshake) on ours? The rustls error is found in the chain, looking into `io::Error`s, which
/// hide their inner error from `source()` (hyper wraps tokio-rustls' `io::Error` in another).
/// Over HTTP/2, h2 keeps only the error's text, which rustls' own `Display` is compared to.
fn tls_problem(e: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut current = Some(e);
    while let Some(e) = current {
        match rustls_error(e) {
            Some(rustls::Error::InvalidCertificate(_)) => {
                return Some(TlsProblem::ServerCertificate);
            }
            Some(rustls::Error::AlertReceived(alert))
                if CLIENT_CERTIFICATE_ALERTS.contains(alert) =>
            {
                return Some(TlsProblem::ClientCertificate);
            }
            _ => {}
        }
        current = e.source();
    }
    let message = innermost(e);
    if message.starts_with("invalid peer certificate") {
        return Some(TlsProblem::ServerCertificate);
    }
    CLIENT_CERTIFICATE_ALERTS
        .iter()
        .any(|alert| message == rustls::Error::AlertReceived(*alert).to_string())
        .then_some(TlsProblem::ClientCertificate)
}

/// `e` as a rustls error, looking through (nested) `io::Error`s.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut e = e;
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        e = inner;
    }
}

/// The innermost cause ("Connection refused (os error 111)"), not reqwest's wrapper.
pub(super) fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// What hyper hands reqwest: tokio-rustls' `io::Error` inside another.
    fn wrapped(tls: rustls::Error) -> Wrapper {
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        Wrapper(std::io::Error::other(tls))
    }

    #[test]
    fn tls_failures_are_told_apart_through_an_io_error() {
        let untrusted = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(matches!(
            tls_problem(&untrusted),
            Some(TlsProblem::ServerCertificate)
        ));
        let refused = wrapped(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert!(matches!(
            tls_problem(&refused),
            Some(TlsProblem::ClientCertificate)
        ));
        // h2 hands on the text alone.
        let text = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let refused = Wrapper(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            text.to_string(),
        ));
        assert!(matches!(
            tls_problem(&refused),
            Some(TlsProblem::ClientCertificate)
        ));
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(tls_problem(&refused).is_none());
        assert_eq!(
            innermost(&untrusted),
            "invalid peer certificate: UnknownIssuer"
        );
    }
}

//! Why an image (or the whole run) failed, in words that name the fix.

use url::Url;

use crate::client::ClientError;
use crate::oci::Digest;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error(
        "cannot reach the mirror at {url} ({cause}); start it with `berth serve` or point --mirror at a running berth"
    )]
    MirrorUnreachable { url: String, cause: String },
    #[error(
        "the mirror at {url} presented a certificate this client does not trust ({cause}); pass the CA certificate that issued it with --ca-file"
    )]
    MirrorUntrusted { url: String, cause: String },
    #[error(
        "the mirror at {url} refused the connection for want of a client certificate it trusts ({cause}); pass one issued by its client_ca_file with --cert-file and --key-file"
    )]
    ClientCertificate { url: String, cause: String },
    #[error(
        "the mirror at {url} wants the user name and password of one of its users (GET /v2/ → 401); pass --username with --password-file (or BERTH_PASSWORD)"
    )]
    Unauthorized { url: String },
    #[error(
        "{url} does not answer like a registry (GET /v2/ → {status}); point --mirror at a running berth"
    )]
    NotARegistry { url: String, status: u16 },
    #[error("the mirror answered {status} for {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{what} hashes to {actual}, expected {expected}")]
    Verification {
        what: String,
        actual: Digest,
        expected: Digest,
    },
}

impl PullError {
    /// A failed call about `what` to the mirror at `mirror`.
    pub(super) fn from_client(mirror: &Url, what: &str, e: ClientError) -> PullError {
        let url = mirror.to_string();
        match e {
            ClientError::Unreachable { cause, .. } => PullError::MirrorUnreachable { url, cause },
            ClientError::Setup(cause) => PullError::MirrorUnreachable { url, cause },
            ClientError::Untrusted { cause, .. } => PullError::MirrorUntrusted { url, cause },
            ClientError::ClientCertificate { cause, .. } => {
                PullError::ClientCertificate { url, cause }
            }
            ClientError::Status {
                status, message, ..
            } => PullError::Status {
                what: what.to_string(),
                status,
                message,
            },
            e @ (ClientError::Invalid { .. }
            | ClientError::Stalled { .. }
            | ClientError::Broken { .. }) => PullError::Invalid {
                what: what.to_string(),
                message: e.detail(),
            },
        }
    }

    /// An error about the mirror itself, not one image: the run stops with it alone.
    pub fn is_about_the_mirror(&self) -> bool {
        matches!(
            self,
            PullError::MirrorUnreachable { .. }
                | PullError::MirrorUntrusted { .. }
                | PullError::ClientCertificate { .. }
                | PullError::Unauthorized { .. }
        )
    }
}

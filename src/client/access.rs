//! How a client reaches a berth, in one place: whom it trusts (the public webpki roots plus
//! extra CAs), which certificate it presents (for a berth with `client_ca_file`), and what it
//! says to which endpoint — Basic credentials to the registry API (`users_file`), the admin token
//! (bearer) to `/_berth/*`. PEM is read with `rustls-pki-types`' own parser.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::ClientError;

/// PEM files larger than this are refused (a chain or a CA bundle is a few hundred KiB at most).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Trust, client certificate and credentials of a [`super::BerthClient`].
#[derive(Default)]
pub struct Access {
    /// Trust anchors beside the webpki roots.
    roots: Vec<CertificateDer<'static>>,
    identity: Option<Identity>,
    basic: Option<Basic>,
    admin_token: Option<String>,
}

/// A client certificate chain and its key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A `users_file` user's name and password.
#[derive(Clone)]
pub(super) struct Basic {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("extra_roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .field("username", &self.basic.as_ref().map(|b| &b.username))
            .field("admin_token", &self.admin_token.is_some())
            .finish()
    }
}

impl Access {
    pub fn new() -> Access {
        Access::default()
    }

    /// Also trust the CA certificates in `path` (PEM, one or more).
    pub fn with_ca_file(self, path: &Path) -> Result<Access, ClientError> {
        let certs = load_certificates(path)?;
        Ok(self.with_roots(certs))
    }

    /// Also trust these certificates as trust anchors.
    pub fn with_roots(
        mut self,
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Access {
        self.roots.extend(certs);
        self
    }

    /// Present the certificate chain in `cert` (PEM) with the private key in `key` (PEM).
    pub fn with_identity_files(self, cert: &Path, key: &Path) -> Result<Access, ClientError> {
        let chain = load_certificates(cert)?;
        let key = load_private_key(key)?;
        self.with_identity(chain, key)
    }

    /// Present `chain` with `key`; refused when the key is not the certificate's.
    pub fn with_identity(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Access, ClientError> {
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|e| {
            ClientError::Setup(format!("the key does not go with the certificate ({e})"))
        })?;
        self.identity = Some(Identity { chain, key });
        Ok(self)
    }

    /// Send Basic credentials with registry API calls (`/v2/…`).
    pub fn with_basic(mut self, username: &str, password: &str) -> Access {
        self.basic = Some(Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
        self
    }

    /// Send the admin token (bearer) with admin calls (`/_berth/status`, `/_berth/pins`).
    pub fn with_admin_token(mut self, token: &str) -> Access {
        self.admin_token = Some(token.trim().to_string());
        self
    }

    pub(super) fn basic(&self) -> Option<&Basic> {
        self.basic.as_ref()
    }

    pub(super) fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    pub(super) fn presents_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// Would a client with this access accept `chain` from a server reached as `host`? The
    /// same roots and the same checks (rustls' webpki verifier) as every handshake.
    pub fn verify_server(
        &self,
        chain: &[CertificateDer<'static>],
        host: &str,
    ) -> Result<(), ClientError> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| ClientError::Setup("no certificate to verify".into()))?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| ClientError::Setup(format!("`{host}` is not a host name: {e}")))?
            .to_owned();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(self.root_store()?), provider())
                .build()
                .map_err(|e| ClientError::Setup(format!("TLS setup: {e}")))?;
        verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| ClientError::Untrusted {
                url: host.to_string(),
                cause: e.to_string(),
            })
    }

    /// The TLS configuration of every connection: the roots, the client certificate, ALPN;
    /// and a flag set once a server asks for a client certificate (TLS 1.3 says "refused" only
    /// after the handshake, and over HTTP/2 often as a bare broken pipe: the flag explains it).
    pub(super) fn tls_config(
        &self,
    ) -> Result<(rustls::ClientConfig, CertificateAsked), ClientError> {
        let provider = provider();
        let identity = match &self.identity {
            Some(identity) => Some(Arc::new(
                CertifiedKey::from_der(identity.chain.clone(), identity.key.clone_key(), &provider)
                    .map_err(|e| ClientError::Setup(format!("client certificate: {e}")))?,
            )),
            None => None,
        };
        let asked = CertificateAsked::default();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Setup(format!("TLS setup: {e}")))?
            .with_root_certificates(self.root_store()?)
            .with_client_cert_resolver(Arc::new(ClientCertificate {
                identity,
                asked: asked.clone(),
            }));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((config, asked))
    }

    fn root_store(&self) -> Result<RootCertStore, ClientError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| ClientError::Setup(format!("not a CA certificate: {e}")))?;
        }
        Ok(roots)
    }
}

/// Set once a server asked this client for a certificate (a `CertificateRequest`).
#[derive(Debug, Clone, Default)]
pub(super) struct CertificateAsked(Arc<AtomicBool>);

impl CertificateAsked {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Presents the identity (if any) when a server asks, and notes that it asked.
#[derive(Debug)]
struct ClientCertificate {
    identity: Option<Arc<CertifiedKey>>,
    asked: CertificateAsked,
}

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.0.store(true, Ordering::Relaxed);
        self.identity.clone()
    }

    fn has_certs(&self) -> bool {
        self.identity.is_some()
    }
}

/// Would a server whose `client_ca_file` holds `ca` accept `chain` as a client certificate?
pub fn verify_client(
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
) -> Result<(), ClientError> {
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or_else(|| ClientError::Setup("no certificate to verify".into()))?;
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| ClientError::Setup(format!("not a CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| ClientError::Setup(format!("TLS setup: {e}")))?;
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| ClientError::Setup(e.to_string()))
}

/// Every certificate in a PEM file, in order; none is an error naming the file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Setup(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            ClientError::Setup(format!("{} holds no PEM private key", path.display()))
        }
        e => ClientError::Setup(format!("{}: {e}", path.display())),
    })
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ClientError> {
    let fail = |e: &dyn std::fmt::Display| ClientError::Setup(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(|e| fail(&e))?.len();
    if size > MAX_PEM_BYTES {
        return Err(fail(&format!("{size} bytes is not a PEM file")));
    }
    std::fs::read(path).map_err(|e| fail(&e))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

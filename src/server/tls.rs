//! HTTPS: rustls with ALPN h2/http1.1, the certificate and key re-read when their files change
//! (cert-manager, a renewal cron), client certificates checked against `client_ca_file`.
//!
//! Every handshake asks [`CurrentCert`] for the pair loaded last. A reload that fails (a file
//! half written, a key that does not match the certificate) keeps serving the previous pair and
//! logs why, so rotating the two files one after the other never breaks a handshake.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsFiles;

/// How often the certificate and key files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// PEM files larger than this are refused (a certificate chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The pair every new handshake uses.
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl std::fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCert(..)")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A TLS acceptor and the task that keeps its certificate current.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    loaded: (Vec<u8>, Vec<u8>),
}

impl Tls {
    /// Loads the files; an error names the file and the problem.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = (
            read_pem(&files.cert_file, "server.tls_cert_file")?,
            read_pem(&files.key_file, "server.tls_key_file")?,
        );
        let pair = certified_key(&loaded.0, &loaded.1, &provider)?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(pair))));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match &files.client_ca_file {
            Some(path) => {
                let pem = read_pem(path, "server.client_ca_file")?;
                let mut roots = RootCertStore::empty();
                for cert in parse_certs(&pem) {
                    roots
                        .add(cert)
                        .map_err(|e| format!("server.client_ca_file {}: {e}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("server.client_ca_file {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            files: files.clone(),
            provider,
            loaded,
        })
    }

    /// Re-reads the files every [`RELOAD_INTERVAL`] until `stop`; a changed, valid pair is used
    /// by every handshake from then on.
    pub fn spawn_reloader(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (current, files, provider) = (
            self.current.clone(),
            self.files.clone(),
            self.provider.clone(),
        );
        let mut loaded = self.loaded.clone();
        tokio::spawn(async move {
            let mut failed: Option<(Vec<u8>, Vec<u8>)> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                let files = files.clone();
                let read = tokio::task::spawn_blocking(move || {
                    Ok::<_, String>((
                        read_pem(&files.cert_file, "server.tls_cert_file")?,
                        read_pem(&files.key_file, "server.tls_key_file")?,
                    ))
                })
                .await;
                let pems = match read {
                    Ok(Ok(pems)) => pems,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot re-read the TLS files; still serving the previous certificate");
                        continue;
                    }
                    Err(_) => continue,
                };
                if pems == loaded || failed.as_ref() == Some(&pems) {
                    continue;
                }
                match certified_key(&pems.0, &pems.1, &provider) {
                    Ok(pair) => {
                        *current.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                        tracing::info!("TLS certificate reloaded: new connections use the new one");
                        loaded = pems;
                        failed = None;
                    }
                    Err(e) => {
                        // Logged once per content: the second file of a rotation may follow.
                        tracing::warn!(error = %e, "the changed TLS files do not load; still serving the previous certificate");
                        failed = Some(pems);
                    }
                }
            }
        })
    }
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(format!(
            "{key} {}: {size} bytes is not a PEM file",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

fn parse_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The certificate chain and its key, refused when the key is not the certificate's.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = parse_certs(cert_pem);
    if chain.is_empty() {
        return Err("server.tls_cert_file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => "server.tls_key_file holds no PEM private key".to_string(),
        e => format!("server.tls_key_file: {e}"),
    })?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("server.tls_key_file does not go with server.tls_cert_file ({e})"))
}

//! HTTPS: rustls with ALPN h2/http1.1, the certificate and key re-read when their files change
//! (cert-manager, a renewal cron), client certificates checked against `client_ca_file`.
//!
//! Every handshake asks [`CurrentCert`] for the pair loaded last. A reload that fails (a file
//! half written, a key that does not match the certificate) keeps serving the previous pair and
//! logs why, once per cause (not every [`RELOAD_INTERVAL`]), so rotating the two files one after
//! the other never breaks a handshake and a missing file does not fill the log.

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
            // Why the files cannot be read, as last logged: logged again only when it changes.
            let mut unreadable: Option<String> = None;
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
                        if unreadable.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "cannot re-read the TLS files; still serving the previous certificate (logged again only when this changes)");
                            unreadable = Some(e);
                        }
                        continue;
                    }
                    Err(_) => continue,
                };
                if unreadable.take().is_some() {
                    tracing::info!("the TLS files can be read again");
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// Log lines written while the test runs (this thread's, which runs the reloader).
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn count(&self, needle: &str) -> usize {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            text.lines().filter(|l| l.contains(needle)).count()
        }
    }

    /// A certificate file gone for many reload intervals is one warning, and its return one
    /// line more (the reloader used to warn every 2 s).
    #[tokio::test(start_paused = true)]
    async fn an_unreadable_certificate_is_logged_once_and_its_return_once() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            client_ca_file: None,
        };
        std::fs::write(&files.cert_file, pair.cert.pem()).unwrap();
        std::fs::write(&files.key_file, pair.key_pair.serialize_pem()).unwrap();
        let tls = Tls::load(&files).unwrap();
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let stop = CancellationToken::new();
        let reloader = tls.spawn_reloader(stop.clone());

        let away = dir.path().join("tls.crt.away");
        std::fs::rename(&files.cert_file, &away).unwrap();
        // Ten reload intervals on the paused clock (each check's file read holds the clock
        // still while it runs, so every interval's check happens).
        tokio::time::sleep(RELOAD_INTERVAL * 10 + RELOAD_INTERVAL / 2).await;
        assert_eq!(log.count("cannot re-read the TLS files"), 1);
        std::fs::rename(&away, &files.cert_file).unwrap();
        tokio::time::sleep(RELOAD_INTERVAL * 3).await;
        assert_eq!(log.count("the TLS files can be read again"), 1);
        assert_eq!(log.count("cannot re-read the TLS files"), 1);
        stop.cancel();
        reloader.await.unwrap();
    }
}

//! TLS in front of a plain-HTTP fake: terminates TLS with the test CA's certificate and relays
//! the bytes to `backend`. It can hold the next handshakes, as a path that drops the server's
//! first flight does: the TCP connect succeeds, the ClientHello goes unanswered.

use rustls::pki_types::pem::PemObject as _;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::support::real::TestCa;

pub struct TlsFront {
    pub addr: SocketAddr,
    delays: Arc<Mutex<VecDeque<Duration>>>,
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(ca: &TestCa, backend: SocketAddr) -> TlsFront {
        TlsFront::start_on(ca, "127.0.0.1:0".parse().unwrap(), backend).await
    }

    /// Like [`TlsFront::start`], listening on `bind` (the CA's certificate must name its IP).
    pub async fn start_on(ca: &TestCa, bind: SocketAddr, backend: SocketAddr) -> TlsFront {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(ca)));
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let delays: Arc<Mutex<VecDeque<Duration>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (d, a, h) = (delays.clone(), accepted.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let delay = d.lock().unwrap().pop_front();
                let (acceptor, h) = (acceptor.clone(), h.clone());
                tokio::spawn(async move {
                    if let Some(delay) = delay {
                        // The injected fault itself: a handshake that hangs.
                        tokio::time::sleep(delay).await;
                    }
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut plain) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            addr,
            delays,
            accepted,
            handshakes,
            task,
        }
    }

    /// `https://<ip>:<port>`; the certificate is valid for 127.0.0.1 (or the names the CA was
    /// made for) under the test CA.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The next `n` connections get no answer to their ClientHello for `delay`.
    pub fn delay_next_handshakes(&self, n: usize, delay: Duration) {
        self.delays
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(delay, n));
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(ca: &TestCa) -> rustls::ServerConfig {
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&ca.cert_pem)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&ca.key_pem)
        .expect("a private key in the test CA's key file");
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

//! A fake Docker Hub / ghcr: registry, token server and blob CDN on three 127.0.0.1 ports.
//!
//! Behaviour copied from the real ones (see shared/notes/protocol.md §3–4):
//! - every `/v2/…` request without a valid Bearer token gets 401 + `WWW-Authenticate: Bearer
//!   realm="http://127.0.0.1:<token port>/token",service="fake",scope="repository:<name>:pull"`;
//! - the token server answers `GET /token?service=&scope=` with `token`, `access_token`,
//!   `expires_in`, `issued_at`, optionally demanding Basic credentials;
//! - blob GET/HEAD answer 307 to the CDN, whose URLs are signed and expire, and which answers
//!   400 to any request carrying `Authorization` (as S3 presigned URLs do);
//! - manifests honour `Accept`: no `Accept` header, `*/*` or the stored media type → served,
//!   otherwise 404 MANIFEST_UNKNOWN (Docker Hub's answer when e.g. an OCI index is not accepted;
//!   the fake never converts formats);
//! - blobs honour `Range` (206 + `Content-Range`, 416 past the end).
//!
//! Servers run as tasks on the caller's runtime, so the fake must be started inside a tokio
//! runtime; timers (stalls, delays, token and URL expiry) use `tokio::time` and follow
//! `tokio::time::pause()`. Dropping the fake stops its servers.

mod cdn;
mod conn;
pub mod faults;
mod registry;
mod respond;
pub mod stats;
mod tls_front;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Method;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::images::{Blob, Content};
pub use conn::ConnHandle;
pub use faults::{Action, AfterStall, Fault, Match};
pub use stats::{Kind, LoggedRequest, Role};
pub use tls_front::TlsFront;

/// How the fake behaves; `Options::default()` is Docker Hub-like (token auth + CDN redirect).
#[derive(Clone, Debug)]
pub struct Options {
    pub token_auth: bool,
    /// Basic credentials the token endpoint demands (anonymous tokens when `None`).
    pub token_credentials: Option<(String, String)>,
    pub token_expires_in: Duration,
    /// The `service` in challenges.
    pub service: String,
    pub cdn_redirect: bool,
    /// How long a signed CDN URL stays valid.
    pub cdn_url_ttl: Duration,
    /// Redirect every blob GET/HEAD to the CDN, known or not (registry.k8s.io does): the CDN
    /// then answers 404 for a blob that does not exist.
    pub redirect_unknown_blobs: bool,
    /// The host written into the token realm (default 127.0.0.1); e.g. `localhost` makes the
    /// realm a different host from the registry's `127.0.0.1`.
    pub token_realm_host: Option<String>,
    /// The CDN answers a request without `Authorization` with `401` + `WWW-Authenticate: Basic`
    /// (a redirect target fishing for the registry's password).
    pub cdn_basic_challenge: bool,
    /// Token realm and CDN base URL as written into challenges and redirects, when they are
    /// served through something in front (e.g. `TlsFront`s on known ports): `https://ip:port`.
    pub public_token_url: Option<String>,
    pub public_cdn_url: Option<String>,
    /// Blob bodies go out chunked, without `Content-Length`.
    pub chunked_blobs: bool,
    /// Docker Hub's `ratelimit-remaining: <n>;w=21600` on manifest answers, when set.
    pub ratelimit_remaining: Option<u32>,
    /// The token endpoint sends its answer one byte per this interval (a realm that drips).
    pub token_drip: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_auth: true,
            token_credentials: None,
            token_expires_in: Duration::from_secs(300),
            service: "fake".into(),
            cdn_redirect: true,
            cdn_url_ttl: Duration::from_secs(600),
            redirect_unknown_blobs: false,
            token_realm_host: None,
            cdn_basic_challenge: false,
            public_token_url: None,
            public_cdn_url: None,
            chunked_blobs: false,
            ratelimit_remaining: None,
            token_drip: None,
        }
    }
}

impl Options {
    /// No auth, no redirect: a bare registry.
    pub fn plain() -> Options {
        Options {
            token_auth: false,
            cdn_redirect: false,
            ..Options::default()
        }
    }
}

/// One repository's content, as a registry links it.
#[derive(Default)]
pub(crate) struct Repo {
    pub tags: BTreeMap<String, String>,
    pub manifests: HashMap<String, Blob>,
    pub blobs: HashMap<String, Blob>,
}

pub(crate) struct Grant {
    pub scopes: Vec<String>,
    pub expires: tokio::time::Instant,
}

pub(crate) struct Shared {
    pub opts: Options,
    pub token_url: String,
    pub cdn_url: String,
    pub repos: Mutex<HashMap<String, Repo>>,
    pub stats: Mutex<stats::Stats>,
    pub faults: Mutex<faults::FaultQueue>,
    pub tokens: Mutex<HashMap<String, Grant>>,
    /// Signed CDN URL signature → (digest, expiry).
    pub cdn_signatures: Mutex<HashMap<String, (String, tokio::time::Instant)>>,
}

/// Poison-tolerant lock: a panicking handler must not hide the test's real failure.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct FakeUpstream {
    pub registry_addr: SocketAddr,
    pub token_addr: SocketAddr,
    pub cdn_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeUpstream {
    pub async fn start(opts: Options) -> FakeUpstream {
        FakeUpstream::start_on(opts, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Like [`FakeUpstream::start`], on `ip` (e.g. an address inside a test network namespace,
    /// with the runtime's threads in that namespace: see `support::netns::InNetns`).
    pub async fn start_on(opts: Options, ip: std::net::IpAddr) -> FakeUpstream {
        let bind = || async move {
            TcpListener::bind((ip, 0))
                .await
                .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
        };
        let (registry, token, cdn) = (bind().await, bind().await, bind().await);
        let (registry_addr, token_addr, cdn_addr) = (
            registry.local_addr().unwrap(),
            token.local_addr().unwrap(),
            cdn.local_addr().unwrap(),
        );
        let token_url = match (&opts.public_token_url, &opts.token_realm_host) {
            (Some(base), _) => format!("{base}/token"),
            (None, Some(host)) => format!("http://{host}:{}/token", token_addr.port()),
            (None, None) => format!("http://{token_addr}/token"),
        };
        let cdn_url = opts
            .public_cdn_url
            .clone()
            .unwrap_or_else(|| format!("http://{cdn_addr}"));
        let shared = Arc::new(Shared {
            opts,
            token_url,
            cdn_url,
            repos: Mutex::default(),
            stats: Mutex::default(),
            faults: Mutex::default(),
            tokens: Mutex::default(),
            cdn_signatures: Mutex::default(),
        });
        let tasks = vec![
            respond::spawn(registry, registry::router(shared.clone())),
            respond::spawn(token, token::router(shared.clone())),
            respond::spawn(cdn, cdn::router(shared.clone())),
        ];
        FakeUpstream {
            registry_addr,
            token_addr,
            cdn_addr,
            shared,
            tasks,
        }
    }

    /// `http://127.0.0.1:<registry port>`: what goes into berth's `[upstreams.X] url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.registry_addr)
    }

    /// Stores `content` under `repo` and points `tag` at its root.
    pub fn push(&self, repo: &str, tag: &str, content: &dyn Content) {
        for m in content.manifests() {
            self.put_manifest(repo, m);
        }
        for b in content.blobs() {
            self.put_blob(repo, b);
        }
        self.tag(repo, tag, &content.root().digest);
    }

    pub fn put_blob(&self, repo: &str, blob: &Blob) {
        let mut repos = lock(&self.shared.repos);
        repos
            .entry(repo.into())
            .or_default()
            .blobs
            .insert(blob.digest.clone(), blob.clone());
    }

    pub fn put_manifest(&self, repo: &str, manifest: &Blob) {
        let mut repos = lock(&self.shared.repos);
        repos
            .entry(repo.into())
            .or_default()
            .manifests
            .insert(manifest.digest.clone(), manifest.clone());
    }

    /// Points (or re-points) `tag` at `digest`, e.g. to simulate an upstream tag move.
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        let mut repos = lock(&self.shared.repos);
        repos
            .entry(repo.into())
            .or_default()
            .tags
            .insert(tag.into(), digest.into());
    }

    /// Removes `tag` (a vendor retiring an image): the registry then answers 404 for it.
    pub fn untag(&self, repo: &str, tag: &str) {
        let mut repos = lock(&self.shared.repos);
        if let Some(repo) = repos.get_mut(repo) {
            repo.tags.remove(tag);
        }
    }

    /// Queues a fault (see [`faults`] for matching rules).
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Uses of queued faults not yet consumed.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.faults).pending()
    }

    /// Faults that fired so far, in order.
    pub fn fired_faults(&self) -> Vec<Action> {
        lock(&self.shared.faults).fired.clone()
    }

    /// Requests received by `role` for `kind` with `method`.
    pub fn count(&self, role: Role, kind: Kind, method: Method) -> usize {
        lock(&self.shared.stats)
            .counts
            .get(&(role, kind, method))
            .copied()
            .unwrap_or(0)
    }

    /// Requests of `kind`, any role and method.
    pub fn count_kind(&self, kind: Kind) -> usize {
        lock(&self.shared.stats)
            .counts
            .iter()
            .filter(|((_, k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Body bytes handed to the network for `digest` (blobs and manifests), all roles.
    pub fn bytes_sent(&self, digest: &str) -> u64 {
        lock(&self.shared.stats)
            .blob_bytes_sent
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far, in arrival order of their responses.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.stats).log.clone()
    }

    pub fn reset_stats(&self) {
        *lock(&self.shared.stats) = stats::Stats::default();
    }

    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.tokens).len()
    }
}

/// A listener that accepts TCP connections and never says a word: a hung TLS handshake or a
/// server that never answers. Drop to stop accepting (accepted sockets close with it).
pub struct SilentServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s); // keep open, never read or write
            }
        });
        SilentServer { addr, task }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! berth served from this test process (`berth::app::run`), stopped on drop or `shutdown()`;
//! started with [`Berth::builder`]. Also the tests' small HTTP helpers ([`client`], [`get`],
//! [`status_of`], [`get_json`] ...), as free functions on a URL and as methods on a `Berth` path.

use std::net::SocketAddr;
use std::time::Duration;

pub use super::builder::BerthBuilder;
use super::builder::SELF_URL;
use super::util::eventually;

pub struct Berth {
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    config_body: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Berth {
    /// The one way to start berth in a test: see [`BerthBuilder`].
    pub fn builder() -> BerthBuilder {
        BerthBuilder::default()
    }

    /// Serves `config_body` (TOML without `data_dir`) from `data` on `listen`. The one call of
    /// `berth::app::run` in the tests: a rename there is a change here only.
    pub(super) async fn serve(
        config_body: String,
        data: tempfile::TempDir,
        listen: SocketAddr,
    ) -> Berth {
        let listener = berth::server::listen(listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let config_body = config_body.replace(SELF_URL, &format!("http://{addr}"));
        let text = format!(
            "data_dir = {:?}\n{config_body}",
            data.path().to_str().unwrap()
        );
        let config =
            berth::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            berth::app::run(config, listener, shutdown).await.unwrap();
        });
        Berth {
            addr,
            data,
            config_body,
            stop: Some(stop),
            task,
        }
    }

    /// Stops serving and starts again with the same config on the same cache directory (on a
    /// new port).
    pub async fn restart(self) -> Berth {
        let config_body = self.config_body.clone();
        let data = self.shutdown().await;
        Berth::serve(config_body, data, ([127, 0, 0, 1], 0).into()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops serving and hands back the cache directory.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        self.task.abort();
        self.data
    }

    /// `GET path`, sent (headers received); see [`get`].
    pub async fn get(&self, path: &str) -> reqwest::Response {
        get(&self.url(path)).await
    }

    /// `GET path`: the status, the body read and dropped.
    pub async fn status_of(&self, path: &str) -> u16 {
        status_of(&self.url(path)).await
    }

    /// `GET path`: status and whole body.
    pub async fn get_bytes(&self, path: &str) -> (u16, bytes::Bytes) {
        get_bytes(&self.url(path)).await
    }

    /// `GET path`: status and body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        get_text(&self.url(path)).await
    }

    /// `GET path` with `Accept: application/json`: status and the body parsed.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        get_json(&self.url(path)).await
    }

    /// The cache file of blob `digest` (`sha256:<hex>`), whether or not it exists yet.
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.data.path().join("blobs/sha256").join(hex)
    }

    /// Waits (≤ 30 s) until the blob `digest` (`sha256:<hex>`) is committed to the disk cache:
    /// clients get their last byte once it verifies, the sync and commit follow.
    pub async fn wait_committed(&self, digest: &str) {
        let file = self.blob_file(digest);
        let what = format!("blob {digest} committed to the cache");
        eventually(&what, Duration::from_secs(30), || async { file.exists() }).await;
    }

    /// The value of a counter in berth's `/metrics` (summed over series matching `labels`).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        super::berth::metric_sum(&self.metrics_text().await, name, labels)
    }

    /// `GET /metrics`, whole.
    pub async fn metrics_text(&self) -> String {
        let (status, text) = self.get_text("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }
}

/// The tests' HTTP client: no proxy, a 120 s bound on every request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `GET url`, sent (headers received); panics naming the URL if the request fails.
pub async fn get(url: &str) -> reqwest::Response {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET url`: the status, the body read and dropped.
pub async fn status_of(url: &str) -> u16 {
    let response = get(url).await;
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

/// `GET url`: status and whole body.
pub async fn get_bytes(url: &str) -> (u16, bytes::Bytes) {
    let response = get(url).await;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("body of GET {url}: {e}"));
    (status, body)
}

/// `GET url`: status and body as text.
pub async fn get_text(url: &str) -> (u16, String) {
    let (status, body) = get_bytes(url).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET url` with `Accept: application/json`: status and the body parsed as JSON.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = client()
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("body of GET {url}: {e}"));
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {url} ({status}): not JSON ({e}): {text}"));
    (status, json)
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

//! berth served from this test process (`berth::serve::run`), stopped on drop or `shutdown()`.

use std::net::SocketAddr;
use std::time::Duration;

pub struct Berth {
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// `Berth::builder().upstream(&fake).config("max_attempts = 3").start().await`: the usual
/// berth-in-front-of-a-fake-upstream setup, written once.
#[derive(Default)]
pub struct BerthBuilder {
    top: String,
    tables: Vec<(String, String, String)>,
    listen: Option<SocketAddr>,
}

impl BerthBuilder {
    /// `docker.io` served by `upstream`.
    pub fn upstream(self, upstream: &super::fake_upstream::FakeUpstream) -> BerthBuilder {
        self.upstream_named("docker.io", &upstream.url())
    }

    /// An `[upstreams."<name>"]` table pointing at `url`.
    pub fn upstream_named(mut self, name: &str, url: &str) -> BerthBuilder {
        self.tables
            .push((name.to_string(), url.to_string(), String::new()));
        self
    }

    /// Extra keys for the last upstream table added.
    pub fn config(mut self, lines: &str) -> BerthBuilder {
        let last = self
            .tables
            .last_mut()
            .expect("add an upstream before its config");
        last.2.push_str(lines);
        last.2.push('\n');
        self
    }

    /// Top-level keys (before the tables).
    pub fn top_level(mut self, lines: &str) -> BerthBuilder {
        self.top.push_str(lines);
        self.top.push('\n');
        self
    }

    /// Listen on `addr` instead of `127.0.0.1:0` (e.g. `0.0.0.0:0` for clients on other
    /// interfaces); `Berth::addr` is then the address bound, e.g. `0.0.0.0:<port>`.
    pub fn listen(mut self, addr: SocketAddr) -> BerthBuilder {
        self.listen = Some(addr);
        self
    }

    pub fn toml(&self) -> String {
        let tables: String = self
            .tables
            .iter()
            .map(|(name, url, extra)| upstream_table(name, url, extra))
            .collect();
        format!("{}{tables}", self.top)
    }

    pub async fn start(self) -> Berth {
        let addr = self.listen.unwrap_or(([127, 0, 0, 1], 0).into());
        Berth::start_at(&self.toml(), tempfile::tempdir().unwrap(), addr).await
    }
}

impl Berth {
    pub fn builder() -> BerthBuilder {
        BerthBuilder::default()
    }

    /// Starts berth with `config_body` (TOML without `data_dir`) on a fresh cache directory.
    pub async fn start(config_body: &str) -> Berth {
        Berth::start_in(config_body, tempfile::tempdir().unwrap()).await
    }

    /// Starts berth on an existing cache directory (a restart).
    pub async fn start_in(config_body: &str, data: tempfile::TempDir) -> Berth {
        Berth::start_at(config_body, data, ([127, 0, 0, 1], 0).into()).await
    }

    async fn start_at(config_body: &str, data: tempfile::TempDir, listen: SocketAddr) -> Berth {
        let text = format!(
            "data_dir = {:?}\n{config_body}",
            data.path().to_str().unwrap()
        );
        let config =
            berth::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let listener = berth::server::listen(listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            berth::serve::run(config, listener, shutdown).await.unwrap();
        });
        Berth {
            addr,
            data,
            stop: Some(stop),
            task,
        }
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

    /// GET `path`: status and whole body.
    pub async fn get_bytes(&self, path: &str) -> (u16, bytes::Bytes) {
        let response = client().get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap())
    }

    /// Waits (bounded) until the blob `digest` (`sha256:<hex>`) is committed to the disk cache:
    /// clients get their last byte once it verifies, the sync and commit follow.
    pub async fn wait_committed(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let file = self.data.path().join("blobs/sha256").join(hex);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !file.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "blob {digest} not committed within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a counter in berth's `/metrics` (summed over series matching `labels`).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        super::berth::metric_sum(&self.metrics_text().await, name, labels)
    }

    /// `GET /metrics`, whole.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// `[upstreams."<name>"]` with `url` and extra lines.
pub fn upstream_table(name: &str, url: &str, extra: &str) -> String {
    format!("[upstreams.{name:?}]\nurl = {url:?}\n{extra}\n")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

//! berth served from this test process (`berth::serve::run`), stopped on drop or `shutdown()`.

use std::net::SocketAddr;
use std::time::Duration;

pub struct Berth {
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Berth {
    /// Starts berth with `config_body` (TOML without `data_dir`) on a fresh cache directory.
    pub async fn start(config_body: &str) -> Berth {
        Berth::start_in(config_body, tempfile::tempdir().unwrap()).await
    }

    /// Starts berth on an existing cache directory (a restart).
    pub async fn start_in(config_body: &str, data: tempfile::TempDir) -> Berth {
        let text = format!(
            "data_dir = {:?}\n{config_body}",
            data.path().to_str().unwrap()
        );
        let config =
            berth::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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

    /// The value of a counter in berth's `/metrics` (summed over series matching `labels`).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::berth::metric_sum(&text, name, labels)
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

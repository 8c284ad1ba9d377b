//! The berth binary as a child process, started by the builder (`Berth::builder()....spawn()`):
//! config file, free port, readiness on `GET /v2/` (or its log), stderr captured to a file,
//! `/metrics` and `/_berth/status` helpers. Killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::builder::{DataDir, SELF_URL};
use super::util::{free_port, http_get, kill_child, poll_blocking, wait_until};

/// When a spawned berth counts as ready.
pub enum Readiness {
    /// `GET /v2/` answers 200.
    V2Answers,
    /// Its log says it is serving (for HTTPS, users, a narrow `allow`).
    Logged,
}

pub struct BerthProcess {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    stderr_path: PathBuf,
    config: String,
    /// A cache directory handed to the builder with `.data()`, kept as long as berth runs.
    _data: Option<tempfile::TempDir>,
}

impl BerthProcess {
    /// Starts `berth serve` with `config` (TOML without `data_dir`) and waits (≤ 20 s) until it
    /// is `ready`; panics with berth's stderr if it exits or never gets ready. Reached through
    /// the builder: `Berth::builder()....spawn()`.
    pub(super) fn spawn(
        config: &str,
        data: Option<DataDir>,
        listen: Option<SocketAddr>,
        ready: Readiness,
    ) -> BerthProcess {
        let dir = tempfile::tempdir().unwrap();
        let addr = match listen {
            Some(addr) if addr.port() != 0 => addr,
            Some(addr) => SocketAddr::new(addr.ip(), free_port()),
            None => format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        };
        let config = config.replace(SELF_URL, &format!("http://{addr}"));
        std::fs::write(dir.path().join("berth.toml"), &config).unwrap();
        let (data_dir, kept) = match data {
            None => (dir.path().join("data"), None),
            Some(DataDir::At(path)) => (path, None),
            Some(DataDir::Temp(temp)) => (temp.path().to_path_buf(), Some(temp)),
        };
        std::fs::write(dir.path().join("data_dir"), data_dir.to_str().unwrap()).unwrap();
        let stderr_path = dir.path().join("berth.stderr");
        let child = spawn(dir.path(), addr, &stderr_path);
        let mut berth = BerthProcess {
            addr,
            dir,
            child,
            stderr_path,
            config,
            _data: kept,
        };
        match ready {
            Readiness::V2Answers => berth.wait_ready(),
            Readiness::Logged => berth.wait_serving(),
        }
        berth
    }

    fn wait_serving(&mut self) {
        wait_until(
            "berth to log that it is serving",
            Duration::from_secs(20),
            || {
                self.assert_running();
                self.stderr().contains("berth is serving")
            },
        );
    }

    fn wait_ready(&mut self) {
        wait_until(
            "berth to answer GET /v2/ with 200",
            Duration::from_secs(20),
            || {
                self.assert_running();
                matches!(http_get(self.addr, "/v2/"), Some((200, _)))
            },
        );
    }

    /// Panics with the config and berth's stderr if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "berth exited early ({status}); config:\n{}\nstderr:\n{}",
                self.config,
                self.stderr()
            );
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Sends SIGTERM (what systemd's stop sends) and waits up to `within` for berth to exit;
    /// returns how long it took, or `None` if it was still running (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let exited = poll_blocking(within, || matches!(self.child.try_wait(), Ok(Some(_))));
        if exited.is_ok() {
            return Some(started.elapsed());
        }
        kill_child(&mut self.child);
        None
    }

    /// The cache directory berth serves from.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(std::fs::read_to_string(self.dir.path().join("data_dir")).unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (what `kill -9` sends): no shutdown code runs. Reaps the process.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL berth");
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "berth was killed, not exited: {status}");
    }

    /// Starts berth again on the same config and data dir (same port), appending to its stderr
    /// file, and waits until it is ready. Kills the old process first if it still runs.
    pub fn restart(&mut self) {
        kill_child(&mut self.child);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        self.child = spawn_logging(self.dir.path(), self.addr, log);
        self.wait_ready();
    }

    /// `127.0.0.1:<port>`, as used in image references (`127.0.0.1:5000/ghcr.io/x/y:tag`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The file berth's stderr goes to, for watching it from another task.
    pub fn stderr_file(&self) -> &Path {
        &self.stderr_path
    }

    /// `GET /_berth/status?format=json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        match http_get(self.addr, "/_berth/status?format=json") {
            Some((200, body)) => serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("/_berth/status is not JSON ({e}): {body}")),
            other => panic!("GET /_berth/status failed: {other:?}"),
        }
    }

    /// The raw Prometheus text from `GET /metrics`.
    pub fn metrics(&self) -> String {
        match http_get(self.addr, "/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics failed: {other:?}"),
        }
    }

    /// Sum of every sample of `name` whose labels include all of `labels` (0 if none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    pub fn stop(&mut self) {
        kill_child(&mut self.child);
    }
}

impl Drop for BerthProcess {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "--- berth stderr ({}) ---\n{}",
                self.stderr_path.display(),
                tail(&self.stderr(), 200)
            );
        }
    }
}

fn spawn(dir: &Path, addr: SocketAddr, stderr_path: &Path) -> Child {
    spawn_logging(dir, addr, std::fs::File::create(stderr_path).unwrap())
}

fn spawn_logging(dir: &Path, addr: SocketAddr, stderr: std::fs::File) -> Child {
    let data_dir = std::fs::read_to_string(dir.join("data_dir")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("berth.toml"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .env(
            "BERTH_LOG",
            std::env::var("BERTH_LOG").unwrap_or_else(|_| "debug".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn berth binary")
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Parses Prometheus text: sums samples named exactly `name`
/// carrying all `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has_all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            has_all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

//! The berth binary as a child process: config file, free port, readiness on `GET /v2/`,
//! stderr captured to a file, `/metrics` parsing. Killed on drop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::util::{free_port, http_get, kill_child, wait_until};

/// One `[upstreams."<name>"]` table.
#[derive(Clone, Debug, Default)]
pub struct UpstreamSpec {
    pub name: String,
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub credentials: Option<(String, String)>,
    /// e.g. `"5m"`; berth's default when `None`.
    pub tag_ttl: Option<String>,
}

impl UpstreamSpec {
    pub fn new(name: &str, url: &str) -> UpstreamSpec {
        UpstreamSpec {
            name: name.into(),
            url: url.into(),
            ..UpstreamSpec::default()
        }
    }
    pub fn ca_file(mut self, path: &Path) -> UpstreamSpec {
        self.ca_file = Some(path.to_path_buf());
        self
    }
    pub fn tag_ttl(mut self, ttl: &str) -> UpstreamSpec {
        self.tag_ttl = Some(ttl.into());
        self
    }
}

/// Renders a berth config (listen and data_dir come from the command line).
pub fn config_toml(default_upstream: &str, upstreams: &[UpstreamSpec]) -> String {
    let mut s = format!("default_upstream = {default_upstream:?}\n");
    for u in upstreams {
        let _ = writeln!(s, "\n[upstreams.{:?}]\nurl = {:?}", u.name, u.url);
        if let Some(ca) = &u.ca_file {
            let _ = writeln!(s, "ca_file = {:?}", ca.display().to_string());
        }
        if let Some((user, pass)) = &u.credentials {
            let _ = writeln!(s, "username = {user:?}\npassword = {pass:?}");
        }
        if let Some(ttl) = &u.tag_ttl {
            let _ = writeln!(s, "tag_ttl = {ttl:?}");
        }
    }
    s
}

pub struct BerthProcess {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    stderr_path: PathBuf,
    config: String,
}

impl BerthProcess {
    /// Starts `berth serve` with `config` and waits (≤ 20 s) until `GET /v2/` answers 200;
    /// panics with berth's stderr if it exits or never gets ready.
    pub fn start(config: &str) -> BerthProcess {
        BerthProcess::start_with_data(config, None)
    }

    /// Like [`BerthProcess::start`], with `data_dir` instead of `<tempdir>/data` (e.g. a tmpfs).
    pub fn start_with_data(config: &str, data_dir: Option<&Path>) -> BerthProcess {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // `@SELF@` in the config stands for this berth's own URL (e.g. advertise_url).
        let config = config.replace("@SELF@", &format!("http://{addr}"));
        let config = config.as_str();
        std::fs::write(dir.path().join("berth.toml"), config).unwrap();
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        std::fs::write(dir.path().join("data_dir"), data_dir.to_str().unwrap()).unwrap();
        let stderr_path = dir.path().join("berth.stderr");
        let child = spawn(dir.path(), addr, &stderr_path);
        let mut berth = BerthProcess {
            addr,
            dir,
            child,
            stderr_path,
            config: config.to_string(),
        };
        berth.wait_ready();
        berth
    }

    fn wait_ready(&mut self) {
        wait_until(
            "berth to answer GET /v2/ with 200",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "berth exited early ({status}); config:\n{}\nstderr:\n{}",
                        self.config,
                        self.stderr()
                    );
                }
                matches!(http_get(self.addr, "/v2/"), Some((200, _))).then_some(())
            },
        );
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

//! The processes a run needs, each in its own temp dir and killed on drop (also on panic):
//! the upstream `docker-registry`, and the two mirrors under test (berth and
//! `docker-registry` in proxy mode). Everything listens on 127.0.0.1, plain HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::util::{free_port, http_get, kill_child, wait_until};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which mirror a measurement is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorKind {
    Berth,
    Proxy,
}

impl MirrorKind {
    pub const ALL: [MirrorKind; 2] = [MirrorKind::Berth, MirrorKind::Proxy];

    pub fn label(self) -> &'static str {
        match self {
            MirrorKind::Berth => "berth",
            MirrorKind::Proxy => "distribution proxy",
        }
    }
}

/// A child process we started, killed and reaped on drop; its logs stay in `dir` until then.
pub struct Service {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    name: &'static str,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// The last lines of the process's stderr, for failure notes.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Spawns `cmd` with output to files in `dir`, then waits until `GET /v2/` answers.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        dir: tempfile::TempDir,
        addr: SocketAddr,
    ) -> Service {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "stdout.log"))
            .stderr(log_file(dir.path(), "stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut service = Service {
            addr,
            dir,
            child,
            name,
        };
        service.wait_ready();
        service
    }

    fn wait_ready(&mut self) {
        let what = format!("{} to answer GET /v2/", self.name);
        wait_until(&what, READY_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited early ({status}):\n{}",
                    self.name,
                    self.stderr_tail(40)
                );
            }
            matches!(http_get(self.addr, "/v2/"), Some((200 | 401, _))).then_some(())
        });
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("create log file")
}

fn local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The berth binary: `BERTH_BIN` if set, else the release binary cargo built for this bench.
pub fn berth_binary() -> PathBuf {
    std::env::var_os("BERTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth")))
}

/// `berth serve` with `docker.io` pointing at `upstream_url`, an empty data dir, log level warn.
pub fn start_berth(upstream_url: &str) -> Service {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = local_addr();
    let config = dir.path().join("berth.toml");
    let toml = format!(
        "default_upstream = \"docker.io\"\n\n[upstreams.\"docker.io\"]\nurl = \"{upstream_url}\"\n"
    );
    std::fs::write(&config, toml).expect("write berth config");
    let mut cmd = Command::new(berth_binary());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("BERTH_LOG", "warn");
    Service::spawn("berth", cmd, dir, addr)
}

/// Debian's `docker-registry` with filesystem storage in a temp dir; a pull-through proxy of
/// `proxy_of` when given. Access log off and log level warn, like berth.
pub fn start_registry(proxy_of: Option<&str>) -> Service {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = local_addr();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        registry_yaml(&dir.path().join("data"), addr, proxy_of),
    )
    .expect("write registry config");
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    let name = if proxy_of.is_some() {
        "docker-registry (proxy)"
    } else {
        "docker-registry (upstream)"
    };
    Service::spawn(name, cmd, dir, addr)
}

fn registry_yaml(data: &Path, addr: SocketAddr, proxy_of: Option<&str>) -> String {
    let mut y = format!(
        "version: 0.1\nlog:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: berth-bench-secret\n",
        data.display()
    );
    if let Some(url) = proxy_of {
        y += &format!("proxy:\n  remoteurl: {url}\n");
    }
    y
}

/// Starts the mirror of `kind` in front of `upstream_url` (normally a [`crate::relay::Relay`]).
pub fn start_mirror(kind: MirrorKind, upstream_url: &str) -> Service {
    match kind {
        MirrorKind::Berth => start_berth(upstream_url),
        MirrorKind::Proxy => start_registry(Some(upstream_url)),
    }
}

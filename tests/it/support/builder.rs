//! The one way a test starts berth: `Berth::builder()`, then `.start().await` (served from this
//! test process, [`Berth`]) or `.spawn()` (the berth binary as a child process,
//! [`BerthProcess`]). The builder renders the config once, [`BerthBuilder::toml`], for both.
//!
//! ```ignore
//! let berth = Berth::builder().upstream(&fake).config("max_attempts = 3").start().await;
//! let berth = Berth::builder()
//!     .default_upstream("docker.io")
//!     .upstream_named("docker.io", &registry.url())
//!     .tag_ttl("5m")
//!     .spawn();
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::berth::{BerthProcess, Readiness};
use super::fake_upstream::FakeUpstream;
use super::inprocess::Berth;

/// In a config, `@SELF@` stands for the started berth's own URL (`http://<addr>`), e.g. for
/// `advertise_url`; both ways of starting replace it once the address is known.
pub const SELF_URL: &str = "@SELF@";

/// Where the cache lives.
pub enum DataDir {
    /// A directory the caller made (e.g. one handed back by [`Berth::shutdown`], for a restart).
    Temp(tempfile::TempDir),
    /// A path the caller owns (e.g. on a tmpfs); child processes only.
    At(PathBuf),
}

#[derive(Default)]
pub struct BerthBuilder {
    default_upstream: Option<String>,
    top: String,
    /// `[upstreams."<name>"]` tables: (name, url, extra lines).
    tables: Vec<(String, String, String)>,
    listen: Option<SocketAddr>,
    data: Option<DataDir>,
}

impl BerthBuilder {
    /// `docker.io` served by `upstream`.
    pub fn upstream(self, upstream: &FakeUpstream) -> BerthBuilder {
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

    /// `ca_file` of the last upstream table added.
    pub fn ca_file(self, path: &Path) -> BerthBuilder {
        self.config(&format!("ca_file = {:?}", path.display().to_string()))
    }

    /// `tag_ttl` (e.g. `"5m"`) of the last upstream table added.
    pub fn tag_ttl(self, ttl: &str) -> BerthBuilder {
        self.config(&format!("tag_ttl = {ttl:?}"))
    }

    /// `default_upstream = "<name>"` (written first of the top-level keys).
    pub fn default_upstream(mut self, name: &str) -> BerthBuilder {
        self.default_upstream = Some(name.to_string());
        self
    }

    /// Top-level text, written before the upstream tables in the order given. It may open a
    /// table (`[store]`, `[server]`); keys of the top level then go in an earlier call.
    pub fn top_level(mut self, lines: &str) -> BerthBuilder {
        self.top.push_str(lines);
        self.top.push('\n');
        self
    }

    /// Listen on `addr` instead of `127.0.0.1:0` (e.g. `0.0.0.0:0` for clients on other
    /// interfaces); the started berth's `addr` is then the address bound, e.g. `0.0.0.0:<port>`.
    /// A child process needs a port picked first: port 0 means a free one.
    pub fn listen(mut self, addr: SocketAddr) -> BerthBuilder {
        self.listen = Some(addr);
        self
    }

    /// Serve from `data` (e.g. the cache directory of a berth shut down before: a restart).
    pub fn data(mut self, data: tempfile::TempDir) -> BerthBuilder {
        self.data = Some(DataDir::Temp(data));
        self
    }

    /// Serve from `path`, which the caller keeps (e.g. on a tmpfs). Child processes only.
    pub fn data_dir(mut self, path: &Path) -> BerthBuilder {
        self.data = Some(DataDir::At(path.to_path_buf()));
        self
    }

    /// The config as rendered for berth, without `data_dir` and `listen` (given to each way of
    /// starting separately) and with `@SELF@` not yet replaced.
    pub fn toml(&self) -> String {
        let default = self
            .default_upstream
            .as_ref()
            .map(|name| format!("default_upstream = {name:?}\n"))
            .unwrap_or_default();
        let tables: String = self
            .tables
            .iter()
            .map(|(name, url, extra)| format!("\n[upstreams.{name:?}]\nurl = {url:?}\n{extra}"))
            .collect();
        format!("{default}{}{tables}", self.top)
    }

    /// berth served from this test process (`berth::app::run`); stopped on drop.
    pub async fn start(self) -> Berth {
        let toml = self.toml();
        let data = match self.data {
            None => tempfile::tempdir().unwrap(),
            Some(DataDir::Temp(dir)) => dir,
            Some(DataDir::At(path)) => panic!(
                "an in-process berth keeps its cache in a TempDir (use .data()), not {}",
                path.display()
            ),
        };
        let listen = self.listen.unwrap_or(([127, 0, 0, 1], 0).into());
        Berth::serve(toml, data, listen).await
    }

    /// The berth binary as a child process (`berth serve`), ready once `GET /v2/` answers 200
    /// (≤ 20 s); killed on drop. Blocks the calling thread while it waits: from an async test,
    /// call it inside `tokio::task::block_in_place` when the runtime must keep serving.
    pub fn spawn(self) -> BerthProcess {
        self.spawn_until(Readiness::V2Answers)
    }

    /// Like [`BerthBuilder::spawn`], for a berth that does not answer a plain `GET /v2/` with 200
    /// (HTTPS, users, a narrow `allow`): ready when its log says it is serving.
    pub fn spawn_serving(self) -> BerthProcess {
        self.spawn_until(Readiness::Logged)
    }

    fn spawn_until(self, ready: Readiness) -> BerthProcess {
        let toml = self.toml();
        BerthProcess::spawn(&toml, self.data, self.listen, ready)
    }
}

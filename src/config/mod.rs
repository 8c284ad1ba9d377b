//! Configuration: embedded defaults ← `berth.toml` ← `BERTH_*` environment ← flags.
//!
//! The file is parsed into `raw` types (every key optional, unknown keys refused), then
//! validated once into [`Config`]. Nothing downstream re-checks strings.

mod egress;
mod limits;

pub use limits::MAX_HISTORY;
mod patterns;
mod probe;
mod raw;
mod resolve;
mod server;
mod size;
mod store;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub use egress::{MAX_FALLBACKS, ProxySetting, ProxyUrl};
pub use patterns::{HostPattern, UpstreamPatterns};
pub use raw::RawConfig;
pub use server::{DEFAULT_ALLOW, RawServer, ServerConfig, TlsFiles};
pub use size::parse_size;
pub use upstream::host_key;

use crate::oci::Platform;

/// Validated configuration of one berth process.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Upstream used when a request names neither `?ns=` nor a path prefix.
    pub default_upstream: String,
    /// How nodes reach this mirror (used by the config generators), e.g. `http://10.27.27.10:5000`.
    pub mirror_url: Option<Url>,
    /// How the other replicas on a shared bucket reach this one (cross-replica fills).
    pub advertise_url: Option<Url>,
    pub upstreams: BTreeMap<String, Upstream>,
    /// Registries without an `[upstreams]` table that are served from `https://<registry>`.
    pub upstream_patterns: UpstreamPatterns,
    /// Bytes of manifests kept in memory in front of the store.
    pub manifest_memory_cache: u64,
    /// Blob fills running at once across all upstreams; more wait in a bounded queue.
    pub max_fills: u32,
    /// Bearer token for `/_berth/` admin endpoints; without one they answer 404.
    pub admin_token: Option<AdminToken>,
    /// The nodes' platforms: what `berth prewarm` fetches by default.
    pub platforms: Vec<Platform>,
    /// Where cached content lives and how big it may grow (`[store]`).
    pub store: StoreConfig,
    /// JSON-lines access log (`-` = standard output); none by default.
    pub access_log: Option<PathBuf>,
    /// Who may reach berth and how (`[server]`).
    pub server: ServerConfig,
    /// `berth probe` defaults and the light probe of `berth serve`.
    pub probe: ProbeConfig,
    /// Node names by client address (`[nodes]`): shown wherever an address would be.
    pub nodes: NodeNames,
}

/// `[nodes]`: client addresses and the names people know them by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeNames(BTreeMap<std::net::IpAddr, String>);

impl NodeNames {
    pub fn new(names: BTreeMap<std::net::IpAddr, String>) -> NodeNames {
        NodeNames(names)
    }

    /// The node's name, if `[nodes]` gives one.
    pub fn name(&self, address: std::net::IpAddr) -> Option<&str> {
        self.0.get(&address.to_canonical()).map(String::as_str)
    }

    /// `cp1 (10.27.27.21)` where the name is known, else the address.
    pub fn label(&self, address: &str) -> String {
        match address.parse().ok().and_then(|ip| self.name(ip)) {
            Some(name) => format!("{name} ({address})"),
            None => address.to_string(),
        }
    }
}

/// `probe_interval` and `probe_images`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// How often `berth serve` probes each upstream's `/v2/` (exported as metrics); off when `None`.
    pub interval: Option<Duration>,
    /// Images whose largest layer `berth probe` downloads by default (references as written).
    pub images: Vec<String>,
}

/// Images users name as flaky: what `berth probe` transfers when neither the config nor
/// `--image` names any.
pub const DEFAULT_PROBE_IMAGES: [&str; 3] = [
    "ghcr.io/fluxcd/helm-controller:v1.5.1",
    "quay.io/prometheus/node-exporter:v1.8.2",
    "docker.io/library/nginx:1.27",
];

/// The `[store]` table: which backend keeps blobs, manifests and tag records, and how big the
/// disk cache may grow.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Cache size limit in bytes (blobs + manifests); `None` = unbounded.
    pub max_size: Option<u64>,
    /// How often the evictor checks the size even when nothing was filled.
    pub evict_interval: Duration,
    /// Keep what the cluster pulled within this window out of eviction, as pins are.
    pub pin_history: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    /// Files under `data_dir`.
    Disk,
    /// An S3 (or S3-compatible) bucket; spool files stay under `data_dir/spool`.
    S3(Box<S3Config>),
}

/// An S3 bucket as the cache. Credentials not given here come from the `AWS_*` environment.
#[derive(Clone, PartialEq)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:9000` for an S3-compatible server; AWS when `None`.
    pub endpoint: Option<Url>,
    pub region: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (`None`: the bucket root).
    pub prefix: Option<String>,
    /// `true`: `https://<bucket>.<endpoint>/key`; `false`: `https://<endpoint>/<bucket>/key`.
    pub virtual_hosted_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Extra CA (PEM) trusted for the endpoint's TLS.
    pub ca_file: Option<PathBuf>,
    /// Size of the local hot tier under `data_dir` (blobs + manifests); `None`: no hot tier.
    pub local_max_size: Option<u64>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("access_key_id", &self.access_key_id)
            .field("allow_http", &self.allow_http)
            .field("ca_file", &self.ca_file)
            .field("local_max_size", &self.local_max_size)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_EVICT_INTERVAL: Duration = Duration::from_secs(60);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Disk,
            max_size: None,
            evict_interval: DEFAULT_EVICT_INTERVAL,
            pin_history: None,
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub(crate) fn new(token: String) -> AdminToken {
        AdminToken(token)
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The platforms `berth prewarm` uses when neither the config nor `--platform` names any.
pub const DEFAULT_PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// One configured upstream registry.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The registry name clients use: `docker.io`, `ghcr.io`, `registry.example:5000`.
    pub name: String,
    /// Where its API lives: `https://registry-1.docker.io`.
    pub url: Url,
    /// The `upstream` label of its metric series: its name, or for a registry that
    /// `upstream_patterns` let in, the pattern (clients pick those names: the series stay few).
    pub metrics_label: String,
    pub credentials: Option<Credentials>,
    /// Extra CA (PEM) trusted for this upstream's TLS, on top of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Hosts besides the upstream's own that may receive its credentials as a token realm
    /// and may resolve to non-public addresses (lower-case, no port).
    pub trusted_hosts: Vec<String>,
    /// Which repositories may be pulled through this upstream.
    pub repositories: RepositoryRules,
    /// Blobs larger than this are refused (with or without a Content-Length). `None` = no cap
    /// (only an upstream made by `Upstream::at` for the probe; configured ones have a default).
    pub max_blob_size: Option<u64>,
    /// Blob fills from this upstream running at once; more wait in a bounded queue.
    pub max_fills: u32,
    /// How long a tag → digest answer is trusted without asking the upstream.
    pub tag_ttl: Duration,
    /// One-component names get `library/` (Docker Hub's official images).
    pub official_images_prefix: bool,
    pub transport: Transport,
    /// An HTTP proxy for all of this upstream's traffic (`proxy`), or the environment's.
    pub proxy: ProxySetting,
    /// `no_proxy`, joined as `NO_PROXY` is written; `None`: the environment's `NO_PROXY`.
    pub no_proxy: Option<String>,
    /// Registries with the same content, tried in order while this one's path is down.
    pub fallback_urls: Vec<Url>,
}

impl Upstream {
    /// An upstream at `url` with the built-in settings and no credentials: what `berth probe`
    /// dials for a URL that no configured upstream owns.
    pub fn at(url: Url) -> Upstream {
        let name = url.host_str().unwrap_or_default().to_string();
        Upstream {
            metrics_label: name.clone(),
            name,
            url,
            credentials: None,
            ca_file: None,
            trusted_hosts: Vec::new(),
            repositories: RepositoryRules::default(),
            max_blob_size: None,
            max_fills: DEFAULT_MAX_FILLS,
            tag_ttl: DEFAULT_TAG_TTL,
            official_images_prefix: false,
            transport: Transport::default(),
            proxy: ProxySetting::FromEnv,
            no_proxy: None,
            fallback_urls: Vec::new(),
        }
    }
}

/// `allow_repositories` / `deny_repositories`: checked before any upstream connection.
#[derive(Debug, Clone, Default)]
pub struct RepositoryRules {
    /// Only these may be pulled (when given).
    pub allow: Option<(Vec<String>, globset::GlobSet)>,
    /// These may not be, even when allowed.
    pub deny: Option<(Vec<String>, globset::GlobSet)>,
}

impl PartialEq for RepositoryRules {
    fn eq(&self, other: &Self) -> bool {
        let patterns = |r: &RepositoryRules| {
            (
                r.allow.as_ref().map(|(p, _)| p.clone()),
                r.deny.as_ref().map(|(p, _)| p.clone()),
            )
        };
        patterns(self) == patterns(other)
    }
}

impl RepositoryRules {
    /// Compiles glob patterns (`*` within one component, `**` across them).
    pub fn compile(patterns: &[String]) -> Result<(Vec<String>, globset::GlobSet), String> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`{pattern}` is not a glob: {e}"))?;
            set.add(glob);
        }
        let set = set.build().map_err(|e| e.to_string())?;
        Ok((patterns.to_vec(), set))
    }

    /// `Err(why)` when `repository` may not be pulled: the rule that refused it.
    pub fn check(&self, repository: &str) -> Result<(), String> {
        if let Some((patterns, set)) = &self.deny {
            if set.is_match(repository) {
                let hit = set.matches(repository);
                return Err(format!("deny_repositories has `{}`", patterns[hit[0]]));
            }
        }
        if let Some((patterns, set)) = &self.allow {
            if !set.is_match(repository) {
                return Err(format!(
                    "allow_repositories ({}) does not name it",
                    patterns.join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How berth talks to one upstream over the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Transport {
    pub connect_timeout: Duration,
    pub tls_timeout: Duration,
    /// Time from request sent to response headers.
    pub header_timeout: Duration,
    /// No body bytes for this long = a stalled transfer.
    pub stall_timeout: Duration,
    /// Attempts per upstream request (first try included).
    pub max_attempts: u32,
    /// TCP_MAXSEG clamp for upstream sockets (e.g. 1360), off when `None`.
    pub tcp_mss: Option<u32>,
    /// Clamps tried, in order, on an address that shows the PMTU black-hole signature (a TLS
    /// handshake or first bytes that never arrive at full size); empty = off. An explicit
    /// `tcp_mss` wins.
    pub mss_fallback: Vec<u32>,
    pub http1_only: bool,
    /// Which address family to try first when a host has both.
    pub ip_preference: IpPreference,
    /// A body slower than this (bytes/s) over `min_speed_window` counts as stalled (and is
    /// resumed): a transfer that trickles never quite stalls. 0 = off.
    pub min_speed: u64,
    pub min_speed_window: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails fast before letting a probe through.
    pub breaker_cooldown: Duration,
    /// Retries allowed per minute across all requests to this upstream.
    pub retry_budget: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpPreference {
    /// The resolver's order.
    Auto,
    Ipv4,
    Ipv6,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(20),
            max_attempts: 4,
            tcp_mss: None,
            mss_fallback: DEFAULT_MSS_FALLBACK.to_vec(),
            http1_only: false,
            ip_preference: IpPreference::Auto,
            min_speed: DEFAULT_MIN_SPEED,
            min_speed_window: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            retry_budget: 60,
        }
    }
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_S3_REGION: &str = "us-east-1";
pub const DEFAULT_MAX_FILLS: u32 = 32;
/// The largest layers in the wild (CUDA, ML models) are a few tens of GiB; a blob past this
/// is refused unless `max_blob_size` says more.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 64 << 30;
/// 4 KiB/s averaged over 30 s: slower is a transfer that only pretends to move.
pub const DEFAULT_MIN_SPEED: u64 = 4096;
/// 1360 fits a 1400-byte hop (common VPN and overlay MTUs); 1200 fits most tunnels inside
/// tunnels.
pub const DEFAULT_MSS_FALLBACK: [u32; 2] = [1360, 1200];
pub const DEFAULT_MAX_FILLS_TOTAL: u32 = 128;
/// The hot tier in front of S3 unless `local_max_size` says otherwise.
pub const DEFAULT_LOCAL_MAX_SIZE: u64 = 10 * 1024 * 1024 * 1024;

/// The upstreams used when the config file names none: every registry of the shipped image
/// groups. oci.external-secrets.io is a vanity name that redirects to ghcr.io.
pub const BUILTIN_UPSTREAMS: [(&str, &str); 5] = [
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("oci.external-secrets.io", "https://oci.external-secrets.io"),
];

/// A configuration problem, reported as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error{}: `{key}`: {message}", source_suffix(.file))]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: String,
    pub message: String,
}

fn source_suffix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!(" in {}", f.display()))
        .unwrap_or_default()
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Values from flags and environment that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub default_upstream: Option<String>,
    pub mirror_url: Option<String>,
}

impl Config {
    /// Loads the file (if any), applies overrides and validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    file: Some(path.to_owned()),
                    key: "--config".into(),
                    message: format!("cannot read the file: {e}"),
                })?;
                RawConfig::parse(&text).map_err(|mut e| {
                    e.file = Some(path.to_owned());
                    e
                })?
            }
            None => RawConfig::default(),
        };
        raw.validate(overrides).map_err(|mut e| {
            e.file = file.map(Path::to_owned);
            e
        })
    }

    /// Parses and validates a config from TOML text (tests, embedded examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        RawConfig::parse(text)?.validate(&Overrides::default())
    }

    /// Only the `platforms` of a config file (a prewarm host need not have berth's secrets).
    pub fn platforms_from_file(path: &Path) -> Result<Vec<Platform>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            key: "--config".into(),
            message: format!("cannot read the file: {e}"),
        })?;
        let with_file = |mut e: ConfigError| {
            e.file = Some(path.to_owned());
            e
        };
        let raw = RawConfig::parse(&text).map_err(with_file)?;
        resolve::platforms(raw.platforms.as_deref()).map_err(with_file)
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.get(name)
    }
}

//! The file format as serde types: every key optional, unknown keys refused. Resolution into
//! the typed [`Config`](super::Config) lives beside: `resolve.rs` (top level), `upstream.rs`
//! (the layering of upstream keys), `store.rs` (`[store]`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::size::RawSize;
use super::{ConfigError, IpPreference};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub default_upstream: Option<String>,
    pub mirror_url: Option<String>,
    pub advertise_url: Option<String>,
    pub manifest_memory_cache_mb: Option<u64>,
    pub max_fills: Option<u32>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub platforms: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub probe_interval: Option<Duration>,
    pub probe_images: Option<Vec<String>>,
    pub upstream_patterns: Option<Vec<String>>,
    pub access_log: Option<PathBuf>,
    #[serde(default)]
    pub upstream_defaults: RawUpstream,
    pub upstreams: Option<BTreeMap<String, RawUpstream>>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub server: super::RawServer,
    /// `"10.27.27.21" = "cp1"`: client addresses to node names.
    pub nodes: Option<BTreeMap<String, String>>,
}

/// The `[store]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<RawStoreKind>,
    pub max_size: Option<RawSize>,
    #[serde(default, with = "humantime_serde")]
    pub evict_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub pin_history: Option<Duration>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub virtual_hosted_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub allow_http: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub local_max_size: Option<RawSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawStoreKind {
    Disk,
    S3,
}

/// One `[upstreams."name"]` table; also the shape of `[upstream_defaults]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub tag_ttl: Option<Duration>,
    pub official_images_prefix: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tls_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stall_timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub tcp_mss: Option<u32>,
    pub mss_fallback: Option<Vec<u32>>,
    pub http1_only: Option<bool>,
    pub ip_preference: Option<IpPreference>,
    pub min_speed: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub min_speed_window: Option<Duration>,
    pub breaker_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub breaker_cooldown: Option<Duration>,
    pub retry_budget: Option<u32>,
    pub trusted_hosts: Option<Vec<String>>,
    pub max_blob_size: Option<RawSize>,
    pub max_fills: Option<u32>,
    pub allow_repositories: Option<Vec<String>>,
    pub deny_repositories: Option<Vec<String>>,
    pub proxy: Option<String>,
    pub no_proxy: Option<Vec<String>>,
    pub fallback_urls: Option<Vec<String>>,
}

impl RawConfig {
    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().replace('\n', " ");
            let key = if key == "." || key.is_empty() {
                "(top level)".into()
            } else {
                key
            };
            ConfigError::new(key, message)
        })
    }
}

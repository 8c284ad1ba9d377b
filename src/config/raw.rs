//! The file format: every key optional, unknown keys refused, then [`RawConfig::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::size::RawSize;
use super::{
    AdminToken, BUILTIN_UPSTREAMS, Config, ConfigError, Credentials, DEFAULT_DATA_DIR,
    DEFAULT_EVICT_INTERVAL, DEFAULT_LISTEN, DEFAULT_PLATFORMS, DEFAULT_S3_REGION, DEFAULT_TAG_TTL,
    IpPreference, Overrides, S3Config, StoreConfig, StoreKind, Transport, Upstream,
};
use crate::oci::Platform;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub default_upstream: Option<String>,
    pub mirror_url: Option<String>,
    pub manifest_memory_cache_mb: Option<u64>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub platforms: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub probe_interval: Option<Duration>,
    pub probe_images: Option<Vec<String>>,
    #[serde(default)]
    pub upstream_defaults: RawUpstream,
    pub upstreams: Option<BTreeMap<String, RawUpstream>>,
    #[serde(default)]
    pub store: RawStore,
}

/// The `[store]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<RawStoreKind>,
    pub max_size: Option<RawSize>,
    #[serde(default, with = "humantime_serde")]
    pub evict_interval: Option<Duration>,
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
    pub http1_only: Option<bool>,
    pub ip_preference: Option<IpPreference>,
    pub min_speed: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub min_speed_window: Option<Duration>,
    pub breaker_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub breaker_cooldown: Option<Duration>,
    pub retry_budget: Option<u32>,
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

    pub fn validate(self, overrides: &Overrides) -> Result<Config, ConfigError> {
        let listen_text = overrides
            .listen
            .map(|a| a.to_string())
            .or(self.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::new(
                "listen",
                format!("`{listen_text}` is not an address like 0.0.0.0:5000"),
            )
        })?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or(self.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());

        let defaults = self.upstream_defaults;
        for (key, set) in [
            ("url", defaults.url.is_some()),
            ("username", defaults.username.is_some()),
            ("password", defaults.password.is_some()),
            ("password_env", defaults.password_env.is_some()),
            ("password_file", defaults.password_file.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    format!("upstream_defaults.{key}"),
                    "belongs in an [upstreams.\"<name>\"] table, not in the defaults",
                ));
            }
        }

        let raw_upstreams = self.upstreams.unwrap_or_else(|| {
            BUILTIN_UPSTREAMS
                .iter()
                .map(|(name, url)| {
                    (
                        name.to_string(),
                        RawUpstream {
                            url: Some(url.to_string()),
                            ..Default::default()
                        },
                    )
                })
                .collect()
        });
        if raw_upstreams.is_empty() {
            return Err(ConfigError::new(
                "upstreams",
                "no upstream configured; add [upstreams.\"docker.io\"] or remove the empty table",
            ));
        }
        let mut upstreams = BTreeMap::new();
        for (name, raw) in raw_upstreams {
            let upstream = raw.resolve(&name, &defaults)?;
            upstreams.insert(name, upstream);
        }

        let default_upstream = overrides
            .default_upstream
            .clone()
            .or(self.default_upstream)
            .unwrap_or_else(|| {
                if upstreams.contains_key("docker.io") {
                    "docker.io".into()
                } else {
                    upstreams.keys().next().cloned().unwrap_or_default()
                }
            });
        if !upstreams.contains_key(&default_upstream) {
            return Err(ConfigError::new(
                "default_upstream",
                format!("`{default_upstream}` is not one of the configured upstreams"),
            ));
        }

        let mirror_url = match overrides.mirror_url.clone().or(self.mirror_url) {
            Some(text) => Some(parse_http_url("mirror_url", &text)?),
            None => None,
        };

        let store = self.store.resolve()?;
        let admin_token = admin_token(self.admin_token, self.admin_token_file)?;
        let platforms = platforms(self.platforms.as_deref())?;
        let probe = probe(self.probe_interval, self.probe_images)?;

        Ok(Config {
            listen,
            data_dir,
            default_upstream,
            mirror_url,
            upstreams,
            manifest_memory_cache: self.manifest_memory_cache_mb.unwrap_or(64) * 1024 * 1024,
            store,
            admin_token,
            platforms,
            probe,
        })
    }
}

impl RawUpstream {
    fn resolve(self, name: &str, defaults: &RawUpstream) -> Result<Upstream, ConfigError> {
        let key = |field: &str| format!("upstreams.{name}.{field}");
        if !valid_registry_name(name) {
            return Err(ConfigError::new(
                format!("upstreams.{name}"),
                "an upstream name is a registry host such as `ghcr.io` or `registry.local:5000`",
            ));
        }
        let url_text = self.url.ok_or_else(|| {
            ConfigError::new(key("url"), "missing; e.g. url = \"https://ghcr.io\"")
        })?;
        let url = parse_http_url(&key("url"), &url_text)?;

        let password = match (self.password, self.password_env, self.password_file) {
            (Some(p), None, None) => Some(p),
            (None, Some(var), None) => Some(std::env::var(&var).map_err(|_| {
                ConfigError::new(
                    key("password_env"),
                    format!("environment variable `{var}` is not set"),
                )
            })?),
            (None, None, Some(path)) => Some(read_secret_file(&key("password_file"), &path)?),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::new(
                    key("password"),
                    "set only one of password, password_env, password_file",
                ));
            }
        };
        let credentials = match (self.username, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    key("password"),
                    "username is set but no password",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    key("username"),
                    "a password is set but no username",
                ));
            }
        };

        let ca_file = self.ca_file.or(defaults.ca_file.clone());
        if let Some(path) = &ca_file {
            check_pem_certificates(&key("ca_file"), path)?;
        }

        let base = Transport::default();
        let transport = Transport {
            connect_timeout: self
                .connect_timeout
                .or(defaults.connect_timeout)
                .unwrap_or(base.connect_timeout),
            tls_timeout: self
                .tls_timeout
                .or(defaults.tls_timeout)
                .unwrap_or(base.tls_timeout),
            header_timeout: self
                .header_timeout
                .or(defaults.header_timeout)
                .unwrap_or(base.header_timeout),
            stall_timeout: self
                .stall_timeout
                .or(defaults.stall_timeout)
                .unwrap_or(base.stall_timeout),
            max_attempts: self
                .max_attempts
                .or(defaults.max_attempts)
                .unwrap_or(base.max_attempts),
            tcp_mss: self.tcp_mss.or(defaults.tcp_mss),
            http1_only: self
                .http1_only
                .or(defaults.http1_only)
                .unwrap_or(base.http1_only),
            ip_preference: self
                .ip_preference
                .or(defaults.ip_preference)
                .unwrap_or(base.ip_preference),
            min_speed: self
                .min_speed
                .or(defaults.min_speed)
                .unwrap_or(base.min_speed),
            min_speed_window: self
                .min_speed_window
                .or(defaults.min_speed_window)
                .unwrap_or(base.min_speed_window),
            breaker_threshold: self
                .breaker_threshold
                .or(defaults.breaker_threshold)
                .unwrap_or(base.breaker_threshold),
            breaker_cooldown: self
                .breaker_cooldown
                .or(defaults.breaker_cooldown)
                .unwrap_or(base.breaker_cooldown),
            retry_budget: self
                .retry_budget
                .or(defaults.retry_budget)
                .unwrap_or(base.retry_budget),
        };
        if transport.breaker_threshold == 0 {
            return Err(ConfigError::new(
                key("breaker_threshold"),
                "must be at least 1",
            ));
        }
        if transport.max_attempts == 0 {
            return Err(ConfigError::new(key("max_attempts"), "must be at least 1"));
        }
        if let Some(mss) = transport.tcp_mss {
            if !(536..=9000).contains(&mss) {
                return Err(ConfigError::new(
                    key("tcp_mss"),
                    format!("{mss} is outside 536..=9000"),
                ));
            }
        }
        for (field, value) in [
            ("connect_timeout", transport.connect_timeout),
            ("tls_timeout", transport.tls_timeout),
            ("header_timeout", transport.header_timeout),
            ("stall_timeout", transport.stall_timeout),
            ("min_speed_window", transport.min_speed_window),
            ("breaker_cooldown", transport.breaker_cooldown),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key(field), "must be longer than zero"));
            }
        }

        let is_docker_hub = name == "docker.io" || url.host_str() == Some("registry-1.docker.io");
        Ok(Upstream {
            name: name.to_string(),
            url,
            credentials,
            ca_file,
            tag_ttl: self.tag_ttl.or(defaults.tag_ttl).unwrap_or(DEFAULT_TAG_TTL),
            official_images_prefix: self.official_images_prefix.unwrap_or(is_docker_hub),
            transport,
        })
    }
}

impl RawStore {
    fn resolve(self) -> Result<StoreConfig, ConfigError> {
        let key = |field: &str| format!("store.{field}");
        let max_size = self
            .max_size
            .clone()
            .map(|size| size.bytes())
            .transpose()
            .map_err(|message| ConfigError::new(key("max_size"), message))?;
        if max_size == Some(0) {
            return Err(ConfigError::new(
                key("max_size"),
                "0 would evict everything; remove the key for an unbounded cache",
            ));
        }
        let evict_interval = self.evict_interval.unwrap_or(DEFAULT_EVICT_INTERVAL);
        if evict_interval.is_zero() {
            return Err(ConfigError::new(
                key("evict_interval"),
                "must be longer than zero",
            ));
        }
        let kind = match self.kind.unwrap_or(RawStoreKind::Disk) {
            RawStoreKind::Disk => {
                for (field, set) in [
                    ("bucket", self.bucket.is_some()),
                    ("endpoint", self.endpoint.is_some()),
                    ("region", self.region.is_some()),
                    ("prefix", self.prefix.is_some()),
                    ("virtual_hosted_style", self.virtual_hosted_style.is_some()),
                    ("access_key_id", self.access_key_id.is_some()),
                    ("secret_access_key", self.secret_access_key.is_some()),
                    (
                        "secret_access_key_file",
                        self.secret_access_key_file.is_some(),
                    ),
                    ("allow_http", self.allow_http.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            key(field),
                            "is an S3 setting; add kind = \"s3\" to [store] or remove it",
                        ));
                    }
                }
                StoreKind::Disk
            }
            RawStoreKind::S3 => StoreKind::S3(Box::new(self.resolve_s3()?)),
        };
        Ok(StoreConfig {
            kind,
            max_size,
            evict_interval,
        })
    }

    fn resolve_s3(self) -> Result<S3Config, ConfigError> {
        let key = |field: &str| format!("store.{field}");
        let bucket = self
            .bucket
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    key("bucket"),
                    "missing; kind = \"s3\" needs a bucket, e.g. bucket = \"berth-cache\"",
                )
            })?;
        let valid_bucket = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(ConfigError::new(
                key("bucket"),
                format!("`{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"),
            ));
        }
        let allow_http = self.allow_http.unwrap_or(false);
        let endpoint = match &self.endpoint {
            Some(text) => {
                let url = parse_http_url(&key("endpoint"), text)?;
                if url.scheme() == "http" && !allow_http {
                    return Err(ConfigError::new(
                        key("endpoint"),
                        format!("`{text}` is plain http; set allow_http = true to allow it"),
                    ));
                }
                Some(url)
            }
            None => None,
        };
        let region = self.region.unwrap_or_else(|| DEFAULT_S3_REGION.to_string());
        if region.trim().is_empty() {
            return Err(ConfigError::new(key("region"), "must not be empty"));
        }
        let prefix = match self.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => None,
            Some(p) => {
                if p.split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                {
                    return Err(ConfigError::new(
                        key("prefix"),
                        format!("`{p}` has an empty, `.` or `..` path segment"),
                    ));
                }
                Some(p.to_string())
            }
        };
        let secret_access_key = match (self.secret_access_key, self.secret_access_key_file) {
            (Some(s), None) => Some(s),
            (None, Some(path)) => Some(read_secret_file(&key("secret_access_key_file"), &path)?),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("secret_access_key"),
                    "set only one of secret_access_key, secret_access_key_file",
                ));
            }
        };
        match (&self.access_key_id, &secret_access_key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    key("secret_access_key"),
                    "access_key_id is set but no secret_access_key (or secret_access_key_file)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    key("access_key_id"),
                    "a secret access key is set but no access_key_id",
                ));
            }
            _ => {}
        }
        if let Some(path) = &self.ca_file {
            check_pem_certificates(&key("ca_file"), path)?;
        }
        Ok(S3Config {
            bucket,
            virtual_hosted_style: self.virtual_hosted_style.unwrap_or(endpoint.is_none()),
            endpoint,
            region,
            prefix,
            access_key_id: self.access_key_id,
            secret_access_key,
            allow_http,
            ca_file: self.ca_file,
        })
    }
}

/// A secret kept in a file (password, S3 secret key): the contents without the trailing newline.
fn read_secret_file(key: &str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// A CA file must exist and hold at least one PEM certificate.
fn check_pem_certificates(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .filter(|c| c.is_ok())
        .count();
    if certs == 0 {
        return Err(ConfigError::new(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(())
}

fn admin_token(
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<AdminToken>, ConfigError> {
    let token = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "admin_token",
                "set only one of admin_token, admin_token_file",
            ));
        }
        (Some(t), None) => t,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| {
                ConfigError::new(
                    "admin_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if token.len() < 16 {
        return Err(ConfigError::new(
            "admin_token",
            "is shorter than 16 characters; generate one with `openssl rand -hex 32`",
        ));
    }
    Ok(Some(AdminToken::new(token)))
}

/// `platforms = ["linux/amd64", ...]`, else the defaults.
pub(super) fn platforms(raw: Option<&[String]>) -> Result<Vec<Platform>, ConfigError> {
    let texts: Vec<&str> = match raw {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => DEFAULT_PLATFORMS.to_vec(),
    };
    if texts.is_empty() {
        return Err(ConfigError::new(
            "platforms",
            "is empty; list the nodes' platforms, e.g. [\"linux/amd64\"], or remove the key",
        ));
    }
    texts
        .iter()
        .map(|t| {
            t.parse::<Platform>()
                .map_err(|e| ConfigError::new("platforms", e.to_string()))
        })
        .collect()
}

fn parse_http_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    if !text.contains("://") {
        return Err(ConfigError::new(
            key,
            format!("`{text}` has no scheme; write http://{text} or https://{text}"),
        ));
    }
    let url = Url::parse(text)
        .map_err(|e| ConfigError::new(key, format!("`{text}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            key,
            format!("`{text}` must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(url)
}

/// `host` or `host:port`, lowercase, as registries are named in image references.
fn valid_registry_name(name: &str) -> bool {
    let (host, port) = match name.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (name, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_builtin_upstreams() {
        let config = Config::from_toml("").unwrap();
        let names: Vec<_> = config.upstreams.keys().cloned().collect();
        assert_eq!(
            names,
            ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
        );
        assert_eq!(config.default_upstream, "docker.io");
        assert_eq!(config.listen.to_string(), "0.0.0.0:5000");
        assert!(config.upstreams["docker.io"].official_images_prefix);
        assert!(!config.upstreams["ghcr.io"].official_images_prefix);
    }

    #[test]
    fn listed_upstreams_replace_builtins() {
        let config =
            Config::from_toml("[upstreams.\"ghcr.io\"]\nurl = \"https://ghcr.io\"\n").unwrap();
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.default_upstream, "ghcr.io");
    }

    #[test]
    fn defaults_apply_and_upstream_overrides_win() {
        let text = r#"
            [upstream_defaults]
            stall_timeout = "7s"
            tcp_mss = 1360
            [upstreams."a.io"]
            url = "https://a.io"
            [upstreams."b.io"]
            url = "https://b.io"
            stall_timeout = "3s"
        "#;
        let config = Config::from_toml(text).unwrap();
        assert_eq!(
            config.upstreams["a.io"].transport.stall_timeout,
            Duration::from_secs(7)
        );
        assert_eq!(
            config.upstreams["b.io"].transport.stall_timeout,
            Duration::from_secs(3)
        );
        assert_eq!(config.upstreams["b.io"].transport.tcp_mss, Some(1360));
    }

    /// Each config text is refused with one line naming its key.
    fn assert_errors_name_the_key(cases: &[(&str, &str)]) {
        for (text, key) in cases {
            let err = Config::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?} → {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("lisen = \"x\"", "lisen"),
            ("[upstreams.\"a.io\"]\nurll = \"https://a\"", "urll"),
            ("[upstreams.\"a.io\"]\nurl = \"a.io\"", "upstreams.a.io.url"),
            (
                "[upstreams.\"a.io\"]\nurl = \"ftp://a.io\"",
                "upstreams.a.io.url",
            ),
            (
                "[upstreams.\"a.io\"]\nurl = \"https://a.io\"\nca_file = \"/nonexistent.pem\"",
                "ca_file",
            ),
            ("default_upstream = \"nope.io\"", "default_upstream"),
            (
                "[upstreams.\"a.io\"]\nurl = \"https://a.io\"\nstall_timeout = \"soon\"",
                "stall_timeout",
            ),
            (
                "[upstream_defaults]\nurl = \"https://a.io\"",
                "upstream_defaults.url",
            ),
            ("listen = \"nowhere\"", "listen"),
            ("[store]\nkind = \"tape\"", "store.kind"),
            ("[store]\nmax_size = \"lots\"", "store.max_size"),
            ("[store]\nmax_size = 0", "store.max_size"),
            ("[store]\nevict_interval = \"0s\"", "store.evict_interval"),
            ("platforms = [\"amd64\"]", "platforms"),
            ("platforms = []", "platforms"),
            ("admin_token = \"short\"", "admin_token"),
            (
                "admin_token = \"0123456789abcdef\"\nadmin_token_file = \"/x\"",
                "admin_token",
            ),
            (
                "admin_token_file = \"/nonexistent-token\"",
                "admin_token_file",
            ),
        ];
        assert_errors_name_the_key(&cases);
    }

    #[test]
    fn s3_store_settings() {
        let text = r#"
            [store]
            kind = "s3"
            bucket = "berth-cache"
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            prefix = "/mirrors/berth/"
            access_key_id = "AK"
            secret_access_key = "SK"
        "#;
        let config = Config::from_toml(text).unwrap();
        let StoreKind::S3(s3) = &config.store.kind else {
            panic!("expected s3: {:?}", config.store)
        };
        assert_eq!(s3.bucket, "berth-cache");
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.prefix.as_deref(), Some("mirrors/berth"));
        assert!(
            !s3.virtual_hosted_style,
            "a custom endpoint means path-style"
        );
        assert_eq!(s3.secret_access_key.as_deref(), Some("SK"));
        assert!(
            !format!("{s3:?}").contains("SK"),
            "the secret is not logged"
        );

        let aws = Config::from_toml("[store]\nkind = \"s3\"\nbucket = \"b-1\"").unwrap();
        let StoreKind::S3(aws) = aws.store.kind else {
            panic!()
        };
        assert!(aws.virtual_hosted_style && aws.endpoint.is_none() && !aws.allow_http);
        assert_eq!(aws.access_key_id, None, "from the AWS_* environment");
    }

    #[test]
    fn store_errors_name_the_key() {
        let cases = [
            ("[store]\nkind = \"tape\"", "store.kind"),
            ("[store]\nkind = \"s3\"", "store.bucket"),
            ("[store]\nbucket = \"b-1\"", "store.bucket"),
            ("[store]\nmax_size = \"lots\"", "store.max_size"),
            ("[store]\nsize = \"1GiB\"", "size"),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nendpoint = \"http://127.0.0.1:9000\"",
                "store.endpoint",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nendpoint = \"127.0.0.1:9000\"",
                "store.endpoint",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"Bad_Bucket\"",
                "store.bucket",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\naccess_key_id = \"AK\"",
                "store.secret_access_key",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nprefix = \"a//b\"",
                "store.prefix",
            ),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b-1\"\nca_file = \"/nonexistent.pem\"",
                "store.ca_file",
            ),
        ];
        assert_errors_name_the_key(&cases);
    }

    #[test]
    fn store_table() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.store.kind, StoreKind::Disk);
        let config = Config::from_toml("[store]\nmax_size = \"50GiB\"").unwrap();
        assert_eq!(config.store.max_size, Some(50 << 30));
        let config = Config::from_toml(
            "[store]\nkind = \"disk\"\nmax_size = \"500MiB\"\nevict_interval = \"10s\"",
        )
        .unwrap();
        assert_eq!(config.store.max_size, Some(500 << 20));
        assert_eq!(config.store.evict_interval, Duration::from_secs(10));
        let plain = Config::from_toml("[store]\nmax_size = 4096").unwrap();
        assert_eq!(plain.store.max_size, Some(4096));
    }

    #[test]
    fn admin_token_and_platforms() {
        let config = Config::from_toml("admin_token = \"0123456789abcdef\"").unwrap();
        assert!(config.admin_token.unwrap().matches("0123456789abcdef"));
        let config = Config::from_toml("platforms = [\"linux/arm/v7\"]").unwrap();
        assert_eq!(config.platforms[0].to_string(), "linux/arm/v7");
        let builtin = Config::from_toml("").unwrap();
        assert!(builtin.admin_token.is_none());
        assert_eq!(builtin.platforms.len(), 2);
    }

    #[test]
    fn registry_names() {
        for ok in [
            "docker.io",
            "registry.k8s.io",
            "localhost:5000",
            "a-b.example",
        ] {
            assert!(valid_registry_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Docker.io",
            "a/b",
            "a..b",
            "-a.io",
            "a.io:http",
            "a.io:99999",
        ] {
            assert!(!valid_registry_name(bad), "{bad}");
        }
    }
}

/// `probe_interval` (off unless set, at least 10 s) and `probe_images`.
fn probe(
    interval: Option<Duration>,
    images: Option<Vec<String>>,
) -> Result<super::ProbeConfig, ConfigError> {
    if let Some(i) = interval {
        if i < Duration::from_secs(10) {
            return Err(ConfigError::new(
                "probe_interval",
                "at least \"10s\" (the light probe runs every interval); remove it to turn it off",
            ));
        }
    }
    let images = images.unwrap_or_else(|| {
        super::DEFAULT_PROBE_IMAGES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    if let Some(bad) = images
        .iter()
        .find(|i| i.trim().is_empty() || i.contains(char::is_whitespace))
    {
        return Err(ConfigError::new(
            "probe_images",
            format!("`{bad}` is not an image reference like ghcr.io/fluxcd/helm-controller:v1.5.1"),
        ));
    }
    Ok(super::ProbeConfig { interval, images })
}

//! The whole file resolved into [`Config`]: flags over the file over built-in defaults, every
//! value checked once, errors naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use url::Url;

use super::patterns::UpstreamPatterns;
use super::raw::{RawConfig, RawUpstream};
use super::{
    AdminToken, BUILTIN_UPSTREAMS, Config, ConfigError, DEFAULT_DATA_DIR, DEFAULT_LISTEN,
    DEFAULT_MAX_FILLS_TOTAL, DEFAULT_PLATFORMS, Overrides, Upstream,
};
use crate::oci::Platform;

impl RawConfig {
    pub fn validate(self, overrides: &Overrides) -> Result<Config, ConfigError> {
        let listen = listen(overrides.listen, self.listen)?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or(self.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());

        let defaults = self.upstream_defaults;
        check_upstream_defaults(&defaults)?;
        let upstreams = upstreams(self.upstreams, &defaults)?;
        let upstream_patterns = upstream_patterns(self.upstream_patterns.as_deref(), &defaults)?;
        let default_upstream = default_upstream(
            overrides.default_upstream.clone().or(self.default_upstream),
            &upstreams,
        )?;

        let mirror_url = overrides
            .mirror_url
            .clone()
            .or(self.mirror_url)
            .map(|text| parse_http_url("mirror_url", &text))
            .transpose()?;
        let advertise_url = self
            .advertise_url
            .map(|text| parse_http_url("advertise_url", &text))
            .transpose()?;
        let store = self.store.resolve()?;
        let server = self.server.resolve()?;
        let admin_token = admin_token(self.admin_token, self.admin_token_file)?;
        let platforms = platforms(self.platforms.as_deref())?;
        let probe = super::probe::resolve(self.probe_interval, self.probe_images)?;
        let nodes = nodes(self.nodes)?;
        let max_fills = match self.max_fills {
            Some(0) => return Err(ConfigError::new("max_fills", "must be at least 1")),
            n => n.unwrap_or(DEFAULT_MAX_FILLS_TOTAL),
        };

        Ok(Config {
            listen,
            data_dir,
            default_upstream,
            mirror_url,
            advertise_url,
            upstreams,
            upstream_patterns,
            manifest_memory_cache: self.manifest_memory_cache_mb.unwrap_or(64) * 1024 * 1024,
            max_fills,
            store,
            server,
            admin_token,
            platforms,
            probe,
            access_log: self.access_log,
            nodes,
        })
    }
}

/// Longest node name, and how many nodes `[nodes]` may name.
const MAX_NODE_NAME: usize = 64;
const MAX_NODES: usize = 4096;

/// `[nodes]`: each key an IP address, each value a short printable name.
fn nodes(raw: Option<BTreeMap<String, String>>) -> Result<super::NodeNames, ConfigError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_NODES {
        return Err(ConfigError::new(
            "nodes",
            format!("{} entries; at most {MAX_NODES}", raw.len()),
        ));
    }
    let mut names = BTreeMap::new();
    for (address, name) in raw {
        let key = format!("nodes.{address}");
        let ip: std::net::IpAddr = address.parse().map_err(|_| {
            ConfigError::new(
                &key,
                "the key is not an IP address; write e.g. \"10.27.27.21\" = \"cp1\"",
            )
        })?;
        let printable = name.chars().all(|c| c.is_ascii_graphic());
        if name.is_empty() || name.len() > MAX_NODE_NAME || !printable {
            return Err(ConfigError::new(
                &key,
                format!("a node name is 1 to {MAX_NODE_NAME} visible ASCII characters, like cp1"),
            ));
        }
        names.insert(ip.to_canonical(), name);
    }
    Ok(super::NodeNames::new(names))
}

/// `--listen` over the file over the default.
fn listen(flag: Option<SocketAddr>, file: Option<String>) -> Result<SocketAddr, ConfigError> {
    let listen_text = flag
        .map(|a| a.to_string())
        .or(file)
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    listen_text.parse().map_err(|_| {
        ConfigError::new(
            "listen",
            format!("`{listen_text}` is not an address like 0.0.0.0:5000"),
        )
    })
}

/// `[upstream_defaults]` refuses the keys of one registry's account or address (`url`,
/// `username`, the passwords): inherited, they would go to every upstream.
fn check_upstream_defaults(defaults: &RawUpstream) -> Result<(), ConfigError> {
    match defaults.account_keys_set().next() {
        Some(key) => Err(ConfigError::new(
            format!("upstream_defaults.{key}"),
            "belongs in an [upstreams.\"<name>\"] table, not in the defaults",
        )),
        None => Ok(()),
    }
}

/// The `[upstreams]` tables (the built-in list when the file has none), each over `defaults`.
fn upstreams(
    tables: Option<BTreeMap<String, RawUpstream>>,
    defaults: &RawUpstream,
) -> Result<BTreeMap<String, Upstream>, ConfigError> {
    let tables = tables.unwrap_or_else(|| {
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
    if tables.is_empty() {
        return Err(ConfigError::new(
            "upstreams",
            "no upstream configured; add [upstreams.\"docker.io\"] or remove the empty table",
        ));
    }
    let mut upstreams = BTreeMap::new();
    for (name, raw) in tables {
        let upstream = raw.resolve(&name, defaults)?;
        upstreams.insert(name, upstream);
    }
    Ok(upstreams)
}

/// `upstream_patterns`; what a match gets is the defaults as an upstream (name and URL set per
/// match).
fn upstream_patterns(
    patterns: Option<&[String]>,
    defaults: &RawUpstream,
) -> Result<UpstreamPatterns, ConfigError> {
    let template = RawUpstream {
        url: Some("https://upstream-patterns.invalid".into()),
        ..RawUpstream::default()
    }
    .resolve("upstream-patterns.invalid", defaults)?;
    UpstreamPatterns::new(patterns.unwrap_or_default(), template)
}

/// The chosen one (flag, then file), else `docker.io` if configured, else the first by name;
/// it must be one of `upstreams`.
fn default_upstream(
    chosen: Option<String>,
    upstreams: &BTreeMap<String, Upstream>,
) -> Result<String, ConfigError> {
    let default_upstream = chosen.unwrap_or_else(|| {
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
    Ok(default_upstream)
}

/// A secret kept in a file (password, S3 secret key): the contents without the trailing newline.
pub(super) fn read_secret_file(key: &str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// A CA file must exist and hold at least one PEM certificate.
pub(super) fn check_pem_certificates(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
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

pub(super) fn parse_http_url(key: &str, text: &str) -> Result<Url, ConfigError> {
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
    // Credentials in a URL would be ignored, then shown wherever the URL is (status page).
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            key,
            "holds a user name or password; write the URL without them and set username \
             with password_file (or password_env) instead",
        ));
    }
    Ok(url)
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use crate::config::Config;

    #[test]
    fn empty_file_gives_builtin_upstreams() {
        let config = Config::from_toml("").unwrap();
        let names: Vec<_> = config.upstreams.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "ghcr.io",
                "oci.external-secrets.io",
                "quay.io",
                "registry.k8s.io"
            ]
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
    pub(in crate::config) fn assert_errors_name_the_key(cases: &[(&str, &str)]) {
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
            (
                "[upstream_defaults]\nmss_fallback = [1200, 1360]",
                "upstreams.docker.io.mss_fallback",
            ),
            (
                "[upstreams.\"a.io\"]\nurl = \"https://a.io\"\nmss_fallback = [100]",
                "upstreams.a.io.mss_fallback",
            ),
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
    fn what_a_review_found_is_refused_at_load() {
        let cases = [
            // Credentials in a URL were ignored, then shown on the status page.
            (
                "[upstreams.\"r.io\"]\nurl = \"https://me:secret@r.io\"",
                "upstreams.r.io.url",
            ),
            // An absurd duration panicked under the breaker's lock at the first failure.
            (
                "[upstream_defaults]\nbreaker_cooldown = \"300000000000y\"",
                "breaker_cooldown",
            ),
            (
                "[upstreams.\"r.io\"]\nurl = \"https://r.io\"\ntag_ttl = \"2000y\"",
                "tag_ttl",
            ),
            ("[server]\nidle_timeout = \"30d\"", "server.idle_timeout"),
            ("probe_interval = \"9999d\"", "probe_interval"),
        ];
        assert_errors_name_the_key(&cases);
        let config = Config::from_toml("").unwrap();
        assert!(
            config
                .upstreams
                .values()
                .all(|u| u.max_blob_size == Some(crate::config::DEFAULT_MAX_BLOB_SIZE)),
            "a finite default max_blob_size"
        );
        assert_eq!(
            config.upstreams["docker.io"].transport.min_speed,
            crate::config::DEFAULT_MIN_SPEED
        );
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
}

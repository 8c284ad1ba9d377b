//! One upstream's keys resolved: the table's own keys over `[upstream_defaults]` over the
//! built-in defaults, then checked.

use super::limits::{MAX_INTERVAL, MAX_TAG_TTL, check_duration};
use super::raw::RawUpstream;
use super::resolve::{check_pem_certificates, parse_http_url, read_secret_file};
use super::{
    ConfigError, Credentials, DEFAULT_MAX_BLOB_SIZE, DEFAULT_MAX_FILLS, DEFAULT_TAG_TTL,
    RepositoryRules, Transport, Upstream,
};
use crate::oci::is_registry_name;

/// Keys that name one registry's account or address: never inherited from the defaults.
pub(super) const NOT_IN_DEFAULTS: [&str; 6] = [
    "url",
    "fallback_urls",
    "username",
    "password",
    "password_env",
    "password_file",
];

impl RawUpstream {
    /// The layering, written once: a key set in this table wins over `[upstream_defaults]`.
    fn over(self, defaults: &RawUpstream) -> RawUpstream {
        macro_rules! layered {
            ($($field:ident),* $(,)?) => {
                RawUpstream { $($field: self.$field.or_else(|| defaults.$field.clone()),)* }
            };
        }
        layered!(
            url,
            username,
            password,
            password_env,
            password_file,
            ca_file,
            tag_ttl,
            official_images_prefix,
            connect_timeout,
            tls_timeout,
            header_timeout,
            stall_timeout,
            max_attempts,
            tcp_mss,
            mss_fallback,
            http1_only,
            ip_preference,
            min_speed,
            min_speed_window,
            breaker_threshold,
            breaker_cooldown,
            retry_budget,
            trusted_hosts,
            max_blob_size,
            max_fills,
            allow_repositories,
            deny_repositories,
            proxy,
            no_proxy,
            fallback_urls
        )
    }

    /// Which of [`NOT_IN_DEFAULTS`] this table sets.
    pub(super) fn account_keys_set(&self) -> impl Iterator<Item = &'static str> {
        let set = [
            self.url.is_some(),
            self.fallback_urls.is_some(),
            self.username.is_some(),
            self.password.is_some(),
            self.password_env.is_some(),
            self.password_file.is_some(),
        ];
        NOT_IN_DEFAULTS
            .into_iter()
            .zip(set)
            .filter_map(|(k, s)| s.then_some(k))
    }

    pub(super) fn resolve(
        self,
        name: &str,
        defaults: &RawUpstream,
    ) -> Result<Upstream, ConfigError> {
        if !is_registry_name(name) {
            return Err(ConfigError::new(
                format!("upstreams.{name}"),
                "an upstream name is a registry host such as `ghcr.io` or `registry.local:5000`",
            ));
        }
        let raw = self.over(defaults);
        let url_text = raw.url.as_deref().ok_or_else(|| {
            ConfigError::new(key(name, "url"), "missing; e.g. url = \"https://ghcr.io\"")
        })?;
        let url = parse_http_url(&key(name, "url"), url_text)?;
        let credentials = raw.credentials(name)?;
        if let Some(path) = &raw.ca_file {
            check_pem_certificates(&key(name, "ca_file"), path)?;
        }
        let transport = raw.transport(name)?;
        let trusted_hosts = raw.trusted_hosts(name)?;
        let repositories = raw.repository_rules(name)?;
        let max_blob_size = raw
            .max_blob_size
            .map(|size| size.bytes())
            .transpose()
            .map_err(|e| ConfigError::new(key(name, "max_blob_size"), e))?
            .or(Some(DEFAULT_MAX_BLOB_SIZE));
        let max_fills = raw.max_fills.unwrap_or(DEFAULT_MAX_FILLS);
        if max_fills == 0 {
            return Err(ConfigError::new(
                key(name, "max_fills"),
                "must be at least 1",
            ));
        }

        let tag_ttl = raw.tag_ttl.unwrap_or(DEFAULT_TAG_TTL);
        check_duration(&key(name, "tag_ttl"), tag_ttl, MAX_TAG_TTL)?;
        let proxy = super::egress::proxy_setting(&key(name, "proxy"), raw.proxy.as_deref())?;
        let no_proxy = super::egress::no_proxy(&key(name, "no_proxy"), raw.no_proxy.as_deref())?;
        let fallback_urls = super::egress::fallback_urls(
            &key(name, "fallback_urls"),
            raw.fallback_urls.as_deref(),
        )?;
        let is_docker_hub = name == "docker.io" || url.host_str() == Some("registry-1.docker.io");
        Ok(Upstream {
            name: name.to_string(),
            metrics_label: name.to_string(),
            url,
            credentials,
            ca_file: raw.ca_file,
            trusted_hosts,
            repositories,
            max_blob_size,
            max_fills,
            tag_ttl,
            official_images_prefix: raw.official_images_prefix.unwrap_or(is_docker_hub),
            transport,
            proxy,
            no_proxy,
            fallback_urls,
        })
    }

    /// A username with exactly one source of its password (inline, environment, file), or
    /// neither.
    fn credentials(&self, name: &str) -> Result<Option<Credentials>, ConfigError> {
        let password = match (&self.password, &self.password_env, &self.password_file) {
            (Some(p), None, None) => Some(p.clone()),
            (None, Some(var), None) => Some(std::env::var(var).map_err(|_| {
                ConfigError::new(
                    key(name, "password_env"),
                    format!("environment variable `{var}` is not set"),
                )
            })?),
            (None, None, Some(path)) => Some(read_secret_file(&key(name, "password_file"), path)?),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::new(
                    key(name, "password"),
                    "set only one of password, password_env, password_file",
                ));
            }
        };
        match (self.username.clone(), password) {
            (Some(username), Some(password)) => Ok(Some(Credentials { username, password })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::new(
                key(name, "password"),
                "username is set but no password",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                key(name, "username"),
                "a password is set but no username",
            )),
        }
    }

    /// The transport keys over the built-in [`Transport`], then checked.
    fn transport(&self, name: &str) -> Result<Transport, ConfigError> {
        let base = Transport::default();
        macro_rules! or_builtin {
            ($($field:ident),* $(,)?) => {
                Transport {
                    $($field: self.$field.unwrap_or(base.$field),)*
                    tcp_mss: self.tcp_mss,
                    mss_fallback: self.mss_fallback.clone().unwrap_or(base.mss_fallback.clone()),
                }
            };
        }
        let transport = or_builtin!(
            connect_timeout,
            tls_timeout,
            header_timeout,
            stall_timeout,
            max_attempts,
            http1_only,
            ip_preference,
            min_speed,
            min_speed_window,
            breaker_threshold,
            breaker_cooldown,
            retry_budget,
        );
        check_transport(&transport, name)?;
        Ok(transport)
    }

    /// `allow_repositories` / `deny_repositories`: glob lists (`*` within one path component,
    /// `**` across components), compiled once.
    fn repository_rules(&self, name: &str) -> Result<RepositoryRules, ConfigError> {
        let compile = |field: &str, list: &Option<Vec<String>>| {
            list.as_ref()
                .map(|patterns| RepositoryRules::compile(patterns))
                .transpose()
                .map_err(|e| ConfigError::new(key(name, field), e))
        };
        Ok(RepositoryRules {
            allow: compile("allow_repositories", &self.allow_repositories)?,
            deny: compile("deny_repositories", &self.deny_repositories)?,
        })
    }

    /// `trusted_hosts`: bare host names, kept as [`host_key`]s.
    fn trusted_hosts(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        let trusted_hosts = self.trusted_hosts.as_deref().unwrap_or_default();
        if let Some(bad) = trusted_hosts
            .iter()
            .find(|h| host_key(h).is_empty() || h.contains(['/', ':', ' ', '@']))
        {
            return Err(ConfigError::new(
                key(name, "trusted_hosts"),
                format!("`{bad}` is not a bare host name like \"auth.example.com\""),
            ));
        }
        Ok(trusted_hosts.iter().map(|h| host_key(h)).collect())
    }
}

/// Counts of at least one, an MSS within 536..=9000, no zero durations.
fn check_transport(transport: &Transport, name: &str) -> Result<(), ConfigError> {
    if transport.breaker_threshold == 0 {
        return Err(ConfigError::new(
            key(name, "breaker_threshold"),
            "must be at least 1",
        ));
    }
    if transport.max_attempts == 0 {
        return Err(ConfigError::new(
            key(name, "max_attempts"),
            "must be at least 1",
        ));
    }
    if let Some(mss) = transport.tcp_mss {
        if !(536..=9000).contains(&mss) {
            return Err(ConfigError::new(
                key(name, "tcp_mss"),
                format!("{mss} is outside 536..=9000"),
            ));
        }
    }
    check_mss_fallback(&transport.mss_fallback, name)?;
    for (field, value) in [
        ("connect_timeout", transport.connect_timeout),
        ("tls_timeout", transport.tls_timeout),
        ("header_timeout", transport.header_timeout),
        ("stall_timeout", transport.stall_timeout),
        ("min_speed_window", transport.min_speed_window),
        ("breaker_cooldown", transport.breaker_cooldown),
    ] {
        check_duration(&key(name, field), value, MAX_INTERVAL)?;
    }
    Ok(())
}

/// `mss_fallback`: at most four clamps, each a valid MSS, largest first (each step is tried
/// only after the one before it failed).
fn check_mss_fallback(steps: &[u32], name: &str) -> Result<(), ConfigError> {
    let field = key(name, "mss_fallback");
    if steps.len() > 4 {
        return Err(ConfigError::new(
            field,
            "at most 4 values, e.g. [1360, 1200]",
        ));
    }
    if let Some(bad) = steps.iter().find(|m| !(536..=9000).contains(*m)) {
        return Err(ConfigError::new(
            field,
            format!("{bad} is outside 536..=9000"),
        ));
    }
    if steps.windows(2).any(|w| w[0] <= w[1]) {
        return Err(ConfigError::new(
            field,
            "list the clamps from largest to smallest, e.g. [1360, 1200]",
        ));
    }
    Ok(())
}

/// The key an error names: `upstreams.<name>.<field>`.
fn key(name: &str, field: &str) -> String {
    format!("upstreams.{name}.{field}")
}

/// A host name as berth compares hosts (trusted_hosts, realms, redirect targets, the address
/// rule): lower case, without IPv6 brackets or the trailing dot of a fully qualified name, so
/// `Auth.Example.` and `auth.example` are one host for every rule alike.
pub fn host_key(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

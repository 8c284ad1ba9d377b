//! How an upstream is reached: through an HTTP proxy (`proxy`, `no_proxy`, or the
//! `HTTPS_PROXY`/`NO_PROXY` environment when the config is silent) and which other registries
//! serve its content when its own path is down (`fallback_urls`).

use url::Url;

use super::ConfigError;
use super::resolve::parse_http_url;

/// At most this many fallbacks per upstream: each is tried in turn while the primary is down.
pub const MAX_FALLBACKS: usize = 8;

/// The `proxy` key, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxySetting {
    /// The key is absent: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (and their lower-case
    /// forms) decide, read once when the upstream client starts.
    FromEnv,
    /// `proxy = ""` or `proxy = "none"`: direct, whatever the environment says.
    Off,
    /// `proxy = "http://[user:password@]host:port"`.
    Url(ProxyUrl),
}

/// A proxy's URL. Its user info is the proxy's Basic credentials: [`std::fmt::Display`] and
/// `Debug` show `http://host:port` only, so the URL can go into logs, errors and the status
/// page as it is.
#[derive(Clone, PartialEq)]
pub struct ProxyUrl(Url);

impl ProxyUrl {
    /// The URL as written, credentials included: for the proxy matcher only.
    pub fn with_credentials(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.0.host_str().unwrap_or("");
        match self.0.port_or_known_default() {
            Some(port) => write!(f, "{}://{host}:{port}", self.0.scheme()),
            None => write!(f, "{}://{host}", self.0.scheme()),
        }
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// `proxy`: absent → the environment; `""`/`"none"` → off; else an `http://` URL with a host
/// and nothing after it but `/`.
pub(super) fn proxy_setting(key: &str, text: Option<&str>) -> Result<ProxySetting, ConfigError> {
    let text = match text.map(str::trim) {
        None => return Ok(ProxySetting::FromEnv),
        Some("" | "none") => return Ok(ProxySetting::Off),
        Some(text) => text,
    };
    // Never echo the text: it may hold the proxy's password.
    let url = Url::parse(text).map_err(|e| {
        ConfigError::new(
            key,
            format!("is not a URL ({e}); write proxy = \"http://host:3128\""),
        )
    })?;
    if url.scheme() != "http" {
        return Err(ConfigError::new(
            key,
            format!(
                "scheme `{}`: berth reaches a proxy over plain http:// (CONNECT); write proxy = \"http://host:3128\"",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.path() != "/" || url.query().is_some() {
        return Err(ConfigError::new(
            key,
            "a proxy URL is http://[user:password@]host:port with nothing after the port",
        ));
    }
    Ok(ProxySetting::Url(ProxyUrl(url)))
}

/// `no_proxy`: host names (a leading `.` or none: the domain and its subdomains), IP
/// addresses or CIDR ranges, or `*`; joined as `NO_PROXY` is written.
pub(super) fn no_proxy(key: &str, list: Option<&[String]>) -> Result<Option<String>, ConfigError> {
    let Some(list) = list else {
        return Ok(None);
    };
    if let Some(bad) = list
        .iter()
        .find(|h| h.trim().is_empty() || (h.contains([',', '/', ' ', '@']) && !is_cidr(h)))
    {
        return Err(ConfigError::new(
            key,
            format!("`{bad}` is not a host, domain, IP address or CIDR range like \"10.0.0.0/8\""),
        ));
    }
    Ok(Some(list.join(",")))
}

fn is_cidr(text: &str) -> bool {
    text.parse::<ipnet::IpNet>().is_ok()
}

/// `fallback_urls`: registries with the same content, each a URL like the upstream's own.
pub(super) fn fallback_urls(key: &str, list: Option<&[String]>) -> Result<Vec<Url>, ConfigError> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_FALLBACKS {
        return Err(ConfigError::new(
            key,
            format!("{} fallbacks; at most {MAX_FALLBACKS}", list.len()),
        ));
    }
    list.iter().map(|text| parse_http_url(key, text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_proxy_url_never_shows_its_password() {
        let ProxySetting::Url(url) =
            proxy_setting("k", Some("http://u:s3cret@proxy.lan:3128")).unwrap()
        else {
            panic!("a URL");
        };
        assert_eq!(url.to_string(), "http://proxy.lan:3128");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(url.with_credentials().contains("s3cret"));
    }

    #[test]
    fn proxy_keys_resolve_or_name_the_fix() {
        assert_eq!(proxy_setting("k", None).unwrap(), ProxySetting::FromEnv);
        assert_eq!(proxy_setting("k", Some("")).unwrap(), ProxySetting::Off);
        assert_eq!(proxy_setting("k", Some("none")).unwrap(), ProxySetting::Off);
        let e = proxy_setting("k", Some("https://u:s3cret@p:3128")).unwrap_err();
        assert!(e.to_string().contains("plain http://"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = proxy_setting("k", Some("http://p:3128/path")).unwrap_err();
        assert!(e.to_string().contains("nothing after the port"), "{e}");
        assert_eq!(
            no_proxy("k", Some(&["a.lan".into(), "10.0.0.0/8".into()])).unwrap(),
            Some("a.lan,10.0.0.0/8".into())
        );
        assert!(no_proxy("k", Some(&["a,b".into()])).is_err());
    }

    #[test]
    fn upstream_tables_carry_proxy_and_fallbacks() {
        let text = "[upstream_defaults]\nproxy = \"http://proxy.lan:3128\"\nno_proxy = [\".lan\"]\n\
                    [upstreams.\"docker.io\"]\nurl = \"https://registry-1.docker.io\"\n\
                    fallback_urls = [\"https://mirror.gcr.io\"]\n\
                    [upstreams.\"ghcr.io\"]\nurl = \"https://ghcr.io\"\nproxy = \"none\"\n";
        let config = Config::from_toml(text).unwrap();
        let hub = &config.upstreams["docker.io"];
        assert!(
            matches!(&hub.proxy, ProxySetting::Url(u) if u.to_string() == "http://proxy.lan:3128")
        );
        assert_eq!(hub.no_proxy.as_deref(), Some(".lan"));
        assert_eq!(hub.fallback_urls[0].as_str(), "https://mirror.gcr.io/");
        assert_eq!(config.upstreams["ghcr.io"].proxy, ProxySetting::Off);
        let e =
            Config::from_toml("[upstream_defaults]\nfallback_urls = [\"https://mirror.gcr.io\"]\n")
                .unwrap_err();
        assert!(e.to_string().contains("fallback_urls"), "{e}");
    }
}

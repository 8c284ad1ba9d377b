//! Which URLs to probe: `--target`s, else every configured upstream's `/v2/` plus what it
//! points at (its token endpoint from the 401 challenge, its blob CDN from a redirect), and
//! the endpoints our users name in their runbooks unless `--no-user-named`.

use url::Url;

use crate::config::Config;
use crate::upstream::{Challenge, parse_challenges};

/// At most this many targets per run: rounds × targets × addresses stays bounded.
pub const MAX_TARGETS: usize = 32;

/// The endpoints our users probe by hand today.
pub const USER_NAMED: [&str; 6] = [
    "https://ghcr.io/v2/",
    "https://auth.docker.io/token",
    "https://registry-1.docker.io/v2/",
    "https://quay.io/v2/",
    "https://registry.k8s.io/v2/",
    "https://api.doppler.com/v3/projects",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Registry,
    Token,
    Cdn,
    Custom,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Registry => "registry",
            Role::Token => "token",
            Role::Cdn => "cdn",
            Role::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: Url,
    pub role: Role,
    /// The configured upstream it belongs to (for its CA file).
    pub upstream: Option<String>,
}

impl Target {
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or_default().to_string()
    }

    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }

    /// For a CDN, any HTTP answer proves the path (its root says 403/404).
    pub fn any_answer_ok(&self) -> bool {
        self.role == Role::Cdn
    }
}

/// Parses a `--target`: an http(s) URL with a host.
pub fn parse_target(text: &str) -> Result<Url, String> {
    Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            format!("--target `{text}` is not an http(s) URL; write e.g. https://ghcr.io/v2/")
        })
}

/// The starting list: explicit targets, or each upstream's `/v2/` (+ the user-named endpoints
/// unless turned off).
pub fn initial(config: &Config, explicit: &[Url], with_user_named: bool) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    if !explicit.is_empty() {
        for url in explicit {
            let upstream = upstream_of(config, url);
            push(&mut out, url.clone(), Role::Custom, upstream);
        }
        return out;
    }
    for (name, upstream) in &config.upstreams {
        if let Ok(url) = upstream.url.join("/v2/") {
            push(&mut out, url, Role::Registry, Some(name.clone()));
        }
    }
    if with_user_named {
        for text in USER_NAMED {
            let url = Url::parse(text).expect("valid built-in target");
            let upstream = upstream_of(config, &url);
            push(&mut out, url, Role::Custom, upstream);
        }
    }
    out
}

/// The configured upstream whose URL has this host, if any.
pub fn upstream_of(config: &Config, url: &Url) -> Option<String> {
    config
        .upstreams
        .iter()
        .find(|(_, u)| u.url.host_str() == url.host_str())
        .map(|(name, _)| name.clone())
}

/// Adds a target unless its URL is already listed or the list is full.
pub fn push(list: &mut Vec<Target>, url: Url, role: Role, upstream: Option<String>) -> bool {
    if list.len() >= MAX_TARGETS || list.iter().any(|t| t.url == url) {
        return false;
    }
    list.push(Target {
        url,
        role,
        upstream,
    });
    true
}

/// The token endpoint named by a registry's 401 challenge (`Bearer realm=…,service=…`).
pub fn token_endpoint(challenge: &str) -> Option<Url> {
    parse_challenges(challenge)
        .into_iter()
        .find_map(|c| match c {
            Challenge::Bearer { realm, service, .. } => {
                let mut url = Url::parse(&realm).ok()?;
                if !matches!(url.scheme(), "http" | "https") {
                    return None;
                }
                if let Some(service) = service {
                    url.query_pairs_mut().append_pair("service", &service);
                }
                Some(url)
            }
            Challenge::Basic => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_and_without_a_config() {
        let config = Config::from_toml("").unwrap();
        let all = initial(&config, &[], true);
        let urls: Vec<&str> = all.iter().map(|t| t.url.as_str()).collect();
        assert!(urls.contains(&"https://registry-1.docker.io/v2/"));
        assert!(urls.contains(&"https://api.doppler.com/v3/projects"));
        // The built-in upstreams and the user-named list overlap; each URL once.
        let mut dedup = urls.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), urls.len());
        let ghcr = all.iter().find(|t| t.url.as_str() == "https://ghcr.io/v2/");
        assert_eq!(ghcr.unwrap().upstream.as_deref(), Some("ghcr.io"));

        let config =
            Config::from_toml("[upstreams.\"lab.test\"]\nurl = \"https://10.99.2.2:8443\"\n")
                .unwrap();
        let only = initial(&config, &[], false);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].url.as_str(), "https://10.99.2.2:8443/v2/");
        let explicit = initial(&config, &[parse_target("https://x.test/").unwrap()], false);
        assert_eq!(explicit[0].role, Role::Custom);
        assert!(parse_target("ftp://x").is_err());
    }

    #[test]
    fn token_endpoint_from_challenge() {
        let url = token_endpoint(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://auth.docker.io/token?service=registry.docker.io"
        );
        assert_eq!(token_endpoint(r#"Basic realm="x""#), None);
        assert_eq!(token_endpoint(r#"Bearer realm="file:///etc/passwd""#), None);
    }
}

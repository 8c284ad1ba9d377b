//! `upstream_patterns`: registries served without a table of their own.
//!
//! A request for a registry that is not an `[upstreams]` entry but matches one of these host
//! patterns is served from `https://<registry>` with `[upstream_defaults]` (no credentials),
//! so the K3s `"*"` catch-all works for vanity and cloud registries. Anything else stays
//! unknown: berth never connects to a host no pattern names.

use url::Url;

use super::{ConfigError, Upstream};
use crate::oci::is_registry_name;

/// One entry of `upstream_patterns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `public.ecr.aws`, `registry.local:5000`: that registry only.
    Exact(String),
    /// `*.pkg.dev`, stored as `.pkg.dev`: any host ending in it, one label or more in front,
    /// without a port.
    Subdomains(String),
}

impl HostPattern {
    fn parse(text: &str) -> Result<HostPattern, String> {
        if text == "*" {
            return Err(
                "`*` would make berth an open proxy for every registry; list hosts \
                 (public.ecr.aws) or subdomain patterns (*.pkg.dev)"
                    .into(),
            );
        }
        let pattern = match text.strip_prefix("*.") {
            Some(domain) => {
                if domain.contains(':') || !domain.contains('.') {
                    return Err(format!(
                        "`{text}`: a `*.` pattern needs a domain of two labels or more and no \
                         port, e.g. *.pkg.dev"
                    ));
                }
                HostPattern::Subdomains(format!(".{domain}"))
            }
            None => HostPattern::Exact(text.to_string()),
        };
        let host = match &pattern {
            HostPattern::Exact(host) => host.as_str(),
            HostPattern::Subdomains(suffix) => &suffix[1..],
        };
        if !is_registry_name(host) {
            return Err(format!(
                "`{text}` is not a registry host (lowercase host[:port]) or `*.` followed by one"
            ));
        }
        Ok(pattern)
    }

    fn matches(&self, registry: &str) -> bool {
        match self {
            HostPattern::Exact(host) => host == registry,
            HostPattern::Subdomains(suffix) => {
                !registry.contains(':')
                    && registry.len() > suffix.len()
                    && registry.ends_with(suffix.as_str())
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Subdomains(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The patterns and the upstream settings every match gets.
#[derive(Debug, Clone)]
pub struct UpstreamPatterns {
    patterns: Vec<HostPattern>,
    /// `[upstream_defaults]` resolved as an upstream; name and URL are filled in per match.
    template: Upstream,
}

impl UpstreamPatterns {
    pub(super) fn new(texts: &[String], template: Upstream) -> Result<Self, ConfigError> {
        let patterns = texts
            .iter()
            .map(|text| {
                HostPattern::parse(text).map_err(|m| ConfigError::new("upstream_patterns", m))
            })
            .collect::<Result<_, _>>()?;
        Ok(UpstreamPatterns { patterns, template })
    }

    pub fn patterns(&self) -> &[HostPattern] {
        &self.patterns
    }

    /// The upstream for `registry` (a `?ns=` value or a path's first component: untrusted)
    /// if a pattern allows it: `https://<registry>` with the defaults' settings.
    pub fn upstream_for(&self, registry: &str) -> Option<Upstream> {
        if !is_registry_name(registry) {
            return None;
        }
        let pattern = self.patterns.iter().find(|p| p.matches(registry))?;
        let url = Url::parse(&format!("https://{registry}")).ok()?;
        Some(Upstream {
            name: registry.to_string(),
            metrics_label: pattern.to_string(),
            url,
            ..self.template.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn patterns(list: &str) -> UpstreamPatterns {
        Config::from_toml(&format!("upstream_patterns = {list}"))
            .unwrap()
            .upstream_patterns
    }

    #[test]
    fn hosts_and_subdomain_patterns_match_only_what_they_name() {
        let p = patterns(r#"["*.pkg.dev", "public.ecr.aws", "registry.local:5000"]"#);
        for allowed in [
            "europe-docker.pkg.dev",
            "a.b.pkg.dev",
            "public.ecr.aws",
            "registry.local:5000",
        ] {
            let upstream = p.upstream_for(allowed).expect(allowed);
            assert_eq!(upstream.name, allowed);
            assert!(
                ["*.pkg.dev", "public.ecr.aws", "registry.local:5000"]
                    .contains(&upstream.metrics_label.as_str()),
                "labelled by the pattern that let it in: {}",
                upstream.metrics_label
            );
            assert_eq!(upstream.url.as_str(), format!("https://{allowed}/"));
            assert!(upstream.credentials.is_none() && !upstream.official_images_prefix);
        }
        for refused in [
            "pkg.dev",
            "evilpkg.dev",
            "x.pkg.dev:443",
            "x.pkg.dev.evil.example",
            "public.ecr.aws:443",
            "ecr.aws",
            "registry.local",
            "EUROPE-docker.pkg.dev",
            "a/b.pkg.dev",
            "",
        ] {
            assert!(p.upstream_for(refused).is_none(), "{refused}");
        }
    }

    #[test]
    fn matches_get_the_upstream_defaults() {
        let config = Config::from_toml(
            "upstream_patterns = [\"*.pkg.dev\"]\n[upstream_defaults]\nstall_timeout = \"7s\"\ntag_ttl = \"1m\"\ntcp_mss = 1360",
        )
        .unwrap();
        let upstream = config
            .upstream_patterns
            .upstream_for("us-docker.pkg.dev")
            .unwrap();
        assert_eq!(upstream.transport.stall_timeout.as_secs(), 7);
        assert_eq!(upstream.transport.tcp_mss, Some(1360));
        assert_eq!(upstream.tag_ttl.as_secs(), 60);
    }

    #[test]
    fn no_patterns_by_default_and_bad_ones_are_refused() {
        assert!(
            Config::from_toml("")
                .unwrap()
                .upstream_patterns
                .patterns()
                .is_empty()
        );
        for bad in [
            r#"["*"]"#,
            r#"["*.dev"]"#,
            r#"["*.pkg.dev:443"]"#,
            r#"["Public.ecr.aws"]"#,
            r#"["a.*.dev"]"#,
            r#"["https://public.ecr.aws"]"#,
        ] {
            let err = Config::from_toml(&format!("upstream_patterns = {bad}"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("upstream_patterns"), "{bad}: {err}");
        }
    }
}

//! Which registries get an entry, and the mirror URL every entry points at.

use std::collections::{BTreeMap, BTreeSet};

use url::Url;

use super::GenerateError;
use crate::config::Upstream;

/// The mirror's base URL as the nodes reach it: scheme, host and port, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorUrl {
    url: Url,
}

impl MirrorUrl {
    /// Parses a `--mirror-url` value. A missing scheme is refused rather than guessed: K3s
    /// and containerd read `10.27.27.10:5000` as https, which a plain-HTTP berth never answers.
    pub fn parse(text: &str) -> Result<MirrorUrl, GenerateError> {
        if !text.contains("://") {
            return Err(GenerateError::MirrorUrlWithoutScheme {
                text: text.to_string(),
            });
        }
        let url = Url::parse(text).map_err(|e| GenerateError::BadMirrorUrl {
            text: text.to_string(),
            problem: format!("is not a URL ({e})"),
        })?;
        MirrorUrl::from_url(&url)
    }

    /// Checks an already parsed URL (the config file's `mirror_url`).
    pub fn from_url(url: &Url) -> Result<MirrorUrl, GenerateError> {
        let problem = if !matches!(url.scheme(), "http" | "https") {
            Some("must start with http:// or https://".to_string())
        } else if url.host_str().is_none() {
            Some("has no host".to_string())
        } else if !url.username().is_empty() || url.password().is_some() {
            Some(
                "must not carry credentials; use --username/--password (K3s `configs.auth`)".into(),
            )
        } else if url.query().is_some() || url.fragment().is_some() {
            Some("must not have a query or fragment".to_string())
        } else if url.path() != "/" {
            // Any other path makes K3s set override_path, and berth's API lives at /v2/.
            Some(format!(
                "has the path `{}`; give the base URL only (e.g. http://10.27.27.10:5000), \
                 and --path-prefix for per-registry paths",
                url.path()
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(GenerateError::BadMirrorUrl {
                text: url.to_string(),
                problem,
            }),
            None => Ok(MirrorUrl { url: url.clone() }),
        }
    }

    /// `http://10.27.27.10:5000`: no trailing slash, the form K3s documents for endpoints.
    pub fn base(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_string()
    }

    /// `10.27.27.10:5000`: the key K3s `configs:` and containerd credentials use for this host.
    pub fn host_key(&self) -> String {
        let host = self.url.host_str().expect("checked in from_url");
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// The endpoint a node uses for `target`.
    pub fn endpoint(&self, target: &Target, routing: Routing) -> String {
        match (routing, target) {
            (Routing::PathPrefix, Target::Registry { name, .. }) => {
                format!("{}/v2/{name}", self.base())
            }
            // `*` names no registry to put in a path; berth routes it by containerd's `?ns=`.
            (Routing::PathPrefix, Target::CatchAll) | (Routing::Namespace, _) => self.base(),
        }
    }
}

/// How nodes check berth's TLS certificate, and the client certificate they present.
/// Paths are as seen on the node, not on the machine running berth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorTls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub insecure_skip_verify: bool,
}

impl MirrorTls {
    /// `None` when nothing is set; refuses settings that cannot work with `mirror`.
    pub fn checked(self, mirror: &MirrorUrl) -> Result<Option<MirrorTls>, GenerateError> {
        if self == MirrorTls::default() {
            return Ok(None);
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(GenerateError::InconsistentOptions(
                "--cert-file and --key-file go together; give both or neither".into(),
            ));
        }
        if !mirror.is_https() {
            // containerd would try https first and then http: almost never what was meant.
            return Err(GenerateError::InconsistentOptions(format!(
                "TLS options need an https:// mirror URL, but `{}` is plain HTTP; \
                 drop them or use https://",
                mirror.base()
            )));
        }
        Ok(Some(self))
    }
}

/// How berth learns which registry a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// Endpoint is the bare mirror URL; containerd adds `?ns=<registry>` to every request.
    #[default]
    Namespace,
    /// Endpoint is `<mirror>/v2/<registry>`, so the registry is in the path (`override_path`)
    /// and the request is routable even by a client that drops `?ns=`.
    PathPrefix,
}

/// One entry of the generated config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A configured upstream; `origin` is its API URL (`https://registry-1.docker.io`).
    Registry { name: String, origin: String },
    /// The `"*"` entry used for every registry without its own.
    CatchAll,
}

impl Target {
    /// The registry name as K3s keys it: `docker.io`, `registry.local:5000`, or `*`.
    pub fn key(&self) -> &str {
        match self {
            Target::Registry { name, .. } => name,
            Target::CatchAll => "*",
        }
    }
}

/// Which registries the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Configured upstream names; empty means every configured upstream.
    pub registries: Vec<String>,
    /// Also write a `"*"` entry.
    pub catch_all: bool,
}

/// Resolves `selection` against the configured upstreams: sorted, deduplicated, catch-all last.
pub fn select(
    upstreams: &BTreeMap<String, Upstream>,
    selection: &Selection,
) -> Result<Vec<Target>, GenerateError> {
    let names: BTreeSet<&str> = if selection.registries.is_empty() {
        upstreams.keys().map(String::as_str).collect()
    } else {
        selection.registries.iter().map(String::as_str).collect()
    };
    let mut targets = Vec::with_capacity(names.len() + 1);
    for name in names {
        if name == "*" {
            return Err(GenerateError::CatchAllAsRegistry);
        }
        let upstream = upstreams
            .get(name)
            .ok_or_else(|| GenerateError::UnknownRegistry {
                name: name.to_string(),
                configured: upstreams.keys().cloned().collect(),
            })?;
        let origin = upstream.url.as_str().trim_end_matches('/').to_string();
        targets.push(Target::Registry {
            name: name.to_string(),
            origin,
        });
    }
    if selection.catch_all {
        targets.push(Target::CatchAll);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn mirror_urls_accepted_and_normalized() {
        let cases = [
            (
                "http://10.27.27.10:5000",
                "http://10.27.27.10:5000",
                "10.27.27.10:5000",
            ),
            (
                "http://10.27.27.10:5000/",
                "http://10.27.27.10:5000",
                "10.27.27.10:5000",
            ),
            (
                "https://mirror.example",
                "https://mirror.example",
                "mirror.example",
            ),
            (
                "https://mirror.example:443",
                "https://mirror.example",
                "mirror.example",
            ),
            (
                "http://[fd00::1]:5000",
                "http://[fd00::1]:5000",
                "[fd00::1]:5000",
            ),
        ];
        for (text, base, host_key) in cases {
            let url = MirrorUrl::parse(text).expect(text);
            assert_eq!(
                (url.base().as_str(), url.host_key().as_str()),
                (base, host_key),
                "{text}"
            );
        }
    }

    #[test]
    fn mirror_urls_refused_with_a_reason() {
        let cases = [
            ("10.27.27.10:5000", "write http://10.27.27.10:5000"),
            ("mirror:5000", "has no scheme"),
            ("ftp://mirror", "http:// or https://"),
            ("http://u:p@mirror:5000", "credentials"),
            ("http://mirror:5000/v2/docker.io", "--path-prefix"),
            ("http://mirror:5000/?x=1", "query"),
        ];
        for (text, expected) in cases {
            let err = MirrorUrl::parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text} → {err}");
        }
    }

    #[test]
    fn endpoints_per_routing() {
        let url = MirrorUrl::parse("http://m:5000").unwrap();
        let ghcr = Target::Registry {
            name: "ghcr.io".into(),
            origin: "https://ghcr.io".into(),
        };
        assert_eq!(url.endpoint(&ghcr, Routing::Namespace), "http://m:5000");
        assert_eq!(
            url.endpoint(&ghcr, Routing::PathPrefix),
            "http://m:5000/v2/ghcr.io"
        );
        assert_eq!(
            url.endpoint(&Target::CatchAll, Routing::PathPrefix),
            "http://m:5000"
        );
    }

    #[test]
    fn selection_defaults_to_every_upstream_and_dedupes() {
        let config = Config::from_toml("").unwrap();
        let all = select(&config.upstreams, &Selection::default()).unwrap();
        let keys: Vec<_> = all.iter().map(Target::key).collect();
        assert_eq!(
            keys,
            [
                "docker.io",
                "ghcr.io",
                "oci.external-secrets.io",
                "quay.io",
                "registry.k8s.io"
            ]
        );
        assert_eq!(
            all[0],
            Target::Registry {
                name: "docker.io".into(),
                origin: "https://registry-1.docker.io".into()
            }
        );

        let selection = Selection {
            registries: vec!["quay.io".into(), "ghcr.io".into(), "quay.io".into()],
            catch_all: true,
        };
        let some = select(&config.upstreams, &selection).unwrap();
        let keys: Vec<_> = some.iter().map(Target::key).collect();
        assert_eq!(keys, ["ghcr.io", "quay.io", "*"]);
    }

    #[test]
    fn unknown_registry_lists_the_configured_ones() {
        let config = Config::from_toml("").unwrap();
        let selection = Selection {
            registries: vec!["gcr.io".into()],
            catch_all: false,
        };
        let err = select(&config.upstreams, &selection)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`gcr.io` is not a configured upstream; configured: docker.io, ghcr.io, oci.external-secrets.io, quay.io, registry.k8s.io"
        );
        let selection = Selection {
            registries: vec!["*".into()],
            catch_all: false,
        };
        let err = select(&config.upstreams, &selection)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--catch-all"), "{err}");
    }

    #[test]
    fn tls_options_checked_against_the_mirror() {
        let http = MirrorUrl::parse("http://m:5000").unwrap();
        let https = MirrorUrl::parse("https://m").unwrap();
        assert_eq!(MirrorTls::default().checked(&http).unwrap(), None);
        let ca = MirrorTls {
            ca_file: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(
            ca.clone()
                .checked(&http)
                .unwrap_err()
                .to_string()
                .contains("https://")
        );
        assert_eq!(ca.clone().checked(&https).unwrap(), Some(ca));
        let half = MirrorTls {
            cert_file: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(
            half.checked(&https)
                .unwrap_err()
                .to_string()
                .contains("--key-file")
        );
    }
}

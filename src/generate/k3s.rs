//! K3s/RKE2 `registries.yaml`.
//!
//! The model types carry the exact YAML keys of rancher/wharfie `pkg/registries` (the parser
//! K3s uses), so deserializing our rendered text with them checks the keys as K3s reads them.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

use super::targets::{MirrorTls, MirrorUrl, Routing, Target};
use super::{GenerateError, quoted, quoted_list};

/// A whole `registries.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Keyed by the endpoint's `host[:port]` (the mirror), not by the registry name.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<String>,
    /// Regex on the repository → replacement (`$1`), applied to mirror endpoints only.
    #[serde(default, rename = "rewrite")]
    pub rewrites: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    /// base64 of `username:password`.
    pub auth: Option<String>,
    pub identity_token: Option<String>,
}

/// Paths are as seen on the node, not on the machine running berth.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One `--rewrite REGISTRY=REGEX=REPLACEMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub registry: String,
    pub pattern: String,
    pub replacement: String,
}

impl FromStr for Rewrite {
    type Err = GenerateError;

    /// Splits at the first two `=`: registry names never contain one, and a regex that needs
    /// a literal `=` can write `\x3d`; the replacement may contain `=` freely.
    fn from_str(text: &str) -> Result<Rewrite, GenerateError> {
        let bad = |problem: &str| GenerateError::BadRewrite {
            text: text.to_string(),
            problem: problem.to_string(),
        };
        let mut parts = text.splitn(3, '=');
        let (Some(registry), Some(pattern), Some(replacement)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "expected REGISTRY=REGEX=REPLACEMENT, e.g. 'docker.io=^(.*)$=mirror/$1'",
            ));
        };
        if registry.is_empty() || pattern.is_empty() || replacement.is_empty() {
            return Err(bad("registry, regex and replacement must all be non-empty"));
        }
        Ok(Rewrite {
            registry: registry.to_string(),
            pattern: pattern.to_string(),
            replacement: replacement.to_string(),
        })
    }
}

/// Everything `registries.yaml` says beyond the list of registries.
#[derive(Debug, Clone)]
pub struct K3sOptions {
    pub mirror: MirrorUrl,
    pub routing: Routing,
    pub rewrites: Vec<Rewrite>,
    /// Credentials nodes present to berth.
    pub auth: Option<AuthConfig>,
    pub tls: MirrorTls,
}

/// Builds the model: one mirror entry per target, `configs` for the mirror host when needed.
pub fn registries(targets: &[Target], options: &K3sOptions) -> Result<Registries, GenerateError> {
    let mut mirrors: BTreeMap<String, Mirror> = targets
        .iter()
        .map(|target| {
            let endpoint = options.mirror.endpoint(target, options.routing);
            (
                target.key().to_string(),
                Mirror {
                    endpoints: vec![endpoint],
                    rewrites: BTreeMap::new(),
                },
            )
        })
        .collect();

    for rewrite in &options.rewrites {
        let Some(mirror) = mirrors.get_mut(&rewrite.registry) else {
            return Err(GenerateError::RewriteForUnwrittenRegistry {
                registry: rewrite.registry.clone(),
                written: targets.iter().map(|t| t.key().to_string()).collect(),
            });
        };
        let previous = mirror
            .rewrites
            .insert(rewrite.pattern.clone(), rewrite.replacement.clone());
        if previous.is_some_and(|p| p != rewrite.replacement) {
            return Err(GenerateError::BadRewrite {
                text: format!("{}={}", rewrite.registry, rewrite.pattern),
                problem: "the same regex is given twice with different replacements".into(),
            });
        }
    }

    let auth = options.auth.clone().map(check_auth).transpose()?.flatten();
    let tls = options
        .tls
        .clone()
        .checked(&options.mirror)?
        .map(|tls| TlsConfig {
            ca_file: tls.ca_file,
            cert_file: tls.cert_file,
            key_file: tls.key_file,
            insecure_skip_verify: tls.insecure_skip_verify,
        });
    let mut configs = BTreeMap::new();
    if auth.is_some() || tls.is_some() {
        configs.insert(options.mirror.host_key(), RegistryConfig { auth, tls });
    }
    Ok(Registries { mirrors, configs })
}

/// `None` when no field is set; refuses a username without a password and the reverse.
fn check_auth(auth: AuthConfig) -> Result<Option<AuthConfig>, GenerateError> {
    if auth.username.is_some() != auth.password.is_some() {
        return Err(GenerateError::InconsistentOptions(
            "--username and --password go together; give both, or --auth, or --identity-token"
                .into(),
        ));
    }
    let empty = auth == AuthConfig::default();
    Ok((!empty).then_some(auth))
}

/// Renders the model as commented, deterministic YAML. `command` is the command line that
/// produced it, recorded instead of a timestamp so that regenerating gives identical bytes.
pub fn render(registries: &Registries, command: &str) -> String {
    let mut out = String::new();
    out.push_str(&header(command));
    out.push_str("mirrors:\n");
    for (name, mirror) in &registries.mirrors {
        if name == "*" {
            out.push_str(CATCH_ALL_COMMENT);
        }
        out.push_str(&format!("  {}:\n", key(name)));
        out.push_str(&format!(
            "    endpoint: {}\n",
            quoted_list(mirror.endpoints.iter().map(String::as_str))
        ));
        if !mirror.rewrites.is_empty() {
            out.push_str("    # Applied on the mirror endpoint only, never on the fallback.\n");
            out.push_str("    rewrite:\n");
            for (pattern, replacement) in &mirror.rewrites {
                out.push_str(&format!(
                    "      {}: {}\n",
                    quoted(pattern),
                    quoted(replacement)
                ));
            }
        }
    }
    if !registries.configs.is_empty() {
        out.push_str("configs:\n");
        out.push_str(
            "  # How nodes talk to the mirror itself: keyed by its host:port, not by registry.\n",
        );
        for (host, config) in &registries.configs {
            out.push_str(&format!("  {}:\n", key(host)));
            if let Some(auth) = &config.auth {
                out.push_str("    auth:\n");
                render_fields(
                    &mut out,
                    &[
                        ("username", &auth.username),
                        ("password", &auth.password),
                        ("auth", &auth.auth),
                        ("identity_token", &auth.identity_token),
                    ],
                );
            }
            if let Some(tls) = &config.tls {
                out.push_str("    tls:\n");
                render_fields(
                    &mut out,
                    &[
                        ("ca_file", &tls.ca_file),
                        ("cert_file", &tls.cert_file),
                        ("key_file", &tls.key_file),
                    ],
                );
                if tls.insecure_skip_verify {
                    out.push_str("      insecure_skip_verify: true\n");
                }
            }
        }
    }
    out
}

fn render_fields(out: &mut String, fields: &[(&str, &Option<String>)]) {
    for (name, value) in fields {
        if let Some(value) = value {
            out.push_str(&format!("      {name}: {}\n", quoted(value)));
        }
    }
}

fn header(command: &str) -> String {
    format!(
        "\
# K3s/RKE2 registries.yaml, generated by berth. Regenerate rather than edit:
#   {command}
#
# Install on every node as /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml)
# and restart k3s (servers) or k3s-agent (agents): K3s reads this file only when it starts.
#
# Fallback: K3s always adds each registry's own endpoint (for docker.io,
# https://registry-1.docker.io) after the endpoints below, so while the mirror is down or
# answers with an error, nodes pull from the registry directly. To make the mirror the only
# path, start K3s with --disable-default-registry-endpoint (experimental; it covers the
# registries listed under `mirrors`), then check the hosts.toml files K3s renders under
# /var/lib/rancher/k3s/agent/etc/containerd/certs.d/.
"
    )
}

const CATCH_ALL_COMMENT: &str = concat!(
    "  # \"*\": used for every registry without its own entry. berth mirrors only its configured\n",
    "  # upstreams; for any other registry the node falls back to the registry itself.\n",
);

/// A mapping key: plain when it is a simple host name, double-quoted otherwise (`"*"`, `host:port`).
fn key(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if plain {
        name.to_string()
    } else {
        quoted(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_flag_parses_at_the_first_two_equals() {
        let rewrite: Rewrite = "docker.io=^(.*)$=mirror/$1?a=b".parse().unwrap();
        assert_eq!(
            rewrite,
            Rewrite {
                registry: "docker.io".into(),
                pattern: "^(.*)$".into(),
                replacement: "mirror/$1?a=b".into()
            }
        );
        for bad in [
            "docker.io",
            "docker.io=^(.*)$",
            "=a=b",
            "docker.io==b",
            "docker.io=a=",
        ] {
            assert!(bad.parse::<Rewrite>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_quoted_only_when_needed() {
        assert_eq!(key("docker.io"), "docker.io");
        assert_eq!(key("*"), "\"*\"");
        assert_eq!(key("10.27.27.10:5000"), "\"10.27.27.10:5000\"");
    }
}

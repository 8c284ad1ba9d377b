//! Who gets which credentials: Basic only to the upstream's own authority; a token realm gets
//! the upstream's credentials only over https (unless the upstream itself is plain http) and
//! only on the upstream's host or a host listed in `trusted_hosts`. Anyone else who challenges
//! (a redirect target, a foreign or plain-http realm) gets an anonymous token request or nothing.
//!
//! This file decides; `mod.rs` does the HTTP.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use url::Url;

use super::UpstreamError;
use super::challenge::Challenge;
use super::tokens::{TokenCache, TokenKey};
use crate::config::{Credentials, Upstream, host_key};
use crate::oci::Repository;

/// Token realms on another host than the registry, known to belong to it.
const KNOWN_REALM_HOSTS: [(&str, &str); 1] = [("registry-1.docker.io", "auth.docker.io")];

pub struct Auth {
    home_host: String,
    home_authority: String,
    home_https: bool,
    credentials: Option<Credentials>,
    trusted_hosts: Vec<String>,
    tokens: TokenCache,
    /// The last challenge each authority (`host:port`) answered with; lets later requests
    /// carry credentials up front instead of collecting a 401 first.
    challenges: Mutex<HashMap<String, Challenge>>,
}

/// What to send to an authority.
pub enum Step {
    /// Nothing (it never challenged us).
    Anonymous,
    Header(HeaderValue),
    /// A token must be fetched first.
    FetchToken(TokenRequest),
}

pub struct TokenRequest {
    pub url: Url,
    /// `Authorization: Basic` for the realm, when the rules allow it.
    pub basic: Option<HeaderValue>,
    pub key: TokenKey,
}

impl Auth {
    pub fn new(config: &Upstream) -> Auth {
        let home = &config.url;
        let home_host = host_key(home.host_str().unwrap_or(""));
        Auth {
            home_authority: authority(home),
            home_https: home.scheme() == "https",
            credentials: config.credentials.clone(),
            trusted_hosts: config
                .trusted_hosts
                .iter()
                .cloned()
                .chain(
                    KNOWN_REALM_HOSTS
                        .iter()
                        .filter(|(registry, _)| *registry == home_host)
                        .map(|(_, realm)| realm.to_string()),
                )
                .collect(),
            home_host,
            tokens: TokenCache::default(),
            challenges: Mutex::default(),
        }
    }

    pub fn is_home(&self, url: &Url) -> bool {
        authority(url) == self.home_authority
    }

    /// May berth follow a redirect to `url`? An https upstream is never followed onto http.
    pub fn check_redirect(&self, url: &Url) -> Result<(), UpstreamError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Protocol(format!(
                "redirect to an unsupported scheme at {}",
                redacted(url)
            )));
        }
        if self.home_https && url.scheme() == "http" {
            tracing::warn!(target = %redacted(url), "refused a redirect from https to plain http");
            return Err(UpstreamError::Refused(format!(
                "redirect from https to plain http ({}) refused",
                redacted(url)
            )));
        }
        Ok(())
    }

    /// Records the challenges of a 401 from `authority`. A cached token for the same realm is
    /// forgotten: a 401 despite it means it went bad.
    pub fn challenged(
        &self,
        authority: String,
        repo: &Repository,
        challenges: Vec<Challenge>,
    ) -> Result<(), UpstreamError> {
        let chosen = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
            .or_else(|| challenges.first())
            .cloned()
            .ok_or(UpstreamError::Denied { status: 401 })?;
        if let Challenge::Bearer { realm, service, .. } = &chosen {
            for with_credentials in [false, true] {
                self.tokens.forget(&TokenKey {
                    realm: realm.clone(),
                    service: service.clone().unwrap_or_default(),
                    scope: scope(repo),
                    with_credentials,
                });
            }
        }
        if chosen == Challenge::Basic && authority != self.home_authority {
            // A redirect target asking for a password gets none: it is not the registry.
            tracing::warn!(%authority, "a host other than the upstream asked for Basic credentials; refused");
            return Err(UpstreamError::Denied { status: 401 });
        }
        self.challenges.lock().unwrap().insert(authority, chosen);
        Ok(())
    }

    /// What to send to `authority` for `repo`.
    pub fn step(&self, authority: &str, repo: &Repository) -> Result<Step, UpstreamError> {
        let challenge = self.challenges.lock().unwrap().get(authority).cloned();
        let home = authority == self.home_authority;
        match challenge {
            None => Ok(Step::Anonymous),
            Some(Challenge::Basic) if home => {
                Ok(self.basic().map_or(Step::Anonymous, Step::Header))
            }
            Some(Challenge::Basic) => Ok(Step::Anonymous),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut url = Url::parse(&realm).map_err(|e| {
                    UpstreamError::Protocol(format!("token realm is not a URL: {e}"))
                })?;
                // A plain-http realm of an https upstream still gets an anonymous request (an
                // anonymous pull token is no secret), never the upstream's credentials.
                match url.scheme() {
                    "https" | "http" => {}
                    _ => {
                        return Err(UpstreamError::Protocol(format!(
                            "token realm {} is not http(s)",
                            redacted(&url)
                        )));
                    }
                }
                // Credentials: only for a challenge from the registry itself, to a realm the
                // registry owns. A foreign challenger could name our realm to harvest a token.
                let with_credentials =
                    home && self.credentials.is_some() && self.realm_may_get_credentials(&url);
                let key = TokenKey {
                    realm,
                    service: service.unwrap_or_default(),
                    scope: scope(repo),
                    with_credentials,
                };
                if let Some(token) = self.tokens.get(&key) {
                    return Ok(bearer(&token).map_or(Step::Anonymous, Step::Header));
                }
                {
                    let mut query = url.query_pairs_mut();
                    if !key.service.is_empty() {
                        query.append_pair("service", &key.service);
                    }
                    query.append_pair("scope", &key.scope);
                }
                Ok(Step::FetchToken(TokenRequest {
                    url,
                    basic: if with_credentials { self.basic() } else { None },
                    key,
                }))
            }
        }
    }

    pub fn store_token(&self, key: TokenKey, token: String, lifetime: Duration) {
        self.tokens.put(key, token, lifetime);
    }

    fn realm_may_get_credentials(&self, realm: &Url) -> bool {
        let host = host_key(realm.host_str().unwrap_or(""));
        (host == self.home_host || self.trusted_hosts.contains(&host))
            && (realm.scheme() == "https" || !self.home_https)
    }

    fn basic(&self) -> Option<HeaderValue> {
        let creds = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

pub fn scope(repo: &Repository) -> String {
    format!("repository:{repo}:pull")
}

pub fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or("").to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// A URL fit for logs and error bodies: no query (signatures), no user info.
pub fn redacted(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        authority(url),
        url.path().chars().take(200).collect::<String>()
    )
}

/// `Authorization: Bearer <token>`, marked sensitive so no debug output shows it; `None`
/// for a token that cannot be a header value.
pub(super) fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn auth(url: &str, trusted: &str) -> Auth {
        let text = format!(
            "[upstreams.\"r.example\"]\nurl = {url:?}\nusername = \"u\"\npassword = \"p\"\n{trusted}\n"
        );
        let config = Config::from_toml(&text).unwrap();
        Auth::new(&config.upstreams["r.example"])
    }

    fn repo() -> Repository {
        "team/app".parse().unwrap()
    }

    fn bearer(realm: &str) -> Vec<Challenge> {
        vec![Challenge::Bearer {
            realm: realm.into(),
            service: Some("svc".into()),
            scope: None,
        }]
    }

    fn token_request(auth: &Auth, authority: &str) -> Result<TokenRequest, String> {
        match auth.step(authority, &repo()) {
            Ok(Step::FetchToken(t)) => Ok(t),
            Ok(_) => Err("no token fetch".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn basic_goes_only_to_the_upstream_itself() {
        let a = auth("https://r.example", "");
        a.challenged("r.example:443".into(), &repo(), vec![Challenge::Basic])
            .unwrap();
        assert!(matches!(
            a.step("r.example:443", &repo()),
            Ok(Step::Header(_))
        ));
        let refused = a.challenged("cdn.example:443".into(), &repo(), vec![Challenge::Basic]);
        assert!(refused.is_err(), "a redirect target asking for Basic");
        assert!(matches!(
            a.step("cdn.example:443", &repo()),
            Ok(Step::Anonymous)
        ));
    }

    #[test]
    fn realm_credentials_follow_the_rules() {
        // Written with capitals and the root dot: one host with `auth.example` for every rule.
        let a = auth("https://r.example", "trusted_hosts = [\"Auth.Example.\"]");
        let cases = [
            // (challenger, realm, credentials sent?)
            ("r.example:443", "https://r.example/token", Ok(true)),
            ("r.example:443", "https://auth.example/token", Ok(true)),
            ("r.example:443", "https://AUTH.example./token", Ok(true)),
            ("r.example:443", "https://r.example./token", Ok(true)),
            (
                "r.example:443",
                "https://elsewhere.example/token",
                Ok(false),
            ),
            ("cdn.example:443", "https://r.example/token", Ok(false)),
            ("r.example:443", "http://r.example/token", Ok(false)),
        ];
        for (challenger, realm, want) in cases {
            a.challenged(challenger.into(), &repo(), bearer(realm))
                .unwrap();
            let got = token_request(&a, challenger)
                .map(|t| t.basic.is_some())
                .map_err(|_| ());
            assert_eq!(got, want, "{challenger} → {realm}");
        }
    }

    #[test]
    fn a_plain_http_upstream_may_use_a_plain_http_realm() {
        let a = auth("http://127.0.0.1:5000", "");
        a.challenged(
            "127.0.0.1:5000".into(),
            &repo(),
            bearer("http://127.0.0.1:5001/token"),
        )
        .unwrap();
        let t = token_request(&a, "127.0.0.1:5000").unwrap();
        assert!(t.basic.is_some(), "same host, plain upstream");
        assert!(
            t.url
                .as_str()
                .contains("scope=repository%3Ateam%2Fapp%3Apull")
        );
    }

    #[test]
    fn docker_hub_realm_is_known() {
        let a = auth("https://registry-1.docker.io", "");
        a.challenged(
            "registry-1.docker.io:443".into(),
            &repo(),
            bearer("https://auth.docker.io/token"),
        )
        .unwrap();
        assert!(
            token_request(&a, "registry-1.docker.io:443")
                .unwrap()
                .basic
                .is_some()
        );
    }

    #[test]
    fn redirects_never_downgrade() {
        let a = auth("https://r.example", "");
        assert!(
            a.check_redirect(&"https://cdn.example/x?sig=1".parse().unwrap())
                .is_ok()
        );
        let e = a
            .check_redirect(&"http://cdn.example/x?sig=secret".parse().unwrap())
            .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(a.check_redirect(&"ftp://x/".parse().unwrap()).is_err());
        let plain = auth("http://r.example", "");
        assert!(
            plain
                .check_redirect(&"http://cdn.example/x".parse().unwrap())
                .is_ok()
        );
    }
}

//! Registry authentication: `WWW-Authenticate` challenges and cached bearer tokens.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses every challenge in a header value (`Basic realm="x", Bearer realm="y",service="z"`).
/// Unknown schemes are skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut current: Option<(String, HashMap<String, String>)> = None;
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start_matches([' ', '\t']);
        if token.is_empty() {
            break;
        }
        if let Some(value_start) = after.strip_prefix('=') {
            // An auth-param of the current challenge.
            let (value, remaining) = parse_param_value(value_start.trim_start());
            if let Some((_, params)) = current.as_mut() {
                params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else {
            // A new scheme.
            if let Some(done) = current.take() {
                out.extend(to_challenge(done));
            }
            current = Some((token.to_ascii_lowercase(), HashMap::new()));
            rest = after;
        }
    }
    if let Some(done) = current.take() {
        out.extend(to_challenge(done));
    }
    out
}

fn parse_param_value(text: &str) -> (String, &str) {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = text.find(',').unwrap_or(text.len());
        (text[..end].trim().to_string(), &text[end..])
    }
}

fn to_challenge((scheme, mut params): (String, HashMap<String, String>)) -> Option<Challenge> {
    match scheme.as_str() {
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        "basic" => Some(Challenge::Basic),
        _ => None,
    }
}

/// The token endpoint's answer (`token` or `access_token`; Docker's spec allows both).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // 60 s when absent, per the token spec.
        Some((
            token,
            Duration::from_secs(self.expires_in.unwrap_or(60).max(1)),
        ))
    }
}

/// (realm, service, scope)
type TokenKey = (String, String, String);

/// Bearer tokens per (realm, service, scope), kept until shortly before they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: std::sync::Mutex<HashMap<TokenKey, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, realm: &str, service: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap();
        let (token, expires) = tokens.get(&(realm.into(), service.into(), scope.into()))?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    pub fn put(&self, realm: &str, service: &str, scope: &str, token: String, lifetime: Duration) {
        // Renew a little early so a token never expires in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(10));
        let expires = Instant::now() + lifetime - margin;
        let mut tokens = self.tokens.lock().unwrap();
        tokens.retain(|_, (_, exp)| *exp > Instant::now());
        tokens.insert(
            (realm.into(), service.into(), scope.into()),
            (token, expires),
        );
    }

    pub fn forget(&self, realm: &str, service: &str, scope: &str) {
        self.tokens
            .lock()
            .unwrap()
            .remove(&(realm.into(), service.into(), scope.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn parses_real_world_challenges() {
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
                vec![bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/busybox:pull"),
                )],
            ),
            (
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:fluxcd/flux:pull""#,
                vec![bearer(
                    "https://ghcr.io/token",
                    Some("ghcr.io"),
                    Some("repository:fluxcd/flux:pull"),
                )],
            ),
            (r#"Basic realm="Registry Realm""#, vec![Challenge::Basic]),
            (
                r#"Basic realm="quay", Bearer realm="https://quay.io/v2/auth",service="quay.io""#,
                vec![
                    Challenge::Basic,
                    bearer("https://quay.io/v2/auth", Some("quay.io"), None),
                ],
            ),
            (
                r#"bearer REALM=https://r.example/token , service=svc"#,
                vec![bearer("https://r.example/token", Some("svc"), None)],
            ),
            (r#"Bearer realm="a\"b""#, vec![bearer("a\"b", None, None)]),
            (
                r#"Negotiate abc, Bearer realm="x""#,
                vec![bearer("x", None, None)],
            ),
            (r#"Bearer service="no realm""#, vec![]),
            ("", vec![]),
        ];
        for (header, want) in cases {
            assert_eq!(parse_challenges(header), want, "{header}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire() {
        let cache = TokenCache::default();
        cache.put("r", "s", "scope", "t".into(), Duration::from_secs(60));
        assert_eq!(cache.get("r", "s", "scope").as_deref(), Some("t"));
        assert_eq!(cache.get("r", "s", "other"), None);
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(
            cache.get("r", "s", "scope"),
            None,
            "renewed before the real expiry"
        );
    }

    #[test]
    fn token_response_defaults() {
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(t.into_token(), Some(("a".into(), Duration::from_secs(60))));
        let t: TokenResponse = serde_json::from_str(r#"{"token":"b","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("b".into(), Duration::from_secs(300))));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }
}

//! Bearer tokens from a registry's token endpoint, cached until shortly before they expire.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// A token server's `expires_in` is believed up to this long; a longer (or absurd) number
/// must not pin a token for days, nor overflow an `Instant`.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Kept at most this many tokens per upstream (one per repository scope in practice).
const MAX_TOKENS: usize = 10_000;

/// The token endpoint's answer (`token` or `access_token`; Docker's spec allows both).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    /// Signed and fractional numbers occur in the wild, and strings (`"300"`); anything
    /// unusable means the default.
    #[serde(default)]
    pub expires_in: Option<serde_json::Value>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // 60 s when absent, per the token spec; clamped to [1 s, MAX_TOKEN_LIFETIME].
        let secs = match self.expires_in {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            }
            Some(serde_json::Value::String(s)) => {
                s.trim().parse::<f64>().ok().map(|f| f.max(0.0) as u64)
            }
            _ => None,
        }
        .unwrap_or(60);
        let lifetime = Duration::from_secs(secs.clamp(1, MAX_TOKEN_LIFETIME.as_secs()));
        Some((token, lifetime))
    }
}

/// Which token: (realm, service, scope, fetched with the upstream's credentials).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub realm: String,
    pub service: String,
    pub scope: String,
    pub with_credentials: bool,
}

/// Bearer tokens per [`TokenKey`], kept until shortly before they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: std::sync::Mutex<HashMap<TokenKey, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, key: &TokenKey) -> Option<String> {
        let tokens = self.tokens.lock().unwrap();
        let (token, expires) = tokens.get(key)?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    pub fn put(&self, key: TokenKey, token: String, lifetime: Duration) {
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        // Renew a little early so a token never expires in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(10));
        let expires = Instant::now() + (lifetime - margin);
        let mut tokens = self.tokens.lock().unwrap();
        tokens.retain(|_, (_, exp)| *exp > Instant::now());
        if tokens.len() >= MAX_TOKENS {
            tokens.clear();
        }
        tokens.insert(key, (token, expires));
    }

    pub fn forget(&self, key: &TokenKey) {
        self.tokens.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_as_a_string_or_garbage_falls_back_sensibly() {
        let parse = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .unwrap()
                .into_token()
                .unwrap()
                .1
        };
        assert_eq!(
            parse(r#"{"token":"t","expires_in":"300"}"#),
            Duration::from_secs(300)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":"soon"}"#),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":[1]}"#),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse(r#"{"token":"t","expires_in":-5}"#),
            Duration::from_secs(1)
        );
        assert_eq!(parse(r#"{"token":"t"}"#), Duration::from_secs(60));
    }

    fn key(scope: &str) -> TokenKey {
        TokenKey {
            realm: "r".into(),
            service: "s".into(),
            scope: scope.into(),
            with_credentials: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire() {
        let cache = TokenCache::default();
        cache.put(key("scope"), "t".into(), Duration::from_secs(60));
        assert_eq!(cache.get(&key("scope")).as_deref(), Some("t"));
        assert_eq!(cache.get(&key("other")), None);
        let credentialed = TokenKey {
            with_credentials: true,
            ..key("scope")
        };
        assert_eq!(cache.get(&credentialed), None, "kept apart from anonymous");
        tokio::time::advance(Duration::from_secs(55)).await;
        assert_eq!(
            cache.get(&key("scope")),
            None,
            "renewed before the real expiry"
        );
    }

    #[test]
    fn token_response_defaults_and_clamps() {
        let parse = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .unwrap()
                .into_token()
        };
        assert_eq!(
            parse(r#"{"access_token":"a"}"#),
            Some(("a".into(), Duration::from_secs(60)))
        );
        assert_eq!(
            parse(r#"{"token":"b","expires_in":300}"#),
            Some(("b".into(), Duration::from_secs(300)))
        );
        assert_eq!(parse(r#"{}"#), None);
        for absurd in ["18446744073709551615", "1e300", "-5", "0", "0.5"] {
            let (_, lifetime) = parse(&format!(r#"{{"token":"c","expires_in":{absurd}}}"#))
                .unwrap_or_else(|| panic!("{absurd}"));
            assert!(
                lifetime >= Duration::from_secs(1) && lifetime <= MAX_TOKEN_LIFETIME,
                "{absurd} → {lifetime:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_lifetime_is_clamped_not_a_panic() {
        let cache = TokenCache::default();
        cache.put(key("s"), "t".into(), Duration::MAX);
        tokio::time::advance(MAX_TOKEN_LIFETIME).await;
        assert_eq!(cache.get(&key("s")), None);
    }
}

//! Upstream authentication: `WWW-Authenticate` challenge parsing and the bearer token cache.
//!
//! Owns: what credentials to attach to a request for a scope. Must not know about caching of content.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic`: send the configured credentials.
    Basic,
    /// `Bearer`: fetch a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` to ask the token for.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header value. Handles quoted values with commas inside
/// (`scope="repository:a/b:pull,push"`) and escaped quotes. Returns None for unknown schemes.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            Some(Challenge::Bearer {
                realm: get("realm")?,
                service: get("service"),
                scope: get("scope"),
            })
        }
        _ => None,
    }
}

/// `k1="v, 1", k2=v2` -> [(k1, "v, 1"), (k2, "v2")].
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

/// The JSON a token endpoint answers with.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// Token lifetime when the server does not say (the distribution spec's default).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl TokenResponse {
    /// The token and its lifetime; `token` wins over `access_token`.
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Some((value, lifetime))
    }
}

/// Per-upstream memory of the auth scheme in use and of bearer tokens by scope.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    inner: Mutex<TokenCacheInner>,
}

#[derive(Debug, Default)]
struct TokenCacheInner {
    challenge: Option<Challenge>,
    tokens: HashMap<String, (String, Instant)>,
}

/// Tokens are refreshed this long before they expire, so a token never lapses mid-request.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

impl TokenCache {
    pub(crate) fn challenge(&self) -> Option<Challenge> {
        self.lock().challenge.clone()
    }

    pub(crate) fn set_challenge(&self, c: Challenge) {
        self.lock().challenge = Some(c);
    }

    /// A still-valid token for `scope`.
    pub(crate) fn token(&self, scope: &str) -> Option<String> {
        let inner = self.lock();
        let (tok, expires) = inner.tokens.get(scope)?;
        (Instant::now() + EXPIRY_MARGIN < *expires).then(|| tok.clone())
    }

    pub(crate) fn store(&self, scope: &str, token: String, lifetime: Duration) {
        let mut inner = self.lock();
        inner.tokens.retain(|_, (_, exp)| *exp > Instant::now());
        inner
            .tokens
            .insert(scope.to_string(), (token, Instant::now() + lifetime));
    }

    pub(crate) fn forget(&self, scope: &str) {
        self.lock().tokens.remove(scope);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenCacheInner> {
        // A poisoned lock only means another thread panicked mid-update of a plain map: the data
        // is still usable, so recover it rather than fail every request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let cases: Vec<(&str, Option<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                Some(Challenge::Bearer {
                    realm: "https://auth.docker.io/token".into(),
                    service: Some("registry.docker.io".into()),
                    scope: Some("repository:library/alpine:pull".into()),
                }),
            ),
            (
                r#"bearer realm="http://127.0.0.1:1/t", scope="repository:a/b:pull,push", service="s""#,
                Some(Challenge::Bearer {
                    realm: "http://127.0.0.1:1/t".into(),
                    service: Some("s".into()),
                    scope: Some("repository:a/b:pull,push".into()),
                }),
            ),
            (
                r#"Bearer realm=http://x/t,service=reg"#,
                Some(Challenge::Bearer {
                    realm: "http://x/t".into(),
                    service: Some("reg".into()),
                    scope: None,
                }),
            ),
            (
                r#"Bearer realm="a\"b""#,
                Some(Challenge::Bearer {
                    realm: "a\"b".into(),
                    service: None,
                    scope: None,
                }),
            ),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            ("Bearer service=\"x\"", None),
            ("Negotiate abc", None),
            ("", None),
        ];
        for (h, want) in cases {
            assert_eq!(parse_challenge(h), want, "{h}");
        }
    }

    #[test]
    fn token_json_variants() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("a".into(), Duration::from_secs(300))));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token(), Some(("b".into(), DEFAULT_TOKEN_LIFETIME)));
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"","access_token":"c","expires_in":0}"#).unwrap();
        assert_eq!(t.into_token(), Some(("c".into(), DEFAULT_TOKEN_LIFETIME)));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire() {
        let c = TokenCache::default();
        c.store("s", "tok".into(), Duration::from_secs(60));
        assert_eq!(c.token("s").as_deref(), Some("tok"));
        tokio::time::advance(Duration::from_secs(56)).await;
        assert_eq!(c.token("s"), None, "refreshed before expiry");
    }
}

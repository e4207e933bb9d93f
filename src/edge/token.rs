//! The tokens of the mirror's own token endpoint: HS256 JWTs naming the user (or nobody, for an
//! anonymous client) and their expiry, and a cache of the ones already verified.
//!
//! A token carries who the client is, not what it may do: the policy decides per request, so a
//! rule changed (or a user removed from the htpasswd file) applies to tokens already issued.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `iss` of every token.
const ISSUER: &str = "regmirror";
/// Verified tokens remembered; the cache is emptied when it grows past this.
const CACHE_ENTRIES: usize = 16_384;
/// Shortest key accepted from `auth.token_key_file`.
const MIN_KEY_BYTES: usize = 32;

/// A token key that cannot be read or made, naming the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("auth.token_key_file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.token_key_file {path}: the key is {len} bytes; use at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32 > FILE`)")]
    Short { path: PathBuf, len: usize },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    /// The user; empty for an anonymous client.
    sub: String,
    aud: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    /// The scopes the client asked for, echoed in Docker's form (`[{type, name, actions}]`).
    #[serde(default)]
    access: Vec<serde_json::Value>,
}

/// A token just issued.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub token: String,
    pub expires_in: u64,
    /// Seconds since the epoch.
    pub issued_at: u64,
}

/// Whom a valid token names, and until when.
#[derive(Debug, Clone)]
struct Verified {
    user: Option<String>,
    exp: u64,
}

/// Issues and verifies the mirror's tokens.
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    service: String,
    ttl: Duration,
    verified: RwLock<HashMap<String, Verified>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("service", &self.service)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `key`, for `service`, valid for `ttl`.
    pub(crate) fn new(key: &[u8], service: &str, ttl: Duration) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[service]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        Tokens {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            service: service.to_string(),
            ttl,
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// A token for `user` (None: anonymous), echoing the `scope` parameters asked for.
    pub(crate) fn issue(&self, user: Option<&str>, scopes: &[String]) -> Issued {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: user.unwrap_or_default().into(),
            aud: self.service.clone(),
            iat: now,
            nbf: now.saturating_sub(1),
            exp: now + self.ttl.as_secs(),
            jti: format!("{:032x}", rand::random::<u128>()),
            access: scopes.iter().filter_map(|s| access_entry(s)).collect(),
        };
        // Serialising a struct of strings and numbers with an HMAC key cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default();
        Issued {
            token,
            expires_in: self.ttl.as_secs(),
            issued_at: now,
        }
    }

    /// The user a valid token names (`Some(None)`: anonymous); None when it is not valid.
    pub(crate) fn verify(&self, token: &str) -> Option<Option<String>> {
        let now = unix_now();
        if let Ok(cache) = self.verified.read() {
            if let Some(v) = cache.get(token) {
                return (now < v.exp).then(|| v.user.clone());
            }
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let user = Some(data.claims.sub).filter(|s| !s.is_empty());
        if let Ok(mut cache) = self.verified.write() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, v| now < v.exp);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            let v = Verified {
                user: user.clone(),
                exp: data.claims.exp,
            };
            cache.insert(token.to_string(), v);
        }
        Some(user)
    }
}

/// `repository:library/alpine:pull` -> `{"type":"repository","name":"library/alpine","actions":["pull"]}`.
fn access_entry(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // A read-only mirror grants at most pull, whatever was asked.
    let actions: Vec<&str> = actions.split(',').filter(|a| *a == "pull").collect();
    Some(serde_json::json!({ "type": kind, "name": name, "actions": actions }))
}

/// The signing key: `configured`, or `<data_dir>/auth/token.key`, made (random, mode 0600) when
/// missing.
pub(crate) fn load_key(configured: Option<&Path>, data_dir: &Path) -> Result<Vec<u8>, KeyError> {
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => data_dir.join("auth").join("token.key"),
    };
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    if configured.is_none() && !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap_or(data_dir)).map_err(io)?;
        let key = format!(
            "{:032x}{:032x}\n",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let tmp = path.with_extension("tmp");
        let mut f = open_private(&tmp).map_err(io)?;
        f.write_all(key.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        tracing::info!(path = %path.display(), "generated the token signing key");
    }
    let text = std::fs::read(&path).map_err(io)?;
    let key = text.trim_ascii().to_vec();
    if key.len() < MIN_KEY_BYTES {
        return Err(KeyError::Short {
            path,
            len: key.len(),
        });
    }
    Ok(key)
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-12-01T23:04:05Z`), the token's `issued_at`.
pub(crate) fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_forgeries() {
        let t = Tokens::new(&[7u8; 32], "regmirror", Duration::from_secs(300));
        let alice = t.issue(
            Some("alice"),
            &["repository:library/alpine:pull,push".into()],
        );
        assert_eq!(t.verify(&alice.token), Some(Some("alice".into())));
        // Again, from the cache.
        assert_eq!(t.verify(&alice.token), Some(Some("alice".into())));
        let anon = t.issue(None, &[]);
        assert_eq!(t.verify(&anon.token), Some(None));
        let other_key = Tokens::new(&[8u8; 32], "regmirror", Duration::from_secs(300));
        assert_eq!(
            other_key.verify(&alice.token),
            None,
            "signed with another key"
        );
        let other_service = Tokens::new(&[7u8; 32], "elsewhere", Duration::from_secs(300));
        assert_eq!(other_service.verify(&alice.token), None, "another audience");
        let mut tampered = alice.token.clone();
        tampered.insert(tampered.len() - 3, 'x');
        assert_eq!(t.verify(&tampered), None);
        assert_eq!(t.verify("not.a.token"), None);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let t = Tokens::new(&[7u8; 32], "regmirror", Duration::from_secs(300));
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: "regmirror".into(),
            iat: now - 600,
            nbf: now - 600,
            exp: now - 60,
            jti: "x".into(),
            access: vec![],
        };
        let old =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &t.encoding).unwrap();
        assert_eq!(t.verify(&old), None);
    }

    #[test]
    fn access_claims_grant_pull_only() {
        let cases = [
            (
                "repository:library/alpine:pull",
                Some(r#"{"actions":["pull"],"name":"library/alpine","type":"repository"}"#),
            ),
            (
                "repository:a/b:pull,push",
                Some(r#"{"actions":["pull"],"name":"a/b","type":"repository"}"#),
            ),
            (
                "repository:h:5000/a:push",
                Some(r#"{"actions":[],"name":"h:5000/a","type":"repository"}"#),
            ),
            ("nonsense", None),
        ];
        for (scope, want) in cases {
            assert_eq!(
                access_entry(scope).map(|v| v.to_string()).as_deref(),
                want,
                "{scope}"
            );
        }
    }

    #[test]
    fn dates() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_166_245, "2026-12-01T23:04:05Z"),
        ] {
            assert_eq!(rfc3339(secs), want);
        }
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_key(None, dir.path()).unwrap();
        let b = load_key(None, dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= MIN_KEY_BYTES);
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let err = load_key(Some(&short), dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("auth.token_key_file") && err.contains("short"),
            "{err}"
        );
        let missing = load_key(Some(&dir.path().join("nope")), dir.path()).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}

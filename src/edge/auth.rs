//! Client authentication: the htpasswd users, credentials on a request (Basic, or a Bearer token
//! of the mirror's token endpoint), the token endpoint's requests, and the challenge that sends a
//! client there.
//!
//! bcrypt is slow by design (milliseconds per check): it runs on the blocking pool, and a
//! password once verified is remembered (by a SHA-256 of user and password, never in clear) until
//! the htpasswd file changes, so a client sending Basic credentials on every request pays once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use http::{header, HeaderMap};
use sha2::{Digest as _, Sha256};

use super::token::{self, Issued, KeyError, Tokens};
use crate::config::{AuthConfig, ANONYMOUS};

/// How often the htpasswd file is looked at for changes (on the request path, one `stat`).
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Verified passwords remembered; the cache is emptied when it grows past this.
const GOOD_PASSWORDS: usize = 4096;
/// A bcrypt hash of a password nobody has: unknown users cost a check too, so response times
/// do not tell which user names exist.
const DUMMY_HASH: &str = "$2y$05$Lnbi280LczwsyKEIbGJQM.qCuGNVhW2vZQROnjlMwzjyRzGN4yec2";

/// Why authentication cannot start, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("auth.htpasswd {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.htpasswd {path}: {problems}")]
    Entries { path: PathBuf, problems: String },
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// Who the credentials on a request name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// No `Authorization` header.
    Nobody,
    /// A valid anonymous token of the token endpoint.
    Anonymous,
    /// A user of the htpasswd file (Basic credentials or a token naming them).
    User(String),
}

/// Credentials that are present but not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadCredentials(pub &'static str);

/// The users of the htpasswd file, reloaded when the file changes.
struct Users {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    next_check: Mutex<Instant>,
}

#[derive(Default)]
struct Loaded {
    hashes: HashMap<String, String>,
    stamp: Option<(SystemTime, u64)>,
    /// Bumped at every reload: remembered passwords of an older generation are forgotten.
    generation: u64,
}

/// Parse htpasswd text: bcrypt entries, and one problem per line that is not one.
pub(crate) fn parse_htpasswd(text: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut hashes = HashMap::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            problems.push(format!("line {}: not USER:HASH", i + 1));
            continue;
        };
        let bcrypt = ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p));
        if !bcrypt {
            let kind = match hash {
                h if h.starts_with("$apr1$") => "an MD5 ($apr1$) hash",
                h if h.starts_with("{SHA}") => "a SHA-1 ({SHA}) hash",
                h if h.starts_with("$5$") || h.starts_with("$6$") => "a SHA-crypt hash",
                _ => "not a bcrypt hash",
            };
            problems.push(format!(
                "line {} (user {user:?}): {kind}; only bcrypt is accepted (htpasswd -B)",
                i + 1
            ));
            continue;
        }
        if user.is_empty() || user == ANONYMOUS {
            problems.push(format!(
                "line {} (user {user:?}): this user name is reserved",
                i + 1
            ));
            continue;
        }
        hashes.insert(user.to_string(), hash.to_string());
    }
    (hashes, problems)
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

impl Users {
    /// Read `path`; any entry that is not bcrypt is an error at start.
    fn load(path: &Path) -> Result<Users, StartError> {
        let read = |source| StartError::Read {
            path: path.to_path_buf(),
            source,
        };
        let stamp = stamp(path).map_err(read)?;
        let text = std::fs::read_to_string(path).map_err(read)?;
        let (hashes, problems) = parse_htpasswd(&text);
        if !problems.is_empty() {
            return Err(StartError::Entries {
                path: path.to_path_buf(),
                problems: problems.join("; "),
            });
        }
        if hashes.is_empty() {
            tracing::warn!(path = %path.display(), "auth.htpasswd has no users");
        }
        Ok(Users {
            path: path.to_path_buf(),
            loaded: RwLock::new(Loaded {
                hashes,
                stamp: Some(stamp),
                generation: 0,
            }),
            next_check: Mutex::new(Instant::now() + RELOAD_CHECK),
        })
    }

    /// Reload the file if it changed since it was read (looked at once per [`RELOAD_CHECK`]).
    /// A file that became unreadable keeps the users it had; bad entries are skipped.
    fn refresh(&self) {
        {
            let Ok(mut next) = self.next_check.try_lock() else {
                return; // another request is looking
            };
            let now = Instant::now();
            if now < *next {
                return;
            }
            *next = now + RELOAD_CHECK;
        }
        let current = self.loaded.read().ok().and_then(|l| l.stamp);
        let stamp = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                if current.is_some() {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "cannot read auth.htpasswd; keeping the users already loaded");
                    if let Ok(mut l) = self.loaded.write() {
                        l.stamp = None;
                    }
                }
                return;
            }
        };
        if current == Some(stamp) {
            return;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot read auth.htpasswd; keeping the users already loaded");
                return;
            }
        };
        let (hashes, problems) = parse_htpasswd(&text);
        for p in &problems {
            tracing::warn!(path = %self.path.display(), "auth.htpasswd: skipped {p}");
        }
        if let Ok(mut l) = self.loaded.write() {
            l.hashes = hashes;
            l.stamp = Some(stamp);
            l.generation += 1;
            tracing::info!(path = %self.path.display(), users = l.hashes.len(), "reloaded auth.htpasswd");
        }
    }

    /// The user's hash and the generation it belongs to.
    fn hash(&self, user: &str) -> (Option<String>, u64) {
        match self.loaded.read() {
            Ok(l) => (l.hashes.get(user).cloned(), l.generation),
            Err(_) => (None, 0),
        }
    }

    fn exists(&self, user: &str) -> bool {
        self.loaded
            .read()
            .is_ok_and(|l| l.hashes.contains_key(user))
    }

    fn generation(&self) -> u64 {
        self.loaded.read().map(|l| l.generation).unwrap_or(0)
    }
}

/// Authentication of one server: users, tokens and the challenge.
pub(crate) struct Auth {
    users: Users,
    tokens: Tokens,
    realm: Option<String>,
    service: String,
    /// SHA-256(user, NUL, password) of passwords verified, with the users generation.
    good: Arc<RwLock<HashMap<[u8; 32], u64>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("htpasswd", &self.users.path)
            .field("realm", &self.realm)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// What a client sent to the token endpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TokenRequest {
    /// Basic credentials, or the OAuth2 `username` / `password` form fields.
    pub credentials: Option<(String, String)>,
    /// The `scope` parameters (echoed in the token).
    pub scopes: Vec<String>,
    /// An OAuth2 grant other than `password` (which the mirror does not offer).
    pub unsupported_grant: Option<String>,
}

impl TokenRequest {
    /// `GET /token?service=..&scope=..` with Basic credentials (Docker, podman, skopeo).
    pub(crate) fn from_query(query: Option<&str>, headers: &HeaderMap) -> TokenRequest {
        let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        TokenRequest {
            credentials: basic_credentials(headers),
            scopes: pairs
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .collect(),
            unsupported_grant: None,
        }
    }

    /// containerd's OAuth2 `POST` (`grant_type=password&username=..&password=..&scope=..`).
    pub(crate) fn from_form(body: &[u8], headers: &HeaderMap) -> TokenRequest {
        let mut r = TokenRequest {
            credentials: basic_credentials(headers),
            ..Default::default()
        };
        let (mut user, mut pass, mut grant) = (None, None, None);
        for (k, v) in url::form_urlencoded::parse(body) {
            match &*k {
                "username" => user = Some(v.into_owned()),
                "password" => pass = Some(v.into_owned()),
                "grant_type" => grant = Some(v.into_owned()),
                "scope" => r
                    .scopes
                    .extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string)),
                _ => {}
            }
        }
        match grant.as_deref() {
            Some("password") | None => {}
            Some(other) => r.unsupported_grant = Some(other.to_string()),
        }
        if let (Some(u), Some(p)) = (user, pass) {
            r.credentials = Some((u, p));
        }
        r
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Auth {
    /// Authentication as `[auth]` describes it; the token key in `data_dir` unless configured.
    pub(crate) fn from_config(c: &AuthConfig, data_dir: &Path) -> Result<Auth, StartError> {
        let path = c.htpasswd.as_deref().ok_or_else(|| StartError::Entries {
            path: PathBuf::new(),
            problems: "no htpasswd file configured".into(),
        })?;
        let users = Users::load(path)?;
        let key = token::load_key(c.token_key_file.as_deref(), data_dir)?;
        Ok(Auth {
            users,
            tokens: Tokens::new(&key, &c.service, Duration::from_secs(c.token_ttl_secs)),
            realm: c.realm.clone(),
            service: c.service.clone(),
            good: Arc::new(RwLock::new(HashMap::new())),
        })
    }

    /// What `regmirror config check` verifies beyond the config file: the htpasswd entries and
    /// a configured token key (a generated one is not made here).
    pub(crate) fn check(c: &AuthConfig) -> Result<(), StartError> {
        if let Some(path) = c.htpasswd.as_deref() {
            Users::load(path)?;
        }
        if let Some(key) = c.token_key_file.as_deref() {
            token::load_key(Some(key), Path::new("."))?;
        }
        Ok(())
    }

    /// Who the request's `Authorization` header names.
    pub(crate) async fn identify(&self, headers: &HeaderMap) -> Result<Identity, BadCredentials> {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(Identity::Nobody);
        };
        let v = v
            .to_str()
            .map_err(|_| BadCredentials("unreadable Authorization header"))?;
        let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            self.users.refresh();
            return match self.tokens.verify(rest.trim()) {
                Some(None) => Ok(Identity::Anonymous),
                Some(Some(user)) if self.users.exists(&user) => Ok(Identity::User(user)),
                Some(Some(_)) => Err(BadCredentials("the token's user no longer exists")),
                None => Err(BadCredentials("invalid or expired token")),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, pass) =
                basic_credentials(headers).ok_or(BadCredentials("malformed Basic credentials"))?;
            return if self.check_password(&user, &pass).await {
                Ok(Identity::User(user))
            } else {
                Err(BadCredentials("invalid username or password"))
            };
        }
        Err(BadCredentials(
            "unsupported Authorization scheme: use Basic or Bearer",
        ))
    }

    /// Whether `pass` is `user`'s password (remembered once verified).
    pub(crate) async fn check_password(&self, user: &str, pass: &str) -> bool {
        self.users.refresh();
        let (hash, generation) = self.users.hash(user);
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(user.as_bytes());
            h.update([0]);
            h.update(pass.as_bytes());
            h.finalize().into()
        };
        let remembered = self
            .good
            .read()
            .is_ok_and(|g| g.get(&key) == Some(&generation));
        if remembered && hash.is_some() {
            return true;
        }
        let known = hash.is_some();
        let (hash, pass) = (hash.unwrap_or_else(|| DUMMY_HASH.into()), pass.to_string());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        if ok {
            if let Ok(mut g) = self.good.write() {
                let current = self.users.generation();
                g.retain(|_, gen| *gen == current);
                if g.len() >= GOOD_PASSWORDS {
                    g.clear();
                }
                g.insert(key, generation);
            }
        }
        ok
    }

    /// Answer the token endpoint: a token for valid credentials, an anonymous one without
    /// credentials when `anonymous` (some anonymous pull is allowed).
    pub(crate) async fn issue(
        &self,
        req: &TokenRequest,
        anonymous: bool,
    ) -> Result<Issued, BadCredentials> {
        if req.unsupported_grant.is_some() {
            return Err(BadCredentials("unsupported grant_type: use password"));
        }
        match &req.credentials {
            Some((user, pass)) => {
                if self.check_password(user, pass).await {
                    Ok(self.tokens.issue(Some(user), &req.scopes))
                } else {
                    Err(BadCredentials("invalid username or password"))
                }
            }
            None if anonymous => Ok(self.tokens.issue(None, &req.scopes)),
            None => Err(BadCredentials(
                "authentication required: log in to this mirror",
            )),
        }
    }

    /// The `WWW-Authenticate` value sending a client to the token endpoint.
    pub(crate) fn challenge(&self, parts: &http::request::Parts) -> String {
        let realm = match &self.realm {
            Some(r) => r.clone(),
            None => default_realm(parts),
        };
        format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service)
    }

    /// The `WWW-Authenticate` value of the token endpoint itself.
    pub(crate) fn basic_challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.service)
    }
}

/// The path of the token endpoint.
pub(crate) const TOKEN_PATH: &str = "/token";

/// `<scheme>://<Host>/token`: the scheme of the request (`http` unless the listener knows
/// better), the `Host` header (or HTTP/2 authority) when it is a plain host[:port].
fn default_realm(parts: &http::request::Parts) -> String {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    // HTTP/2 requests carry their scheme; HTTP/1.1 ones do not, but the server marks those that
    // arrived over TLS. Behind a TLS-terminating proxy, set `auth.realm`.
    let scheme = match parts.extensions.get::<super::OverTls>() {
        Some(_) => "https",
        None => parts.uri.scheme_str().unwrap_or("http"),
    };
    format!("{scheme}://{host}{TOKEN_PATH}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(host: Option<&str>, uri: &str) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn htpasswd_entries() {
        let text = "# users\n\
            alice:$2y$05$Lnbi280LczwsyKEIbGJQM.qCuGNVhW2vZQROnjlMwzjyRzGN4yec2\n\
            \n\
            bob:$apr1$44JGbwG.$5F.49ZwxiTQgtsy0s19So.\n\
            carol:{SHA}UWuXg/ylF+7L0dBk2i0WUxCxl1k=\n\
            garbage\n\
            anonymous:$2y$05$Lnbi280LczwsyKEIbGJQM.qCuGNVhW2vZQROnjlMwzjyRzGN4yec2\n\
            dave:$2b$04$abcdefghijklmnopqrstuu5mO8ES4X3qXqnJQTtbWR5eR0w8w6fQa\n";
        let (hashes, problems) = parse_htpasswd(text);
        let mut users: Vec<&str> = hashes.keys().map(String::as_str).collect();
        users.sort();
        assert_eq!(users, ["alice", "dave"]);
        let want = [
            "line 4 (user \"bob\"): an MD5 ($apr1$) hash",
            "line 5 (user \"carol\"): a SHA-1 ({SHA}) hash",
            "line 6: not USER:HASH",
            "line 7 (user \"anonymous\"): this user name is reserved",
        ];
        assert_eq!(problems.len(), want.len(), "{problems:?}");
        for (p, w) in problems.iter().zip(want) {
            assert!(p.starts_with(w), "{p} / {w}");
        }
    }

    #[test]
    fn token_requests() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic dTpwOnE=".parse().unwrap()); // u:p:q
        let get = TokenRequest::from_query(
            Some("service=regmirror&scope=repository%3Aa%2Fb%3Apull&scope=repository:c:pull+repository:d:pull&account=u"),
            &h,
        );
        assert_eq!(get.credentials, Some(("u".into(), "p:q".into())));
        assert_eq!(
            get.scopes,
            [
                "repository:a/b:pull",
                "repository:c:pull",
                "repository:d:pull"
            ]
        );
        let post = TokenRequest::from_form(
            b"grant_type=password&username=alice&password=s%26cret&service=regmirror&scope=repository%3Ax%3Apull&client_id=containerd-client",
            &HeaderMap::new(),
        );
        assert_eq!(post.credentials, Some(("alice".into(), "s&cret".into())));
        assert_eq!(post.scopes, ["repository:x:pull"]);
        assert_eq!(post.unsupported_grant, None);
        let refresh = TokenRequest::from_form(
            b"grant_type=refresh_token&refresh_token=x",
            &HeaderMap::new(),
        );
        assert_eq!(refresh.unsupported_grant.as_deref(), Some("refresh_token"));
        assert_eq!(refresh.credentials, None);
        let anon = TokenRequest::from_query(None, &HeaderMap::new());
        assert_eq!(anon, TokenRequest::default());
    }

    #[test]
    fn realms() {
        let cases = [
            (
                Some("mirror.example:5000"),
                "/v2/",
                "http://mirror.example:5000/token",
            ),
            (Some("[::1]:5000"), "/v2/", "http://[::1]:5000/token"),
            (None, "https://m.example/v2/", "https://m.example/token"),
            (Some("evil\" realm=\"x"), "/v2/", "http://localhost/token"),
        ];
        for (host, uri, want) in cases {
            assert_eq!(default_realm(&parts(host, uri)), want, "{host:?} {uri}");
        }
    }

    #[tokio::test]
    async fn passwords_are_checked_and_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&file, format!("alice:{hash}\n")).unwrap();
        let c = AuthConfig {
            htpasswd: Some(file.clone()),
            ..Default::default()
        };
        let auth = Auth::from_config(&c, dir.path()).unwrap();
        assert!(auth.check_password("alice", "s3cret").await);
        assert!(auth.check_password("alice", "s3cret").await, "remembered");
        assert!(!auth.check_password("alice", "wrong").await);
        assert!(!auth.check_password("mallory", "s3cret").await);
        // The password changes on disk: the old one stops working after the next check.
        let hash = bcrypt::hash("n3w", 4).unwrap();
        std::fs::write(&file, format!("alice:{hash}\nbob:{hash}\n")).unwrap();
        *auth.users.next_check.lock().unwrap() = Instant::now();
        assert!(!auth.check_password("alice", "s3cret").await);
        assert!(auth.check_password("bob", "n3w").await);
        // Headers.
        let mut h = HeaderMap::new();
        assert_eq!(auth.identify(&h).await, Ok(Identity::Nobody));
        h.insert(header::AUTHORIZATION, "Basic Ym9iOm4zdw==".parse().unwrap()); // bob:n3w
        assert_eq!(auth.identify(&h).await, Ok(Identity::User("bob".into())));
        h.insert(header::AUTHORIZATION, "Basic Ym9iOnRyeQ==".parse().unwrap()); // bob:try
        assert!(auth.identify(&h).await.is_err());
        let t = auth.issue(&TokenRequest::default(), true).await.unwrap();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", t.token).parse().unwrap(),
        );
        assert_eq!(auth.identify(&h).await, Ok(Identity::Anonymous));
        let req = TokenRequest {
            credentials: Some(("bob".into(), "n3w".into())),
            ..Default::default()
        };
        let t = auth.issue(&req, false).await.unwrap();
        h.insert(
            header::AUTHORIZATION,
            format!("bearer {}", t.token).parse().unwrap(),
        );
        assert_eq!(auth.identify(&h).await, Ok(Identity::User("bob".into())));
        assert!(auth.issue(&TokenRequest::default(), false).await.is_err());
        h.insert(header::AUTHORIZATION, "Bearer forged".parse().unwrap());
        assert!(auth.identify(&h).await.is_err());
    }

    #[test]
    fn non_bcrypt_entries_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, "bob:$apr1$44JGbwG.$5F.49ZwxiTQgtsy0s19So.\n").unwrap();
        let c = AuthConfig {
            htpasswd: Some(file.clone()),
            ..Default::default()
        };
        let err = Auth::from_config(&c, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("auth.htpasswd") && err.contains("htpasswd -B") && err.contains("bob"),
            "{err}"
        );
    }
}

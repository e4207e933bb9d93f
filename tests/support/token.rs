//! A token server for distribution's `auth.token`: checks Basic credentials (GET) or the OAuth2
//! password grant (POST), and issues RS256 JWTs granting exactly the requested scopes.
//!
//! distribution 2.8 finds the verification key by the JWT header `kid`, which must be the libtrust
//! key id of the signing key; the key's self-signed certificate goes into `rootcertbundle`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};

use super::background::BackgroundServer;
use super::tls::{openssl, self_signed};

/// The RSA key and certificate, generated once per test process with the openssl CLI.
pub struct SigningKey {
    pub key_pem: Vec<u8>,
    /// Self-signed certificate of the key (PEM), for distribution's `rootcertbundle`.
    pub cert_pem: Vec<u8>,
    pub kid: String,
}

/// The process-wide signing key (RSA keygen is the slow part; every token server shares it).
pub fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let spki = dir.path().join("pub.der");
        self_signed("/CN=regmirror-test-token", &key, &cert);
        openssl(&[
            "pkey",
            "-in",
            path_str(&key),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            path_str(&spki),
        ]);
        let spki_der = std::fs::read(&spki).expect("read SPKI");
        SigningKey {
            key_pem: std::fs::read(&key).expect("read key"),
            cert_pem: std::fs::read(&cert).expect("read cert"),
            kid: libtrust_key_id(&spki_der),
        }
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// libtrust key id: base32 of the first 30 bytes of sha256(SPKI DER), in groups of 4 joined by ':'.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(spki_der);
    let b32 = data_encoding::BASE32_NOPAD.encode(&sum[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One token request the server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    pub user: Option<String>,
    pub scopes: Vec<String>,
    pub granted: bool,
}

struct State {
    user: String,
    password: String,
    service: String,
    issuer: String,
    log: Mutex<Vec<TokenRequest>>,
}

/// The running token server.
pub struct TokenServer {
    server: BackgroundServer,
    state: Arc<State>,
    pub service: String,
    pub issuer: String,
}

impl TokenServer {
    /// Start a token server accepting `user`/`password`.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let _ = signing_key();
        let state = Arc::new(State {
            user: user.into(),
            password: password.into(),
            service: "regmirror-test-registry".into(),
            issuer: "regmirror-test-issuer".into(),
            log: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        let router = axum::Router::new().route(
            "/token",
            axum::routing::any(move |req: Request<Body>| {
                let s = s.clone();
                async move { handle(&s, req).await }
            }),
        );
        let server = BackgroundServer::start(router);
        TokenServer {
            service: state.service.clone(),
            issuer: state.issuer.clone(),
            server,
            state,
        }
    }

    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// Write the signing certificate into `dir` (for `rootcertbundle`) and return its path.
    pub fn write_cert(&self, dir: &Path) -> PathBuf {
        let path = dir.join("token-cert.pem");
        std::fs::write(&path, &signing_key().cert_pem).expect("write token cert");
        path
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.log.lock().expect("token log").clone()
    }
}

async fn handle(state: &State, req: Request<Body>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let mut params: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    params.extend(url::form_urlencoded::parse(&body).into_owned());
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    let (user, password) = if method == "POST" {
        match get("grant_type").as_deref() {
            Some("password") => (get("username"), get("password")),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unsupported grant_type {other:?}"),
                )
            }
        }
    } else {
        match basic {
            Some((u, p)) => (Some(u), Some(p)),
            None => (None, None),
        }
    };
    // GET sends one `scope` parameter per scope; the OAuth2 POST form separates them with spaces.
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| {
            v.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let granted = user.as_deref() == Some(state.user.as_str())
        && password.as_deref() == Some(state.password.as_str());
    state.log.lock().expect("token log").push(TokenRequest {
        method: method.clone(),
        user: user.clone(),
        scopes: scopes.clone(),
        granted,
    });
    if !granted {
        return error(StatusCode::UNAUTHORIZED, "bad or missing credentials");
    }
    if let Some(service) = get("service") {
        if service != state.service {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown service {service:?}"),
            );
        }
    }
    let token = sign(state, user.as_deref().unwrap_or(""), &scopes);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response")
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]});
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::WWW_AUTHENTICATE, "Basic realm=\"token\"")
        .body(Body::from(body.to_string()))
        .expect("static response")
}

fn parse_basic(v: &str) -> Option<(String, String)> {
    use base64::Engine;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// `repository:team/app:pull,push` -> access entry granting exactly those actions.
fn access_entry(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
}

fn sign(state: &State, user: &str, scopes: &[String]) -> String {
    let key = signing_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": state.issuer,
        "sub": user,
        "aud": state.service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": scopes.iter().filter_map(|s| access_entry(s)).collect::<Vec<_>>(),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(&key.key_pem).expect("RSA PEM key");
    jsonwebtoken::encode(&header, &claims, &enc).expect("sign JWT")
}

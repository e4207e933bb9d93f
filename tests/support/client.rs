//! A small registry HTTP client: answers Basic and Bearer challenges, pushes blobs and manifests
//! with the raw distribution API, pulls manifests and blobs. Plus [`raw_request`], an HTTP/1.1
//! request written byte for byte, for paths (`..`, `%2e%2e`) that URL libraries normalise away.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::image::Blob;

/// Client for one registry (an upstream or the mirror).
pub struct RegistryClient {
    pub base: String,
    pub http: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Authorization header per scope (or "" for Basic auth).
    auth: Mutex<HashMap<String, HeaderValue>>,
}

/// A response read fully into memory.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first OCI error code of an error body.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("errors")?
            .get(0)?
            .get("code")?
            .as_str()
            .map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RegistryClient {
    pub fn new(base: &str, credentials: Option<(String, String)>) -> RegistryClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client");
        RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            credentials,
            auth: Mutex::new(HashMap::new()),
        }
    }

    /// Send a request to `path` (starting with `/v2/`), answering one auth challenge for `scope`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        scope: &str,
    ) -> Reply {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut tried_auth = false;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(a) = self.auth.lock().expect("auth").get(scope).cloned() {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = resp.status();
            let resp_headers = resp.headers().clone();
            let bytes = resp
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
            if status == StatusCode::UNAUTHORIZED && !tried_auth && self.credentials.is_some() {
                tried_auth = true;
                let challenge = resp_headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let value = self.answer_challenge(challenge, scope).await;
                self.auth
                    .lock()
                    .expect("auth")
                    .insert(scope.to_string(), value);
                continue;
            }
            return Reply {
                status,
                headers: resp_headers,
                body: bytes.to_vec(),
            };
        }
    }

    async fn answer_challenge(&self, challenge: &str, scope: &str) -> HeaderValue {
        use base64::Engine;
        let (user, pass) = self.credentials.clone().expect("credentials");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        if challenge.to_ascii_lowercase().starts_with("basic") {
            return HeaderValue::from_str(&basic).expect("header");
        }
        let params = parse_challenge(challenge);
        let realm = params
            .get("realm")
            .unwrap_or_else(|| panic!("no realm in challenge {challenge:?}"));
        let mut url = url::Url::parse(realm).expect("realm URL");
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let resp = self
            .http
            .get(url)
            .header(AUTHORIZATION, basic)
            .send()
            .await
            .expect("token request");
        assert!(
            resp.status().is_success(),
            "token request failed: {}",
            resp.status()
        );
        let body: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.expect("token body")).expect("token JSON");
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .expect("token in response");
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
    }

    fn push_scope(repo: &str) -> String {
        format!("repository:{repo}:pull,push")
    }

    fn pull_scope(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    /// Upload a blob (monolithic POST then PUT) unless the registry already has it.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        let scope = Self::push_scope(repo);
        let head = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", blob.digest),
                &[],
                None,
                &scope,
            )
            .await;
        if head.status == StatusCode::OK {
            return;
        }
        let start = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                None,
                &scope,
            )
            .await;
        assert_eq!(
            start.status,
            StatusCode::ACCEPTED,
            "start upload to {repo}: {}",
            start.text()
        );
        let location = start
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("upload Location");
        let mut url = if location.starts_with("http") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", blob.digest));
        let put = self
            .send(
                Method::PUT,
                &url,
                &[("content-type", "application/octet-stream")],
                Some(blob.bytes.clone()),
                &scope,
            )
            .await;
        assert_eq!(
            put.status,
            StatusCode::CREATED,
            "finish upload of {} to {repo}: {}",
            blob.digest,
            put.text()
        );
    }

    /// PUT manifest bytes exactly as given; asserts the registry computed the same digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) {
        let scope = Self::push_scope(repo);
        let put = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("content-type", manifest.media_type.as_str())],
                Some(manifest.bytes.clone()),
                &scope,
            )
            .await;
        assert_eq!(
            put.status,
            StatusCode::CREATED,
            "push manifest {repo}:{reference}: {}",
            put.text()
        );
        assert_eq!(
            put.header("docker-content-digest"),
            Some(manifest.digest.as_str()),
            "registry digest of {repo}:{reference}"
        );
    }

    /// GET (or HEAD) a manifest accepting every manifest type.
    pub async fn manifest(&self, method: Method, repo_path: &str, reference: &str) -> Reply {
        let accept = super::image::ALL_MANIFEST_TYPES.join(", ");
        let repo = repo_path.split('?').next().unwrap_or(repo_path);
        self.send(
            method,
            &format!("/v2/{repo_path}/manifests/{reference}"),
            &[(ACCEPT.as_str(), accept.as_str())],
            None,
            &Self::pull_scope(repo),
        )
        .await
    }

    /// GET a blob.
    pub async fn blob(&self, repo: &str, digest: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            None,
            &Self::pull_scope(repo),
        )
        .await
    }

    /// Plain GET of any path (no auth scope).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, None, "").await
    }
}

/// `Bearer realm="...",service="...",scope="..."` -> map.
pub fn parse_challenge(challenge: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let rest = challenge.split_once(' ').map(|(_, r)| r).unwrap_or("");
    let mut s = rest;
    while !s.is_empty() {
        let Some((key, after)) = s.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(key, value.to_string());
        s = next.trim_start_matches(',').trim_start();
    }
    out
}

/// A response to [`raw_request`].
/// The first OCI error code of a JSON error body (`{"errors":[{"code":...}]}`).
pub fn oci_error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("errors")?
        .get(0)?
        .get("code")?
        .as_str()
        .map(str::to_string)
}

/// The first header named `name` (case-insensitive) in a list of (name, value).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn error_code(&self) -> Option<String> {
        oci_error_code(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `METHOD TARGET HTTP/1.1` exactly as written (no normalisation of the target), with
/// `Connection: close`, and read the whole response. Blocking; run it from `spawn_blocking` or
/// accept a short block in a test.
pub fn raw_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawReply {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_raw_response(&raw).unwrap_or_else(|| {
        panic!(
            "unparseable response to {method} {target}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_raw_response(raw: &[u8]) -> Option<RawReply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Some(RawReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&data[..eol]).unwrap_or("0");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

//! Upstream: the HTTP client to one registry.
//!
//! Owns: URLs, authentication (Basic, Bearer token flow with a token cache), retries, timeouts,
//! redirects (reqwest drops `Authorization` when a redirect leaves the host), outbound proxies and
//! mapping of upstream statuses to [`Error`]. The cache sees only the typed calls of [`calls`]
//! (`get_blob`, `head_manifest`, `tags`, ...) and their results: no status, header or path leaves
//! this module. Must not touch storage or know about caching.

pub mod auth;
mod calls;
mod health;
mod stats;

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Duration;

use crate::config::UpstreamConfig;
use auth::{parse_challenge, Challenge, TokenCache, TokenResponse};
pub(crate) use calls::{BlobStream, ManifestHead};
use health::Health;
pub(crate) use health::Report as HealthReport;
pub(crate) use stats::Reading as StatsReading;

/// An upstream failure, by what the cache needs to decide.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Error {
    #[error("not found at the upstream")]
    NotFound,
    #[error("upstream refused the credentials: {0}")]
    Unauthorized(String),
    #[error("upstream denied access: {0}")]
    Denied(String),
    #[error("upstream rate limit reached")]
    TooManyRequests { retry_after: Option<String> },
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream sent an invalid response: {0}")]
    Invalid(String),
    #[error("bad upstream configuration: {0}")]
    Config(String),
    #[error("upstream answer larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
}

impl Error {
    /// Whether this failure means "cannot reach a healthy upstream" (serve stale content then).
    pub(crate) fn is_outage(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::TooManyRequests { .. })
            || matches!(self, Error::Status { status, .. } if *status >= 500)
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Docker Hub's rate-limit headers, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub limit: Option<String>,
    pub remaining: Option<String>,
}

/// Header names passed through from upstream to client.
pub(crate) const RATELIMIT_LIMIT: &str = "ratelimit-limit";
pub(crate) const RATELIMIT_REMAINING: &str = "ratelimit-remaining";

/// Retry policy for idempotent requests: attempts and the pause before each retry.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// Which answers [`Upstream::retrying`] tries again, besides failed connections and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Registry requests: also 502, 503 and 504; each attempt is counted in the metrics.
    Registry,
    /// Token requests: the token server's own answer is final.
    Token,
}

/// Whole-request deadline for small responses (manifests, tags, tokens, HEADs).
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The client to one upstream registry.
pub(crate) struct Upstream {
    name: String,
    health: Arc<Health>,
    /// Whole deadline of one call on a client's path (connect, retries, answer head, and the
    /// whole body of a manifest or tags list).
    deadline: Duration,
    base: String,
    client: reqwest::Client,
    /// The outbound proxy without its credentials, for messages.
    proxy: Option<String>,
    basic: Option<(String, String)>,
    tokens: TokenCache,
    rate_limit: Mutex<RateLimit>,
    /// Latency and the last failure, for the status page.
    stats: stats::Stats,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish()
    }
}

/// What to ask an upstream for (built by the typed calls in [`calls`]).
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    /// Repository at the upstream (the auth scope).
    repository: String,
    /// Path after `/v2/<repository>/`, e.g. `manifests/latest`, `blobs/sha256:..`, `tags/list`.
    path: String,
    /// Query string without `?` (tags/list pagination), if any.
    query: Option<String>,
    headers: HeaderMap,
    /// Stream the body (blobs): no whole-request deadline, only the read timeout.
    streaming: bool,
}

impl Request {
    fn new(method: Method, repository: &str, path: String) -> Request {
        Request {
            method,
            repository: repository.to_string(),
            path,
            query: None,
            headers: HeaderMap::new(),
            streaming: false,
        }
    }
}

impl Upstream {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Upstream> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout())
            .read_timeout(cfg.read_timeout())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
            // A redirect to a blob CDN must not tell it which registry (and repository) asked.
            .referer(false)
            .redirect(reqwest::redirect::Policy::limited(10));
        if let Some(p) = &cfg.proxy {
            let proxy =
                reqwest::Proxy::all(p).map_err(|e| Error::Config(format!("proxy {p}: {e}")))?;
            builder = builder.proxy(proxy);
        } else {
            builder = builder.no_proxy();
        }
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Config(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!("ca_file {}: {}", ca.display(), describe(&e)))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if !cfg.resolve.is_empty() {
            let url = url::Url::parse(&cfg.base_url())
                .map_err(|e| Error::Config(format!("url {}: {e}", cfg.base_url())))?;
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                return Err(Error::Config(format!("url {url} has no host to resolve")));
            };
            let addrs: Vec<std::net::SocketAddr> = cfg
                .resolve
                .iter()
                .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
                .map(|ip| std::net::SocketAddr::new(ip, port))
                .collect();
            builder = builder.resolve_to_addrs(host.trim_matches(['[', ']']), &addrs);
        }
        if cfg.insecure_skip_verify == Some(true) {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        let password = cfg
            .resolved_password()
            .map_err(|e| Error::Config(e.to_string()))?;
        let basic = cfg.username.clone().zip(password);
        Ok(Upstream {
            name: cfg.name.clone(),
            base: cfg.base_url(),
            client,
            proxy: cfg.proxy.as_deref().map(redacted),
            basic,
            tokens: TokenCache::default(),
            rate_limit: Mutex::new(RateLimit::default()),
            stats: stats::Stats::default(),
            health: Arc::new(Health::new(&cfg.name, cfg.probe_max_interval())),
            deadline: cfg.request_deadline(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The rate-limit headers last seen from this upstream.
    pub(crate) fn rate_limit(&self) -> RateLimit {
        self.rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the upstream is known to be unreachable now (then the cache answers from what it
    /// has without waiting).
    pub(crate) fn is_down(&self) -> bool {
        self.health.is_down()
    }

    /// The upstream's health, for `/readyz` and operators.
    pub(crate) fn health(&self) -> HealthReport {
        self.health.report()
    }

    /// Latency and the last failure, for the status page.
    pub(crate) fn stats(&self) -> StatsReading {
        self.stats.read()
    }

    /// Send `req` within the request deadline, unless the upstream is known to be down (then it
    /// fails at once). A failure to reach the upstream (no connection or no answer after the
    /// retries, or the deadline spent) marks it down and starts the probe.
    async fn send(&self, req: &Request) -> Result<reqwest::Response> {
        self.guarded(self.send_authorized(req)).await
    }

    /// Send `req` and read its whole body (at most `limit` bytes) within the request deadline:
    /// a small answer (manifest, tags list) whose body stalls or breaks off is a failure to reach
    /// the upstream like one whose head never comes.
    async fn send_whole(&self, req: &Request, limit: u64) -> Result<(HeaderMap, bytes::Bytes)> {
        self.guarded(async {
            let resp = self.send_authorized(req).await?;
            let headers = resp.headers().clone();
            let body = calls::read_limited(resp, limit)
                .await
                .map_err(|e| match e {
                    Error::Unavailable(why) => {
                        Error::Unavailable(format!("{}: reading the answer: {why}", self.name))
                    }
                    e => e,
                })?;
            Ok((headers, body))
        })
        .await
    }

    /// Run `work` (a call to the upstream) within the request deadline, unless the upstream is
    /// known to be down (then it fails at once). Spending the whole deadline marks it down (the
    /// retry helper records the other ways of not reaching it).
    async fn guarded<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.health.check()?;
        match tokio::time::timeout(self.deadline, work).await {
            Ok(r) => r,
            Err(_) => {
                let reason = format!(
                    "{} did not answer within {} s",
                    self.name,
                    self.deadline.as_secs()
                );
                self.unreachable(&reason);
                Err(Error::Unavailable(reason))
            }
        }
    }

    /// The upstream could not be reached: mark it down (and start the probe if this did).
    fn unreachable(&self, reason: &str) {
        if self.health.failed(reason) {
            let probe = self.health.clone().probe(
                self.client.clone(),
                self.base.clone(),
                self.proxy.clone(),
            );
            tokio::spawn(probe);
        }
    }

    /// Send `req` with authentication and retries. Success means a 2xx (or 206); every other
    /// status becomes an [`Error`].
    async fn send_authorized(&self, req: &Request) -> Result<reqwest::Response> {
        let scope = format!("repository:{}:pull", req.repository);
        let mut refreshed = false;
        loop {
            let auth = self.authorization(&scope).await?;
            let resp = self.send_with_retries(req, auth.as_ref()).await?;
            self.note_rate_limit(resp.headers());
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                let header = resp
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok());
                match header.and_then(parse_challenge) {
                    Some(c) => self.tokens.set_challenge(c),
                    None => {
                        return Err(Error::Unauthorized(format!(
                            "{} answered 401 without a usable challenge",
                            self.name
                        )))
                    }
                }
                self.tokens.forget(&scope);
                continue;
            }
            return Err(self.status_error(resp).await);
        }
    }

    async fn send_with_retries(
        &self,
        req: &Request,
        auth: Option<&HeaderValue>,
    ) -> Result<reqwest::Response> {
        let mut url = format!("{}/v2/{}/{}", self.base, req.repository, req.path);
        if let Some(q) = &req.query {
            url.push('?');
            url.push_str(q);
        }
        let build = || {
            let mut rb = self
                .client
                .request(req.method.clone(), &url)
                .headers(req.headers.clone());
            if let Some(a) = auth {
                rb = rb.header(http::header::AUTHORIZATION, a.clone());
            }
            if !req.streaming {
                rb = rb.timeout(SMALL_REQUEST_TIMEOUT);
            }
            rb
        };
        self.retrying(Retry::Registry, build).await.map_err(|e| {
            let why = describe_send(&e, self.proxy.as_deref());
            Error::Unavailable(format!("{}: {why}", self.name))
        })
    }

    /// Send what `build` makes, again after each pause of [`RETRY_BACKOFF`] while the attempt
    /// failed to connect or timed out (and, for registry requests, answered 502, 503 or 504).
    async fn retrying(
        &self,
        policy: Retry,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let mut attempt = 0;
        loop {
            let sent = std::time::Instant::now();
            let outcome = build().send().await;
            if policy == Retry::Registry {
                self.record(&outcome, sent);
            }
            let retryable = match &outcome {
                Ok(r) => policy == Retry::Registry && matches!(r.status().as_u16(), 502..=504),
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if !retryable || attempt >= RETRY_BACKOFF.len() {
                // Health: any answer means reachable; a failed connection or a timeout after
                // the retries means not (a connection closed mid-answer or a 5xx does not).
                match &outcome {
                    Ok(_) => self.health.succeeded(),
                    Err(e) if e.is_connect() || e.is_timeout() => {
                        self.unreachable(&describe_send(e, self.proxy.as_deref()))
                    }
                    Err(_) => {}
                }
                return outcome;
            }
            tracing::debug!(upstream = %self.name, attempt, "retrying upstream request");
            tokio::time::sleep(RETRY_BACKOFF[attempt]).await;
            attempt += 1;
        }
    }

    /// The `Authorization` header for `scope`, fetching a token when the upstream wants Bearer.
    async fn authorization(&self, scope: &str) -> Result<Option<HeaderValue>> {
        match self.tokens.challenge() {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic_header()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(t) = self.tokens.token(scope) {
                    return Ok(bearer(&t));
                }
                let (token, lifetime) = self.fetch_token(&realm, service.as_deref(), scope).await?;
                self.tokens.store(scope, token.clone(), lifetime);
                Ok(bearer(&token))
            }
        }
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        use base64::Engine;
        let (u, p) = self.basic.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).ok()
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let mut url = url::Url::parse(realm)
            .map_err(|e| Error::Invalid(format!("token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let build = || {
            let mut rb = self.client.get(url.clone()).timeout(SMALL_REQUEST_TIMEOUT);
            if let Some(h) = self.basic_header() {
                rb = rb.header(http::header::AUTHORIZATION, h);
            }
            rb
        };
        let resp = self.retrying(Retry::Token, build).await.map_err(|e| {
            let why = describe_send(&e, self.proxy.as_deref());
            Error::Unavailable(format!("token server {realm}: {why}"))
        })?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED => {
                return Err(Error::Unauthorized(format!(
                    "token server {realm} refused the credentials for {}",
                    self.name
                )))
            }
            StatusCode::FORBIDDEN => {
                return Err(Error::Denied(format!(
                    "token server {realm} denied {scope}"
                )))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(Error::TooManyRequests {
                    retry_after: retry_after(resp.headers()),
                })
            }
            s => {
                return Err(Error::Unavailable(format!(
                    "token server {realm} answered {s}"
                )))
            }
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(format!("token server {realm}: {}", describe(&e))))?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("token server {realm} sent invalid JSON: {e}")))?;
        body.into_token()
            .ok_or_else(|| Error::Invalid(format!("token server {realm} sent no token")))
    }

    fn record(&self, outcome: &reqwest::Result<reqwest::Response>, sent: std::time::Instant) {
        let name = self.name.clone();
        metrics::histogram!(crate::metrics::UPSTREAM_SECONDS, "upstream" => name.clone())
            .record(sent.elapsed().as_secs_f64());
        self.stats.answered(sent.elapsed().as_micros() as u64);
        match outcome {
            Ok(r) => {
                let status = r.status().as_u16().to_string();
                metrics::counter!(crate::metrics::UPSTREAM_REQUESTS, "upstream" => name.clone(), "status" => status).increment(1);
                if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS {
                    let kind = if r.status() == StatusCode::TOO_MANY_REQUESTS {
                        "rate_limited"
                    } else {
                        "server_error"
                    };
                    metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "upstream" => name, "kind" => kind).increment(1);
                    self.stats.failed(format!("answered {}", r.status()));
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "other"
                };
                metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "upstream" => name, "kind" => kind).increment(1);
                self.stats.failed(describe_send(e, self.proxy.as_deref()));
            }
        }
    }

    fn note_rate_limit(&self, headers: &HeaderMap) {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (limit, remaining) = (get(RATELIMIT_LIMIT), get(RATELIMIT_REMAINING));
        if let Some(n) = remaining
            .as_deref()
            .and_then(|r| r.split(';').next())
            .and_then(|r| r.trim().parse::<f64>().ok())
        {
            metrics::gauge!(crate::metrics::RATELIMIT_REMAINING, "upstream" => self.name.clone())
                .set(n);
        }
        if limit.is_some() || remaining.is_some() {
            *self.rate_limit.lock().unwrap_or_else(|p| p.into_inner()) =
                RateLimit { limit, remaining };
        }
    }

    async fn status_error(&self, resp: reqwest::Response) -> Error {
        let status = resp.status();
        let retry = retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        let message: String = body.chars().take(300).collect();
        match status {
            StatusCode::NOT_FOUND => Error::NotFound,
            StatusCode::UNAUTHORIZED => Error::Unauthorized(format!("{}: {message}", self.name)),
            StatusCode::FORBIDDEN => Error::Denied(format!("{}: {message}", self.name)),
            StatusCode::TOO_MANY_REQUESTS => Error::TooManyRequests { retry_after: retry },
            s if s.is_server_error() => Error::Unavailable(format!("{} answered {s}", self.name)),
            s => Error::Status {
                status: s.as_u16(),
                message,
            },
        }
    }
}

fn bearer(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}")).ok()
}

fn retry_after(h: &HeaderMap) -> Option<String> {
    h.get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A reqwest error with its causes, which carry the useful part ("connection refused").
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// [`describe`] for a request that failed; when no connection could be made and it went through
/// `proxy`, the message names the proxy: with a proxy, regmirror opens connections only to the
/// proxy, so "connection refused" there is about the proxy, not the registry the URL names.
fn describe_send(e: &reqwest::Error, proxy: Option<&str>) -> String {
    match proxy {
        Some(p) if e.is_connect() => format!("connecting through proxy {p}: {}", describe(e)),
        _ => describe(e),
    }
}

/// A proxy URL without its user and password (reqwest sends them as `Proxy-Authorization`).
fn redacted(proxy: &str) -> String {
    match url::Url::parse(proxy) {
        Ok(mut u) => {
            // Both only fail for URLs that cannot have credentials, which then have none.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_string()
        }
        // Config validation refuses an unparsable proxy URL before a client is built.
        Err(_) => "(invalid proxy URL)".to_string(),
    }
}

#[cfg(test)]
mod tests;

//! API: the OCI distribution (registry v2) pull routes.
//!
//! Owns: HTTP in and out. A request is parsed once into an [`Endpoint`], routed to an upstream by
//! [`crate::routing`], answered by [`crate::cache`], and every failure leaves through
//! [`error::Error`]. Must not talk to an upstream or to storage directly.

mod endpoint;
mod error;
mod tags;
pub(crate) mod zero_copy;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::cache::{BlobBody, Cache, CacheStatus};
use crate::edge::{Action, Edge, Grant, Scope};
use crate::oci::RangeSpec;
use crate::oci::{media, Reference};
use crate::routing::{RequestFacts, Route, RoutingTable};
pub use endpoint::Endpoint;
pub(crate) use error::Error;
use zero_copy::Pace;

/// Shared state of every listener.
pub(crate) struct App {
    pub cache: Arc<Cache>,
    pub routing: RoutingTable,
    pub edge: Edge,
}

/// State of one listener: the shared app, and the upstream when the listener is dedicated to one.
#[derive(Clone)]
pub(crate) struct Listener {
    pub app: Arc<App>,
    pub upstream: Option<String>,
}

/// The axum router for one listener.
pub(crate) fn router(listener: Listener) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(listener)
}

/// What the request log records about an answer.
#[derive(Default)]
struct Outcome {
    kind: &'static str,
    route: Option<Route>,
    cache: Option<CacheStatus>,
    /// The authenticated user the edge admitted.
    user: Option<String>,
}

/// Largest token request body (an OAuth2 form of user, password, service and scopes).
const MAX_TOKEN_FORM: usize = 64 * 1024;

async fn handle(State(listener): State<Listener>, req: Request) -> Response {
    let started = Instant::now();
    let (req, body) = req.into_parts();
    let client = listener.app.edge.client_addr(&req);
    let (method, path) = (req.method.clone(), req.uri.path().to_string());
    let query = req.uri.query().map(str::to_string);
    let mut outcome = Outcome::default();
    // The one body regmirror reads: the token endpoint's OAuth2 form (small; bounded).
    let form = if method == Method::POST && path == crate::edge::TOKEN_PATH {
        match axum::body::to_bytes(body, MAX_TOKEN_FORM).await {
            Ok(b) => Some(b),
            Err(_) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "token request too large\n").into_response()
            }
        }
    } else {
        None
    };
    let form = form.as_deref();
    let result = dispatch(&listener, &req, query.as_deref(), form, &mut outcome).await;
    let mut resp = result.unwrap_or_else(|e| {
        if e.status().is_server_error() {
            tracing::warn!(%method, %path, error = %e, "request failed");
        }
        e.into_response()
    });
    if method == Method::HEAD {
        // HEAD answers carry the GET headers but no body.
        *resp.body_mut() = Body::empty();
    }
    let ns = query.as_deref().and_then(|q| query_param(q, "ns"));
    let kind = if outcome.kind.is_empty() {
        "invalid"
    } else {
        outcome.kind
    };
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::metrics::REQUESTS, "endpoint" => kind, "method" => method.to_string(), "status" => status).increment(1);
    metrics::histogram!(crate::metrics::REQUEST_SECONDS, "endpoint" => kind)
        .record(started.elapsed().as_secs_f64());
    if let Some(c) = outcome.cache {
        metrics::counter!(crate::metrics::CACHE_REQUESTS, "kind" => kind, "status" => c.as_str())
            .increment(1);
    }
    tracing::info!(
        client = client.map(|c| c.to_string()).as_deref().unwrap_or("-"),
        %method,
        %path,
        ns = ns.as_deref().unwrap_or("-"),
        status = resp.status().as_u16(),
        upstream = outcome.route.as_ref().map(|r| r.upstream.as_str()).unwrap_or("-"),
        user = outcome.user.as_deref().unwrap_or("-"),
        repository = outcome.route.as_ref().map(|r| r.repository.as_str()).unwrap_or("-"),
        route = outcome.route.as_ref().map(|r| r.style.as_str()).unwrap_or("-"),
        cache = outcome.cache.map(|c| c.as_str()).unwrap_or("-"),
        // The body's announced length (0 for HEAD, which sends none).
        bytes = if method == Method::HEAD { 0 } else { resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) },
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn dispatch(
    listener: &Listener,
    req: &http::request::Parts,
    query: Option<&str>,
    form: Option<&[u8]>,
    outcome: &mut Outcome,
) -> Result<Response, Error> {
    let endpoint = Endpoint::parse(&req.method, req.uri.path())?;
    outcome.kind = endpoint.kind();
    let cache = &listener.app.cache;
    let edge = &listener.app.edge;
    let head = req.method == Method::HEAD;
    let (route, answer) = match endpoint {
        Endpoint::Base => {
            outcome.user = edge.admit_base(req).await?.user;
            return Ok(base_response());
        }
        Endpoint::Token => {
            let answer = edge.token(req, form).await.ok_or(Error::NotFound)??;
            let mut resp = axum::Json(answer).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(resp);
        }
        Endpoint::Health => return Ok((StatusCode::OK, "ok\n").into_response()),
        Endpoint::Ready => return ready(cache).await,
        Endpoint::Metrics => return Ok(metrics_response()),
        Endpoint::PeerFill { digest } => return peer_fill(cache, req, query, &digest).await,
        Endpoint::Unsupported { what } => return Err(Error::unsupported(what)),
        Endpoint::Manifest { name, reference } => {
            let route = route(listener, req, query, &name, outcome)?;
            outcome.user = admit(listener, req, &route, Action::Pull).await?.user;
            let answer = manifest(cache, &route, req, &reference, head).await;
            (route, answer)
        }
        Endpoint::Blob { name, digest } => {
            let route = route(listener, req, query, &name, outcome)?;
            let grant = admit(listener, req, &route, Action::Pull).await?;
            outcome.user = grant.user.clone();
            let edge = &listener.app.edge;
            let permit =
                match !head && edge.limits_downloads() && cache.blob_would_fetch(&digest).await {
                    true => edge.download(&grant)?,
                    false => None,
                };
            let pace = Pace {
                throttle: grant.throttle,
                permit,
            };
            let answer = blob(cache, &route, req, &digest, head, pace).await;
            (route, answer)
        }
        Endpoint::TagsList { name } => {
            let route = route(listener, req, query, &name, outcome)?;
            outcome.user = admit(listener, req, &route, Action::List).await?.user;
            let answer = tags_list(cache, &route, &name, query).await;
            (route, answer)
        }
    };
    let (status, mut resp) = answer?;
    outcome.cache = Some(status);
    let h = resp.headers_mut();
    if let Some(ns) = query.and_then(|q| query_param(q, "ns")) {
        if let Ok(v) = HeaderValue::from_str(&ns) {
            h.insert("oci-namespace", v);
        }
    }
    let rl = cache.rate_limit(&route.upstream);
    for (n, v) in [
        (crate::upstream::RATELIMIT_LIMIT, rl.limit),
        (crate::upstream::RATELIMIT_REMAINING, rl.remaining),
    ] {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(n, v);
        }
    }
    Ok(resp)
}

/// The upstream and repository `name` routes to (also recorded for the request log).
fn route(
    listener: &Listener,
    req: &http::request::Parts,
    query: Option<&str>,
    name: &str,
    outcome: &mut Outcome,
) -> Result<Route, Error> {
    let ns = query.and_then(|q| query_param(q, "ns"));
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    let facts = RequestFacts {
        listener_upstream: listener.upstream.as_deref(),
        host,
        ns: ns.as_deref(),
        name,
    };
    let route = listener.app.routing.route(&facts)?;
    outcome.route = Some(route.clone());
    Ok(route)
}

/// Ask the edge whether this client may do `action` on the routed repository; the admitted user.
async fn admit(
    listener: &Listener,
    req: &http::request::Parts,
    route: &Route,
    action: Action,
) -> Result<Grant, Error> {
    let scope = Scope {
        upstream: &route.upstream,
        repository: &route.repository,
        action,
    };
    Ok(listener.app.edge.admit(req, &scope).await?)
}

/// What an endpoint answered, and where the answer came from.
type Answer = Result<(CacheStatus, Response), Error>;

async fn manifest(
    cache: &Cache,
    route: &Route,
    req: &http::request::Parts,
    reference: &str,
    head: bool,
) -> Answer {
    let reference = Reference::parse(reference).map_err(|e| Error::reference(reference, e))?;
    let accept = media::accepted_types(
        req.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let m = cache
        .manifest(
            &route.upstream,
            &route.repository,
            &reference,
            &accept,
            head,
        )
        .await?;
    Ok((m.status, manifest_response(m)))
}

async fn blob(
    cache: &Cache,
    route: &Route,
    req: &http::request::Parts,
    digest: &crate::oci::Digest,
    head: bool,
    pace: Pace,
) -> Answer {
    let range = match req.headers.get(header::RANGE) {
        Some(v) => Some(parse_range(v)?),
        None => None,
    };
    let b = cache
        .blob(&route.upstream, &route.repository, digest, range, head)
        .await?;
    Ok((b.status, blob_response(b, pace)))
}

async fn tags_list(cache: &Cache, route: &Route, client_name: &str, query: Option<&str>) -> Answer {
    let page = cache
        .tags_list(&route.upstream, &route.repository, query.map(strip_ns))
        .await?;
    let status = page.status;
    let mut resp = tags_response(page, &route.repository, client_name, query);
    if status == CacheStatus::Stale {
        resp.headers_mut()
            .insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
    Ok((status, resp))
}

/// `200 ready` when storage works, whatever the upstreams do (a mirror with its cache is still
/// useful); the body lists every upstream that is down.
async fn ready(cache: &Cache) -> Result<Response, Error> {
    cache
        .check_ready()
        .await
        .map_err(|e| Error::Unavailable(format!("not ready: {e}")))?;
    let mut body = String::from("ready\n");
    // Redis down is reported, never "not ready": every replica still serves what it has and
    // fills alone, and failing all of them at once would empty the load balancer.
    if let Some(redis) = cache.coordination_status().await {
        match redis.down {
            None => body.push_str(&format!("redis {} up: fills and tags coordinated across replicas\n", redis.target)),
            Some((for_, reason)) => body.push_str(&format!(
                "redis {} unavailable for {} s ({reason}): degraded, each replica coalesces its own fills\n",
                redis.target,
                for_.as_secs()
            )),
        }
    }
    for h in cache.upstream_health() {
        if let Some((since, at, reason)) = h.down {
            body.push_str(&format!(
                "upstream {} down since {} (last failure at {}: {reason})\n",
                h.upstream,
                httpdate::fmt_http_date(since),
                httpdate::fmt_http_date(at),
            ));
        }
    }
    Ok((StatusCode::OK, body).into_response())
}

/// The internal fill endpoint: stream a fill this replica owns to another replica (which
/// verifies the digest itself). 404 unless coordination is on and the secret matches.
async fn peer_fill(
    cache: &Cache,
    req: &http::request::Parts,
    query: Option<&str>,
    digest: &crate::oci::Digest,
) -> Result<Response, Error> {
    let from = query
        .and_then(|q| query_param(q, "from"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let secret = req
        .headers
        .get(crate::coord::peer::SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    let Some(fill) = cache.fill_for_peer(digest, from, secret).await? else {
        return Err(Error::NotFound);
    };
    let mut resp = Response::new(Body::from_stream(fill.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(size) = fill.size {
        h.insert("x-regmirror-blob-size", HeaderValue::from(size));
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(size.saturating_sub(from)),
        );
    }
    Ok(resp)
}

fn metrics_response() -> Response {
    let mut resp = crate::metrics::render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// The `Warning` header on answers served from cache past their TTL while a background request
/// revalidates them.
const REVALIDATING_WARNING: &str =
    "110 regmirror \"Response is stale: the tag is being revalidated with the upstream registry\"";

/// The `Warning` header on answers served from cache during an upstream outage.
const STALE_WARNING: &str =
    "110 regmirror \"Response is stale: the upstream registry is unreachable\"";

fn base_response() -> Response {
    let mut resp = (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn common_headers(h: &mut HeaderMap, digest: &str, content_type: &str, len: u64) {
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Ok(v) = HeaderValue::from_str(digest) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// `X-Regmirror-Cache: hit|miss|joined|stale|revalidating|passthrough` on manifest and blob
/// answers: where the answer came from (`regmirror prefetch --mirror` skips what is a hit).
fn cache_status(h: &mut HeaderMap, status: CacheStatus) {
    h.insert(
        "x-regmirror-cache",
        HeaderValue::from_static(status.as_str()),
    );
}

fn manifest_response(m: crate::cache::Manifest) -> Response {
    let mut resp = Response::new(Body::from(m.body));
    common_headers(
        resp.headers_mut(),
        &m.digest.to_string(),
        &m.media_type,
        m.size,
    );
    cache_status(resp.headers_mut(), m.status);
    let warning = match m.status {
        CacheStatus::Stale => Some(STALE_WARNING),
        CacheStatus::Revalidating => Some(REVALIDATING_WARNING),
        _ => None,
    };
    if let Some(w) = warning {
        resp.headers_mut()
            .insert(header::WARNING, HeaderValue::from_static(w));
    }
    resp
}

fn blob_response(b: crate::cache::Blob, pace: Pace) -> Response {
    let source = if b.status == CacheStatus::Hit {
        "cache"
    } else {
        "upstream"
    };
    let mut send_file = None;
    let body = match b.body {
        Some(BlobBody::File(region)) => {
            let sf = zero_copy::SendFile::new(region, source, pace);
            let body = sf.body();
            send_file = Some(sf);
            body
        }
        Some(BlobBody::Stream(stream)) => {
            let served = metrics::counter!(crate::metrics::BYTES_SERVED, "source" => source);
            let stream = futures::StreamExt::inspect(stream, move |chunk| {
                if let Ok(c) = chunk {
                    served.increment(c.len() as u64);
                }
            });
            Body::from_stream(zero_copy::paced(
                stream,
                pace.throttle,
                pace.permit.map(Arc::new),
            ))
        }
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    if let Some(sf) = send_file {
        resp.extensions_mut().insert(sf);
    }
    cache_status(resp.headers_mut(), b.status);
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    match (b.range, b.size) {
        (Some((start, end)), size) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let total = size.map(|s| s.to_string()).unwrap_or_else(|| "*".into());
            common_headers(
                resp.headers_mut(),
                &b.digest.to_string(),
                "application/octet-stream",
                end - start,
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        (None, Some(size)) => {
            common_headers(h, &b.digest.to_string(), "application/octet-stream", size)
        }
        (None, None) => {
            common_headers(h, &b.digest.to_string(), "application/octet-stream", 0);
            h.remove(header::CONTENT_LENGTH);
        }
    }
    resp
}

fn tags_response(
    page: crate::cache::TagsPage,
    upstream_repo: &str,
    client_name: &str,
    query: Option<&str>,
) -> Response {
    let n = query
        .and_then(|q| query_param(q, "n"))
        .and_then(|n| n.parse::<usize>().ok());
    let last = query.and_then(|q| query_param(q, "last"));
    let mut link = page
        .link
        .map(|l| rewrite_link(&l, upstream_repo, client_name));
    let body = match tags::page(&page.body, client_name, n, last.as_deref()) {
        Some((body, next)) => {
            if link.is_none() {
                link = next.map(|last| {
                    let q = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("n", &n.unwrap_or_default().to_string())
                        .append_pair("last", &last)
                        .finish();
                    format!("</v2/{client_name}/tags/list?{q}>; rel=\"next\"")
                });
            }
            body
        }
        None => page.body,
    };
    let len = body.len() as u64;
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    let ct = page
        .content_type
        .unwrap_or_else(|| "application/json".into());
    if let Ok(v) = HeaderValue::from_str(&ct) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LINK, link);
    }
    resp
}

/// Point an upstream `Link: </v2/<repo>/tags/list?...>` into the mirror's namespace.
fn rewrite_link(link: &str, upstream_repo: &str, client_name: &str) -> String {
    let from = format!("/v2/{upstream_repo}/tags/list");
    let to = format!("/v2/{client_name}/tags/list");
    match link.find(&from) {
        Some(i) => {
            let start = link[..i].rfind('<').map(|j| j + 1).unwrap_or(i);
            format!("{}{}{}", &link[..start], to, &link[i + from.len()..])
        }
        None => link.to_string(),
    }
}

/// `Range: bytes=a-b` (one range only, as registries serve).
fn parse_range(v: &HeaderValue) -> Result<RangeSpec, Error> {
    let bad = || Error::RangeNotSatisfiable {
        message: format!("unsupported Range header {v:?}: use bytes=START-END"),
        size: None,
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let spec = s.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Ok(RangeSpec::Suffix(b.parse().map_err(|_| bad())?)),
        (false, true) => Ok(RangeSpec::From(a.parse().map_err(|_| bad())?, None)),
        (false, false) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if b < a {
                return Err(bad());
            }
            Ok(RangeSpec::From(a, Some(b)))
        }
        (true, true) => Err(bad()),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The query without `ns` (which is ours, not the upstream's).
fn strip_ns(query: &str) -> String {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "ns")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_rewritten() {
        let cases = [
            (
                "</v2/library/alpine/tags/list?last=b&n=2>; rel=\"next\"",
                "library/alpine",
                "dockerhub/alpine",
                "</v2/dockerhub/alpine/tags/list?last=b&n=2>; rel=\"next\"",
            ),
            (
                "<http://up:5000/v2/a/b/tags/list?n=1&last=x>; rel=\"next\"",
                "a/b",
                "local/a/b",
                "</v2/local/a/b/tags/list?n=1&last=x>; rel=\"next\"",
            ),
            ("<other>", "a", "b", "<other>"),
        ];
        for (link, repo, client, want) in cases {
            assert_eq!(rewrite_link(link, repo, client), want);
        }
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        let ok = [
            ("bytes=0-9", From(0, Some(9))),
            ("bytes=5-", From(5, None)),
            ("bytes=-3", Suffix(3)),
        ];
        for (h, want) in ok {
            assert_eq!(parse_range(&HeaderValue::from_static(h)).unwrap(), want);
        }
        for bad in [
            "bytes=9-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
        ] {
            assert!(
                parse_range(&HeaderValue::from_static(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ns_is_not_forwarded() {
        assert_eq!(strip_ns("n=10&ns=docker.io&last=a"), "n=10&last=a");
        assert_eq!(
            query_param("ns=127.0.0.1%3A5101", "ns").as_deref(),
            Some("127.0.0.1:5101")
        );
    }
}

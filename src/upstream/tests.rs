//! Upstream client tests against in-process HTTP servers on loopback: the token flow, Basic auth,
//! redirects to another host, retries and the outbound proxy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};

use super::{Error, Request as UpReq, Upstream};
use crate::config::UpstreamConfig;

/// What the fake registry saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    token_requests: AtomicUsize,
    auth_headers: Mutex<Vec<Option<String>>>,
    /// `Referer` of each request (a CDN must not learn which registry sent the client).
    referers: Mutex<Vec<Option<String>>>,
    /// Tokens the registry accepts; clearing it simulates expiry.
    valid_tokens: Mutex<Vec<String>>,
    fail_first: AtomicUsize,
}

type Handler = fn(Arc<Seen>, String, Request) -> Response;

async fn serve(seen: Arc<Seen>, handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, seen, handler)
}

/// [`serve`] on a listener of the caller's.
fn serve_on(listener: tokio::net::TcpListener, seen: Arc<Seen>, handler: Handler) -> String {
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let b2 = base.clone();
    let app = axum::Router::new().fallback(move |State(seen): State<Arc<Seen>>, req: Request| {
        let base = b2.clone();
        async move { handler(seen, base, req) }
    });
    let app = app.with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn status(code: u16, body: &str) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

fn auth_of(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
}

/// A registry with bearer auth whose token endpoint is `/token` on the same server.
fn bearer_registry(seen: Arc<Seen>, base: String, req: Request) -> Response {
    let auth = auth_of(&req);
    if req.uri().path() == "/token" {
        seen.token_requests.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            auth.as_deref(),
            Some("Basic dTpw"),
            "token request carries the configured credentials (u:p)"
        );
        let q = req.uri().query().unwrap_or("");
        assert!(
            q.contains("scope=repository%3Aa%2Fb%3Apull") && q.contains("service=fake"),
            "{q}"
        );
        let token = format!("t{}", seen.token_requests.load(Ordering::SeqCst));
        seen.valid_tokens.lock().unwrap().push(token.clone());
        return status(
            200,
            &format!(r#"{{"access_token":"{token}","expires_in":300}}"#),
        );
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.auth_headers.lock().unwrap().push(auth.clone());
    let ok = auth
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
        .is_some_and(|t| seen.valid_tokens.lock().unwrap().contains(&t));
    if ok {
        return status(200, "manifest");
    }
    let mut r = status(401, "{}");
    let challenge =
        format!(r#"Bearer realm="{base}/token",service="fake",scope="repository:a/b:pull""#);
    r.headers_mut()
        .insert("www-authenticate", challenge.parse().unwrap());
    r
}

fn upstream(url: &str, creds: bool) -> Upstream {
    let mut cfg = UpstreamConfig {
        name: "fake".into(),
        url: Some(url.into()),
        ..Default::default()
    };
    if creds {
        cfg.username = Some("u".into());
        cfg.password = Some("p".into());
    }
    Upstream::new(&cfg).unwrap()
}

fn get(path: &str) -> UpReq {
    UpReq::new(Method::GET, "a/b", path.into())
}

#[tokio::test]
async fn bearer_flow_caches_tokens_and_refreshes_on_401() {
    let seen = Arc::new(Seen::default());
    let base = serve(seen.clone(), bearer_registry).await;
    let up = upstream(&base, true);
    for _ in 0..3 {
        let r = up.send(&get("manifests/latest")).await.unwrap();
        assert_eq!(r.text().await.unwrap(), "manifest");
    }
    assert_eq!(
        seen.token_requests.load(Ordering::SeqCst),
        1,
        "one token for three requests"
    );
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        4,
        "one anonymous probe, then three with the token"
    );
    // The registry forgets its tokens (expiry): one 401, one new token, then success.
    seen.valid_tokens.lock().unwrap().clear();
    up.send(&get("manifests/latest")).await.unwrap();
    assert_eq!(seen.token_requests.load(Ordering::SeqCst), 2);
}

fn basic_registry(seen: Arc<Seen>, _base: String, req: Request) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    match auth_of(&req).as_deref() {
        Some("Basic dTpw") => status(200, "ok"),
        _ => {
            let mut r = status(401, "{}");
            r.headers_mut()
                .insert("www-authenticate", r#"Basic realm="x""#.parse().unwrap());
            r
        }
    }
}

#[tokio::test]
async fn basic_auth_and_wrong_credentials() {
    let seen = Arc::new(Seen::default());
    let base = serve(seen.clone(), basic_registry).await;
    assert_eq!(
        upstream(&base, true)
            .send(&get("tags/list"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let err = upstream(&base, false)
        .send(&get("tags/list"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
}

fn redirecting_registry(seen: Arc<Seen>, _base: String, req: Request) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    assert_eq!(
        auth_of(&req).as_deref(),
        Some("Basic dTpw"),
        "the registry itself gets the credentials"
    );
    let cdn = CDN.lock().unwrap().clone();
    let mut r = status(307, "");
    r.headers_mut()
        .insert("location", format!("{cdn}/blob-data").parse().unwrap());
    r
}

static CDN: Mutex<String> = Mutex::new(String::new());

fn cdn(seen: Arc<Seen>, _base: String, req: Request) -> Response {
    seen.auth_headers.lock().unwrap().push(auth_of(&req));
    let referer = req
        .headers()
        .get("referer")
        .map(|v| v.to_str().unwrap().to_string());
    seen.referers.lock().unwrap().push(referer);
    status(200, "blob bytes")
}

#[tokio::test]
async fn redirects_to_another_host_drop_authorization() {
    let cdn_seen = Arc::new(Seen::default());
    *CDN.lock().unwrap() = serve(cdn_seen.clone(), cdn)
        .await
        .replace("127.0.0.1", "localhost");
    let seen = Arc::new(Seen::default());
    let base = serve(seen.clone(), redirecting_registry).await;
    // Basic challenge known up front, so the first request already carries credentials.
    let up = upstream(&base, true);
    up.tokens.set_challenge(super::auth::Challenge::Basic);
    let r = up.send(&get("blobs/sha256:x")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "blob bytes");
    assert_eq!(
        *cdn_seen.auth_headers.lock().unwrap(),
        vec![None],
        "the CDN never sees the registry credentials"
    );
    assert_eq!(
        *cdn_seen.referers.lock().unwrap(),
        vec![None],
        "nor which registry (and repository) sent the client"
    );
}

#[tokio::test]
async fn host_names_resolve_through_the_caching_resolver_and_the_hosts_file() {
    // "localhost" comes from /etc/hosts through the (TTL-caching) hickory resolver.
    let seen = Arc::new(Seen::default());
    let base = serve(seen.clone(), cdn)
        .await
        .replace("127.0.0.1", "localhost");
    let up = upstream(&base, false);
    for _ in 0..3 {
        let r = up.send(&get("blobs/sha256:x")).await.unwrap();
        assert_eq!(r.text().await.unwrap(), "blob bytes");
    }
    assert_eq!(seen.auth_headers.lock().unwrap().len(), 3);
}

fn flaky_registry(seen: Arc<Seen>, _base: String, _req: Request) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if seen.fail_first.load(Ordering::SeqCst) > 0 {
        seen.fail_first.fetch_sub(1, Ordering::SeqCst);
        return status(503, "busy");
    }
    status(200, "ok")
}

#[tokio::test]
async fn retries_are_bounded() {
    let seen = Arc::new(Seen::default());
    let base = serve(seen.clone(), flaky_registry).await;
    let up = upstream(&base, false);
    seen.fail_first.store(2, Ordering::SeqCst);
    assert!(
        up.send(&get("manifests/x")).await.is_ok(),
        "two 503s then success"
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    seen.fail_first.store(10, Ordering::SeqCst);
    let err = up.send(&get("manifests/x")).await.unwrap_err();
    assert!(err.is_outage(), "{err:?}");
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        6,
        "three attempts at most"
    );
    // Nothing listening: a connection error, reported as an outage.
    let dead = upstream("http://127.0.0.1:9", false);
    assert!(dead
        .send(&get("manifests/x"))
        .await
        .unwrap_err()
        .is_outage());
}

/// A forward proxy for plain HTTP: it receives absolute-form requests and relays them.
async fn serve_proxy(seen: Arc<Seen>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        async move {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            let target = req.uri().to_string();
            assert!(
                target.starts_with("http://"),
                "absolute-form request line: {target}"
            );
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let body = client
                .get(&target)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            status(200, &body)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_proxy_is_used() {
    let reg_seen = Arc::new(Seen::default());
    let base = serve(reg_seen.clone(), flaky_registry).await;
    let proxy_seen = Arc::new(Seen::default());
    let proxy_url = serve_proxy(proxy_seen.clone()).await;
    let cfg = UpstreamConfig {
        name: "fake".into(),
        url: Some(base),
        proxy: Some(proxy_url),
        ..Default::default()
    };
    let up = Upstream::new(&cfg).unwrap();
    assert_eq!(
        up.send(&get("manifests/x"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(proxy_seen.requests.load(Ordering::SeqCst), 1);
    assert_eq!(reg_seen.requests.load(Ordering::SeqCst), 1);
}

/// With a proxy nobody listens on, the error names the proxy (without its credentials), not just
/// the registry URL that was never reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_proxy_is_named_in_the_error() {
    let reg_seen = Arc::new(Seen::default());
    let base = serve(reg_seen.clone(), flaky_registry).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for scheme in ["http", "socks5"] {
        let cfg = UpstreamConfig {
            name: "fake".into(),
            url: Some(base.clone()),
            proxy: Some(format!("{scheme}://user:hunter2@{dead}")),
            ..Default::default()
        };
        let up = Upstream::new(&cfg).unwrap();
        let Err(Error::Unavailable(msg)) = up.send(&get("manifests/x")).await else {
            panic!("{scheme}: a dead proxy must make the upstream unavailable");
        };
        assert!(
            msg.contains(&format!("connecting through proxy {scheme}://{dead}: ")),
            "{msg}"
        );
        assert!(!msg.contains("hunter2") && !msg.contains("user"), "{msg}");
    }
    assert_eq!(reg_seen.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn proxy_credentials_are_left_out_of_messages() {
    for (url, shown) in [
        ("http://127.0.0.1:3128", "http://127.0.0.1:3128"),
        (
            "http://u:p@proxy.example:3128/",
            "http://proxy.example:3128",
        ),
        ("socks5h://u:p@127.0.0.1:1080", "socks5h://127.0.0.1:1080"),
        ("https://u@proxy.example", "https://proxy.example"),
    ] {
        assert_eq!(super::redacted(url), shown, "{url}");
    }
}

/// A registry whose every answer sends its head (announcing 100 bytes) and never its body.
fn stalled_bodies(seen: Arc<Seen>, _base: String, _req: Request) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let mut r = Response::new(Body::from_stream(never));
    r.headers_mut()
        .insert("content-length", "100".parse().unwrap());
    r
}

#[tokio::test]
async fn a_manifest_whose_body_stalls_fails_within_the_deadline_and_marks_the_upstream_down() {
    let base = serve(Arc::new(Seen::default()), stalled_bodies).await;
    let cfg = UpstreamConfig {
        name: "fake".into(),
        url: Some(base),
        request_deadline_secs: Some(1),
        ..Default::default()
    };
    let up = Upstream::new(&cfg).unwrap();
    let started = std::time::Instant::now();
    let tag = crate::oci::Reference::Tag("latest".into());
    let err = match up.get_manifest("a/b", &tag, &[], 1 << 20).await {
        Ok(_) => panic!("a manifest whose body never comes"),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "bounded by the 1 s deadline, not the 60 s read timeout: {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(up.is_down(), "a stalled answer marks the upstream down");
}

#[tokio::test]
async fn a_probe_answered_with_a_head_but_no_body_keeps_the_upstream_down() {
    let seen = Arc::new(Seen::default());
    let base = serve(seen.clone(), stalled_bodies).await;
    let health = Arc::new(super::health::Health::new(
        "fake",
        std::time::Duration::from_secs(1),
    ));
    assert!(health.failed("test outage"));
    // The first probe runs after 1 s (±20 %); its answer's head comes at once, its body never.
    let probe = health.clone().probe(reqwest::Client::new(), base, None);
    let probed = tokio::time::timeout(std::time::Duration::from_millis(1600), probe).await;
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1,
        "one probe was sent"
    );
    assert!(
        probed.is_err() && health.is_down(),
        "a head without its body does not bring the upstream back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_of_a_host_costs_a_share_of_one_connect_timeout_then_the_connection_is_reused(
) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::time::{Duration, Instant};
    // The registry answers on 127.0.0.1:PORT; 127.0.0.2:PORT is black-holed: a listener with
    // backlog 0 whose queue our own connects fill, that never accepts, so SYNs go unanswered.
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = live.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    serve_on(live, seen.clone(), cdn);
    let dead: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let hole = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    hole.bind(&SockAddr::from(dead)).unwrap();
    hole.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        let f = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        f.set_nonblocking(true).unwrap();
        let _ = f.connect(&SockAddr::from(dead));
        fillers.push(f);
    }
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(dead)
        )
        .await
        .is_err(),
        "the dead address must swallow connects for this test to mean anything"
    );
    // A host name (never looked up: `resolve` pins it) whose first address is the dead one.
    let up = Upstream::new(&UpstreamConfig {
        name: "pinned".into(),
        url: Some(format!("http://registry.test:{port}")),
        resolve: vec!["127.0.0.2".into(), "127.0.0.1".into()],
        connect_timeout_secs: Some(6),
        ..Default::default()
    })
    .unwrap();
    let started = Instant::now();
    let r = up.send(&get("blobs/sha256:x")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "blob bytes");
    let first = started.elapsed();
    // The two addresses share the 6 s connect timeout: about 3 s on the dead one, then the
    // live one. Not the whole timeout, and never a failure.
    assert!(
        first < Duration::from_millis(5500),
        "the first request waited {first:?}: the dead address took the whole connect timeout"
    );
    let started = Instant::now();
    for _ in 0..5 {
        let r = up.send(&get("blobs/sha256:x")).await.unwrap();
        assert_eq!(r.text().await.unwrap(), "blob bytes");
    }
    let later = started.elapsed();
    assert!(
        later < Duration::from_millis(2500),
        "five more requests took {later:?}: they must reuse the live connection, not retry the dead address"
    );
    assert!(!up.is_down(), "a reachable upstream is not marked down");
    assert_eq!(seen.auth_headers.lock().unwrap().len(), 6);
    drop((hole, fillers));
}

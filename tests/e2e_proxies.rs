//! Through the outbound proxies users really run: tinyproxy 1.11 and squid 5 (HTTP forward
//! proxies, an https upstream reached through `CONNECT`) and microsocks (SOCKS5), all Debian's,
//! each on loopback with its own config and log.
//!
//! Each test configures regmirror's upstreams with `proxy = ...`, pulls a multi-arch image (OCI
//! index, two manifests, their blobs) through regmirror with skopeo, checks the copy is
//! byte-identical, and checks from the proxy's own log that the traffic went through it (and that
//! regmirror holds no connection of its own to the registry). A proxy on a dead port fails an
//! uncached pull quickly with 503 UNAVAILABLE naming the proxy. tinyproxy forwards only the first
//! line of a repeated request header: with one `Accept` line per media type, distribution saw one
//! type and answered Docker schema 1, and every pull failed with "digest mismatch"; regmirror
//! sends one comma-joined `Accept` (and refuses a schema 1 answer with a message saying so).

mod support;

use std::time::{Duration, Instant};

use support::env::free_port;
use support::faults::{sockets_to, wait_for};
use support::image::MultiImage;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::proxies::Proxy;
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, assert_multi_copy, blob_digests_of, CopyOptions};
use support::tls::{make_certs, Certs};

/// What every test here runs.
const TOOLS: &[&str] = &["docker-registry", "skopeo", "openssl", "ss"];
/// The upstream's alias in regmirror, and the multi-arch repository pulled.
const ALIAS: &str = "up";
const REPO: &str = "team/multi";

/// One registry over plain HTTP and an https twin serving the same storage with a private CA's
/// certificate.
struct Upstreams {
    plain: Registry,
    tls: Registry,
    certs: Certs,
    seeded: Seeded,
}

impl Upstreams {
    async fn start() -> Upstreams {
        let plain = Registry::plain().await;
        let seeded = seed(&plain, REPO, "team/single", "proxied").await;
        let certs = make_certs(plain.dir.path());
        let tls = plain.tls_twin(&certs).await;
        Upstreams {
            plain,
            tls,
            certs,
            seeded,
        }
    }

    /// A regmirror of its own (blobs are stored by digest alone, so one mirror for both upstreams
    /// would serve the second pull from the first one's blobs) for `registry` behind `proxy`.
    async fn mirror(&self, registry: &Registry, proxy: &str) -> Regmirror {
        let mut upstream = UpstreamEntry::new("upstream.example", &registry.url())
            .alias(ALIAS)
            .proxy(proxy);
        if registry.scheme == "https" {
            upstream.ca_file = Some(self.certs.ca_file());
        }
        Regmirror::start(MirrorConfig::new(vec![upstream])).await
    }
}

/// `skopeo copy --all ALIAS/REPO:v1` through `mirror`, asserted byte-identical to `multi`.
async fn pull_index(mirror: &Regmirror, multi: &MultiImage) {
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ALIAS}/{REPO}:v1", mirror.addr());
    let copy = skopeo::copy(
        &reference,
        work.path(),
        &CopyOptions {
            all: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_multi_copy(&copy, multi, &reference);
}

/// The registry served every blob of `multi` (so the bytes skopeo got came from it), and
/// regmirror holds no connection to it: whatever it sent went through a proxy.
fn assert_fetched_not_directly(registry: &Registry, mirror: &Regmirror, multi: &MultiImage) {
    for d in blob_digests_of(multi) {
        assert!(
            registry.count_blob_gets(REPO, &d) >= 1,
            "{} never served blob {d}",
            registry.url()
        );
    }
    assert_eq!(
        sockets_to(mirror.pid(), &registry.host()),
        0,
        "regmirror has a connection of its own to {}",
        registry.host()
    );
}

/// The HTTP proxy forwarded the tag, each instance manifest and every blob of `multi` from the
/// plain `registry`: its log names each absolute URL.
fn assert_forwarded(proxy: &Proxy, registry: &Registry, multi: &MultiImage) {
    let base = format!("{}/v2/{REPO}", registry.url());
    let passed = proxy.passed();
    let seen = |path: &str| passed.iter().any(|p| p.target == format!("{base}/{path}"));
    assert!(
        seen("manifests/v1"),
        "{:?} logged no manifests/v1: {passed:?}",
        proxy.kind
    );
    for c in &multi.children {
        let path = format!("manifests/{}", c.manifest.digest);
        assert!(seen(&path), "{:?} logged no {path}", proxy.kind);
    }
    for d in blob_digests_of(multi) {
        assert!(
            proxy.has_passed("GET", &format!("{base}/blobs/{d}")),
            "{:?} logged no GET of blob {d}",
            proxy.kind
        );
    }
}

/// Pull from the plain upstream through an HTTP proxy (absolute-form requests), then from the
/// https upstream through its `CONNECT` tunnel, and read the proxy's log.
async fn http_proxy_carries_both_upstreams(up: &Upstreams, proxy: &Proxy) {
    let index = &up.seeded.index;
    let plain = up.mirror(&up.plain, &proxy.url()).await;
    pull_index(&plain, index).await;
    assert_fetched_not_directly(&up.plain, &plain, index);
    assert_forwarded(proxy, &up.plain, index);

    let mut secure = up.mirror(&up.tls, &proxy.url()).await;
    pull_index(&secure, index).await;
    assert_fetched_not_directly(&up.tls, &secure, index);
    // squid logs a tunnel when it closes: end regmirror's pooled connections first.
    secure.kill9();
    wait_for(
        "the proxy to log the CONNECT to the https upstream",
        Duration::from_secs(10),
        || proxy.has_passed("CONNECT", &up.tls.host()).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_tinyproxy_plain_and_connect() {
    require_tools!(&[TOOLS, &["tinyproxy"]].concat());
    let up = Upstreams::start().await;
    let proxy = Proxy::tinyproxy(&[up.tls.port]).await;
    http_proxy_carries_both_upstreams(&up, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_squid_plain_and_connect() {
    require_tools!(&[TOOLS, &["squid"]].concat());
    let up = Upstreams::start().await;
    let proxy = Proxy::squid(&[up.tls.port]).await;
    http_proxy_carries_both_upstreams(&up, &proxy).await;
}

/// SOCKS5 for both upstreams: `socks5://` (regmirror resolves the name) to the plain one,
/// `socks5h://` (the proxy does) to the https one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_microsocks_socks5_and_socks5h() {
    require_tools!(&[TOOLS, &["microsocks"]].concat());
    let up = Upstreams::start().await;
    let proxy = Proxy::microsocks().await;
    let socks5h = format!("socks5h://{}", proxy.addr());
    for (registry, url) in [(&up.plain, proxy.url()), (&up.tls, socks5h)] {
        let mirror = up.mirror(registry, &url).await;
        pull_index(&mirror, &up.seeded.index).await;
        assert_fetched_not_directly(registry, &mirror, &up.seeded.index);
        assert!(
            proxy.has_passed("CONNECT", &registry.host()),
            "microsocks logged no connection to {}: {:?}",
            registry.host(),
            proxy.passed()
        );
        assert!(
            sockets_to(proxy.pid(), &registry.host()) >= 1,
            "microsocks holds no connection to {}",
            registry.host()
        );
    }
}

/// A proxy nobody listens on: an uncached pull fails with 503 UNAVAILABLE naming the proxy, within
/// the connect timeout and the retries' pauses, and nothing reaches the registry around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_proxy_fails_an_uncached_pull_quickly_with_503() {
    require_tools!(&["docker-registry"]);
    const CONNECT_TIMEOUT_SECS: u64 = 2;
    let registry = Registry::plain().await;
    seed(&registry, REPO, "team/single", "dead proxy").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let schemes = ["http", "socks5"];
    let upstreams = schemes
        .iter()
        .map(|s| {
            UpstreamEntry::new(&format!("via-{s}.example"), &registry.url())
                .alias(&format!("via-{s}"))
                .proxy(&format!("{s}://{dead}"))
        })
        .collect();
    let mut config = MirrorConfig::new(upstreams);
    config.extra = Extra::default().upstream("connect_timeout_secs", CONNECT_TIMEOUT_SECS as i64);
    let mirror = Regmirror::start(config).await;
    let before = registry.access_lines().len();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for s in schemes {
        let url = format!("{}/v2/via-{s}/{REPO}/manifests/v1", mirror.url);
        let started = Instant::now();
        let resp = client.get(&url).send().await.unwrap();
        let took = started.elapsed();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 503, "{s} proxy on a dead port: {body}");
        assert!(
            body.contains("UNAVAILABLE") && body.contains("proxy") && body.contains(&dead),
            "the message names the proxy and its address: {body}"
        );
        // Three attempts that each fail at once, 0.2 s and 0.8 s apart; one more second of slack.
        let bound = Duration::from_secs(CONNECT_TIMEOUT_SECS + 2);
        assert!(
            took < bound,
            "{s}: failed after {took:?}, want under {bound:?}"
        );
    }
    let lines = registry.access_lines();
    assert_eq!(
        lines.len(),
        before,
        "requests reached the registry around the dead proxy: {:?}",
        &lines[before..]
    );
}

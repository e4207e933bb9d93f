//! End-to-end network faults (issue 12, "How it is proven"): a real distribution upstream behind
//! a relay (tests/support/netfaults.rs) that refuses, black-holes, stays silent, stalls a body or
//! answers 503 / 429, and the real regmirror in front of the relay. For every fault: the cached
//! tag is answered at once from cache, an uncached one fails within the request deadline and, once
//! the upstream is known down (it cannot be reached: refused, black-holed, silent, stalled), at
//! once; `/readyz` and `/metrics` name the upstream while it is down, and when the network is back
//! the upstream is probed back and serves its current content. An upstream that answers 503 or
//! 429 is reachable: it is never marked down, and each uncached GET gets its own answer. Plus background revalidation:
//! thirty clients of an expired tag, one upstream HEAD.
//!
//! Timings are asserted only as generous bounds; the exact figures are printed (`--nocapture`)
//! and belong in the benchmark.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT};
use support::client::RegistryClient;
use support::faults::metric;
use support::image::{image, Format, Image, Platform, ALL_MANIFEST_TYPES};
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::netfaults::{Mode, Relay, RETRY_AFTER_SECS};
use support::registry::Registry;
use support::seed::push_image;

/// Path prefix (an alias) under which the mirror serves the upstream.
const ALIAS: &str = "up";
const REPO: &str = "net/app";
/// The tag the mirror has cached when a fault starts.
const LIVE: &str = "live";
/// A tag the upstream has but the mirror has never been asked for when a fault starts.
const FRESH: &str = "fresh";

/// The mirror's settings for the upstream: short, to keep the run short.
const TAG_TTL_SECS: u64 = 1;
const REQUEST_DEADLINE_SECS: i64 = 3;
/// Past the tag TTL.
const TTL_PASSED: Duration = Duration::from_millis(1200);
/// An answer from cache, or a fail-fast answer, comes well within this.
const AT_ONCE: Duration = Duration::from_secs(1);
/// The first failure: the request deadline plus margin.
const FIRST_FAILURE: Duration = Duration::from_secs(6);
/// Back up after the network is: the 1 s probe interval (±20 %) plus margin.
const RECOVERY: Duration = Duration::from_secs(10);
/// How late the upstream's answers arrive while thirty clients ask for an expired tag.
const REVALIDATION_LATENCY: Duration = Duration::from_millis(500);
/// How long the test's own client waits for any answer before it calls it a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// One manifest GET through the mirror, timed.
struct Timed {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    /// Why no answer came (the test client's timeout), if none did.
    failed: Option<String>,
    elapsed: Duration,
}

impl Timed {
    fn ms(&self) -> u128 {
        self.elapsed.as_millis()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn digest(&self) -> Option<&str> {
        self.header("docker-content-digest")
    }

    fn error_code(&self) -> Option<String> {
        support::client::oci_error_code(&self.body)
    }

    /// For assertion messages.
    fn describe(&self) -> String {
        match &self.failed {
            Some(why) => format!("no answer after {} ms: {why}", self.ms()),
            None => format!(
                "{} after {} ms: {}",
                self.status,
                self.ms(),
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

/// A distribution upstream, the relay in front of it, and a regmirror in front of the relay.
struct Net {
    /// Declared first: the mirror stops before the relay and the registry.
    mirror: Regmirror,
    relay: Relay,
    registry: Registry,
    /// Pushes straight to the registry, past the relay.
    upstream: RegistryClient,
    http: reqwest::Client,
}

impl Net {
    async fn start() -> Net {
        let registry = Registry::plain().await;
        let relay = Relay::start(&registry.host()).await;
        let mut entry = UpstreamEntry::new(&relay.host(), &relay.url()).alias(ALIAS);
        entry.tag_ttl_secs = Some(TAG_TTL_SECS);
        let mut config = MirrorConfig::new(vec![entry]);
        config.no_builtin_upstreams = true;
        config.default_upstream = String::new();
        config.extra = Extra::default()
            .upstream("probe_max_interval_secs", 1)
            .upstream("request_deadline_secs", REQUEST_DEADLINE_SECS)
            .upstream("connect_timeout_secs", 1);
        let mirror = Regmirror::start(config).await;
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .expect("reqwest client");
        Net {
            upstream: RegistryClient::new(&registry.url(), None),
            mirror,
            relay,
            registry,
            http,
        }
    }

    /// The upstream's name in the mirror (and in `/readyz`, `/metrics`).
    fn upstream_name(&self) -> String {
        self.relay.host()
    }

    /// Push a new single-platform image labelled `label` as `tag`, straight to the registry.
    async fn push(&self, tag: &str, label: &str) -> Image {
        let img = image(Format::Oci, Platform::amd64(), label);
        push_image(&self.upstream, REPO, &img, tag).await;
        img
    }

    /// GET the manifest of `tag` through the mirror, accepting every manifest type.
    async fn get(&self, tag: &str) -> Timed {
        let url = format!("{}/v2/{ALIAS}/{REPO}/manifests/{tag}", self.mirror.url);
        let started = Instant::now();
        let sent = self
            .http
            .get(&url)
            .header(ACCEPT, ALL_MANIFEST_TYPES.join(", "))
            .send()
            .await;
        let mut t = Timed {
            status: 0,
            headers: HeaderMap::new(),
            body: Vec::new(),
            failed: None,
            elapsed: Duration::ZERO,
        };
        match sent {
            Ok(r) => {
                t.status = r.status().as_u16();
                t.headers = r.headers().clone();
                match r.bytes().await {
                    Ok(b) => t.body = b.to_vec(),
                    Err(e) => t.failed = Some(format!("reading the body: {e}")),
                }
            }
            Err(e) => t.failed = Some(e.to_string()),
        }
        t.elapsed = started.elapsed();
        t
    }

    /// Pull `tag` through the mirror (manifest, config, layers) and check every byte.
    async fn pull(&self, tag: &str, img: &Image) {
        let m = self.get(tag).await;
        assert_eq!(m.status, 200, "pull {tag}: {}", m.describe());
        assert_eq!(m.body, img.manifest.bytes, "manifest bytes of {tag}");
        let mirror = RegistryClient::new(&self.mirror.url, None);
        for b in img.blobs() {
            let r = mirror.blob(&format!("{ALIAS}/{REPO}"), &b.digest).await;
            assert_eq!(r.status, 200, "blob {} of {tag}: {}", b.digest, r.text());
            assert!(r.body == b.bytes, "blob bytes {} of {tag}", b.digest);
        }
    }

    /// `GET /readyz`: status and body.
    async fn readyz(&self) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}/readyz", self.mirror.url))
            .send()
            .await
            .expect("GET /readyz");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// The `/readyz` line naming the upstream, if it is listed as down.
    async fn down_line(&self) -> Option<String> {
        let (status, body) = self.readyz().await;
        assert_eq!(status, 200, "/readyz stays 200 whatever the upstream does");
        let needle = format!("upstream {} down since", self.upstream_name());
        body.lines()
            .find(|l| l.starts_with(&needle))
            .map(str::to_string)
    }

    /// `regmirror_upstream_up{upstream="NAME"}`.
    async fn upstream_up(&self) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.mirror.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default();
        let name = self.upstream_name();
        metric(&text, "regmirror_upstream_up", &[("upstream", &name)])
    }

    /// How many `METHOD /v2/REPO/manifests/TAG` requests reached the registry.
    fn upstream_count(&self, method: &str, tag: &str) -> usize {
        self.registry
            .count_requests(method, &format!("/v2/{REPO}/manifests/{tag}"))
    }
}

/// Poll `check` every 50 ms until it gives Some; None once `timeout` has passed.
async fn poll<T, F: Future<Output = Option<T>>>(
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> Option<(T, Duration)> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(v) = check().await {
            return Some((v, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Words the reason for `mode` contains in `/readyz` (any one of them).
fn reason_words(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Refuse => &["refused"],
        Mode::Status(503) => &["503"],
        _ => &["did not answer within", "timed out", "timeout"],
    }
}

/// The cached tag is answered from cache at once, with a Warning and its cached digest.
fn assert_served_from_cache(mode: Mode, r: &Timed, digest: &str) {
    assert_eq!(r.status, 200, "{mode:?}: cached tag: {}", r.describe());
    assert_eq!(r.digest(), Some(digest), "{mode:?}: the cached digest");
    let warning = r.header("warning").unwrap_or_default();
    assert!(
        warning.starts_with("110 "),
        "{mode:?}: a Warning 110 on the answer past its TTL, got {warning:?}"
    );
    assert!(
        r.elapsed < AT_ONCE,
        "{mode:?}: the cached tag took {} ms",
        r.ms()
    );
}

/// An uncached tag while the upstream cannot answer: 503 UNAVAILABLE (429 with its Retry-After
/// when the upstream rate-limits) within `bound`.
fn assert_fails(mode: Mode, r: &Timed, bound: Duration, what: &str) {
    assert!(
        r.failed.is_none() && r.elapsed < bound,
        "{mode:?}: {what} uncached GET should fail within {bound:?}: {}",
        r.describe()
    );
    if mode == Mode::Status(429) {
        assert_eq!(r.status, 429, "{mode:?}: {what}: {}", r.describe());
        assert_eq!(
            r.header("retry-after"),
            Some(RETRY_AFTER_SECS.to_string().as_str()),
            "{mode:?}: {what}: the upstream's Retry-After passes through"
        );
    } else {
        assert_eq!(r.status, 503, "{mode:?}: {what}: {}", r.describe());
        assert_eq!(
            r.error_code().as_deref(),
            Some("UNAVAILABLE"),
            "{mode:?}: {what}: {}",
            r.describe()
        );
    }
}

/// What one row measured, for the printed table.
struct Row {
    /// The cached tag, the first, second and third uncached GET during the fault.
    hit: Timed,
    first: Timed,
    second: Timed,
    third: Timed,
    /// The `/readyz` line naming the upstream during the fault.
    down_line: Option<String>,
}

/// One row of the fault table: cache `live`, switch the relay to `mode`, check what clients and
/// operators see, switch back and check the recovery.
async fn fault_row(mode: Mode) {
    let mut net = Net::start().await;
    let cached = net.push(LIVE, "net live 0").await;
    let fresh = net.push(FRESH, "net fresh").await;
    net.pull(LIVE, &cached).await;

    // 1. The fault, and the tag's TTL passes.
    net.relay.set(mode).await;
    tokio::time::sleep(TTL_PASSED).await;
    let row = during_fault(&net, mode, &cached).await;

    // 5. The upstream changes while unreachable; the network comes back.
    let next = net.push(LIVE, "net live 1").await;
    net.relay.set(Mode::Forward).await;
    let (recovered, pulled, updated) = after_fault(&net, mode, &fresh, &cached, &next).await;

    eprintln!(
        "netfault {mode:?}: cached tag {} ms; uncached first {} ms ({}), second {} ms, third {} ms; \
         readyz clean {} ms after the network was back; fresh tag {} ms; live current after {} ms\n  \
         /readyz while down: {}",
        row.hit.ms(),
        row.first.ms(),
        row.first.status,
        row.second.ms(),
        row.third.ms(),
        recovered.as_millis(),
        pulled.ms(),
        updated.as_millis(),
        row.down_line.as_deref().unwrap_or("(not listed)"),
    );
}

/// Steps 2 to 4 of a row, with the relay in `mode` and `cached` past its TTL.
async fn during_fault(net: &Net, mode: Mode, cached: &Image) -> Row {
    let name = net.upstream_name();
    // An upstream that answers (503, 429) is reachable: it is not marked down, and each uncached
    // GET costs its own answer (for 503, the two retries: about 1 s).
    let marks_down = !matches!(mode, Mode::Status(_));
    let later = if mode == Mode::Status(503) {
        FIRST_FAILURE
    } else {
        AT_ONCE
    };
    // 2. The cached tag: from cache at once.
    let hit = net.get(LIVE).await;
    assert_served_from_cache(mode, &hit, &cached.manifest.digest);

    // 3. An uncached tag: the first failure within the deadline, the next at once.
    let first = net.get(FRESH).await;
    assert_fails(mode, &first, FIRST_FAILURE, "first");
    let second = net.get(FRESH).await;
    assert_fails(mode, &second, later, "second");
    if marks_down {
        let text = String::from_utf8_lossy(&second.body);
        assert!(
            text.contains(&name)
                && text.contains("unreachable since")
                && text.contains("last failure at"),
            "{mode:?}: the fail-fast answer names the upstream and its last failure: {text}"
        );
    }

    // 4. Operators see the upstream down (or, rate-limited, still up).
    let down_line = net.down_line().await;
    let up = net.upstream_up().await;
    if marks_down {
        let line = down_line
            .as_deref()
            .unwrap_or_else(|| panic!("{mode:?}: /readyz names {name} as down"));
        assert!(
            reason_words(mode).iter().any(|w| line.contains(w)),
            "{mode:?}: /readyz gives the reason: {line}"
        );
        assert_eq!(up, Some(0.0), "{mode:?}: regmirror_upstream_up of {name}");
    } else {
        assert_eq!(
            down_line, None,
            "{mode:?}: an upstream that answers is not down"
        );
        assert_eq!(up, Some(1.0), "{mode:?}: regmirror_upstream_up of {name}");
    }
    // Two probe intervals pass (1 s each, ±20 %): a probe must not call the upstream back while
    // the fault lasts, so a client still fails at once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let third = net.get(FRESH).await;
    assert_fails(mode, &third, later, "third (after two probe intervals)");
    if marks_down {
        assert!(
            net.down_line().await.is_some(),
            "{mode:?}: still down after two probe intervals"
        );
    }
    Row {
        hit,
        first,
        second,
        third,
        down_line,
    }
}

/// Step 5 of a row, the network back: `/readyz` clean, `fresh` pulls, `live` turns from `cached`
/// to `next` (what the upstream has now). Returns how long each took.
async fn after_fault(
    net: &Net,
    mode: Mode,
    fresh: &Image,
    cached: &Image,
    next: &Image,
) -> (Duration, Timed, Duration) {
    let name = net.upstream_name();
    let (_, recovered) = poll(RECOVERY, move || async move {
        net.down_line().await.is_none().then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!("{mode:?}: /readyz still names {name} {RECOVERY:?} after the network came back")
    });
    assert_eq!(net.upstream_up().await, Some(1.0), "{mode:?}: back up");
    let pulled = net.get(FRESH).await;
    assert_eq!(
        pulled.status,
        200,
        "{mode:?}: the uncached tag after recovery: {}",
        pulled.describe()
    );
    assert_eq!(pulled.digest(), Some(fresh.manifest.digest.as_str()));
    let (before, current) = (&cached.manifest.digest, &next.manifest.digest);
    let (_, updated) = poll(RECOVERY, move || async move {
        let r = net.get(LIVE).await;
        assert_eq!(
            r.status,
            200,
            "{mode:?}: live after recovery: {}",
            r.describe()
        );
        let d = r.digest().unwrap_or_default();
        assert!(
            d == before || d == current,
            "{mode:?}: live is the cached or the current digest, got {d}"
        );
        (d == current).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{mode:?}: live never showed the upstream's current digest"));
    (recovered, pulled, updated)
}

/// One test per row of the fault table, so that each row passes or fails on its own.
macro_rules! fault_rows {
    ($($test:ident: $mode:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            require_tools!(&["docker-registry"]);
            fault_row($mode).await;
        }
    )*};
}

fault_rows! {
    refused_connections: Mode::Refuse;
    black_holed_connects: Mode::BlackHole;
    silent_upstream: Mode::Silent;
    body_stalls_after_the_head: Mode::StallBody;
    upstream_answers_503: Mode::Status(503);
    upstream_answers_429_with_retry_after: Mode::Status(429);
}

/// Stale-while-revalidate through the real binary: thirty clients of an expired tag get the
/// cached digest at once, one HEAD goes upstream, and the new digest the upstream has by then is
/// served only once that HEAD and its GET were made. The upstream answers through a slow link
/// (each answer [`REVALIDATION_LATENCY`] late), so the revalidation cannot finish while the thirty
/// are being answered: every one of them must come from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_clients_of_an_expired_tag_get_the_cached_digest_and_one_upstream_head() {
    require_tools!(&["docker-registry"]);
    let mut net = Net::start().await;
    let old = net.push(LIVE, "revalidate 0").await;
    net.pull(LIVE, &old).await;
    let new = net.push(LIVE, "revalidate 1").await;
    net.relay.set(Mode::Latency(REVALIDATION_LATENCY)).await;
    let (heads, gets) = (
        net.upstream_count("HEAD", LIVE),
        net.upstream_count("GET", LIVE),
    );
    assert_eq!((heads, gets), (0, 1), "one GET filled the cache");
    tokio::time::sleep(TTL_PASSED).await;

    let answers = futures::future::join_all((0..30).map(|_| net.get(LIVE))).await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}: {}", r.describe());
        assert_eq!(
            r.digest(),
            Some(old.manifest.digest.as_str()),
            "client {i}: the cached digest while the revalidation runs"
        );
        assert!(
            r.header("warning").is_some_and(|w| w.starts_with("110 ")),
            "client {i}: a Warning"
        );
    }
    let slowest = answers.iter().map(|r| r.elapsed).max().unwrap_or_default();
    assert!(slowest < AT_ONCE, "the slowest of 30 took {slowest:?}");

    // Polled until the new digest is served; the registry has logged the HEAD and the GET by then.
    let (n, before, current) = (&net, &old.manifest.digest, &new.manifest.digest);
    let (counts, after) = poll(RECOVERY, move || async move {
        let r = n.get(LIVE).await;
        assert_eq!(r.status, 200, "{}", r.describe());
        let d = r.digest().unwrap_or_default();
        assert!(
            d == before || d == current,
            "the cached or the new digest, got {d}"
        );
        (d == current).then(|| {
            (
                n.upstream_count("HEAD", LIVE),
                n.upstream_count("GET", LIVE),
            )
        })
    })
    .await
    .expect("the new digest is served once the revalidation is done");
    assert_eq!(
        counts,
        (1, 2),
        "(HEADs, GETs) of {LIVE} upstream when the new digest is first served: one HEAD for 30 clients, one GET of the new manifest"
    );
    let revalidating = net
        .mirror
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/manifests/live") && r.cache == "revalidating")
        .count();
    assert!(
        revalidating >= 30,
        "the request log marks the 30 answers cache=revalidating (found {revalidating})"
    );
    eprintln!(
        "revalidation: 30 clients answered from cache, slowest {} ms; new digest served {} ms later; upstream HEADs {}, GETs {}",
        slowest.as_millis(),
        after.as_millis(),
        counts.0,
        counts.1
    );
}

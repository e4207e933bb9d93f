//! End-to-end tests of the HTTP/1.1 wire as clients see it: keep-alive, pipelining,
//! `Connection: close`, HTTP/1.0, ranges, request bodies, trickled headers, absolute-form targets,
//! error answers that keep the connection usable, clients that hang up mid-body, a large blob.
//!
//! Every request is written by hand over a raw TCP socket and every response parsed by hand
//! (tests/support/raw_http.rs), so the tests hold for any server implementation: they pin the
//! bytes, digests, statuses, headers and framing, plus what the request log and `/metrics` say
//! about each answer. Real parts: the regmirror binary in front of Debian's `docker-registry`.

mod support;

use std::time::Duration;

use support::client::RegistryClient;
use support::env::sha256_digest;
use support::faults::{blob_path, random_bytes, sized_image, wait_for};
use support::image::{Blob, Image, ALL_MANIFEST_TYPES, OCI_LAYER_GZIP};
use support::ledger::{bytes_served, records, Ledger};
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::raw_http::{request, Conn, Framing, Response};
use support::registry::Registry;
use support::seed::push_image;

const ALIAS: &str = "up";
const REPO: &str = "http1/app";
const TAG: &str = "v1";
const MIB: usize = 1024 * 1024;

/// A plain upstream seeded with one image (and optionally one large blob) and a regmirror that
/// reaches it under the prefix `up/`, with no default upstream (unknown names are NAME_UNKNOWN).
struct Setup {
    mirror: Regmirror,
    img: Image,
    big: Option<Blob>,
    upstream: Registry,
}

impl Setup {
    async fn start(big_size: Option<usize>) -> Setup {
        let upstream = Registry::plain().await;
        let client = RegistryClient::new(&upstream.url(), None);
        let img = sized_image("http1-wire", 256 * 1024);
        push_image(&client, REPO, &img, TAG).await;
        let big = big_size.map(|n| Blob::new(OCI_LAYER_GZIP, random_bytes(n, 0x4854_5450)));
        if let Some(b) = &big {
            client.push_blob(REPO, b).await;
        }
        let mut config =
            MirrorConfig::new(vec![
                UpstreamEntry::new(&upstream.host(), &upstream.url()).alias(ALIAS)
            ]);
        config.no_builtin_upstreams = true;
        config.default_upstream = String::new();
        let mirror = Regmirror::start(config).await;
        Setup {
            mirror,
            img,
            big,
            upstream,
        }
    }

    /// A setup whose image layer is cached, a ledger started after that, and a connection.
    async fn warm_layer() -> (Setup, Blob, Ledger, Conn) {
        let s = Setup::start(None).await;
        let layer = s.layer();
        s.warm(&[&layer]).await;
        let led = Ledger::start(&s.mirror);
        let c = Conn::connect(&s.addr());
        (s, layer, led, c)
    }

    fn addr(&self) -> String {
        self.mirror.addr()
    }

    fn layer(&self) -> Blob {
        self.img.layers[0].clone()
    }

    fn big(&self) -> Blob {
        self.big.clone().expect("started with a large blob")
    }

    fn blob_path(&self, digest: &str) -> String {
        format!("/v2/{ALIAS}/{REPO}/blobs/{digest}")
    }

    fn manifest_path(&self) -> String {
        format!("/v2/{ALIAS}/{REPO}/manifests/{TAG}")
    }

    fn get(&self, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        request("GET", target, "HTTP/1.1", &self.addr(), headers)
    }

    /// Wait until a fill of `blob` is committed, so the next request for it is a hit.
    async fn wait_committed(&self, blob: &Blob) {
        let p = blob_path(&self.mirror.data_dir, &blob.digest);
        wait_for(
            &format!("{} to be committed", p.display()),
            Duration::from_secs(30),
            || p.exists().then_some(()),
        )
        .await;
    }

    /// Fetch each blob once (a miss) on its own connection and wait for its commit.
    async fn warm(&self, blobs: &[&Blob]) {
        let mut led = Ledger::default();
        for b in blobs {
            let mut c = Conn::connect(&self.addr());
            get_blob(&mut c, self, b, "miss", &mut led);
            self.wait_committed(b).await;
        }
    }
}

/// What a client checks on a whole blob: 200, Content-Length framing, digest header, bytes.
fn assert_blob(r: &Response, blob: &Blob, what: &str) {
    let head = (r.status, r.framing, r.header("docker-content-digest"));
    let want = (
        200,
        Framing::Length(blob.size() as u64),
        Some(blob.digest.as_str()),
    );
    assert_eq!(head, want, "{what}:\n{}", r.head_text());
    assert_eq!(sha256_digest(&r.body), blob.digest, "{what}: body digest");
}

/// GET a whole blob on `c`; `cache` is the status the log must show.
fn get_blob(c: &mut Conn, s: &Setup, blob: &Blob, cache: &str, led: &mut Ledger) {
    let path = s.blob_path(&blob.digest);
    let r = c.exchange("GET", &s.get(&path, &[]));
    assert_blob(&r, blob, &format!("GET {path} ({cache})"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    match cache {
        "hit" => led.hit(&path, 200, blob.size()),
        _ => led.log("GET", &path, 200, cache, Some(blob.size() as u64)),
    }
}

/// HEAD a cached blob: the GET headers, no body bytes on the wire.
fn head_blob(c: &mut Conn, s: &Setup, blob: &Blob, led: &mut Ledger) {
    let path = s.blob_path(&blob.digest);
    let r = c.exchange("HEAD", &request("HEAD", &path, "HTTP/1.1", &s.addr(), &[]));
    let size = blob.size().to_string();
    let head = (
        r.status,
        r.header("content-length"),
        r.header("docker-content-digest"),
    );
    let want = (200, Some(size.as_str()), Some(blob.digest.as_str()));
    assert_eq!(head, want, "HEAD {path}:\n{}", r.head_text());
    assert_eq!(c.pending(), 0, "bytes after a HEAD answer");
    led.log("HEAD", &path, 200, "hit", Some(0)); // HEAD sends no body: the log says 0 bytes
}

fn assert_manifest(r: &Response, img: &Image, what: &str) {
    let m = &img.manifest;
    let head = (
        r.status,
        r.framing,
        r.header("content-type"),
        r.header("docker-content-digest"),
    );
    let want = (
        200,
        Framing::Length(m.size() as u64),
        Some(m.media_type.as_str()),
        Some(m.digest.as_str()),
    );
    assert_eq!(head, want, "{what}:\n{}", r.head_text());
    assert_eq!(sha256_digest(&r.body), m.digest, "{what}: body digest");
}

fn manifest_request(s: &Setup, target: &str) -> Vec<u8> {
    s.get(target, &[("Accept", &ALL_MANIFEST_TYPES.join(", "))])
}

/// GET the manifest by tag on `c`.
fn get_manifest(c: &mut Conn, s: &Setup, cache: &str, led: &mut Ledger) {
    let path = s.manifest_path();
    let r = c.exchange("GET", &manifest_request(s, &path));
    assert_manifest(&r, &s.img, &format!("GET {path}"));
    led.log("GET", &path, 200, cache, Some(s.img.manifest.size() as u64));
}

/// `GET /v2/`: 200, the API version header, a JSON body.
fn get_base(c: &mut Conn, s: &Setup, led: &mut Ledger) {
    let r = c.exchange("GET", &s.get("/v2/", &[]));
    let head = (
        r.status,
        r.header("docker-distribution-api-version"),
        &r.body[..],
    );
    assert_eq!(
        head,
        (200, Some("registry/2.0"), &b"{}"[..]),
        "GET /v2/:\n{}",
        r.head_text()
    );
    led.log("GET", "/v2/", 200, "-", None);
}

/// An OCI error answer: status, JSON envelope, code.
fn assert_error(r: &Response, status: u16, code: &str, what: &str) {
    let head = (r.status, r.header("content-type"), r.error_code());
    let want = (status, Some("application/json"), Some(code.to_string()));
    assert_eq!(
        head,
        want,
        "{what}:\n{}\n{}",
        r.head_text(),
        String::from_utf8_lossy(&r.body)
    );
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_base_manifest_blob_miss_hit_and_head_on_one_connection() {
    require_tools!(&["docker-registry"]);
    let s = Setup::start(None).await;
    let layer = s.layer();
    let mut led = Ledger::start(&s.mirror);
    let mut c = Conn::connect(&s.addr());
    get_base(&mut c, &s, &mut led);
    get_manifest(&mut c, &s, "miss", &mut led);
    get_blob(&mut c, &s, &layer, "miss", &mut led);
    s.wait_committed(&layer).await;
    get_blob(&mut c, &s, &layer, "hit", &mut led);
    head_blob(&mut c, &s, &layer, &mut led);
    get_blob(&mut c, &s, &layer, "hit", &mut led);
    // The other way round on a fresh connection: a hit first, then the small answers.
    let mut c2 = Conn::connect(&s.addr());
    get_blob(&mut c2, &s, &layer, "hit", &mut led);
    get_base(&mut c2, &s, &mut led);
    get_manifest(&mut c2, &s, "hit", &mut led);
    get_blob(&mut c2, &s, &s.img.config, "miss", &mut led);
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    require_tools!(&["docker-registry"]);
    let s = Setup::start(None).await;
    let (layer, config) = (s.layer(), s.img.config.clone());
    s.warm(&[&layer, &config]).await;
    let mut led = Ledger::start(&s.mirror);
    let mut c = Conn::connect(&s.addr());
    let order = [&layer, &config, &layer];
    let mut all = Vec::new();
    for b in order {
        all.extend(s.get(&s.blob_path(&b.digest), &[]));
    }
    all.extend(manifest_request(&s, &s.manifest_path()));
    c.send(&all);
    for (i, b) in order.iter().enumerate() {
        let r = c.read_response("GET");
        assert_blob(&r, b, &format!("pipelined answer {i}"));
        led.hit(&s.blob_path(&b.digest), 200, b.size());
    }
    let r = c.read_response("GET");
    assert_manifest(&r, &s.img, "pipelined manifest answer");
    led.log(
        "GET",
        &s.manifest_path(),
        200,
        "miss",
        Some(s.img.manifest.size() as u64),
    );
    assert_eq!(c.pending(), 0, "bytes after the last pipelined answer");
    // Still in step: one more request on the same connection.
    get_blob(&mut c, &s, &config, "hit", &mut led);
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_on_a_blob_hit_sends_the_whole_body_then_closes() {
    require_tools!(&["docker-registry"]);
    let (s, layer, mut led, mut c) = Setup::warm_layer().await;
    let path = s.blob_path(&layer.digest);
    let r = c.exchange("GET", &s.get(&path, &[("Connection", "close")]));
    assert_blob(&r, &layer, "GET with Connection: close");
    c.assert_closed_by_server();
    led.hit(&path, 200, layer.size());
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_a_hit_return_exactly_the_bytes_asked_for_and_416_beyond_the_end() {
    require_tools!(&["docker-registry"]);
    let s = Setup::start(None).await;
    let layer = s.layer();
    s.warm(&[&layer]).await;
    let (path, size) = (s.blob_path(&layer.digest), layer.size());
    let mut led = Ledger::start(&s.mirror);
    let mut c = Conn::connect(&s.addr());
    let over = format!("bytes={}-{}", size - 10, size + 100);
    let cases: [(&str, std::ops::Range<usize>); 3] = [
        ("bytes=10-99", 10..100),
        ("bytes=-5", size - 5..size),
        (&over, size - 10..size), // the end is clamped to the blob
    ];
    for (range, want) in cases {
        let r = c.exchange("GET", &s.get(&path, &[("Range", range)]));
        assert_eq!(r.status, 206, "Range {range}: {}", r.head_text());
        let content_range = format!("bytes {}-{}/{size}", want.start, want.end - 1);
        let head = (r.header("content-range"), r.framing);
        let expected = (
            Some(content_range.as_str()),
            Framing::Length(want.len() as u64),
        );
        assert_eq!(head, expected, "Range {range}:\n{}", r.head_text());
        assert!(
            r.body == layer.bytes[want.clone()],
            "Range {range}: wrong bytes"
        );
        led.hit(&path, 206, want.len());
    }
    let from_end = format!("bytes={size}-");
    let r = c.exchange("GET", &s.get(&path, &[("Range", &from_end)]));
    assert_error(&r, 416, "BLOB_UNKNOWN", &format!("Range {from_end}"));
    let unsatisfied = format!("bytes */{size}");
    assert_eq!(
        r.header("content-range"),
        Some(unsatisfied.as_str()),
        "a 416 names the blob's size (RFC 9110)"
    );
    led.log("GET", &path, 416, "-", None);
    // The connection is still usable after the 416.
    get_blob(&mut c, &s, &layer, "hit", &mut led);
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_blob_hit_gets_the_whole_body_unchunked_and_the_connection_closes() {
    require_tools!(&["docker-registry"]);
    let (s, layer, mut led, mut c) = Setup::warm_layer().await;
    let path = s.blob_path(&layer.digest);
    let r = c.exchange("GET", &request("GET", &path, "HTTP/1.0", &s.addr(), &[]));
    assert_eq!(r.status, 200, "{}", r.head_text());
    assert_ne!(
        r.framing,
        Framing::Chunked,
        "an HTTP/1.0 client cannot read chunked coding"
    );
    assert_eq!(sha256_digest(&r.body), layer.digest, "HTTP/1.0 body digest");
    c.assert_closed_by_server();
    led.hit(&path, 200, layer.size());
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_gets_405_unsupported_and_the_connection_stays_usable() {
    require_tools!(&["docker-registry"]);
    let (s, layer, mut led, mut c) = Setup::warm_layer().await;
    let uploads = format!("/v2/{ALIAS}/{REPO}/blobs/uploads/");
    let cases = [
        ("PUT", ("Content-Length", "5"), &b"hello"[..]),
        (
            "POST",
            ("Transfer-Encoding", "chunked"),
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (method, framing, body) in cases {
        let head = request(method, &uploads, "HTTP/1.1", &s.addr(), &[framing]);
        let r = c.exchange(method, &[head, body.to_vec()].concat());
        assert_error(
            &r,
            405,
            "UNSUPPORTED",
            &format!("{method} {uploads} with a body"),
        );
        led.log(method, &uploads, 405, "-", None);
        // The body was consumed, not taken for the next request: this GET is answered normally.
        get_blob(&mut c, &s, &layer, "hit", &mut led);
    }
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trickled_in_small_writes_are_answered() {
    require_tools!(&["docker-registry"]);
    let (s, layer, mut led, mut c) = Setup::warm_layer().await;
    let path = s.blob_path(&layer.digest);
    let head = s.get(
        &path,
        &[("User-Agent", "raw-http1-test/1.0"), ("Accept", "*/*")],
    );
    for round in 0..2 {
        // 1, 2 or 3 bytes per write, 10 ms apart: well inside the 30 s header timeout.
        let (mut rest, mut i) = (&head[..], 0);
        while !rest.is_empty() {
            let n = (1 + i % 3).min(rest.len());
            c.send(&rest[..n]);
            rest = &rest[n..];
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = c.read_response("GET");
        assert_blob(&r, &layer, &format!("trickled request {round}"));
        led.hit(&path, 200, layer.size());
    }
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_invalid_and_name_unknown_answers_keep_the_connection_usable() {
    require_tools!(&["docker-registry"]);
    let (s, layer, mut led, mut c) = Setup::warm_layer().await;
    let short = &layer.digest[..layer.digest.len() - 1];
    let d = &layer.digest;
    let cases = [
        (s.blob_path("sha256:not-a-digest"), 400, "DIGEST_INVALID"),
        (s.blob_path(short), 400, "DIGEST_INVALID"),
        (
            format!("/v2/nosuch.example.com/x/blobs/{d}"),
            404,
            "NAME_UNKNOWN",
        ),
        (format!("/v2/nosuch/x/blobs/{d}"), 404, "NAME_UNKNOWN"),
    ];
    for (path, status, code) in cases {
        let r = c.exchange("GET", &s.get(&path, &[]));
        assert_error(&r, status, code, &format!("GET {path}"));
        led.log("GET", &path, status, "-", None);
        get_blob(&mut c, &s, &layer, "hit", &mut led);
    }
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_are_served_like_origin_form() {
    require_tools!(&["docker-registry"]);
    let (s, layer, mut led, mut c) = Setup::warm_layer().await;
    let path = s.blob_path(&layer.digest);
    let r = c.exchange("GET", &s.get(&format!("http://{}{path}", s.addr()), &[]));
    assert_blob(&r, &layer, "absolute-form blob GET");
    led.hit(&path, 200, layer.size());
    let m = s.manifest_path();
    let r = c.exchange(
        "GET",
        &manifest_request(&s, &format!("http://{}{m}", s.addr())),
    );
    assert_manifest(&r, &s.img, "absolute-form manifest GET");
    led.log("GET", &m, 200, "miss", Some(s.img.manifest.size() as u64));
    get_blob(&mut c, &s, &layer, "hit", &mut led);
    led.check(&s.mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_and_bytes_served_account_for_every_answer_and_framing() {
    require_tools!(&["docker-registry"]);
    let s = Setup::start(None).await;
    let (layer, config) = (s.layer(), s.img.config.clone());
    let mut led = Ledger::start(&s.mirror);
    let upstream_before = bytes_served(&s.mirror, "upstream");
    let mut c = Conn::connect(&s.addr());
    for b in [&config, &layer] {
        get_blob(&mut c, &s, b, "miss", &mut led);
        s.wait_committed(b).await;
    }
    // Hits in every framing a client may ask for: keep-alive, pipelined, HTTP/1.0, close.
    let (lp, cp) = (s.blob_path(&layer.digest), s.blob_path(&config.digest));
    c.send(&[s.get(&lp, &[]), s.get(&cp, &[])].concat());
    for b in [&layer, &config] {
        assert_blob(&c.read_response("GET"), b, "pipelined");
        led.hit(&s.blob_path(&b.digest), 200, b.size());
    }
    let v10 = request("GET", &lp, "HTTP/1.0", &s.addr(), &[]);
    let close = s.get(&lp, &[("Connection", "close")]);
    for head in [v10, close] {
        let mut once = Conn::connect(&s.addr());
        let r = once.exchange("GET", &head);
        assert_eq!(sha256_digest(&r.body), layer.digest, "{}", r.head_text());
        once.assert_closed_by_server();
        led.hit(&lp, 200, layer.size());
    }
    let r = c.exchange("GET", &s.get(&lp, &[("Range", "bytes=100-1123")]));
    assert!(r.status == 206 && r.body == layer.bytes[100..1124], "range");
    led.hit(&lp, 206, 1024);
    head_blob(&mut c, &s, &layer, &mut led);
    get_manifest(&mut c, &s, "miss", &mut led);
    led.check(&s.mirror).await;
    assert_eq!(
        bytes_served(&s.mirror, "upstream") - upstream_before,
        (layer.size() + config.size()) as u64,
        "regmirror_bytes_served_total{{source=\"upstream\"}} growth: the two misses"
    );
    // Every blob record names the upstream, the repository there and the routing style.
    let upstream = s.upstream.host();
    for r in records(&s.mirror)
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
    {
        assert_eq!(
            (r.upstream.as_str(), r.repository.as_str(), r.route.as_str()),
            (upstream.as_str(), REPO, "prefix"),
            "{}",
            r.raw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_body_do_not_disturb_other_clients() {
    require_tools!(&["docker-registry"]);
    let s = Setup::start(Some(32 * MIB)).await;
    let big = s.big();
    s.warm(&[&big]).await;
    let (path, size) = (s.blob_path(&big.digest), big.size() as u64);
    let mut led = Ledger::start(&s.mirror);
    // Starts a GET of the big blob and reads the head and `n` body bytes.
    let partial = |n: usize, led: &mut Ledger| {
        let mut c = Conn::connect(&s.addr());
        c.send(&s.get(&path, &[]));
        let (_, status, _) = c.read_head();
        assert_eq!(status, 200, "GET {path}");
        assert!(c.read_exact_body(n) == big.bytes[..n], "first {n} bytes");
        led.log("GET", &path, 200, "hit", None);
        c
    };
    // A stops reading after 64 KiB and holds its socket while B fetches the whole blob.
    let stalled = partial(64 * 1024, &mut led);
    let mut b = Conn::connect(&s.addr());
    get_blob(&mut b, &s, &big, "hit", &mut led);
    // Then A hangs up mid-body (unread data: a reset), C after 1 MiB, D right after the head.
    drop(stalled);
    let c = partial(MIB, &mut led);
    let _ = c.stream_ref().shutdown(std::net::Shutdown::Both);
    drop(c);
    drop(partial(0, &mut led));
    // A new client still gets every byte, and keep-alive still works.
    let mut e = Conn::connect(&s.addr());
    get_blob(&mut e, &s, &big, "hit", &mut led);
    get_base(&mut e, &s, &mut led);
    get_blob(&mut b, &s, &big, "hit", &mut led);
    assert!(s.mirror.is_running_ref(), "regmirror exited");
    led.check_log(&s.mirror).await;
    // Hung-up answers count what was read from disk before the hang-up: bounded, not exact.
    let grew = bytes_served(&s.mirror, "cache") - led.cache_before();
    assert!(
        grew >= led.hit_bytes && grew <= led.hit_bytes + 3 * size,
        "bytes_served{{source=\"cache\"}} grew by {grew}; whole answers were {}",
        led.hit_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mib_blob_is_exact_as_a_miss_and_twice_as_a_hit_on_one_connection() {
    require_tools!(&["docker-registry"]);
    let s = Setup::start(Some(32 * MIB)).await;
    let big = s.big();
    let mut led = Ledger::start(&s.mirror);
    let mut c = Conn::connect(&s.addr());
    get_blob(&mut c, &s, &big, "miss", &mut led);
    s.wait_committed(&big).await;
    get_blob(&mut c, &s, &big, "hit", &mut led);
    get_blob(&mut c, &s, &big, "hit", &mut led);
    get_base(&mut c, &s, &mut led);
    led.check(&s.mirror).await;
}

/// HTTP/2 (cleartext, prior knowledge) is hyper's: the file-region bodies that HTTP/1.1 sends
/// with sendfile are streamed there instead. A miss (tailing the fill) and a hit both arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_whole_blobs_on_a_miss_and_a_hit() {
    require_tools!(&["docker-registry", "curl"]);
    let s = Setup::start(Some(8 * MIB)).await;
    let big = s.big();
    let before = bytes_served(&s.mirror, "cache");
    let url = format!("http://{}{}", s.addr(), s.blob_path(&big.digest));
    let dir = tempfile::tempdir().expect("tempdir");
    for (round, cache) in ["miss", "hit"].iter().enumerate() {
        let out = dir.path().join(format!("blob-{round}"));
        let run = std::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-o"])
            .arg(&out)
            .args(["-w", "%{http_version} %{http_code}", &url])
            .output()
            .expect("run curl");
        let said = String::from_utf8_lossy(&run.stdout).into_owned();
        assert_eq!(
            said, "2 200",
            "{cache}: curl said {said:?}, {:?}",
            run.stderr
        );
        let got = std::fs::read(&out).expect("read curl's output");
        assert_eq!(got.len(), big.bytes.len(), "{cache}: length");
        assert_eq!(sha256_digest(&got), big.digest, "{cache}: digest");
        if round == 0 {
            s.wait_committed(&big).await;
        }
    }
    let grew = bytes_served(&s.mirror, "cache") - before;
    assert_eq!(
        grew,
        big.bytes.len() as u64,
        "the hit's bytes are counted once"
    );
}

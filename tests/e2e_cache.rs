//! End-to-end tests for cache semantics (issue 3): one upstream fetch per blob under concurrent
//! cold pulls, serving cached tags while the upstream is down, range requests, HEAD/GET agreement.
//!
//! Real parts: distribution 2.8 (Debian's `docker-registry`) on loopback as the upstream, the
//! regmirror binary, skopeo and curl. Upstream requests are counted in distribution's own access log.

mod support;

use std::time::Duration;

use reqwest::Method;
use support::client::RegistryClient;
use support::faults::wait_for;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, assert_multi_copy, assert_single_copy, blob_digests_of, CopyOptions};

/// Path prefix (an alias) under which the mirror serves the upstream.
const ALIAS: &str = "up";

/// A plain distribution upstream seeded with the standard set, and a regmirror in front of it
/// (only that upstream; `tag_ttl_secs` as given).
struct Setup {
    registry: Registry,
    seeded: Seeded,
    mirror: Regmirror,
}

async fn setup(tag_ttl_secs: u64) -> Setup {
    let registry = Registry::plain().await;
    let seeded = seed(&registry, "library/busybox", "library/hello", "cache-e2e").await;
    let mut config = MirrorConfig::new(vec![
        UpstreamEntry::new(&registry.host(), &registry.url()).alias(ALIAS)
    ]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    config.extra = Extra::default().upstream("tag_ttl_secs", tag_ttl_secs as i64);
    let mirror = Regmirror::start(config).await;
    Setup {
        registry,
        seeded,
        mirror,
    }
}

fn all() -> CopyOptions {
    CopyOptions {
        all: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_cold_pulls_fetch_each_blob_once_from_the_upstream() {
    require_tools!(&["docker-registry", "skopeo"]);
    let s = setup(300).await;
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ALIAS}/library/busybox:v1", s.mirror.addr());
    const N: usize = 8;
    let opts = all();
    let copies =
        futures::future::join_all((0..N).map(|_| skopeo::copy(&reference, work.path(), &opts)))
            .await;
    for (i, c) in copies.into_iter().enumerate() {
        let c = c.unwrap_or_else(|e| panic!("copy {i}: {e}"));
        assert_multi_copy(
            &c,
            &s.seeded.index,
            &format!("parallel copy {i} of {reference}"),
        );
    }
    let blobs = blob_digests_of(&s.seeded.index);
    assert_eq!(
        blobs.len(),
        5,
        "index: shared busybox layer + per-platform layer and config"
    );
    for d in &blobs {
        assert_eq!(
            s.registry.count_blob_gets_any(d),
            1,
            "upstream GETs of blob {d} for {N} parallel cold pulls (distribution's access log)"
        );
    }
    // Every client request for a blob was answered by a miss, a join or a hit, never an error.
    let blob_records: Vec<_> = s
        .mirror
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/"))
        .collect();
    assert!(
        blob_records.len() >= N * blobs.len(),
        "request log has a line per blob request: {}",
        blob_records.len()
    );
    for r in &blob_records {
        assert_eq!(r.status, 200, "{}", r.raw);
        assert!(
            ["miss", "joined", "hit"].contains(&r.cache.as_str()),
            "{}",
            r.raw
        );
    }
    let misses = blob_records.iter().filter(|r| r.cache == "miss").count();
    assert_eq!(
        misses,
        blobs.len(),
        "one miss (the fill) per blob; every other request joined or hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stopped_cached_tag_still_pulls_and_uncached_tag_fails_with_oci_error() {
    require_tools!(&["docker-registry", "skopeo"]);
    let s = setup(1).await;
    let work = tempfile::tempdir().unwrap();
    let cached = format!("{}/{ALIAS}/library/hello:oci", s.mirror.addr());
    let copy = skopeo::copy(&cached, work.path(), &CopyOptions::default())
        .await
        .unwrap();
    assert_single_copy(&copy, &s.seeded.oci, "first pull (upstream up)");

    // Stop the upstream (the process this test started, by PID) and wait until its port is dead.
    let pid = s.registry.pid();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    let upstream_addr = s.registry.host();
    wait_for(
        "the upstream's port to refuse connections",
        Duration::from_secs(15),
        || {
            std::net::TcpStream::connect(&upstream_addr)
                .is_err()
                .then_some(())
        },
    )
    .await;

    // Once the 1 s tag TTL has passed, the tag is revalidated, the upstream is unreachable, and
    // the cached manifest is served with a Warning.
    let c = RegistryClient::new(&s.mirror.url, None);
    let path = format!("{ALIAS}/library/hello");
    let mut stale = None;
    for _ in 0..200 {
        let r = c.manifest(Method::GET, &path, "oci").await;
        assert_eq!(
            r.status,
            200,
            "cached tag with the upstream down: {}",
            r.text()
        );
        assert_eq!(r.body, s.seeded.oci.manifest.bytes, "cached manifest bytes");
        if r.header("warning").is_some() {
            stale = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stale = stale.expect("a Warning header once the tag TTL passed with the upstream down");
    let warning = stale.header("warning").unwrap();
    assert!(warning.starts_with("110 "), "Warning: {warning}");
    assert_eq!(
        stale.header("docker-content-digest"),
        Some(s.seeded.oci.manifest.digest.as_str())
    );
    let head = c.manifest(Method::HEAD, &path, "oci").await;
    assert_eq!(
        head.status, 200,
        "HEAD of the cached tag with the upstream down"
    );

    // skopeo still pulls the cached tag, byte for byte.
    let copy = skopeo::copy(&cached, work.path(), &CopyOptions::default())
        .await
        .expect("pull of a cached tag with the upstream down");
    assert_single_copy(&copy, &s.seeded.oci, "pull with the upstream down");
    // Past its TTL the tag is answered from cache at once: "revalidating" while the upstream is
    // still being asked, "stale" once it is known to be down.
    assert!(
        s.mirror
            .requests()
            .iter()
            .any(|r| matches!(r.cache.as_str(), "stale" | "revalidating")
                && r.path.ends_with("/manifests/oci")),
        "the request log marks the answer served from cache past its TTL"
    );

    // An uncached tag: a clear OCI error, and skopeo fails.
    let r = c.manifest(Method::GET, &path, "docker").await;
    assert_eq!(
        r.status,
        503,
        "uncached tag with the upstream down: {}",
        r.text()
    );
    assert_eq!(
        r.error_code().as_deref(),
        Some("UNAVAILABLE"),
        "{}",
        r.text()
    );
    let uncached_blob = c.blob(&path, &s.seeded.docker.config.digest).await;
    assert_eq!(
        uncached_blob.status,
        503,
        "uncached blob with the upstream down: {}",
        uncached_blob.text()
    );
    assert_eq!(uncached_blob.error_code().as_deref(), Some("UNAVAILABLE"));
    let err = skopeo::copy(
        &format!("{}/{ALIAS}/library/hello:docker", s.mirror.addr()),
        work.path(),
        &CopyOptions::default(),
    )
    .await
    .expect_err("pull of an uncached tag with the upstream down must fail");
    assert!(
        err.contains("503") || err.to_lowercase().contains("unavailable"),
        "skopeo's error names the cause: {err}"
    );
    // Known down now: the cached tag is served stale without asking, and /readyz says why.
    let r = c.manifest(Method::GET, &path, "oci").await;
    assert_eq!(r.status, 200);
    let last = s.mirror.requests();
    let last = last
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/manifests/oci"))
        .expect("the request is logged");
    assert_eq!(
        last.cache, "stale",
        "a known-down upstream: stale, not revalidating"
    );
    let ready = c.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "a mirror with its cache stays ready");
    assert!(
        ready.text().contains("down since"),
        "/readyz names the down upstream: {}",
        ready.text()
    );
}

/// `curl -r RANGE URL`: (status, Content-Range, body).
async fn curl_range(url: &str, range: &str) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("h"), dir.path().join("b"));
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "-r", range, "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .arg(url)
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl -r {range} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&headers).unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_range = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-range"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_range, std::fs::read(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_on_a_hit_and_on_a_miss_return_206_with_the_right_bytes() {
    require_tools!(&["docker-registry", "curl"]);
    let s = setup(300).await;
    let base = format!("{}/v2/{ALIAS}/library/busybox/blobs", s.mirror.url);
    let amd = s.seeded.index.child("amd64");
    let arm = s.seeded.index.child("arm64");
    let big = &amd.layers[0]; // the busybox layer, about 1 MiB
    let small = &arm.layers[1];
    assert!(big.size() > 100_000, "busybox layer size {}", big.size());
    let n = big.size();

    // Miss: nothing cached yet.
    let (status, cr, body) = curl_range(&format!("{base}/{}", big.digest), "100-1099").await;
    assert_eq!(status, 206, "range on a miss");
    assert_eq!(cr, format!("bytes 100-1099/{n}"), "Content-Range on a miss");
    assert!(body == big.bytes[100..1100], "bytes of the range on a miss");
    // A suffix range on another miss.
    let m = small.size();
    let (status, cr, body) = curl_range(&format!("{base}/{}", small.digest), "-10").await;
    assert_eq!(status, 206, "suffix range on a miss");
    assert_eq!(cr, format!("bytes {}-{}/{m}", m - 10, m - 1));
    assert!(body == small.bytes[m - 10..], "bytes of the suffix range");

    // Make sure the big blob is cached (the miss may or may not have filled it), then hit.
    let c = RegistryClient::new(&s.mirror.url, None);
    let full = c
        .blob(&format!("{ALIAS}/library/busybox"), &big.digest)
        .await;
    assert_eq!(full.status, 200);
    assert!(full.body == big.bytes);
    let blob_file = support::faults::blob_path(&s.mirror.data_dir, &big.digest);
    wait_for("the blob to be committed", Duration::from_secs(20), || {
        blob_file.exists().then_some(())
    })
    .await;
    for (range, start, end) in [
        ("0-0", 0, 0),
        ("5000-", 5000, n - 1),
        ("1000-2000000000", 1000, n - 1),
        (&format!("-{}", n / 2) as &str, n - n / 2, n - 1),
    ] {
        let (status, cr, body) = curl_range(&format!("{base}/{}", big.digest), range).await;
        assert_eq!(status, 206, "range {range} on a hit");
        assert_eq!(
            cr,
            format!("bytes {start}-{end}/{n}"),
            "Content-Range of {range} on a hit"
        );
        assert!(
            body == big.bytes[start..=end],
            "bytes of range {range} on a hit"
        );
    }
    let hits = s
        .mirror
        .requests()
        .iter()
        .filter(|r| r.status == 206 && r.cache == "hit")
        .count();
    assert!(
        hits >= 4,
        "the request log shows ranges served from the cache"
    );
    // An unsatisfiable range.
    let (status, _, _) = curl_range(&format!("{base}/{}", big.digest), &format!("{n}-")).await;
    assert_eq!(status, 416, "range starting at the size");
    // Only one upstream GET of the big blob with a full body (the fill); a range on a miss may add a ranged one.
    assert!(
        s.registry.count_blob_gets_any(&big.digest) <= 2,
        "upstream GETs of {}",
        big.digest
    );
}

/// (status, size, digest, content type) of a response; size from Content-Length for HEAD, from
/// the body for GET.
fn facts(
    r: &support::client::Reply,
    head: bool,
) -> (u16, Option<u64>, Option<String>, Option<String>) {
    let size = if head {
        r.header("content-length").and_then(|v| v.parse().ok())
    } else if r.status == 200 {
        Some(r.body.len() as u64)
    } else {
        r.header("content-length").and_then(|v| v.parse().ok())
    };
    (
        r.status.as_u16(),
        if r.status == 200 { size } else { None },
        r.header("docker-content-digest").map(str::to_string),
        if r.status == 200 {
            r.header("content-type").map(str::to_string)
        } else {
            None
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_get_agree_for_cached_and_uncached_blobs_and_manifests() {
    require_tools!(&["docker-registry"]);
    let s = setup(300).await;
    let c = RegistryClient::new(&s.mirror.url, None);
    let multi = format!("{ALIAS}/library/busybox");
    let single = format!("{ALIAS}/library/hello");
    let img = &s.seeded.docker;
    let missing_blob = format!("sha256:{}", "ab".repeat(32));

    // Blobs: HEAD first (uncached), then GET (fills), then HEAD again (cached).
    for b in img.blobs() {
        let path = format!("/v2/{single}/blobs/{}", b.digest);
        let head_cold = c.send(Method::HEAD, &path, &[], None, "").await;
        let get = c.send(Method::GET, &path, &[], None, "").await;
        assert!(get.body == b.bytes, "GET {path} bytes");
        let blob_file = support::faults::blob_path(&s.mirror.data_dir, &b.digest);
        wait_for("the blob to be committed", Duration::from_secs(20), || {
            blob_file.exists().then_some(())
        })
        .await;
        let head_warm = c.send(Method::HEAD, &path, &[], None, "").await;
        let want = (200, Some(b.size() as u64), Some(b.digest.clone()));
        for (what, r, head) in [
            ("HEAD uncached", &head_cold, true),
            ("GET", &get, false),
            ("HEAD cached", &head_warm, true),
        ] {
            let f = facts(r, head);
            assert_eq!((f.0, f.1, f.2.clone()), want, "{what} {path}");
        }
        assert_eq!(
            facts(&head_cold, true).3,
            facts(&get, false).3,
            "content type of uncached HEAD vs GET {path}"
        );
        assert_eq!(
            facts(&head_warm, true).3,
            facts(&get, false).3,
            "content type of cached HEAD vs GET {path}"
        );
    }
    // A blob the upstream does not have.
    let path = format!("/v2/{single}/blobs/{missing_blob}");
    let head = c.send(Method::HEAD, &path, &[], None, "").await;
    let get = c.send(Method::GET, &path, &[], None, "").await;
    assert_eq!(
        (head.status.as_u16(), get.status.as_u16()),
        (404, 404),
        "missing blob"
    );
    assert_eq!(get.error_code().as_deref(), Some("BLOB_UNKNOWN"));

    // Manifests by tag and by digest: HEAD uncached, GET, HEAD cached.
    let cases: Vec<(&str, String, &support::image::Blob)> = vec![
        (&single, "docker".to_string(), &img.manifest),
        (&multi, "list".to_string(), &s.seeded.list.manifest),
        (
            &multi,
            s.seeded.index.children[0].manifest.digest.clone(),
            &s.seeded.index.children[0].manifest,
        ),
        (
            &single,
            s.seeded.oci.manifest.digest.clone(),
            &s.seeded.oci.manifest,
        ),
    ];
    for (repo, reference, m) in cases {
        let head_cold = c.manifest(Method::HEAD, repo, &reference).await;
        let get = c.manifest(Method::GET, repo, &reference).await;
        let head_warm = c.manifest(Method::HEAD, repo, &reference).await;
        assert_eq!(get.body, m.bytes, "GET {repo}:{reference} bytes");
        let want = (
            200,
            Some(m.size() as u64),
            Some(m.digest.clone()),
            Some(m.media_type.clone()),
        );
        assert_eq!(
            facts(&head_cold, true),
            want,
            "HEAD uncached {repo}:{reference}"
        );
        assert_eq!(facts(&get, false), want, "GET {repo}:{reference}");
        assert_eq!(
            facts(&head_warm, true),
            want,
            "HEAD cached {repo}:{reference}"
        );
    }
    // A tag the upstream does not have.
    let head = c.manifest(Method::HEAD, &single, "nope").await;
    let get = c.manifest(Method::GET, &single, "nope").await;
    assert_eq!(
        (head.status.as_u16(), get.status.as_u16()),
        (404, 404),
        "missing tag"
    );
    assert_eq!(get.error_code().as_deref(), Some("MANIFEST_UNKNOWN"));
}

//! Cache tests: an in-process upstream that counts requests and injects faults, real local-disk
//! storage, and the real upstream client over loopback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use super::{Cache, CacheStatus, Error};
use crate::config::Config;
use crate::oci::RangeSpec;
use crate::oci::{Digest, Reference};

#[derive(Default)]
pub(super) struct Fake {
    pub(super) blobs: HashMap<String, Bytes>,
    pub(super) manifests: HashMap<String, Bytes>,
    /// Flip one byte in the middle of every blob body.
    pub(super) corrupt: bool,
    /// Close blob bodies after half the bytes.
    pub(super) truncate: bool,
    /// Answer every request with this status.
    pub(super) fail_with: Option<u16>,
    pub(super) chunk_delay_ms: u64,
    /// Pause before answering any manifest or tags request.
    pub(super) manifest_delay_ms: u64,
    /// Served instead of the manifest to clients whose Accept lacks the OCI index type.
    pub(super) schema2_alternative: Option<Bytes>,
    /// Repositories that hold nothing: every blob and manifest under them is 404.
    pub(super) empty_repos: Vec<String>,
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) blob_get: AtomicUsize,
    pub(super) blob_head: AtomicUsize,
    pub(super) manifest_get: AtomicUsize,
    pub(super) manifest_head: AtomicUsize,
}

#[derive(Clone)]
pub(super) struct FakeUpstream {
    pub(super) fake: Arc<Mutex<Fake>>,
    pub(super) counts: Arc<Counts>,
}

async fn fake_handler(State(up): State<FakeUpstream>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let head = req.method() == http::Method::HEAD;
    let pause = up.fake.lock().unwrap().manifest_delay_ms;
    if pause > 0 && !path.contains("/blobs/") {
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let (status, body, delay, corrupt, truncate) = {
        let f = up.fake.lock().unwrap();
        if let Some(s) = f.fail_with {
            let mut r = Response::new(Body::from("down"));
            *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
            r.headers_mut().insert("retry-after", "42".parse().unwrap());
            return r;
        }
        let mut tail = path.rsplit('/').next().unwrap_or("").to_string();
        if f.empty_repos
            .iter()
            .any(|r| path.starts_with(&format!("/v2/{r}/")))
        {
            tail.clear();
        }
        if path.contains("/blobs/") {
            let c = if head {
                &up.counts.blob_head
            } else {
                &up.counts.blob_get
            };
            c.fetch_add(1, Ordering::SeqCst);
            match f.blobs.get(&tail) {
                Some(b) => (200, b.clone(), f.chunk_delay_ms, f.corrupt, f.truncate),
                None => (404, Bytes::new(), 0, false, false),
            }
        } else {
            let c = if head {
                &up.counts.manifest_head
            } else {
                &up.counts.manifest_get
            };
            c.fetch_add(1, Ordering::SeqCst);
            let accepts_index = req
                .headers()
                .get_all("accept")
                .iter()
                .any(|v| v.to_str().unwrap().contains("image.index"));
            if let (false, Some(alt)) = (accepts_index, &f.schema2_alternative) {
                (200, alt.clone(), 0, false, false)
            } else {
                match f.manifests.get(&tail) {
                    Some(b) => (200, b.clone(), 0, false, false),
                    None => (404, Bytes::new(), 0, false, false),
                }
            }
        }
    };
    let mut resp = if status != 200 || head || path.contains("/manifests/") {
        Response::new(Body::from(if head { Bytes::new() } else { body.clone() }))
    } else {
        let len = body.len();
        let mut data = body.to_vec();
        if corrupt {
            data[len / 2] ^= 0xff;
        }
        let keep = if truncate { len / 2 } else { len };
        let chunks: Vec<Bytes> = data[..keep]
            .chunks(64 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        let stream = futures::stream::iter(chunks).then(move |c| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok::<_, std::io::Error>(c)
        });
        let stream = stream.chain(futures::stream::iter(
            truncate.then(|| Err(std::io::Error::other("cut"))),
        ));
        Response::new(Body::from_stream(stream))
    };
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    let h = resp.headers_mut();
    h.insert("content-length", body.len().into());
    if path.contains("/manifests/") && status == 200 {
        h.insert(
            "docker-content-digest",
            Digest::sha256_of(&body).to_string().parse().unwrap(),
        );
        let ct = if body.starts_with(b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker")
        {
            crate::oci::media::DOCKER_MANIFEST
        } else {
            crate::oci::media::OCI_MANIFEST
        };
        h.insert("content-type", ct.parse().unwrap());
    }
    resp
}

pub(super) struct Harness {
    pub(super) cache: Arc<Cache>,
    pub(super) fake: Arc<Mutex<Fake>>,
    pub(super) counts: Arc<Counts>,
    pub(super) dir: tempfile::TempDir,
    /// Where the fake upstream answers.
    pub(super) addr: std::net::SocketAddr,
}

pub(super) async fn harness(tag_ttl_secs: u64) -> Harness {
    harness_with(tag_ttl_secs, "").await
}

/// A harness whose upstream table also has the TOML lines `extra`.
pub(super) async fn harness_with(tag_ttl_secs: u64, extra: &str) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    harness_on(listener, tag_ttl_secs, extra).await
}

/// A harness whose fake upstream answers on `listener`.
pub(super) async fn harness_on(
    listener: tokio::net::TcpListener,
    tag_ttl_secs: u64,
    extra: &str,
) -> Harness {
    let addr = listener.local_addr().unwrap();
    let (cache, dir) = cache_for(addr, tag_ttl_secs, extra).await;
    let up = serve_fake(listener);
    Harness {
        cache,
        fake: up.fake,
        counts: up.counts,
        dir,
        addr,
    }
}

/// Serve a fresh fake upstream on `listener`.
pub(super) fn serve_fake(listener: tokio::net::TcpListener) -> FakeUpstream {
    let up = FakeUpstream {
        fake: Arc::default(),
        counts: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(fake_handler)
        .with_state(up.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    up
}

/// A cache (in a fresh data directory) whose one upstream, "up", is fetched from `addr`.
pub(super) async fn cache_for(
    addr: std::net::SocketAddr,
    tag_ttl_secs: u64,
    extra: &str,
) -> (Arc<Cache>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), addr, tag_ttl_secs, extra).await;
    (cache, dir)
}

/// A cache over the data directory `dir` (which may hold a previous cache's objects).
pub(super) async fn cache_in(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    tag_ttl_secs: u64,
    extra: &str,
) -> Arc<Cache> {
    let text = format!(
        "no_builtin_upstreams = true\ndefault_upstream = \"\"\n[[upstream]]\nname = \"up\"\nurl = \"http://{addr}\"\ntag_ttl_secs = {tag_ttl_secs}\nread_timeout_secs = 5\n{extra}\n"
    );
    let mut config = Config::from_toml(&text).unwrap();
    config.merge_builtins();
    config.validate().unwrap();
    let opened = crate::storage::open(dir, None, crate::storage::Role::Server)
        .await
        .expect("open the store");
    Arc::new(Cache::new(&config, opened.storage, opened.staging_dir).unwrap())
}

pub(super) fn random_blob(len: usize) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    (Digest::sha256_of(&data), Bytes::from(data))
}

/// Read a whole blob answer; Err if the stream failed.
async fn read_all(cache: &Arc<Cache>, d: &Digest) -> (CacheStatus, Result<Vec<u8>, String>) {
    let b = match cache.blob("up", "test/img", d, None, false).await {
        Ok(b) => b,
        Err(e) => return (CacheStatus::Miss, Err(e.to_string())),
    };
    let mut out = Vec::new();
    let mut body = b.body.unwrap().into_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => out.extend_from_slice(&c),
            Err(e) => return (b.status, Err(e.to_string())),
        }
    }
    (b.status, Ok(out))
}

pub(super) fn blob_files(dir: &std::path::Path) -> usize {
    walk(&dir.join("blobs")) + walk(&dir.join("tmp"))
}

fn walk(p: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_gets_make_one_upstream_fetch() {
    let h = harness(300).await;
    let (d, data) = random_blob(2 << 20);
    h.fake
        .lock()
        .unwrap()
        .blobs
        .insert(d.to_string(), data.clone());
    h.fake.lock().unwrap().chunk_delay_ms = 5;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, d) = (h.cache.clone(), d.clone());
            tokio::spawn(async move { read_all(&c, &d).await })
        })
        .collect();
    let mut statuses = HashMap::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        let body = body.expect("every client gets the whole blob");
        assert!(d.matches(&body), "bytes verify against the digest");
        *statuses.entry(status.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        h.counts.blob_get.load(Ordering::SeqCst),
        1,
        "exactly one upstream GET"
    );
    assert_eq!(statuses.get("miss"), Some(&1), "{statuses:?}");
    // Now cached: no further upstream traffic.
    let (status, body) = read_all(&h.cache, &d).await;
    assert_eq!(
        (status, body.unwrap().len()),
        (CacheStatus::Hit, data.len())
    );
    assert_eq!(h.counts.blob_get.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_do_not_disturb_the_rest() {
    let h = harness(300).await;
    let (d, data) = random_blob(1 << 20);
    h.fake
        .lock()
        .unwrap()
        .blobs
        .insert(d.to_string(), data.clone());
    h.fake.lock().unwrap().chunk_delay_ms = 10;
    // The first client starts the fill and leaves after one chunk.
    let first = h
        .cache
        .blob("up", "test/img", &d, None, false)
        .await
        .unwrap();
    let mut body = first.body.unwrap().into_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (c, d) = (h.cache.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let b = c.blob("up", "test/img", &d, None, false).await.unwrap();
            let mut s = b.body.unwrap().into_stream();
            let mut n = 0;
            while let Some(chunk) = s.next().await {
                n += chunk.unwrap().len();
                if i % 2 == 0 && n > 100_000 {
                    return None; // leaves halfway
                }
            }
            Some(n)
        }));
    }
    for t in tasks {
        if let Some(n) = t.await.unwrap() {
            assert_eq!(n, data.len());
        }
    }
    let (status, body) = read_all(&h.cache, &d).await;
    assert_eq!(
        status,
        CacheStatus::Hit,
        "the fill finished although its first client left"
    );
    assert!(d.matches(&body.unwrap()));
    assert_eq!(h.counts.blob_get.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_short_fill_fails_every_client_and_caches_nothing() {
    for (corrupt, truncate) in [(true, false), (false, true)] {
        let h = harness(300).await;
        let (d, data) = random_blob(1 << 20);
        {
            let mut f = h.fake.lock().unwrap();
            f.blobs.insert(d.to_string(), data.clone());
            (f.corrupt, f.truncate, f.chunk_delay_ms) = (corrupt, truncate, 2);
        }
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (c, d) = (h.cache.clone(), d.clone());
                tokio::spawn(async move { read_all(&c, &d).await })
            })
            .collect();
        for t in tasks {
            let (_, body) = t.await.unwrap();
            assert!(
                body.is_err(),
                "no client sees a clean end (corrupt={corrupt}, truncate={truncate})"
            );
        }
        while h.cache.fills_in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            blob_files(h.dir.path()),
            0,
            "nothing committed, no spool left"
        );
        // The next request starts a fresh fill, which now succeeds.
        {
            let mut f = h.fake.lock().unwrap();
            (f.corrupt, f.truncate) = (false, false);
        }
        let (_, body) = read_all(&h.cache, &d).await;
        assert!(d.matches(&body.unwrap()));
        assert_eq!(h.counts.blob_get.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_miss_and_hit_and_head_without_fill() {
    let h = harness(300).await;
    let (d, data) = random_blob(300_000);
    h.fake
        .lock()
        .unwrap()
        .blobs
        .insert(d.to_string(), data.clone());
    let head = h.cache.blob("up", "r", &d, None, true).await.unwrap();
    assert_eq!(
        (head.size, head.status),
        (Some(data.len() as u64), CacheStatus::Passthrough)
    );
    assert_eq!(
        h.counts.blob_get.load(Ordering::SeqCst),
        0,
        "HEAD of an uncached blob does not download it"
    );
    for (spec, want) in [
        (RangeSpec::From(1000, Some(1999)), 1000..2000),
        (RangeSpec::Suffix(10), 299_990..300_000),
    ] {
        let b = h
            .cache
            .blob("up", "r", &d, Some(spec), false)
            .await
            .unwrap();
        assert_eq!(b.range, Some((want.start as u64, want.end as u64)));
        let got: Vec<Bytes> = b
            .body
            .unwrap()
            .into_stream()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(got.concat(), &data[want.clone()]);
    }
    assert!(matches!(
        h.cache
            .blob("up", "r", &d, Some(RangeSpec::From(300_000, None)), false)
            .await,
        Err(Error::RangeNotSatisfiable { .. })
    ));
    let missing = Digest::sha256_of(b"nope");
    assert!(matches!(
        h.cache.blob("up", "r", &missing, None, false).await,
        Err(Error::BlobUnknown)
    ));
    assert!(matches!(
        h.cache.blob("up", "r", &missing, None, true).await,
        Err(Error::BlobUnknown)
    ));
}

pub(super) fn manifest_body(n: u8) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{}},"layers":[],"n":{n}}}"#
    ))
}

#[tokio::test(flavor = "current_thread")]
async fn tag_ttl_revalidates_with_head_and_serves_stale_through_outages() {
    // Synchronous revalidation: the expired request itself waits for the HEAD.
    let h = harness_with(300, "revalidate = \"sync\"").await;
    let tag = Reference::Tag("latest".into());
    h.fake
        .lock()
        .unwrap()
        .manifests
        .insert("latest".into(), manifest_body(1));
    let gets = || h.counts.manifest_get.load(Ordering::SeqCst);
    let heads = || h.counts.manifest_head.load(Ordering::SeqCst);

    let m = h.cache.manifest("up", "r", &tag, &[], false).await.unwrap();
    assert_eq!(
        (m.status, m.body.clone(), gets(), heads()),
        (CacheStatus::Miss, manifest_body(1), 1, 0)
    );
    let m = h.cache.manifest("up", "r", &tag, &[], false).await.unwrap();
    assert_eq!(
        (m.status, gets(), heads()),
        (CacheStatus::Hit, 1, 0),
        "fresh tag: no upstream request"
    );

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(301)).await;
    tokio::time::resume();
    let m = h.cache.manifest("up", "r", &tag, &[], false).await.unwrap();
    assert_eq!(
        (m.status, gets(), heads()),
        (CacheStatus::Hit, 1, 1),
        "expired: one HEAD, digest unchanged, no GET"
    );

    h.fake
        .lock()
        .unwrap()
        .manifests
        .insert("latest".into(), manifest_body(2));
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(301)).await;
    tokio::time::resume();
    let m = h.cache.manifest("up", "r", &tag, &[], false).await.unwrap();
    assert_eq!(
        (m.body.clone(), gets(), heads()),
        (manifest_body(2), 2, 2),
        "changed digest: HEAD then GET"
    );

    // 429 first: a rate-limited upstream answers, so it is not marked down; the 503 then is.
    for status in [429, 503] {
        h.fake.lock().unwrap().fail_with = Some(status);
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(301)).await;
        tokio::time::resume();
        let m = h.cache.manifest("up", "r", &tag, &[], false).await.unwrap();
        assert_eq!(
            (m.status, m.body.clone()),
            (CacheStatus::Stale, manifest_body(2)),
            "status {status}"
        );
        let uncached = h
            .cache
            .manifest("up", "r", &Reference::Tag("other".into()), &[], false)
            .await
            .unwrap_err();
        match status {
            429 => assert!(
                matches!(uncached, Error::Upstream(crate::upstream::Error::TooManyRequests { retry_after: Some(ref r) }) if r == "42"),
                "{uncached:?}"
            ),
            _ => assert!(
                matches!(uncached, Error::Upstream(ref e) if e.is_outage()),
                "{uncached:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_requests_share_one_fetch() {
    let h = harness(300).await;
    h.fake
        .lock()
        .unwrap()
        .manifests
        .insert("v1".into(), manifest_body(7));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = h.cache.clone();
            tokio::spawn(async move {
                c.manifest("up", "r", &Reference::Tag("v1".into()), &[], false)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().body, manifest_body(7));
    }
    assert_eq!(h.counts.manifest_get.load(Ordering::SeqCst), 1);
    // By digest: cached by the tag fetch, served without the upstream.
    let d = Digest::sha256_of(&manifest_body(7));
    let m = h
        .cache
        .manifest("up", "r", &Reference::Digest(d), &[], true)
        .await
        .unwrap();
    assert_eq!(
        (m.status, m.size),
        (CacheStatus::Hit, manifest_body(7).len() as u64)
    );
    assert_eq!(
        h.counts.manifest_get.load(Ordering::SeqCst)
            + h.counts.manifest_head.load(Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_take_the_cached_type_gets_what_it_accepts() {
    use crate::oci::media;
    let h = harness(300).await;
    let index = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
    let schema2 = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#);
    {
        let mut f = h.fake.lock().unwrap();
        f.manifests.insert("multi".into(), index.clone());
        f.schema2_alternative = Some(schema2.clone());
    }
    let tag = Reference::Tag("multi".into());
    let modern = vec![
        media::OCI_INDEX.to_string(),
        media::DOCKER_MANIFEST.to_string(),
    ];
    let m = h
        .cache
        .manifest("up", "r", &tag, &modern, false)
        .await
        .unwrap();
    assert_eq!(
        (m.body.clone(), m.media_type.as_str()),
        (index.clone(), media::OCI_INDEX)
    );
    let old = vec![media::DOCKER_MANIFEST.to_string()];
    let m = h
        .cache
        .manifest("up", "r", &tag, &old, false)
        .await
        .unwrap();
    assert_eq!(
        (m.body.clone(), m.media_type.as_str(), m.status),
        (schema2, media::DOCKER_MANIFEST, CacheStatus::Passthrough)
    );
    // The tag's cached answer is still the index for everyone else.
    let m = h
        .cache
        .manifest("up", "r", &tag, &modern, false)
        .await
        .unwrap();
    assert_eq!((m.body, m.status), (index, CacheStatus::Hit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_is_served_stale_during_an_outage() {
    // No tags-list TTL: every request asks the upstream, so the outage path is reached.
    let h = harness_with(300, "tags_list_ttl_secs = 0").await;
    let list = Bytes::from_static(br#"{"name":"r","tags":["a","b"]}"#);
    h.fake
        .lock()
        .unwrap()
        .manifests
        .insert("list".into(), list.clone());
    let page = h.cache.tags_list("up", "r", None).await.unwrap();
    assert_eq!(
        (page.body, page.status),
        (list.clone(), CacheStatus::Passthrough)
    );
    h.fake.lock().unwrap().fail_with = Some(503);
    let page = h
        .cache
        .tags_list("up", "r", Some("n=1".into()))
        .await
        .unwrap();
    assert_eq!((page.body, page.status), (list, CacheStatus::Stale));
    assert!(
        h.cache.tags_list("up", "other", None).await.is_err(),
        "never listed: the outage is an error"
    );
}

/// The sendfile path reads a fill through `FileRegion::ready`: it must release the blob's last
/// byte only once the blob is verified (and committed), and fail, never end cleanly, when the
/// fill is corrupt or short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_regions_release_the_last_byte_only_after_verification() {
    use std::os::unix::fs::FileExt;
    for (corrupt, truncate) in [(false, false), (true, false), (false, true)] {
        let h = harness(300).await;
        let (d, data) = random_blob(1 << 20);
        {
            let mut f = h.fake.lock().unwrap();
            f.blobs.insert(d.to_string(), data.clone());
            (f.corrupt, f.truncate, f.chunk_delay_ms) = (corrupt, truncate, 2);
        }
        let b = h
            .cache
            .blob("up", "test/img", &d, None, false)
            .await
            .unwrap();
        let Some(super::BlobBody::File(mut region)) = b.body else {
            panic!("a fill of known size is a file region");
        };
        let mut got = Vec::new();
        let outcome = loop {
            match region.ready().await {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let pos = region.pos();
                    if pos + n == data.len() as u64 {
                        let committed = h.cache.storage.head(&super::keys::blob(&d)).await;
                        assert!(
                            committed.is_ok(),
                            "last byte released before the blob was verified"
                        );
                    }
                    let mut buf = vec![0; n as usize];
                    region.file().read_exact_at(&mut buf, pos).unwrap();
                    got.extend_from_slice(&buf);
                    region.advance(n);
                }
                Err(e) => break Err(e),
            }
        };
        if corrupt || truncate {
            assert!(
                outcome.is_err(),
                "a bad fill ends in an error (corrupt={corrupt})"
            );
            assert!(
                got.len() < data.len(),
                "never the whole length of bad bytes"
            );
        } else {
            outcome.unwrap();
            assert_eq!(got, data.to_vec());
        }
    }
}

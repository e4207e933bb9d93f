//! Freshness under real network conditions: stale-while-revalidate, the bounded synchronous
//! revalidation, negative caching, the tags-list TTL and the upstream circuit breaker, against the
//! counting, fault-injecting upstream of [`super::tests`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::tests::{cache_for, harness, harness_with, manifest_body, serve_fake, Harness};
use super::{CacheStatus, Error};
use crate::oci::{Digest, Reference};

fn tag() -> Reference {
    Reference::Tag("latest".into())
}

fn heads(h: &Harness) -> usize {
    h.counts.manifest_head.load(Ordering::SeqCst)
}

fn gets(h: &Harness) -> usize {
    h.counts.manifest_get.load(Ordering::SeqCst)
}

/// Let the tag TTL (and every shorter timer) pass without waiting for it.
async fn skip(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(secs)).await;
    tokio::time::resume();
}

/// Wait (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The answer to a GET of the tag.
async fn latest(h: &Harness) -> super::Manifest {
    h.cache
        .manifest("up", "r", &tag(), &[], false)
        .await
        .unwrap()
}

/// Wait (bounded) until the tag is answered with `body`.
async fn serves(h: &Harness, body: bytes::Bytes) {
    let start = Instant::now();
    loop {
        let m = latest(&h).await;
        if m.body == body {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never served the new digest"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cached(h: &Harness, body: bytes::Bytes) {
    h.fake
        .lock()
        .unwrap()
        .manifests
        .insert("latest".into(), body);
    let m = latest(&h).await;
    assert_eq!(m.status, CacheStatus::Miss);
}

#[tokio::test(flavor = "current_thread")]
async fn an_expired_tag_is_answered_at_once_and_revalidated_once_in_the_background() {
    let h = harness(300).await;
    cached(&h, manifest_body(1)).await;
    skip(301).await;
    {
        let mut f = h.fake.lock().unwrap();
        f.manifests.insert("latest".into(), manifest_body(2));
        f.manifest_delay_ms = 1500; // the upstream takes 1.5 s to answer anything
    }
    let started = Instant::now();
    let answers = futures::future::join_all((0..50).map(|_| {
        let cache = h.cache.clone();
        async move { cache.manifest("up", "r", &tag(), &[], false).await.unwrap() }
    }))
    .await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "50 answers took {waited:?}: someone waited for the upstream"
    );
    for m in &answers {
        assert_eq!(
            (m.status, &m.body),
            (CacheStatus::Revalidating, &manifest_body(1))
        );
    }
    // Before the upstream confirmed anything, the old digest is still the answer.
    let m = latest(&h).await;
    assert_eq!(m.body, manifest_body(1), "unconfirmed: the cached digest");
    until("the background HEAD and GET", || gets(&h) == 2).await;
    assert_eq!(heads(&h), 1, "one HEAD for 51 requests");
    serves(&h, manifest_body(2)).await;
    let m = latest(&h).await;
    assert_eq!((m.status, m.body), (CacheStatus::Hit, manifest_body(2)));
    assert_eq!(
        (heads(&h), gets(&h)),
        (1, 2),
        "confirmed: fresh again, no more requests"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_synchronous_revalidation_is_bounded_then_serves_the_cached_tag() {
    let h = harness_with(300, "revalidate = \"sync\"\nrevalidate_timeout_secs = 1").await;
    cached(&h, manifest_body(1)).await;
    skip(301).await;
    {
        let mut f = h.fake.lock().unwrap();
        f.manifests.insert("latest".into(), manifest_body(2));
        f.manifest_delay_ms = 2500;
    }
    let started = Instant::now();
    let m = latest(&h).await;
    let waited = started.elapsed();
    assert_eq!((m.status, m.body), (CacheStatus::Stale, manifest_body(1)));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2400),
        "waited {waited:?}, the bound is 1 s"
    );
    // The revalidation went on behind the client's back; its answer serves the next request.
    until("the revalidation to finish", || gets(&h) == 2).await;
    h.fake.lock().unwrap().manifest_delay_ms = 0;
    serves(&h, manifest_body(2)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn not_found_is_remembered_for_the_negative_ttl() {
    let h = harness_with(300, "negative_ttl_secs = 10").await;
    let missing = Reference::Tag("nope".into());
    for _ in 0..20 {
        let e = h
            .cache
            .manifest("up", "r", &missing, &[], false)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ManifestUnknown), "{e:?}");
    }
    assert_eq!(
        gets(&h) + heads(&h),
        1,
        "20 requests for a missing tag, one upstream request"
    );
    h.fake
        .lock()
        .unwrap()
        .manifests
        .insert("nope".into(), manifest_body(7));
    assert!(
        h.cache
            .manifest("up", "r", &missing, &[], false)
            .await
            .is_err(),
        "still remembered"
    );
    skip(11).await;
    let m = h
        .cache
        .manifest("up", "r", &missing, &[], false)
        .await
        .unwrap();
    assert_eq!(
        m.body,
        manifest_body(7),
        "the tag appeared upstream: served after the TTL"
    );

    let digest = Digest::sha256_of(b"no such blob");
    for _ in 0..5 {
        let e = h
            .cache
            .blob("up", "r", &digest, None, false)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, Error::BlobUnknown), "{e:?}");
    }
    assert_eq!(
        h.counts.blob_get.load(Ordering::SeqCst),
        1,
        "one upstream GET for 5 requests"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_tags_list_is_fetched_once_per_ttl_however_many_ask() {
    let h = harness_with(300, "tags_list_ttl_secs = 30").await;
    let list = bytes::Bytes::from_static(br#"{"name":"r","tags":["a","b"]}"#);
    {
        let mut f = h.fake.lock().unwrap();
        f.manifests.insert("list".into(), list.clone());
        f.manifest_delay_ms = 300;
    }
    let pages = futures::future::join_all((0..20).map(|_| {
        let cache = h.cache.clone();
        async move { cache.tags_list("up", "r", None).await.unwrap() }
    }))
    .await;
    assert!(pages.iter().all(|p| p.body == list));
    assert_eq!(gets(&h), 1, "20 concurrent lists, one upstream GET");
    let page = h
        .cache
        .tags_list("up", "r", Some("n=1".into()))
        .await
        .unwrap();
    assert_eq!(
        (page.status, gets(&h)),
        (CacheStatus::Hit, 1),
        "within the TTL: from cache"
    );
    skip(31).await;
    h.cache.tags_list("up", "r", None).await.unwrap();
    assert_eq!(gets(&h), 2, "after the TTL: asked again");
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_upstream_is_marked_down_fails_fast_serves_the_cache_and_is_probed_back() {
    // A port nothing listens on (connections refused); the upstream is started there later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (cache, _dir) = cache_for(addr, 1, "probe_max_interval_secs = 1").await;
    let other = Reference::Tag("other".into());
    // The first failure costs the connect attempts and retries; it marks the upstream down.
    let e = cache
        .manifest("up", "r", &other, &[], false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Upstream(ref u) if u.is_outage()),
        "{e:?}"
    );
    let down = cache.upstream_health();
    assert!(
        down.iter().any(|r| r.upstream == "up" && r.down.is_some()),
        "{down:?}"
    );
    // Known down: an uncached pull fails at once, naming the upstream and its last failure.
    let started = Instant::now();
    let e = cache
        .manifest("up", "r", &other, &[], false)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(
        text.contains("up") && text.contains("unreachable since"),
        "{text}"
    );
    // Back: the probe notices within its interval, and requests go through again.
    let up = serve_fake(tokio::net::TcpListener::bind(addr).await.unwrap());
    up.fake
        .lock()
        .unwrap()
        .manifests
        .insert("other".into(), manifest_body(3));
    until("the probe to see the upstream back", || {
        cache.upstream_health().iter().all(|r| r.down.is_none())
    })
    .await;
    let m = cache.manifest("up", "r", &other, &[], false).await.unwrap();
    assert_eq!(m.body, manifest_body(3));
}

#[tokio::test(flavor = "current_thread")]
async fn an_upstream_that_never_answers_is_bounded_by_the_deadline_then_costs_no_wait() {
    let h = harness_with(1, "probe_max_interval_secs = 30\nrequest_deadline_secs = 1").await;
    cached(&h, manifest_body(1)).await;
    // The upstream accepts but does not answer (for 5 s, past the 1 s deadline).
    h.fake.lock().unwrap().manifest_delay_ms = 5000;
    skip(2).await;
    let started = Instant::now();
    let e = h
        .cache
        .manifest("up", "r", &Reference::Tag("x".into()), &[], false)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(e, Error::Upstream(ref u) if u.is_outage()),
        "{e:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "the first failure took {waited:?}; the deadline is 1 s"
    );
    // Known down now: the expired tag is served stale without a request or a wait.
    let before = gets(&h) + heads(&h);
    let started = Instant::now();
    let m = latest(&h).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((m.status, m.body), (CacheStatus::Stale, manifest_body(1)));
    assert_eq!(
        gets(&h) + heads(&h),
        before,
        "nothing was sent to a known-down upstream"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_tag_deleted_upstream_is_served_once_more_then_not_found() {
    let h = harness(300).await;
    cached(&h, manifest_body(1)).await;
    skip(301).await;
    h.fake.lock().unwrap().manifests.remove("latest");
    // Answered from cache while the background HEAD learns that the tag is gone...
    let m = latest(&h).await;
    assert_eq!(
        (m.status, m.body),
        (CacheStatus::Revalidating, manifest_body(1))
    );
    // ...after which the record is dropped and the tag is unknown, as upstream.
    let start = Instant::now();
    loop {
        match h.cache.manifest("up", "r", &tag(), &[], false).await {
            Err(Error::ManifestUnknown) => break,
            Ok(m) => assert_eq!(m.body, manifest_body(1)),
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still served after the tag was deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

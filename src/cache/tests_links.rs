//! No cross-repository reads: a digest cached for one repository is served under another only
//! once the upstream confirmed it there (one HEAD, remembered across restarts), never when it
//! says no or cannot answer. Against the counting upstream of [`super::tests`].

use std::sync::atomic::Ordering;

use futures::StreamExt;

use super::tests::{cache_in, harness, manifest_body, random_blob, Harness};
use super::{Cache, CacheStatus, Error};
use crate::oci::{Digest, Reference};

fn count(c: &std::sync::atomic::AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// GET a whole blob under `repo`: its status and bytes.
async fn get(cache: &Cache, repo: &str, d: &Digest) -> Result<(CacheStatus, Vec<u8>), Error> {
    let b = cache.blob("up", repo, d, None, false).await?;
    let mut body = b.body.expect("a GET has a body").into_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("the body streams"));
    }
    Ok((b.status, out))
}

/// Wait (bounded) until the fills in flight have committed.
async fn settled(cache: &Cache) {
    for _ in 0..500 {
        if cache.fills_in_flight() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("a fill did not end");
}

/// A harness whose upstream holds one 300 kB blob (in every repository but `secret/none`).
async fn with_blob() -> (Harness, Digest, bytes::Bytes) {
    let h = harness(300).await;
    let (d, data) = random_blob(300_000);
    let mut f = h.fake.lock().unwrap();
    f.blobs.insert(d.to_string(), data.clone());
    f.empty_repos.push("secret/none".into());
    drop(f);
    (h, d, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cached_for_one_repository_is_confirmed_once_for_another_and_remembered() {
    let (h, d, data) = with_blob().await;
    let (status, body) = get(&h.cache, "team/a", &d).await.unwrap();
    assert_eq!((status, body.len()), (CacheStatus::Miss, data.len()));
    assert_eq!(
        count(&h.counts.blob_head),
        0,
        "a fetch for its own repository links it"
    );
    settled(&h.cache).await;
    // Again under the same repository: a hit, no upstream request.
    assert_eq!(
        get(&h.cache, "team/a", &d).await.unwrap().0,
        CacheStatus::Hit
    );
    // Under another repository: one HEAD there, then served from the one stored copy.
    let (status, body) = get(&h.cache, "team/b", &d).await.unwrap();
    assert_eq!((status, body == data), (CacheStatus::Hit, true));
    assert_eq!(
        (count(&h.counts.blob_head), count(&h.counts.blob_get)),
        (1, 1)
    );
    assert_eq!(
        get(&h.cache, "team/b", &d).await.unwrap().0,
        CacheStatus::Hit
    );
    assert_eq!(
        count(&h.counts.blob_head),
        1,
        "the confirmation is remembered"
    );
    assert_eq!(super::tests::blob_files(h.dir.path()), 1, "stored once");
    // A new process on the same data directory remembers both links.
    let reopened = cache_in(h.dir.path(), h.addr, 300, "").await;
    for repo in ["team/a", "team/b"] {
        assert_eq!(get(&reopened, repo, &d).await.unwrap().0, CacheStatus::Hit);
    }
    assert_eq!(
        (count(&h.counts.blob_head), count(&h.counts.blob_get)),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_the_upstream_says_lacks_the_blob_gets_blob_unknown() {
    let (h, d, _) = with_blob().await;
    get(&h.cache, "team/a", &d).await.unwrap();
    settled(&h.cache).await;
    for head in [false, true, false] {
        let answer = h.cache.blob("up", "secret/none", &d, None, head).await;
        assert!(matches!(answer, Err(Error::BlobUnknown)), "head={head}");
    }
    // One HEAD asked; its "no" is remembered for the negative TTL.
    assert_eq!(
        (count(&h.counts.blob_head), count(&h.counts.blob_get)),
        (1, 1)
    );
    // A range of it is refused as well.
    let range = Some(crate::oci::RangeSpec::From(0, Some(9)));
    let reopened = cache_in(h.dir.path(), h.addr, 300, "").await;
    let answer = reopened.blob("up", "secret/none", &d, range, false).await;
    assert!(matches!(answer, Err(Error::BlobUnknown)));
    assert_eq!(
        count(&h.counts.blob_head),
        2,
        "a \"no\" is not stored: asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_confirm_is_an_outage_not_a_hit() {
    let (h, d, data) = with_blob().await;
    get(&h.cache, "team/a", &d).await.unwrap();
    settled(&h.cache).await;
    h.fake.lock().unwrap().fail_with = Some(503);
    match h.cache.blob("up", "team/b", &d, None, false).await {
        Err(Error::Upstream(e)) => {
            assert!(e.is_outage(), "{e}");
            let text = e.to_string();
            assert!(text.contains("\"up\"") && text.contains("team/b"), "{text}");
        }
        Err(e) => panic!("expected an outage, got {e}"),
        Ok(b) => panic!("served unconfirmed content ({:?})", b.status),
    }
    // Its own repository is still served through the outage.
    let (status, body) = get(&h.cache, "team/a", &d).await.unwrap();
    assert_eq!((status, body == data), (CacheStatus::Hit, true));
    // Once the upstream is back, the confirmation is asked for and the blob served.
    h.fake.lock().unwrap().fail_with = None;
    let (status, body) = get(&h.cache, "team/b", &d).await.unwrap();
    assert_eq!((status, body == data), (CacheStatus::Hit, true));
    assert_eq!(count(&h.counts.blob_get), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_of_a_fill_for_another_repository_confirm_and_its_own_do_not() {
    let (h, d, data) = with_blob().await;
    h.fake.lock().unwrap().chunk_delay_ms = 20;
    let first = h.cache.blob("up", "team/a", &d, None, false).await.unwrap();
    assert_eq!(first.status, CacheStatus::Miss);
    let same = get(&h.cache, "team/a", &d);
    let other = get(&h.cache, "team/b", &d);
    let denied = h.cache.blob("up", "secret/none", &d, None, false);
    let (same, other, denied) = tokio::join!(same, other, denied);
    assert_eq!(same.unwrap(), (CacheStatus::Joined, data.to_vec()));
    assert_eq!(other.unwrap(), (CacheStatus::Joined, data.to_vec()));
    assert!(matches!(denied, Err(Error::BlobUnknown)));
    assert_eq!(count(&h.counts.blob_get), 1);
    assert_eq!(
        count(&h.counts.blob_head),
        2,
        "team/b and secret/none, not team/a"
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_by_digest_is_served_under_a_repository_only_once_confirmed_there() {
    let h = harness(300).await;
    let body = manifest_body(3);
    let d = Digest::sha256_of(&body);
    {
        let mut f = h.fake.lock().unwrap();
        f.manifests.insert("v1".into(), body.clone());
        f.manifests.insert(d.to_string(), body.clone());
        f.empty_repos.push("secret/none".into());
    }
    let by_digest = Reference::Digest(d.clone());
    let tag = Reference::Tag("v1".into());
    let m = h
        .cache
        .manifest("up", "team/a", &tag, &[], false)
        .await
        .unwrap();
    assert_eq!(m.digest, d);
    // By digest under the repository of the tag: linked by the tag fetch, no upstream request.
    let m = h
        .cache
        .manifest("up", "team/a", &by_digest, &[], false)
        .await
        .unwrap();
    assert_eq!(
        (m.status, count(&h.counts.manifest_head)),
        (CacheStatus::Hit, 0)
    );
    // Another repository: one HEAD, then a hit, remembered across a restart.
    let m = h
        .cache
        .manifest("up", "team/b", &by_digest, &[], false)
        .await
        .unwrap();
    assert_eq!((m.status, m.body), (CacheStatus::Hit, body));
    let reopened = cache_in(h.dir.path(), h.addr, 300, "").await;
    reopened
        .manifest("up", "team/b", &by_digest, &[], true)
        .await
        .unwrap();
    assert_eq!(count(&h.counts.manifest_head), 1);
    // A repository the upstream says lacks it: MANIFEST_UNKNOWN, the "no" remembered.
    for _ in 0..2 {
        let answer = h
            .cache
            .manifest("up", "secret/none", &by_digest, &[], false)
            .await;
        assert!(matches!(answer, Err(Error::ManifestUnknown)));
    }
    assert_eq!(count(&h.counts.manifest_head), 2);
    assert_eq!(count(&h.counts.manifest_get), 1);
    // Upstream down: an outage, not the manifest.
    h.fake.lock().unwrap().fail_with = Some(503);
    let answer = h
        .cache
        .manifest("up", "team/c", &by_digest, &[], false)
        .await;
    assert!(
        matches!(&answer, Err(Error::Upstream(e)) if e.is_outage()),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_whose_content_was_evicted_means_not_cached() {
    let (h, d, data) = with_blob().await;
    get(&h.cache, "team/a", &d).await.unwrap();
    settled(&h.cache).await;
    let policy = super::evict::Policy {
        max_size: Some(0),
        max_age: None,
    };
    let report = h.cache.evict(policy).await.unwrap();
    assert!(report.evicted_objects >= 1, "{report:?}");
    assert_eq!(super::tests::blob_files(h.dir.path()), 0);
    // The link stays behind; the blob is fetched again for its repository, without a HEAD.
    let (status, body) = get(&h.cache, "team/a", &d).await.unwrap();
    assert_eq!((status, body == data), (CacheStatus::Miss, true));
    assert_eq!(
        (count(&h.counts.blob_get), count(&h.counts.blob_head)),
        (2, 0)
    );
}

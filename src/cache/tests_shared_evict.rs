//! Shared eviction against a real `redis-server`: two replicas' records of one store, the order
//! of reads across them, reads in progress on another replica, the lease, Redis down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::access::InUse;
use super::evict::{self, Policy};
use super::shared_access::{SharedAccess, SharedStore};
use super::shared_evict::{run, Outcome};
use crate::config::coord::CoordSettings;
use crate::coord::tests::RedisServer;
use crate::coord::{Acquired, Coord, LeaseKind};

fn store(url: &str, me: &str) -> SharedStore {
    let coord = Coord::new(CoordSettings {
        nodes: vec![url.to_string()],
        sentinel: None,
        ca_file: None,
        lease_secs: 5,
        replica_url: Some(me.to_string()),
    })
    .unwrap();
    SharedStore::new(coord, "s3://bucket/test/".into())
}

async fn keys(s: &dyn crate::storage::Storage) -> Vec<String> {
    evict::objects(s)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

#[tokio::test]
async fn order_of_reads_across_replicas_reads_elsewhere_kept_one_evicter_redis_down_skips() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (_dir, opened) = crate::storage::temporary().await;
    let s = opened.storage.as_ref();
    // Written in this order (same second or not: none has been read yet).
    for k in [
        "blobs/sha256/aa/a1",
        "blobs/sha256/bb/b2",
        "blobs/sha256/cc/c3",
    ] {
        s.put(k, Bytes::from(vec![0u8; 100])).await.unwrap();
    }
    let (a, b) = (
        store(&redis.url(), "http://a"),
        store(&redis.url(), "http://b"),
    );
    let (in_use_a, in_use_b) = (Arc::new(InUse::default()), Arc::new(InUse::default()));
    let (access_a, access_b) = (
        SharedAccess::new(a.clone(), in_use_a.clone()),
        SharedAccess::new(b.clone(), in_use_b.clone()),
    );
    // Replica B reads a1 later than anything was written, A reads c3 even later.
    let now = evict::unix_now();
    access_b.note("blobs/sha256/aa/a1", now + 100);
    access_a.note("blobs/sha256/cc/c3", now + 200);
    access_a.sync().await;
    access_b.sync().await;
    // Only 250 bytes allowed: b2 (never read) is the least recently used, then a1.
    let policy = Policy {
        max_size: Some(250),
        max_age: None,
    };
    let report = match run(s, &a, policy, &|_| false).await.unwrap() {
        Outcome::Ran(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((report.evicted_objects, report.bytes), (1, 200));
    assert_eq!(keys(s).await, ["blobs/sha256/aa/a1", "blobs/sha256/cc/c3"]);
    assert!(
        !a.last_access()
            .await
            .unwrap()
            .contains_key("blobs/sha256/bb/b2"),
        "a deleted object's last access is forgotten"
    );

    // B reads a1 now (announced by its sync): A's run keeps it and takes c3 instead.
    let guard = in_use_b.hold("blobs/sha256/aa/a1".into());
    access_b.sync().await;
    let tight = Policy {
        max_size: Some(100),
        max_age: None,
    };
    let Outcome::Ran(report) = run(s, &a, tight, &|_| false).await.unwrap() else {
        panic!("A holds no lease conflict here");
    };
    assert_eq!(report.evicted_objects, 1);
    assert_eq!(keys(s).await, ["blobs/sha256/aa/a1"]);
    // Nothing else to take: a1 stays while B reads it, however small the limit.
    let zero = Policy {
        max_size: Some(0),
        max_age: None,
    };
    assert!(
        matches!(run(s, &a, zero, &|_| false).await.unwrap(), Outcome::Ran(r) if r.evicted_objects == 0)
    );
    // The read ends: withdrawn at the next sync, then evictable.
    drop(guard);
    access_b.sync().await;
    assert!(b.being_read().await.unwrap().is_empty());
    assert!(
        matches!(run(s, &a, zero, &|_| false).await.unwrap(), Outcome::Ran(r) if r.evicted_objects == 1)
    );
    assert!(keys(s).await.is_empty());

    // Another replica holds the eviction lease: this one skips its run.
    s.put("blobs/sha256/dd/d4", Bytes::from(vec![0u8; 100]))
        .await
        .unwrap();
    let Acquired::Mine(lease) = b
        .coord
        .acquire(LeaseKind::Evict, &b.name, "", "")
        .await
        .unwrap()
    else {
        panic!("the lease is free");
    };
    assert_eq!(
        run(s, &a, zero, &|_| false).await.unwrap(),
        Outcome::SkippedLease
    );
    assert!(lease.release().await);

    // A read entry of a replica that stopped refreshing it (died) stops counting once expired.
    b.coord
        .zadd(
            &format!("reading:{}", b.name),
            &[(
                "dead blobs/sha256/dd/d4".to_string(),
                super::shared_access::unix_ms() + 300,
            )],
        )
        .await
        .unwrap();
    assert!(b.being_read().await.unwrap().contains("blobs/sha256/dd/d4"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.being_read().await.unwrap().is_empty());

    // Redis down: no run (and nothing deleted), whatever the policy.
    drop(redis);
    assert!(matches!(
        run(s, &a, zero, &|_| false).await.unwrap(),
        Outcome::SkippedRedisDown(_)
    ));
    assert_eq!(keys(s).await, ["blobs/sha256/dd/d4"]);
}

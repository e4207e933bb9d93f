//! Two regmirror processes coordinated through Redis Sentinel (`redis_url =
//! "redis+sentinel://..."`: a master, its replica and a sentinel from Debian's `redis-server`) or
//! a three-node Redis Cluster, in front of the counting upstream of `support::replicas`. What an operator sees: one upstream
//! download per blob across the replicas, `/readyz` and `regmirror_redis_up` saying Redis is up,
//! and after the master is killed and the sentinel promotes the replica, the same again on the new
//! master without restarting anything.

mod support;

use std::time::{Duration, Instant};

use support::faults::metric;
use support::mirror::{Extra, Regmirror};
use support::redis::{have_redis, wait_coordinated, ClusterSet, SentinelSet};
use support::replicas::{blob_of, blob_url, client, fleet, pull, UpBlob, Upstream};

/// 12 concurrent cold GETs of `b` spread over `fleet`: every one exact.
async fn storm(fleet: &[Regmirror], b: &UpBlob) {
    let pulls: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(pull(
                client(),
                blob_url(&fleet[i % fleet.len()], b),
                b.bytes.clone(),
            ))
        })
        .collect();
    for p in pulls {
        let p = p.await.unwrap();
        assert_eq!(p.result, Ok(()), "a client's transfer");
    }
}

async fn readyz(m: &Regmirror) -> String {
    client()
        .get(format!("{}/readyz", m.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn redis_up(m: &Regmirror) -> Option<f64> {
    let text = client()
        .get(format!("{}/metrics", m.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, "regmirror_redis_up", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_through_sentinel_fetch_once_and_follow_a_failover() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut set = SentinelSet::start(dir.path());
    let (before, after) = (blob_of(21, 8 << 20), blob_of(22, 8 << 20));
    let up = Upstream::start(
        vec![before.clone(), after.clone()],
        Duration::from_millis(40),
    );
    let fleet = fleet(&up, &set.url(), 2, Extra::default().top("lease_secs", 3)).await;
    for m in &fleet {
        let r = readyz(m).await;
        assert!(
            r.contains("sentinels redis://127.0.0.1:") && r.contains("\"mymaster\" up"),
            "{r}"
        );
        assert_eq!(redis_up(m).await, Some(1.0));
    }
    storm(&fleet, &before).await;
    assert_eq!(
        up.blob_gets(&before),
        1,
        "one upstream download for both replicas"
    );

    let old = set.master.port;
    set.master.kill();
    let killed = Instant::now();
    // The sentinel promotes the replica; both regmirrors follow it (their periodic ping, or the
    // next request, finds the master gone and asks the sentinel again).
    while set.master_port() != Some(set.replica.port) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover from {old}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &fleet {
        wait_coordinated(m).await;
    }
    eprintln!(
        "both replicas coordinated again {:?} after the master was killed",
        killed.elapsed()
    );
    storm(&fleet, &after).await;
    assert_eq!(
        up.blob_gets(&after),
        1,
        "one upstream download through the promoted master"
    );
    for m in &fleet {
        assert_eq!(redis_up(m).await, Some(1.0));
    }
    // Cached blobs were served throughout: the first blob is not fetched again.
    storm(&fleet, &before).await;
    assert_eq!(up.blob_gets(&before), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_a_redis_cluster_fetch_once() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterSet::start(dir.path());
    let (one, two) = (blob_of(31, 8 << 20), blob_of(32, 4 << 20));
    let up = Upstream::start(vec![one.clone(), two.clone()], Duration::from_millis(40));
    let fleet = fleet(
        &up,
        &cluster.url(),
        2,
        Extra::default().top("lease_secs", 3),
    )
    .await;
    for m in &fleet {
        let r = readyz(m).await;
        assert!(r.contains(&format!("redis {} up", cluster.url())), "{r}");
        assert_eq!(redis_up(m).await, Some(1.0));
    }
    storm(&fleet, &one).await;
    storm(&fleet, &two).await;
    assert_eq!(
        up.blob_gets(&one),
        1,
        "one upstream download for both replicas"
    );
    assert_eq!(up.blob_gets(&two), 1);
    let keys = cluster.keys_per_node();
    assert!(
        keys.iter().filter(|k| **k > 0).count() >= 2,
        "the fleet's keys spread over the Cluster: {keys:?}"
    );
}

//! Three regmirror processes (own ports, own data directories) coordinated by one real
//! `redis-server`, in front of one counting in-process upstream that streams its blobs slowly
//! enough for fills to overlap. What a user of the fleet sees: one upstream download per blob
//! however the clients spread, the right bytes everywhere, failed (never wrong) transfers when the
//! owner dies, and pulls that keep working while Redis is down.

mod support;

use std::time::{Duration, Instant};

use support::mirror::{Extra, Regmirror};
use support::redis::{wait_coordinated, RedisServer};
use support::replicas::{
    blob_of, blob_url, client, fleet, pull, Upstream, MANIFEST_TYPE, REPO, TAG,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_cold_clients_on_three_replicas_cause_one_upstream_download() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 64 MiB in 1 MiB chunks 40 ms apart: the fill takes about 2.6 s.
    let big = blob_of(1, 64 << 20);
    let up = Upstream::start(vec![big.clone()], Duration::from_millis(40));
    let fleet = fleet(&up, &redis.url(), 3, Extra::default()).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let m = &fleet[i % 3];
        tasks.push((
            i % 3,
            tokio::spawn(pull(client(), blob_url(m, &big), big.bytes.clone())),
        ));
    }
    let mut first: [Option<Instant>; 3] = [None; 3];
    for (replica, t) in tasks {
        let p = t.await.unwrap();
        if let Err(e) = &p.result {
            panic!(
                "a client of replica {replica} failed: {e}\n{}",
                support::mirror::tail(&fleet[replica].log(), 30)
            );
        }
        let f = p.first_byte.unwrap();
        first[replica] = Some(first[replica].map_or(f, |x| x.min(f)));
    }
    assert_eq!(
        up.blob_gets(&big),
        1,
        "one upstream download for the whole fleet"
    );
    let done = *up.sent.lock().unwrap().get(&big.digest).unwrap();
    let owner_first = first.iter().flatten().min().unwrap();
    for (i, f) in first.iter().enumerate() {
        let f = f.unwrap();
        // Joiners stream what the owner has received: their first byte comes long before the
        // upstream finished sending (wide margin: the fill itself takes about 2.6 s).
        assert!(
            f < done,
            "replica {i} waited for the whole blob before its first byte"
        );
        assert!(
            f.duration_since(*owner_first) < Duration::from_millis(1500),
            "replica {i}: first byte {:?} after the owner's",
            f.duration_since(*owner_first)
        );
    }
    // Each replica verified and stored its copy: a warm GET anywhere costs the upstream nothing.
    for m in &fleet {
        let p = pull(client(), blob_url(m, &big), big.bytes.clone()).await;
        p.result.unwrap();
    }
    assert_eq!(up.blob_gets(&big), 1);
    // The internal fill endpoint gives nothing without the fleet's secret.
    let internal = format!("{}/_regmirror/fills/{}", fleet[0].url, big.digest);
    let anonymous = client().get(&internal).send().await.unwrap();
    assert_eq!(anonymous.status(), 404);
    let forged = client()
        .get(&internal)
        .header("x-regmirror-fill-secret", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owner_mid_fill_fails_its_transfers_and_a_retry_elsewhere_succeeds() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 48 MiB, 100 ms a chunk: about 5 s, long enough to kill the owner in the middle.
    let big = blob_of(2, 48 << 20);
    let up = Upstream::start(vec![big.clone()], Duration::from_millis(100));
    let mut fleet = fleet(&up, &redis.url(), 3, Extra::default()).await;
    let on_owner = tokio::spawn(pull(client(), blob_url(&fleet[0], &big), big.bytes.clone()));
    // The owner is downloading: then clients on the other two join it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.blob_gets(&big) == 0 {
        assert!(
            Instant::now() < deadline,
            "the owner never asked the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joiners: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(pull(
                client(),
                blob_url(&fleet[1 + i % 2], &big),
                big.bytes.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet[0].kill9();
    let p = on_owner.await.unwrap();
    assert!(p.result.is_err(), "the owner's client cannot complete");
    assert!(!p.result.unwrap_err().contains("WRONG"));
    for j in joiners {
        match j.await.unwrap().result {
            Ok(()) => {
                panic!("a joiner completed although the owner died mid-fill with one upstream GET")
            }
            Err(e) => assert!(!e.contains("WRONG"), "wrong bytes relayed: {e}"),
        }
    }
    assert_eq!(up.blob_gets(&big), 1, "the joiners followed the owner");
    // The retry on another replica succeeds with the right bytes (a fresh fill: the dead owner's
    // lease expired or is taken over).
    let retry = pull(client(), blob_url(&fleet[1], &big), big.bytes.clone()).await;
    retry.result.unwrap();
    assert_eq!(up.blob_gets(&big), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_and_started_during_pulls_never_gives_wrong_bytes_and_coalescing_resumes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let cached = blob_of(3, 4 << 20);
    let during = blob_of(4, 16 << 20);
    let after = blob_of(5, 16 << 20);
    let fresh = blob_of(6, 16 << 20);
    let up = Upstream::start(
        vec![cached.clone(), during.clone(), after.clone(), fresh.clone()],
        Duration::from_millis(20),
    );
    let fleet = fleet(&up, &redis.url(), 3, Extra::default()).await;
    for m in &fleet {
        pull(client(), blob_url(m, &cached), cached.bytes.clone())
            .await
            .result
            .unwrap();
    }
    assert_eq!(up.blob_gets(&cached), 1);
    // A storm starts, and Redis goes away in the middle of it.
    let storm: Vec<_> = (0..30)
        .map(|i| {
            tokio::spawn(pull(
                client(),
                blob_url(&fleet[i % 3], &during),
                during.bytes.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    for t in storm {
        let r = t.await.unwrap().result;
        assert!(
            r.as_ref().is_ok() || !r.as_ref().unwrap_err().contains("WRONG"),
            "{r:?}"
        );
        r.unwrap_or_else(|e| panic!("a pull failed because Redis stopped: {e}"));
    }
    // Redis down: cached pulls keep working everywhere, a cold blob is coalesced per replica.
    for m in &fleet {
        pull(client(), blob_url(m, &cached), cached.bytes.clone())
            .await
            .result
            .unwrap();
        let text = reqwest::get(format!("{}/readyz", m.url)).await.unwrap();
        assert_eq!(text.status(), 200, "Redis down leaves the replica ready");
        assert!(text.text().await.unwrap().contains("unavailable"));
    }
    let alone: Vec<_> = (0..9)
        .map(|i| {
            tokio::spawn(pull(
                client(),
                blob_url(&fleet[i % 3], &after),
                after.bytes.clone(),
            ))
        })
        .collect();
    for t in alone {
        t.await.unwrap().result.unwrap();
    }
    assert!(
        up.blob_gets(&after) <= 3,
        "per-replica coalescing while Redis is down"
    );
    assert_eq!(up.blob_gets(&cached), 1);
    // Redis is back: coordination resumes.
    redis.spawn();
    for m in &fleet {
        wait_coordinated(m).await;
    }
    let storm: Vec<_> = (0..30)
        .map(|i| {
            tokio::spawn(pull(
                client(),
                blob_url(&fleet[i % 3], &fresh),
                fresh.bytes.clone(),
            ))
        })
        .collect();
    for t in storm {
        t.await.unwrap().result.unwrap();
    }
    assert_eq!(up.blob_gets(&fresh), 1, "one download for the fleet again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_revalidated_on_one_replica_is_fresh_on_the_others() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cfg = blob_of(8, 1024);
    let up = Upstream::start(vec![cfg], Duration::from_millis(0));
    let fleet = fleet(
        &up,
        &redis.url(),
        3,
        Extra::default().upstream("tag_ttl_secs", 2),
    )
    .await;
    let get = |m: &Regmirror| {
        let url = format!("{}/v2/{REPO}/manifests/{TAG}", m.url);
        async move {
            let r = client()
                .get(url)
                .header("accept", MANIFEST_TYPE)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.headers()
                .get("docker-content-digest")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(get(&fleet[0]).await, up.manifest_digest);
    assert_eq!(up.tag_requests(), 1);
    // B and C have never seen the tag: the shared record answers, no tag request upstream.
    assert_eq!(get(&fleet[1]).await, up.manifest_digest);
    assert_eq!(get(&fleet[2]).await, up.manifest_digest);
    assert_eq!(
        up.tag_requests(),
        1,
        "the record A confirmed is fresh on B and C"
    );
    // Past the TTL: A revalidates (one HEAD); B and C then find it fresh.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(get(&fleet[0]).await, up.manifest_digest);
    wait_for(|| up.tag_requests() == 2).await;
    assert_eq!(get(&fleet[1]).await, up.manifest_digest);
    assert_eq!(get(&fleet[2]).await, up.manifest_digest);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.tag_requests(), 2, "revalidated once for the fleet");
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held");
}

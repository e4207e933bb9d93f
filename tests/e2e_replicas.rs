//! Three regmirror processes (own ports, own data directories) coordinated by one real
//! `redis-server`, in front of one counting in-process upstream that streams its blobs slowly
//! enough for fills to overlap. What a user of the fleet sees: one upstream download per blob
//! however the clients spread, the right bytes everywhere, failed (never wrong) transfers when the
//! owner dies, and pulls that keep working while Redis is down.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use support::background::BackgroundServer;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::redis::{wait_coordinated, RedisServer};

const REPO: &str = "team/app";
const TAG: &str = "v1";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A blob of the counting upstream.
#[derive(Clone)]
struct UpBlob {
    bytes: Bytes,
    digest: String,
}

fn blob_of(seed: u32, size: usize) -> UpBlob {
    let v = support::faults::random_bytes(size, u64::from(seed));
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&v)));
    UpBlob {
        bytes: Bytes::from(v),
        digest,
    }
}

/// The counting upstream: blobs streamed in 1 MiB chunks `delay` apart, one tagged manifest.
struct Upstream {
    server: BackgroundServer,
    /// (method, path) -> requests.
    counts: Arc<Mutex<HashMap<(String, String), usize>>>,
    /// When each blob's last GET finished sending.
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    manifest_digest: String,
}

impl Upstream {
    fn start(blobs: Vec<UpBlob>, delay: Duration) -> Upstream {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0].digest, "size": blobs[0].bytes.len()},
            "layers": [],
        }))
        .unwrap();
        let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        let manifest = Bytes::from(manifest);
        let by_digest: Arc<HashMap<String, UpBlob>> =
            Arc::new(blobs.into_iter().map(|b| (b.digest.clone(), b)).collect());
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let (c, s, md) = (counts.clone(), sent.clone(), manifest_digest.clone());
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let (c, s, blobs, m, md) = (
                c.clone(),
                s.clone(),
                by_digest.clone(),
                manifest.clone(),
                md.clone(),
            );
            async move {
                let path = req.uri().path().to_string();
                let head = req.method() == Method::HEAD;
                *c.lock()
                    .unwrap()
                    .entry((req.method().to_string(), path.clone()))
                    .or_default() += 1;
                let builder =
                    Response::builder().header("docker-distribution-api-version", "registry/2.0");
                if path == "/v2/" {
                    return builder.status(200).body(Body::empty()).unwrap();
                }
                if path == format!("/v2/{REPO}/manifests/{TAG}")
                    || path == format!("/v2/{REPO}/manifests/{md}")
                {
                    return builder
                        .status(200)
                        .header("content-type", MANIFEST_TYPE)
                        .header("docker-content-digest", &md)
                        .header("content-length", m.len())
                        .body(if head { Body::empty() } else { Body::from(m) })
                        .unwrap();
                }
                let Some(d) = path.strip_prefix(&format!("/v2/{REPO}/blobs/")) else {
                    return builder.status(404).body(Body::empty()).unwrap();
                };
                let Some(b) = blobs.get(d).cloned() else {
                    return builder.status(404).body(Body::empty()).unwrap();
                };
                let builder = builder
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .header("docker-content-digest", &b.digest)
                    .header("content-length", b.bytes.len());
                if head {
                    return builder.body(Body::empty()).unwrap();
                }
                let chunks: Vec<Bytes> = (0..b.bytes.len())
                    .step_by(1 << 20)
                    .map(|i| b.bytes.slice(i..(i + (1 << 20)).min(b.bytes.len())))
                    .collect();
                let n = chunks.len();
                let digest = b.digest.clone();
                let body = futures::stream::iter(chunks.into_iter().enumerate()).then(
                    move |(i, chunk)| {
                        let (s, digest) = (s.clone(), digest.clone());
                        async move {
                            tokio::time::sleep(delay).await;
                            if i + 1 == n {
                                s.lock().unwrap().insert(digest, Instant::now());
                            }
                            Ok::<_, std::io::Error>(chunk)
                        }
                    },
                );
                builder.body(Body::from_stream(body)).unwrap()
            }
        });
        Upstream {
            server: BackgroundServer::start(router),
            counts,
            sent,
            manifest_digest,
        }
    }

    fn count(&self, method: &str, path: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(&(method.to_string(), path.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn blob_gets(&self, b: &UpBlob) -> usize {
        self.count("GET", &format!("/v2/{REPO}/blobs/{}", b.digest))
    }

    fn tag_requests(&self) -> usize {
        let p = format!("/v2/{REPO}/manifests/{TAG}");
        self.count("GET", &p) + self.count("HEAD", &p)
    }
}

/// Three replicas on one Redis, in front of `up`.
async fn fleet(up: &Upstream, redis: &RedisServer, extra_up: Extra) -> Vec<Regmirror> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let name = up.server.addr.to_string();
        let mut config = MirrorConfig::new(vec![UpstreamEntry::new(&name, &up.server.url())]);
        config.no_builtin_upstreams = true;
        config.default_upstream = name;
        config.extra = Extra {
            top: extra_up.top.clone(),
            upstream: extra_up.upstream.clone(),
        }
        .top("redis_url", redis.url())
        .top("lease_secs", 3);
        out.push(Regmirror::start(config).await);
    }
    // Every replica has learnt the fleet's secret and announced itself.
    for m in &out {
        wait_coordinated(m).await;
    }
    out
}

/// What one client got.
struct Pull {
    first_byte: Option<Instant>,
    result: Result<(), String>,
}

/// GET a blob and compare every byte with what the upstream holds (byte equality: the sha256
/// of what was received is the blob's).
async fn pull(client: reqwest::Client, url: String, want: Bytes) -> Pull {
    let resp = match client.get(&url).send().await {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => {
            return Pull {
                first_byte: None,
                result: Err(format!("status {}", r.status())),
            }
        }
        Err(e) => {
            return Pull {
                first_byte: None,
                result: Err(e.to_string()),
            }
        }
    };
    let mut stream = resp.bytes_stream();
    let mut pos = 0usize;
    let mut first_byte = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return Pull {
                    first_byte,
                    result: Err(format!("cut at {pos}: {e}")),
                }
            }
        };
        first_byte.get_or_insert_with(Instant::now);
        if pos + chunk.len() > want.len() || chunk[..] != want[pos..pos + chunk.len()] {
            return Pull {
                first_byte,
                result: Err(format!("WRONG BYTES at {pos}")),
            };
        }
        pos += chunk.len();
    }
    let result = if pos == want.len() {
        Ok(())
    } else {
        Err(format!("short: {pos} bytes"))
    };
    Pull { first_byte, result }
}

fn blob_url(m: &Regmirror, b: &UpBlob) -> String {
    format!("{}/v2/{REPO}/blobs/{}", m.url, b.digest)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_cold_clients_on_three_replicas_cause_one_upstream_download() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 64 MiB in 1 MiB chunks 40 ms apart: the fill takes about 2.6 s.
    let big = blob_of(1, 64 << 20);
    let up = Upstream::start(vec![big.clone()], Duration::from_millis(40));
    let fleet = fleet(&up, &redis, Extra::default()).await;
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
    let mut fleet = fleet(&up, &redis, Extra::default()).await;
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
    let fleet = fleet(&up, &redis, Extra::default()).await;
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
    let fleet = fleet(&up, &redis, Extra::default().upstream("tag_ttl_secs", 2)).await;
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

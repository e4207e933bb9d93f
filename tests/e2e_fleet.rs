//! The fleet of issue 14 with every part real: three `regmirror` processes (own ports, own data
//! directories) with `storage = "s3"` on ONE bucket of a real S3 server (`s3s-fs`, SigV4
//! checked) and ONE `redis-server`, in front of Debian's `docker-registry` (distribution), whose
//! access log does the counting.
//!
//! - 60 concurrent cold GETs of one 256 MB blob spread over the three -> one upstream GET, every
//!   client's sha256 right, every replica's first byte within 1 s of the owner's;
//! - skopeo and containerd pull a multi-arch image through replica A; A is killed; they pull it
//!   through replica B from the bucket with no upstream blob or manifest request, the tag A
//!   revalidated staying fresh on B;
//! - kill -9 of the owner mid-fill (the upstream behind a narrow link): its clients see a failed
//!   transfer, a retry on another replica gets the right digest, nothing partial is under a final
//!   key, and the abandoned multipart upload is aborted by the janitor.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use support::clients::{client_config_write, Containerd, CONTAINERD_TOOLS};
use support::faults::{metric, wait_for};
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::netfaults::{Mode, Relay};
use support::redis::{wait_coordinated, RedisServer};
use support::registry::Registry;
use support::s3::{credentials_in_env, S3Server};
use support::seed::seed;
use support::skopeo::{self, assert_multi_copy, CopyOptions};

/// The alias skopeo references use (`<mirror>/up/<repo>:<tag>`).
const ALIAS: &str = "up";
/// What a joiner logs when it reads a fill from the owner replica (src/cache/peer_fills.rs).
const JOINED: &str = "joining the fill of another replica";

/// The shared parts: one bucket, one Redis.
struct Shared {
    s3: S3Server,
    redis: RedisServer,
}

/// S3 and Redis, or None (after saying why) when a server is missing and e2e is optional.
async fn shared() -> Option<Shared> {
    let s3 = S3Server::start().await?;
    let redis = RedisServer::start()?;
    credentials_in_env();
    Some(Shared { s3, redis })
}

/// `n` replicas on the shared bucket and Redis in front of the upstream `host` (at `url`), each
/// coordinated (it learnt the fleet's secret and announced itself) before this returns.
async fn fleet(n: usize, host: &str, url: &str, sh: &Shared, extra: Extra) -> Vec<Regmirror> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut config = MirrorConfig::new(vec![UpstreamEntry::new(host, url).alias(ALIAS)]);
        config.no_builtin_upstreams = true;
        config.default_upstream = String::new();
        config.extra = extra
            .clone()
            .top("redis_url", sh.redis.url())
            .top("lease_secs", 3);
        out.push(Regmirror::start(sh.s3.configure(config, toml::Table::new())).await);
    }
    for m in &out {
        wait_coordinated(m).await;
    }
    out
}

/// `n` incompressible bytes, fast to make: a 1 MiB random block repeated, each MiB stamped with
/// its index (no two MiB alike).
fn big_bytes(n: usize, seed: u64) -> Vec<u8> {
    let block = support::faults::random_bytes(1 << 20, seed);
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        let at = out.len();
        out.extend_from_slice(&block[..block.len().min(n - at)]);
        let stamp = i.to_le_bytes();
        let end = (at + 8).min(out.len());
        out[at..end].copy_from_slice(&stamp[..end - at]);
        i += 1;
    }
    out
}

/// Push `bytes` as a blob of `repo` straight to the registry (one POST, one monolithic PUT of
/// the bytes, never copied); returns its digest.
async fn push_big(registry: &Registry, repo: &str, bytes: Vec<u8>) -> String {
    let digest = support::env::sha256_digest(&bytes);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let start = http
        .post(format!("{}/v2/{repo}/blobs/uploads/", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202, "start the upload");
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let mut url = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", registry.url())
    };
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("digest={digest}"));
    let put = http
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "push {digest}: {:?}", put.text().await);
    digest
}

/// What one client got: when its first body byte arrived, how many bytes, their digest (when
/// the body ended normally), or why it failed.
struct Pull {
    first_byte: Option<Instant>,
    bytes: u64,
    result: Result<String, String>,
}

/// GET `url`, hashing while streaming (nothing kept); `progress` counts the bytes received.
async fn pull(url: String, progress: Option<Arc<AtomicU64>>) -> Pull {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(150))
        .build()
        .unwrap();
    let mut p = Pull {
        first_byte: None,
        bytes: 0,
        result: Err(String::new()),
    };
    let resp = match client.get(&url).send().await {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => {
            p.result = Err(format!("status {}", r.status()));
            return p;
        }
        Err(e) => {
            p.result = Err(e.to_string());
            return p;
        }
    };
    let mut hash = Sha256::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                p.first_byte.get_or_insert_with(Instant::now);
                hash.update(&c);
                p.bytes += c.len() as u64;
                if let Some(n) = &progress {
                    n.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
            }
            Err(e) => {
                p.result = Err(format!("cut after {} bytes: {e}", p.bytes));
                return p;
            }
        }
    }
    p.result = Ok(format!("sha256:{}", hex::encode(hash.finalize())));
    p
}

fn blob_url(m: &Regmirror, repo: &str, digest: &str) -> String {
    format!("{}/v2/{ALIAS}/{repo}/blobs/{digest}", m.url)
}

/// The sha256 of a file, read in pieces.
fn file_sha256(p: &std::path::Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// Every object under `blobs/` of the bucket holds the bytes its key names: nothing partial or
/// wrong is under a final key. Returns how many there are.
fn assert_blob_objects_whole(s3: &S3Server) -> usize {
    let objects = support::env::files_under(&s3.cache_dir().join("blobs"));
    for o in &objects {
        let hex = o.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            file_sha256(o),
            format!("sha256:{hex}"),
            "object {} holds other bytes than its key names",
            o.display()
        );
    }
    objects.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_cold_gets_of_256mb_over_three_replicas_on_one_bucket_make_one_upstream_get() {
    require_tools!(&["docker-registry"]);
    let Some(sh) = shared().await else { return };
    let registry = Registry::plain().await;
    let repo = "big/blob";
    let size = 256_000_000usize;
    let digest = push_big(&registry, repo, big_bytes(size, 14)).await;
    let fleet = fleet(3, &registry.host(), &registry.url(), &sh, Extra::default()).await;

    let started = Instant::now();
    let clients: Vec<_> = (0..60)
        .map(|i| {
            let url = blob_url(&fleet[i % 3], repo, &digest);
            (i % 3, tokio::spawn(pull(url, None)))
        })
        .collect();
    let mut first: [Option<Instant>; 3] = [None; 3];
    for (replica, c) in clients {
        let p = c.await.unwrap();
        match &p.result {
            Ok(d) => assert_eq!(*d, digest, "a client of replica {replica} got other bytes"),
            Err(e) => panic!(
                "a client of replica {replica} failed: {e}\n{}",
                support::mirror::tail(&fleet[replica].log(), 30)
            ),
        }
        assert_eq!(p.bytes, size as u64);
        let f = p.first_byte.unwrap();
        first[replica] = Some(first[replica].map_or(f, |x| x.min(f)));
    }
    let storm = started.elapsed();
    assert_eq!(
        registry.count_blob_gets(repo, &digest),
        1,
        "one upstream GET of the blob for the whole fleet (distribution's access log)"
    );
    // The owner is the one replica that did not join another's fill.
    let owners: Vec<usize> = (0..3)
        .filter(|i| !fleet[*i].log().contains(JOINED))
        .collect();
    assert_eq!(owners.len(), 1, "exactly one replica owned the fill");
    let owner_first = first[owners[0]].unwrap();
    // Each replica's earliest first byte, against the owner's (negative: before it).
    let offsets: Vec<f64> = first
        .iter()
        .map(|f| {
            let f = f.unwrap();
            match f.checked_duration_since(owner_first) {
                Some(d) => d.as_secs_f64(),
                None => -owner_first.duration_since(f).as_secs_f64(),
            }
        })
        .collect();
    for (i, gap) in offsets.iter().enumerate() {
        assert!(
            gap.abs() < 1.0,
            "replica {i}: first byte {gap:.3} s from the owner's"
        );
    }
    eprintln!(
        "MEASURED: 60 x {size} bytes over 3 replicas in {storm:?}; owner replica {}; first byte per replica relative to the owner's (ms): {:?}",
        owners[0],
        offsets.iter().map(|g| (g * 1e4).round() / 10.0).collect::<Vec<_>>()
    );
    let resent: usize = fleet
        .iter()
        .map(|m| m.log().matches("streaming upload failed").count())
        .sum();
    eprintln!("streaming uploads that failed and fell back to the local copy: {resent}");
    // One replica wrote the blob to the bucket; the two that relayed it only verified it
    // (8 MiB parts: one copy is 31 of them; three copies would be 93).
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut parts = 0.0;
    for m in &fleet {
        let text = m.metrics_text(&http).await;
        parts += metric(
            &text,
            "regmirror_s3_request_duration_seconds_count",
            &[("op", "part")],
        )
        .unwrap_or(0.0);
    }
    let one_copy = (size as f64 / (8 << 20) as f64).ceil();
    eprintln!("MEASURED: {parts} S3 part uploads across the fleet (one copy: {one_copy})");
    assert!(
        parts <= one_copy * (1 + resent) as f64 + 1.0,
        "{parts} parts uploaded: the blob was written to the bucket more than once"
    );
    // The blob is committed once, whole, under its key; no multipart upload is left behind.
    assert_eq!(file_sha256(&sh.s3.blob_object(&digest)), digest);
    wait_for("no multipart upload left", Duration::from_secs(20), || {
        (sh.s3.server_uploads() == 0 && sh.s3.upload_records() == 0).then_some(())
    })
    .await;
}

/// `client-config containerd` hosts files sending `registry` to `mirror`.
fn containerd_hosts(dir: &std::path::Path, mirror: &Regmirror, registry: &str) {
    client_config_write(
        &[
            "containerd",
            "--mirror",
            &mirror.url,
            "--registry",
            registry,
        ],
        dir,
    );
}

/// Requests for the tag `v1` of `repo` in the registry's log (HEAD or GET).
fn tag_requests(registry: &Registry, repo: &str) -> usize {
    let path = format!("/v2/{repo}/manifests/v1");
    registry.count_requests("HEAD", &path) + registry.count_requests("GET", &path)
}

/// Upstream requests for manifests or blobs of `repo`.
fn content_requests(registry: &Registry, repo: &str) -> usize {
    ["GET", "HEAD"]
        .iter()
        .map(|m| {
            registry.count_prefix(m, &format!("/v2/{repo}/manifests/"))
                + registry.count_prefix(m, &format!("/v2/{repo}/blobs/"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_containerd_pull_through_b_from_the_bucket_after_a_is_killed() {
    let mut tools = vec!["docker-registry", "skopeo"];
    tools.extend(CONTAINERD_TOOLS);
    require_tools!(&tools);
    let Some(sh) = shared().await else { return };
    let registry = Registry::plain().await;
    let repo = "library/busybox";
    let seeded = seed(&registry, repo, "library/hello", "fleet e2e").await;
    const TTL: u64 = 10;
    let extra = Extra::default().upstream("tag_ttl_secs", TTL as i64);
    let mut fleet = fleet(2, &registry.host(), &registry.url(), &sh, extra).await;
    let work = tempfile::tempdir().unwrap();
    let all = CopyOptions {
        all: true,
        ..Default::default()
    };
    let reference = |m: &Regmirror| format!("{}/{ALIAS}/{repo}:v1", m.addr());
    let ctr_name = format!("{}/{repo}:v1", registry.host());
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap();
    let ctr_pull = |ns: &str, hosts: &std::path::Path| {
        let out = containerd.pull(ns, hosts, &ctr_name);
        assert!(
            out.status.success(),
            "ctr image pull {ctr_name} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            containerd.image_digest(ns, &ctr_name).as_deref(),
            Some(seeded.index.manifest.digest.as_str()),
            "{ns}: ctr image ls shows the pushed index digest"
        );
        let content = containerd.content_digests(ns);
        for d in seeded.index.child("amd64").digests() {
            assert!(content.contains(&d), "{ns}: containerd holds {d}");
        }
    };

    // Through A: the tag is fetched, then revalidated once its TTL has passed.
    let fetched = Instant::now();
    let copy = skopeo::copy(&reference(&fleet[0]), work.path(), &all)
        .await
        .unwrap();
    assert_multi_copy(&copy, &seeded.index, "skopeo through A");
    let hosts_a = work.path().join("hosts-a");
    containerd_hosts(&hosts_a, &fleet[0], &registry.host());
    ctr_pull("through-a", &hosts_a);
    let tag_after_fetch = tag_requests(&registry, repo);
    assert!(tag_after_fetch >= 1, "A asked the upstream for the tag");
    tokio::time::sleep(Duration::from_secs(TTL).saturating_sub(fetched.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let manifest = reqwest::Client::new()
        .get(format!("{}/v2/{ALIAS}/{repo}/manifests/v1", fleet[0].url))
        .header("accept", seeded.index.manifest.media_type.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(
        manifest.headers()["docker-content-digest"],
        seeded.index.manifest.digest.as_str()
    );
    wait_for(
        "A to revalidate the tag past its TTL",
        Duration::from_secs(10),
        || (tag_requests(&registry, repo) > tag_after_fetch).then_some(()),
    )
    .await;
    let revalidated = Instant::now();
    // Let the background work of the revalidation reach the log before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = content_requests(&registry, repo);
    let lines_before = registry.access_lines().len();

    // A is killed; B (never asked for this image, no local tier) serves it from the bucket.
    fleet[0].kill9();
    let copy = skopeo::copy(&reference(&fleet[1]), work.path(), &all)
        .await
        .unwrap();
    assert_multi_copy(&copy, &seeded.index, "skopeo through B, A killed");
    let hosts_b = work.path().join("hosts-b");
    containerd_hosts(&hosts_b, &fleet[1], &registry.host());
    ctr_pull("through-b", &hosts_b);
    let within = revalidated.elapsed();
    eprintln!(
        "MEASURED: B's skopeo and ctr pulls ended {within:?} after A's revalidation (TTL {TTL} s)"
    );
    assert!(
        within < Duration::from_secs(TTL),
        "B's pulls ended within the TTL of A's revalidation ({within:?}): the check below means something"
    );
    assert_eq!(
        content_requests(&registry, repo),
        before,
        "B sent no manifest or blob request upstream, nor revalidated the tag:\n{}",
        registry.access_lines()[lines_before..].join("\n")
    );
    assert_eq!(
        registry.access_lines().len(),
        lines_before,
        "no upstream request at all"
    );
    let served = fleet[1].requests();
    assert!(
        served
            .iter()
            .any(|r| r.path.contains("/blobs/") && r.status == 200),
        "B served the blobs itself"
    );
    drop(containerd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_owner_mid_fill_fails_its_clients_and_a_retry_on_another_replica_succeeds() {
    require_tools!(&["docker-registry"]);
    let Some(sh) = shared().await else { return };
    let registry = Registry::plain().await;
    let repo = "crash/blob";
    let size = 40 << 20;
    let digest = push_big(&registry, repo, big_bytes(size, 9)).await;
    // The fleet reaches distribution through a 5 MiB/s link: a fill takes about 8 s.
    let mut link = Relay::start(&registry.host()).await;
    link.set(Mode::Throttle(5 << 20)).await;
    let mut fleet = fleet(3, &link.host(), &link.url(), &sh, Extra::default()).await;

    let progress = Arc::new(AtomicU64::new(0));
    let on_owner: Vec<_> = (0..2)
        .map(|_| {
            let url = blob_url(&fleet[0], repo, &digest);
            tokio::spawn(pull(url, Some(progress.clone())))
        })
        .collect();
    // Mid-fill: each of the two clients has 18 MiB (more than two 8 MiB parts), and the
    // multipart upload is open at the server.
    wait_for("the owner's fill half way", Duration::from_secs(30), || {
        (progress.load(Ordering::Relaxed) >= 2 * (18 << 20) && sh.s3.server_uploads() >= 1)
            .then_some(())
    })
    .await;
    assert!(
        !sh.s3.blob_object(&digest).exists(),
        "nothing under the final key while the fill runs"
    );
    fleet[0].kill9();
    for c in on_owner {
        let p = c.await.unwrap();
        assert!(
            p.result.is_err(),
            "a client of the killed owner saw its transfer complete ({} bytes)",
            p.bytes
        );
        assert!(p.bytes < size as u64, "the transfer was cut short");
    }
    assert!(
        !sh.s3.blob_object(&digest).exists(),
        "nothing under the final key after kill -9"
    );
    assert_blob_objects_whole(&sh.s3);
    assert!(
        sh.s3.server_uploads() >= 1,
        "the killed fill left its multipart upload at the server"
    );

    // The retry on another replica (the link at full speed again): the dead owner's lease is
    // taken over, the bytes are right.
    link.set(Mode::Forward).await;
    let retry = pull(blob_url(&fleet[1], repo, &digest), None).await;
    assert_eq!(retry.result, Ok(digest.clone()), "the retry on replica B");
    assert_eq!(file_sha256(&sh.s3.blob_object(&digest)), digest);
    assert_eq!(assert_blob_objects_whole(&sh.s3), 1);
    // The janitor of the live replicas aborts the abandoned upload and drops its record.
    wait_for(
        "the abandoned multipart upload to be aborted",
        Duration::from_secs(20),
        || (sh.s3.server_uploads() == 0 && sh.s3.upload_records() == 0).then_some(()),
    )
    .await;
    // And C, which never saw the blob, serves it from the bucket.
    let from_c = pull(blob_url(&fleet[2], repo, &digest), None).await;
    assert_eq!(from_c.result, Ok(digest.clone()));
    drop(link);
}

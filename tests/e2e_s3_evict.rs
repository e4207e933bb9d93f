//! Eviction of a shared bucket (issue 14): two regmirror processes on one bucket of a real S3
//! server (`s3s-fs`, SigV4 checked) and one `redis-server`, with `max_size = "10MiB"` and a run
//! every second on each, in front of an in-process upstream.
//!
//! - the least recently used across both replicas goes first: a blob written first but read
//!   later through the other replica (recorded in Redis) outlives one written after it;
//! - one replica at a time evicts (the lease): both count runs, and runs skipped for the lease;
//! - a blob a slow client of B is reading is not deleted by whichever replica evicts (the client
//!   gets every byte), and `regmirror cache gc` removes it once the read ended;
//! - `regmirror cache ls|du|rm` against the bucket show and remove what the bucket holds, and
//!   name the bucket when it cannot be reached;
//! - Redis stopped: no replica (nor `cache gc`) evicts the bucket, and the skips are counted.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Response};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::background::BackgroundServer;
use support::env::free_port;
use support::faults::metric;
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::redis::RedisServer;
use support::s3::{credentials_in_env, S3Server};

const REPO: &str = "team/app";
const TAG: &str = "v1";
const MIB: usize = 1 << 20;

/// Deterministic bytes of one blob, and its digest.
fn blob(seed: u8, size: usize) -> (Bytes, String) {
    let v = support::faults::random_bytes(size, u64::from(seed));
    let d = format!("sha256:{}", hex::encode(Sha256::digest(&v)));
    (Bytes::from(v), d)
}

/// The upstream: the blobs by digest under `REPO`, and `REPO:TAG` (config + one layer).
fn upstream(
    blobs: Vec<(Bytes, String)>,
    manifest: Bytes,
    manifest_digest: String,
) -> BackgroundServer {
    let by_digest: Arc<BTreeMap<String, Bytes>> =
        Arc::new(blobs.into_iter().map(|(b, d)| (d, b)).collect());
    let router = axum::Router::new().fallback(move |req: Request<Body>| {
        let (blobs, m, md) = (by_digest.clone(), manifest.clone(), manifest_digest.clone());
        async move {
            let path = req.uri().path().to_string();
            let head = req.method() == Method::HEAD;
            let r = Response::builder().header("docker-distribution-api-version", "registry/2.0");
            if path == "/v2/" {
                return r.status(200).body(Body::empty()).unwrap();
            }
            let (body, ct, digest) = if path == format!("/v2/{REPO}/manifests/{TAG}")
                || path == format!("/v2/{REPO}/manifests/{md}")
            {
                (m, "application/vnd.oci.image.manifest.v1+json", md)
            } else if let Some(b) = path
                .strip_prefix(&format!("/v2/{REPO}/blobs/"))
                .and_then(|d| blobs.get(d))
            {
                let d = path.rsplit('/').next().unwrap_or_default().to_string();
                (b.clone(), "application/octet-stream", d)
            } else {
                return r.status(404).body(Body::empty()).unwrap();
            };
            r.status(200)
                .header("content-type", ct)
                .header("docker-content-digest", digest)
                .header("content-length", body.len())
                .body(if head {
                    Body::empty()
                } else {
                    Body::from(body)
                })
                .unwrap()
        }
    });
    BackgroundServer::start(router)
}

/// Blob keys in the bucket, as s3s-fs stores them on its disk: hex -> size.
fn bucket_blobs(bucket: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in support::env::files_under(&bucket.join("blobs")) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        // s3s-fs keeps its own metadata files beside the objects.
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Eviction may delete an object between the listing and this look: it is gone.
            if let Ok(m) = std::fs::metadata(&f) {
                out.insert(name, m.len());
            }
        }
    }
    out
}

fn hex_of(d: &str) -> String {
    d.trim_start_matches("sha256:").to_string()
}

async fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn get_all(url: &str) -> Bytes {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.bytes().await.unwrap()
}

async fn metrics(m: &Regmirror) -> String {
    reqwest::get(format!("{}/metrics", m.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Objects eviction kept because a client was reading them, summed over `fleet`.
async fn kept_in_use(fleet: &[&Regmirror]) -> f64 {
    let mut n = 0.0;
    for m in fleet {
        n += metric(
            &metrics(m).await,
            "regmirror_eviction_kept_in_use_total",
            &[],
        )
        .unwrap_or(0.0);
    }
    n
}

async fn runs(m: &Regmirror, result: &str) -> f64 {
    metric(
        &metrics(m).await,
        "regmirror_eviction_runs_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

/// `regmirror cache gc --max-size MAX` with `m`'s config, retried while a server holds the
/// eviction lease for a moment; (attempts, stdout).
async fn gc(m: &Regmirror, max: &str) -> (usize, String) {
    for attempt in 1..=20 {
        let (ok, out, err) = m.cache_cli(&["gc", "--max-size", max]);
        if ok {
            return (attempt, out);
        }
        assert!(err.contains("holds the eviction lease"), "gc failed: {err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("gc never got the eviction lease");
}

/// A client reading a blob slowly: a small receive window, `first` bytes read, then nothing
/// until [`SlowRead::finish`].
struct SlowRead {
    stream: tokio::net::TcpStream,
    length: usize,
    body: Vec<u8>,
}

impl SlowRead {
    async fn start(addr: &str, path: &str, first: usize) -> SlowRead {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length: {head}"));
        let mut body = buf[head_end..].to_vec();
        while body.len() < first {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "cut at {}", body.len());
            body.extend_from_slice(&chunk[..n]);
        }
        SlowRead {
            stream,
            length,
            body,
        }
    }

    async fn finish(mut self) -> Vec<u8> {
        let mut chunk = vec![0u8; 64 * 1024];
        while self.body.len() < self.length {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "cut at {} of {}", self.body.len(), self.length);
            self.body.extend_from_slice(&chunk[..n]);
        }
        self.body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_bucket_eviction_lru_across_replicas_one_evicter_readers_kept_and_cli() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    credentials_in_env();
    let root = tempfile::tempdir().unwrap();
    let bucket = s3.cache_dir();

    // x, y, z, w: 3 MiB each; g: 8 MiB (the slow read); h: 3 MiB; the image: config + layer.
    let [x, y, z, w, h] = [1u8, 2, 3, 4, 5].map(|s| blob(s, 3 * MIB));
    let g = blob(6, 8 * MIB);
    let (config, layer) = (blob(7, 1000), blob(8, 200_000));
    let manifest = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.1, "size": 1000},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.1, "size": 200_000}],
        }))
        .unwrap(),
    );
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    let up = upstream(
        vec![
            x.clone(),
            y.clone(),
            z.clone(),
            w.clone(),
            h.clone(),
            g.clone(),
            config.clone(),
            layer.clone(),
        ],
        manifest,
        manifest_digest.clone(),
    );
    let name = up.addr.to_string();
    let replica = || {
        let mut c = MirrorConfig::new(vec![UpstreamEntry::new(&name, &up.url())]);
        c.no_builtin_upstreams = true;
        c.default_upstream = name.clone();
        c = s3.configure(c, toml::Table::new());
        c.extra = c
            .extra
            .top("redis_url", redis.url())
            .top("lease_secs", 3)
            .top("max_size", "10MiB")
            .top("gc_interval_secs", 1);
        c
    };
    let a = Regmirror::start(replica()).await;
    let b = Regmirror::start(replica()).await;
    let blob_path = |d: &str| format!("/v2/{REPO}/blobs/{d}");
    let pull = |m: &Regmirror, d: &str| format!("{}{}", m.url, blob_path(d));

    // 1. x, y, z written in this order through A (a second apart: S3 times are in seconds).
    for (bytes, d) in [&x, &y, &z] {
        assert_eq!(&get_all(&pull(&a, d)).await, bytes);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // B reads x: only Redis knows (S3 keeps x's write time). Then w through B: 12 MiB > 10.
    assert_eq!(get_all(&pull(&b, &x.1)).await, x.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        bucket_blobs(&bucket).len(),
        3,
        "9 MiB fit: nothing evicted yet"
    );
    assert_eq!(get_all(&pull(&b, &w.1)).await, w.0);
    wait_until("one blob is evicted", 20, || {
        bucket_blobs(&bucket).len() == 3
    })
    .await;
    let left = bucket_blobs(&bucket);
    assert!(
        !left.contains_key(&hex_of(&y.1)),
        "y (written after x, never read) goes first: {left:?}"
    );
    for d in [&x.1, &z.1, &w.1] {
        assert!(left.contains_key(&hex_of(d)), "{d} stays: {left:?}");
    }

    // 2. g (8 MiB) through A: x, z, w go (least recently used first), g stays.
    assert_eq!(get_all(&pull(&a, &g.1)).await, g.0);
    wait_until("only g is left", 20, || {
        bucket_blobs(&bucket).keys().collect::<Vec<_>>() == vec![&hex_of(&g.1)]
    })
    .await;

    // A client of B reads g slowly; h arrives through A: g is now the least recently used and
    // over the limit, but being read on B: h goes instead, g stays in the bucket.
    let kept_before = kept_in_use(&[&a, &b]).await;
    // The read stays open only if g does not fit in B's socket send buffer (Linux default 4 MiB).
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 * MIB);
    assert!(
        wmem_max + MIB < g.0.len(),
        "net.ipv4.tcp_wmem allows {wmem_max} bytes of send buffer: g (8 MiB) would not stay in flight"
    );
    let slow = SlowRead::start(&b.addr(), &blob_path(&g.1), 256 * 1024).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_all(&pull(&a, &h.1)).await, h.0);
    wait_until("h is evicted", 20, || {
        !bucket_blobs(&bucket).contains_key(&hex_of(&h.1))
    })
    .await;
    // `cache gc` is a process of its own: it knows B's read only from Redis, and keeps g too.
    let (_, out) = gc(&a, "1MiB").await;
    assert!(out.starts_with("evicted 0 object(s)"), "{out}");
    assert!(
        bucket_blobs(&bucket).contains_key(&hex_of(&g.1)),
        "g is being read on B: never deleted"
    );
    let kept_after = kept_in_use(&[&a, &b]).await;
    assert!(kept_after > kept_before, "g was counted as kept in use");
    let got = slow.finish().await;
    assert_eq!(got.len(), g.0.len());
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&got))),
        g.1,
        "the slow client got every byte of g"
    );

    // One replica at a time: both ran, and runs were skipped for the lease.
    let (ran_a, ran_b) = (runs(&a, "ran").await, runs(&b, "ran").await);
    let skipped = runs(&a, "skipped_lease").await + runs(&b, "skipped_lease").await;
    assert!(
        ran_a >= 1.0 && ran_b >= 1.0,
        "both replicas ran: {ran_a} {ran_b}"
    );
    assert!(
        skipped >= 1.0,
        "a replica skipped while the other held the lease"
    );
    assert_eq!(runs(&a, "skipped_redis_down").await, 0.0);

    // 3. The read ended: `cache gc` (through the lease, which a server may hold for a moment)
    // removes g.
    let mut gone = false;
    for _ in 0..10 {
        let (_, out) = gc(&a, "1MiB").await;
        if !bucket_blobs(&bucket).contains_key(&hex_of(&g.1)) {
            assert!(out.starts_with("evicted 1 object(s), 8.0 MiB"), "{out}");
            gone = true;
            break;
        }
        // B withdraws its read within a second of its end.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gone, "gc removed g once its read ended");
    assert!(bucket_blobs(&bucket).is_empty());

    // 4. The CLI on the bucket: an image pulled through B.
    let manifest_url = format!("{}/v2/{REPO}/manifests/{TAG}", b.url);
    let m = reqwest::Client::new()
        .get(&manifest_url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    for (bytes, d) in [&config, &layer] {
        assert_eq!(&get_all(&pull(&b, d)).await, bytes);
    }
    let (ok, ls, err) = b.cache_cli(&["ls"]);
    assert!(ok, "{err}");
    let line = ls
        .lines()
        .find(|l| l.contains(&format!("/{REPO}:{TAG}")))
        .unwrap_or_else(|| panic!("ls shows the tag:\n{ls}"));
    assert!(line.contains(&manifest_digest[..19]), "{line}");
    assert!(line.contains("s ago"), "last access known: {line}");
    let (ok, du, err) = b.cache_cli(&["du"]);
    assert!(ok, "{err}");
    let in_bucket = bucket_blobs(&bucket);
    assert_eq!(in_bucket.len(), 2, "{in_bucket:?}");
    let blobs_line = du.lines().find(|l| l.starts_with("blobs")).unwrap();
    assert!(
        blobs_line.split_whitespace().nth(1) == Some("2"),
        "du counts what the bucket holds: {du}"
    );
    let (ok, out, err) = b.cache_cli(&["rm", &format!("{name}/{REPO}:{TAG}")]);
    assert!(ok, "{err}");
    assert!(out.contains("removed 1 tag(s), 3 object(s)"), "{out}");
    assert!(bucket_blobs(&bucket).is_empty(), "rm removed the blobs");
    let mhex = hex_of(&manifest_digest);
    assert!(
        !bucket
            .join(format!("manifests/sha256/{}/{mhex}", &mhex[..2]))
            .exists(),
        "rm removed the manifest"
    );
    let (ok, ls, _) = b.cache_cli(&["ls"]);
    assert!(ok && !ls.contains(&format!("/{REPO}:{TAG}")), "{ls}");

    // Redis stopped: nobody evicts the bucket, however far over the limit (12 MiB of 10).
    redis.stop();
    for (bytes, d) in [&x, &y, &z, &w] {
        assert_eq!(&get_all(&pull(&a, d)).await, bytes);
    }
    for _ in 0..50 {
        if runs(&a, "skipped_redis_down").await >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(runs(&a, "skipped_redis_down").await >= 2.0);
    assert_eq!(
        bucket_blobs(&bucket).len(),
        4,
        "nothing evicted without Redis"
    );
    let (ok, _, err) = a.cache_cli(&["gc", "--max-size", "1MiB"]);
    assert!(
        !ok && err.contains("not evicting s3://regmirror/cache/"),
        "{err}"
    );
    assert_eq!(bucket_blobs(&bucket).len(), 4);

    // The bucket unreachable (a dead endpoint, and no data directory on this machine).
    let text = std::fs::read_to_string(&b.config_path)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", s3.port),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            &b.data_dir.display().to_string(),
            "/nonexistent/regmirror-data",
        );
    let dead = root.path().join("dead.toml");
    std::fs::write(&dead, text).unwrap();
    let out = support::mirror::run(["cache", "du", "--config", dead.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the bucket s3://regmirror/cache/"),
        "a clear error: {err}"
    );
}

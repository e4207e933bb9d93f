//! End-to-end tests of `storage = "s3"` (issue 14, storage half): two regmirror processes on one
//! bucket of a real S3 server (`s3s-fs`, SigV4 checked), in front of Debian's `docker-registry`.
//!
//! - skopeo pulls a multi-arch image through replica A; replica B (fresh data_dir, same bucket)
//!   serves it with the upstream stopped;
//! - an object changed in the bucket behind the mirror's back is never served whole and is
//!   fetched again from the upstream on the next request;
//! - a presigned `307` followed by the client gives the right digest;
//! - the S3 server stopped: blobs in A's local tier are still served, B answers `503 UNAVAILABLE`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use sha2::Digest as _;
use support::faults::{sized_image, wait_for, Behaviour, FaultyUpstream};
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::seed;
use support::skopeo::{self, assert_multi_copy, assert_single_copy, blob_digests_of, CopyOptions};

const ALIAS: &str = "up";
const KEY_ID: &str = "regmirror-e2e";
const SECRET: &str = "regmirror-e2e-secret";

struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> Option<PathBuf> {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs");
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

async fn start_s3() -> Option<S3Server> {
    let Some(bin) = s3s_fs() else {
        assert!(
            !support::env::e2e_required(),
            "REGMIRROR_E2E=1 but s3s-fs is missing (scripts/test.sh installs it into target/tools)"
        );
        eprintln!("SKIPPED: s3s-fs is not installed; run scripts/test.sh");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("regmirror")).unwrap();
    let port = support::env::free_port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY_ID, "--secret-key", SECRET])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed and reaped by its guard's drop, also when it never comes up.
    let server = S3Server { child, root, port };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(server);
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("s3s-fs did not start");
}

/// The credentials every regmirror child reads from its environment (as on a real host).
fn credentials_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        // Multipart uploads whose record is not refreshed for 2 s count as abandoned.
        std::env::set_var("REGMIRROR_S3_STALE_UPLOAD_SECS", "2");
    });
}

fn mirror_config(registry: &Registry, s3: &S3Server, s3_table: toml::Table) -> MirrorConfig {
    config_for(&registry.host(), &registry.url(), s3, s3_table)
}

fn config_for(host: &str, url: &str, s3: &S3Server, s3_table: toml::Table) -> MirrorConfig {
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(host, url).alias(ALIAS)]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    let mut table = toml::Table::new();
    table.insert("bucket".into(), "regmirror".into());
    table.insert("prefix".into(), "cache/".into());
    table.insert("region".into(), "us-east-1".into());
    table.insert(
        "endpoint".into(),
        format!("http://127.0.0.1:{}", s3.port).into(),
    );
    table.insert("path_style".into(), true.into());
    table.extend(s3_table);
    config.extra = config
        .extra
        .top("storage", "s3")
        .top("s3", toml::Value::Table(table));
    config
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Result<Vec<u8>, String>) {
    match client.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (
                status,
                r.bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| e.to_string()),
            )
        }
        Err(e) => (0, Err(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_bucket() {
    require_tools!();
    let Some(mut s3) = start_s3().await else {
        return;
    };
    credentials_in_env();
    let mut registry = Registry::plain().await;
    let seeded = seed(&registry, "library/busybox", "library/hello", "s3-e2e").await;
    let mut tier = toml::Table::new();
    tier.insert("local_cache_size".into(), "64MiB".into());
    let a = Regmirror::start(mirror_config(&registry, &s3, tier)).await;
    let mut redirect = toml::Table::new();
    redirect.insert("redirect_blobs_over".into(), "1".into());
    let b = Regmirror::start(mirror_config(&registry, &s3, redirect)).await;

    // Replica A fills the bucket.
    let work = tempfile::tempdir().unwrap();
    let all = CopyOptions {
        all: true,
        ..Default::default()
    };
    let image = |m: &Regmirror| format!("{}/{ALIAS}/library/busybox:v1", m.addr());
    let copy = skopeo::copy(&image(&a), work.path(), &all).await.unwrap();
    assert_multi_copy(&copy, &seeded.index, "through replica A");
    let layers = blob_digests_of(&seeded.index);
    let bucket = s3.root.path().join("regmirror/cache");
    for d in &layers {
        let hex = d.trim_start_matches("sha256:");
        let obj = bucket.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
        assert!(obj.is_file(), "{d} is in the bucket at {}", obj.display());
    }
    let uploads = bucket.join("_uploads");
    assert!(
        !uploads.exists() || std::fs::read_dir(&uploads).unwrap().next().is_none(),
        "no multipart upload is left running"
    );

    // A corrupt object: never served whole by B (no local tier), then fetched again.
    let victim = layers[0].clone();
    let hex = victim.trim_start_matches("sha256:");
    let obj = bucket.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let mut bytes = std::fs::read(&obj).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&obj, &bytes).unwrap();
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let blob_url =
        |m: &Regmirror, d: &str| format!("{}/v2/{ALIAS}/library/busybox/blobs/{d}", m.url);
    let gets_before = registry.count_blob_gets_any(&victim);
    // B redirects every blob: the presigned URL hands out the bucket's (corrupt) bytes, so the
    // check here is the mirror's own read path, with redirects off for this request (a Range).
    let (status, body) = get(&plain, &blob_url(&b, &victim)).await;
    assert_eq!(status, 307, "B redirects blobs over 1 byte");
    drop(body);
    let follow = reqwest::Client::builder().no_proxy().build().unwrap();
    let whole = bytes.len() as u64;
    let ranged = follow
        .get(blob_url(&b, &victim))
        .header("Range", format!("bytes=0-{}", whole - 1))
        .send()
        .await
        .unwrap();
    let served = ranged.bytes().await;
    assert!(
        served.as_ref().map_or(true, |b| b.len() < bytes.len()),
        "a corrupt object is never served whole"
    );
    let mut refetched = None;
    for _ in 0..50 {
        let (status, body) = get(&follow, &blob_url(&b, &victim)).await;
        if status == 200 && body.as_ref().is_ok_and(|b| sha256(b) == victim) {
            refetched = Some(());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refetched.is_some(),
        "the blob is right again after the corrupt copy was removed"
    );
    assert!(
        registry.count_blob_gets_any(&victim) > gets_before,
        "it was fetched again from the upstream"
    );

    // A presigned redirect followed by the client gives the right bytes.
    let other = layers.last().unwrap();
    let (status, body) = get(&follow, &blob_url(&b, other)).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body.unwrap()), *other, "through the presigned URL");

    // Upstream stopped: B (fresh data dir, same bucket) serves the image from S3 alone.
    registry.stop().await;
    let gets_after = registry.access_lines().len();
    let work_b = tempfile::tempdir().unwrap();
    let copy = skopeo::copy(&image(&b), work_b.path(), &all).await.unwrap();
    assert_multi_copy(&copy, &seeded.index, "through replica B, upstream stopped");
    assert_eq!(
        registry.access_lines().len(),
        gets_after,
        "no upstream request"
    );

    // The cache CLI reads the bucket through the same storage (B's config file).
    let (ok, out, err) = b.cache_cli(&["ls"]);
    assert!(
        ok && out.contains("library/busybox:v1"),
        "cache ls: {out}{err}"
    );
    let (ok, out, err) = b.cache_cli(&["du"]);
    let blobs_line = out
        .lines()
        .find(|l| l.starts_with("blobs"))
        .unwrap_or_default()
        .to_string();
    let n: usize = blobs_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        ok && n >= layers.len(),
        "cache du counts the bucket's blobs: {out}{err}"
    );
    let (_, metrics) = get(&plain, &format!("{}/metrics", a.url)).await;
    let metrics = String::from_utf8_lossy(&metrics.unwrap()).to_string();
    assert!(
        metrics.contains("regmirror_s3_request_duration_seconds_count{op=\"put\"}"),
        "S3 latency series on /metrics"
    );

    // S3 stopped: A still serves what its local tier holds; B has no tier: 503 UNAVAILABLE.
    s3.child.kill().unwrap();
    s3.child.wait().unwrap();
    let (status, body) = get(&plain, &blob_url(&a, other)).await;
    assert_eq!(status, 200, "local tier blob with S3 down");
    assert_eq!(sha256(&body.unwrap()), *other);
    let (status, body) = get(&plain, &blob_url(&b, other)).await;
    let text = String::from_utf8_lossy(&body.unwrap_or_default()).to_string();
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("UNAVAILABLE") && text.contains("object storage"),
        "{text}"
    );
}

/// Multipart uploads the S3 server itself holds (s3s-fs keeps one `.upload-<id>.json` each).
fn server_uploads(s3: &S3Server) -> usize {
    std::fs::read_dir(s3.root.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(".upload-") && n.ends_with(".json")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_fill_leaves_nothing_under_the_key_and_the_upload_is_aborted() {
    require_tools!(&["skopeo"]);
    let Some(s3) = start_s3().await else { return };
    credentials_in_env();
    let up = FaultyUpstream::start("crash/app");
    // Two full 8 MiB parts are sent before the upstream stalls at half.
    let img = sized_image("s3-crash", 40 << 20);
    let layer = img.layers[0].clone();
    up.add_image("v1", &img, Behaviour::StallAtHalf);
    let mut a = Regmirror::start(config_for(&up.host(), &up.url(), &s3, toml::Table::new())).await;
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ALIAS}/crash/app:v1", a.addr());
    let (r, w) = (reference.clone(), work.path().to_path_buf());
    let pull = tokio::spawn(async move { skopeo::copy(&r, &w, &CopyOptions::default()).await });
    let bucket = s3.root.path().join("regmirror/cache");
    let hex = layer.digest.trim_start_matches("sha256:").to_string();
    let object = bucket.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    wait_for(
        "a multipart upload in progress at the S3 server",
        std::time::Duration::from_secs(30),
        || {
            (up.stalled.load(std::sync::atomic::Ordering::SeqCst) >= 1 && server_uploads(&s3) >= 1)
                .then_some(())
        },
    )
    .await;
    assert!(
        !object.exists(),
        "nothing under the final key while the fill runs"
    );
    a.kill9();
    assert!(
        pull.await.unwrap().is_err(),
        "the pull fails with its mirror"
    );
    assert!(
        !object.exists(),
        "nothing under the final key after kill -9"
    );
    assert!(
        server_uploads(&s3) >= 1,
        "the killed fill left its upload at the server"
    );

    // Another replica (fresh data dir) aborts it once its record is stale, then serves the image.
    up.release();
    let b = Regmirror::start(config_for(&up.host(), &up.url(), &s3, toml::Table::new())).await;
    wait_for(
        "the abandoned upload to be aborted",
        std::time::Duration::from_secs(20),
        || (server_uploads(&s3) == 0).then_some(()),
    )
    .await;
    let records = bucket.join("_uploads");
    assert!(
        !records.exists() || std::fs::read_dir(&records).unwrap().next().is_none(),
        "its record is gone too"
    );
    assert!(!object.exists(), "still nothing under the key");
    let copy = skopeo::copy(
        &format!("{}/{ALIAS}/crash/app:v1", b.addr()),
        work.path(),
        &CopyOptions::default(),
    )
    .await
    .expect("pull through the other replica");
    assert_single_copy(&copy, &img, "after the crash, through B");
    let committed = std::fs::read(&object).expect("committed by B");
    assert_eq!(sha256(&committed), layer.digest);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (_, metrics) = get(&client, &format!("{}/metrics", b.url)).await;
    let metrics = String::from_utf8_lossy(&metrics.unwrap()).to_string();
    for series in [
        "regmirror_s3_multipart_uploads_in_flight 0",
        "regmirror_s3_request_duration_seconds_count{op=\"complete\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} on /metrics:\n{metrics}");
    }
}

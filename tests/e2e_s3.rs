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

use sha2::Digest as _;
use support::faults::{sized_image, wait_for, Behaviour, FaultyUpstream};
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::s3::{credentials_in_env, S3Server};
use support::seed::seed;
use support::skopeo::{self, assert_multi_copy, assert_single_copy, blob_digests_of, CopyOptions};

const ALIAS: &str = "up";
fn mirror_config(registry: &Registry, s3: &S3Server, s3_table: toml::Table) -> MirrorConfig {
    config_for(&registry.host(), &registry.url(), s3, s3_table)
}

fn config_for(host: &str, url: &str, s3: &S3Server, s3_table: toml::Table) -> MirrorConfig {
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(host, url).alias(ALIAS)]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    s3.configure(config, s3_table)
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
    let Some(mut s3) = S3Server::start().await else {
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
    s3.stop();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_fill_leaves_nothing_under_the_key_and_the_upload_is_aborted() {
    require_tools!(&["skopeo"]);
    let Some(s3) = S3Server::start().await else {
        return;
    };
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
            (up.stalled.load(std::sync::atomic::Ordering::SeqCst) >= 1 && s3.server_uploads() >= 1)
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
        s3.server_uploads() >= 1,
        "the killed fill left its upload at the server"
    );

    // Another replica (fresh data dir) aborts it once its record is stale, then serves the image.
    up.release();
    let b = Regmirror::start(config_for(&up.host(), &up.url(), &s3, toml::Table::new())).await;
    wait_for(
        "the abandoned upload to be aborted",
        std::time::Duration::from_secs(20),
        || (s3.server_uploads() == 0).then_some(()),
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

//! End-to-end fault and lifecycle tests (issue 5): kill -9 mid-fill and restart, upstreams that hang
//! up or lie, a full disk, LRU eviction and the cache CLI, /metrics and health, request limits,
//! and a bounded soak that checks file descriptors and memory afterwards.
//!
//! Real parts: the regmirror binary, distribution 2.8 upstreams, skopeo. In-process upstreams
//! (tests/support/faults.rs) only where a fault must be injected or requests counted exactly.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::Method;
use support::client::RegistryClient;
use support::faults::{
    blob_path, fd_count, manifest_path, metric, raw_exchange, rss_kib, sized_image, sockets_to,
    tmp_files, wait_for, Behaviour, FaultyUpstream, RawOutcome, Tmpfs,
};
use support::image::Image;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::skopeo::{self, assert_single_copy, CopyOptions};

const ALIAS: &str = "up";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A regmirror in front of one upstream (`name` fetched from `url`, alias `up`), data in `data_dir`.
async fn mirror_for(
    name: &str,
    url: &str,
    root: &Path,
    data_dir: &Path,
    extra: &Extra,
) -> Regmirror {
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(name, url).alias(ALIAS)]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    config.extra = extra.clone();
    Regmirror::start_in(root, data_dir, config).await
}

use support::fake_upstream::{get_blob_with as get_blob, Transfer};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Pull `img` (manifest by `tag`, then config and layers) through the mirror with raw API calls,
/// checking bytes, and wait until its blobs are committed under `data_dir`.
async fn pull_raw(c: &RegistryClient, repo: &str, tag: &str, img: &Image, data_dir: &Path) {
    let m = c.manifest(Method::GET, repo, tag).await;
    assert_eq!(m.status, 200, "manifest {repo}:{tag}: {}", m.text());
    assert_eq!(m.body, img.manifest.bytes, "manifest bytes of {repo}:{tag}");
    for b in img.blobs() {
        let r = c.blob(repo, &b.digest).await;
        assert_eq!(
            r.status,
            200,
            "blob {} of {repo}:{tag}: {}",
            b.digest,
            r.text()
        );
        assert!(r.body == b.bytes, "blob bytes {} of {repo}:{tag}", b.digest);
    }
    for b in img.blobs() {
        let p = blob_path(data_dir, &b.digest);
        wait_for(
            &format!("{} to be committed", p.display()),
            Duration::from_secs(20),
            || p.exists().then_some(()),
        )
        .await;
    }
}

/// Set the last-access time (mtime) of an image's cached objects to `secs_ago` seconds ago.
fn age_image(data_dir: &Path, img: &Image, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    let blobs = img.blobs();
    let paths = std::iter::once(manifest_path(data_dir, &img.manifest.digest))
        .chain(blobs.iter().map(|b| blob_path(data_dir, &b.digest)));
    for p in paths {
        if let Ok(f) = std::fs::File::options().write(true).open(&p) {
            f.set_modified(t).unwrap();
        }
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    support::env::files_under(dir)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_fill_leaves_no_partial_blob_and_a_restart_pulls_correct_bytes() {
    require_tools!(&["skopeo"]);
    let up = FaultyUpstream::start("crash/app");
    let img = sized_image("crash", 2 * MIB);
    let layer = img.layers[0].clone();
    up.add_image("v1", &img, Behaviour::StallAtHalf);
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mut mirror = mirror_for(
        &up.host(),
        &up.url(),
        root.path(),
        &data_dir,
        &Extra::default(),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ALIAS}/crash/app:v1", mirror.addr());

    // A pull whose layer download stalls in the middle.
    let (r, w) = (reference.clone(), work.path().to_path_buf());
    let pull = tokio::spawn(async move { skopeo::copy(&r, &w, &CopyOptions::default()).await });
    let spool = wait_for(
        "a half-written spool file while the upstream stalls",
        Duration::from_secs(30),
        || {
            let stalled = up.stalled.load(Ordering::SeqCst) >= 1;
            let f = tmp_files(&data_dir).into_iter().find(|f| {
                std::fs::metadata(f)
                    .map(|m| m.len() >= (MIB / 2) as u64)
                    .unwrap_or(false)
            });
            f.filter(|_| stalled)
        },
    )
    .await;
    assert!(
        !blob_path(&data_dir, &layer.digest).exists(),
        "the layer is not committed while its fill is in progress"
    );

    mirror.kill9();
    let result = pull.await.unwrap();
    assert!(
        result.is_err(),
        "the pull cannot succeed when the mirror dies mid-transfer"
    );
    assert!(
        spool.exists(),
        "the crash left the spool file {} behind (so the restart has something to clean)",
        spool.display()
    );
    assert!(
        !blob_path(&data_dir, &layer.digest).exists(),
        "no partial blob is visible after the crash"
    );

    up.release();
    mirror.spawn().await;
    assert_eq!(
        tmp_files(&data_dir),
        Vec::<PathBuf>::new(),
        "temporary files left after start-up"
    );
    assert!(
        mirror.log().contains("removed temporary files"),
        "start-up logs the clean-up"
    );
    assert!(
        !blob_path(&data_dir, &layer.digest).exists(),
        "no partial blob after the restart"
    );
    for f in files_in(&data_dir.join("blobs")) {
        let name = format!("sha256:{}", f.file_name().unwrap().to_string_lossy());
        assert_eq!(
            support::faults::file_digest(&f).as_deref(),
            Some(name.as_str()),
            "{} holds other bytes",
            f.display()
        );
    }

    let reference = format!("{}/{ALIAS}/crash/app:v1", mirror.addr());
    let copy = skopeo::copy(&reference, work.path(), &CopyOptions::default())
        .await
        .expect("pull after the restart");
    assert_single_copy(&copy, &img, "pull after kill -9 and restart");
    let p = blob_path(&data_dir, &layer.digest);
    wait_for("the layer to be committed", Duration::from_secs(20), || {
        p.exists().then_some(())
    })
    .await;
    assert_eq!(
        support::faults::file_digest(&p).as_deref(),
        Some(layer.digest.as_str()),
        "committed layer bytes"
    );
    assert_eq!(
        up.blob_gets(&layer.digest),
        2,
        "one download before the crash, one after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_hangs_up_or_lies_fails_every_client_and_caches_nothing() {
    require_tools!(&["skopeo"]);
    let up = FaultyUpstream::start("bad/app");
    let cut = sized_image("cut", MIB);
    let lie = sized_image("lie", MIB);
    up.add_image("cut", &cut, Behaviour::CloseHalfway);
    up.add_image("lie", &lie, Behaviour::WrongBytes);
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mirror = mirror_for(
        &up.host(),
        &up.url(),
        root.path(),
        &data_dir,
        &Extra::default(),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let client = http();

    for (tag, img) in [("cut", &cut), ("lie", &lie)] {
        let layer = &img.layers[0];
        let url = format!("{}/v2/{ALIAS}/bad/app/blobs/{}", mirror.url, layer.digest);
        // Four clients at once: they share one fill, and every one of them must see it fail.
        let got = futures::future::join_all((0..4).map(|_| get_blob(&client, &url))).await;
        for (i, g) in got.iter().enumerate() {
            match g {
                Transfer::Refused(s) => assert!(*s >= 500, "{tag} client {i}: refused with {s}"),
                Transfer::Aborted(_) => {}
                Transfer::Complete(b) => panic!(
                    "{tag} client {i}: a clean 200 with {} bytes (good bytes: {})",
                    b.len(),
                    b == &layer.bytes
                ),
            }
        }
        let err = skopeo::copy(
            &format!("{}/{ALIAS}/bad/app:{tag}", mirror.addr()),
            work.path(),
            &CopyOptions::default(),
        )
        .await;
        assert!(err.is_err(), "skopeo pull of {tag} must fail");
        wait_for(
            "spool files of failed fills to be removed",
            Duration::from_secs(20),
            || tmp_files(&data_dir).is_empty().then_some(()),
        )
        .await;
        assert!(
            !blob_path(&data_dir, &layer.digest).exists(),
            "{tag}: the layer was cached"
        );
        let hex = layer.digest.trim_start_matches("sha256:");
        for f in files_in(&data_dir) {
            assert!(
                !f.to_string_lossy().contains(hex),
                "{tag}: {} is named after the failed layer",
                f.display()
            );
        }
        // The next request starts a fresh fill (failures are not cached).
        let before = up.blob_gets(&layer.digest);
        assert!(before >= 1, "{tag}: the upstream was asked");
        let again = get_blob(&client, &url).await;
        assert!(
            !matches!(again, Transfer::Complete(_)),
            "{tag}: retry served complete bytes"
        );
        assert_eq!(
            up.blob_gets(&layer.digest),
            before + 1,
            "{tag}: a retry fetches again"
        );
        // Once the upstream behaves, the same blob is served and cached.
        up.set_behaviour(&layer.digest, Behaviour::Normal);
        match get_blob(&client, &url).await {
            Transfer::Complete(b) => assert!(b == layer.bytes, "{tag}: recovered bytes"),
            other => panic!("{tag}: after the upstream recovered: {other:?}"),
        }
        let p = blob_path(&data_dir, &layer.digest);
        wait_for(
            "the recovered layer to be committed",
            Duration::from_secs(20),
            || p.exists().then_some(()),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Disk full

/// A plain upstream holding `images` as `disk/app:<label>`.
async fn upstream_with(images: &[(&str, &Image)]) -> Registry {
    let reg = Registry::plain().await;
    let c = RegistryClient::new(&reg.url(), None);
    for (tag, img) in images {
        support::seed::push_image(&c, "disk/app", img, tag).await;
    }
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_the_fill_cleanly_keeps_serving_cached_content_and_eviction_recovers() {
    require_tools!(&["docker-registry", "skopeo", "mount"]);
    if !support::faults::root_available() {
        return;
    }
    let s1 = sized_image("disk-s1", 512 * KIB);
    let b1 = sized_image("disk-b1", 3 * MIB);
    let b2 = sized_image("disk-b2", 3 * MIB);
    let b3 = sized_image("disk-b3", 3 * MIB);
    let reg = upstream_with(&[("s1", &s1), ("b1", &b1), ("b2", &b2), ("b3", &b3)]).await;
    let root = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&root.path().join("mnt"), "8m");
    let data_dir = fs.path.join("data");
    let mirror = mirror_for(
        &reg.host(),
        &reg.url(),
        root.path(),
        &data_dir,
        &Extra::default(),
    )
    .await;
    let c = RegistryClient::new(&mirror.url, None);
    let repo = format!("{ALIAS}/disk/app");
    for (tag, img) in [("s1", &s1), ("b1", &b1), ("b2", &b2)] {
        pull_raw(&c, &repo, tag, img, &data_dir).await;
    }
    // Least recently used first: s1, then b1; b2 is the newest.
    age_image(&data_dir, &s1, 3000);
    age_image(&data_dir, &b1, 2000);
    age_image(&data_dir, &b2, 1000);
    assert!(
        fs.free_bytes() < 3 * MIB as u64,
        "b3 cannot fit: {} bytes free",
        fs.free_bytes()
    );

    // b3's layer does not fit: the client's transfer fails.
    let layer = &b3.layers[0];
    let url = format!("{}/v2/{repo}/blobs/{}", mirror.url, layer.digest);
    match get_blob(&http(), &url).await {
        Transfer::Complete(b) => panic!(
            "a clean 200 with {} bytes from a fill that ran out of disk",
            b.len()
        ),
        other => eprintln!("disk full: {other:?}"),
    }
    wait_for(
        "the failed fill's spool file to be removed",
        Duration::from_secs(20),
        || tmp_files(&data_dir).is_empty().then_some(()),
    )
    .await;
    assert!(
        !blob_path(&data_dir, &layer.digest).exists(),
        "a blob from a failed fill is visible"
    );
    assert!(
        mirror.log().contains("No space left"),
        "the log names the cause"
    );

    // Eviction makes room (least recently used first) and the newest content stays cached.
    let gone = blob_path(&data_dir, &b1.layers[0].digest);
    wait_for(
        "eviction after the full disk to remove b1's layer",
        Duration::from_secs(20),
        || (!gone.exists()).then_some(()),
    )
    .await;
    assert!(
        blob_path(&data_dir, &b2.layers[0].digest).exists(),
        "b2 (most recently used) was evicted"
    );
    let before = reg.count_blob_gets_any(&b2.layers[0].digest);
    let work = tempfile::tempdir().unwrap();
    let copy = skopeo::copy(
        &format!("{}/{repo}:b2", mirror.addr()),
        work.path(),
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    assert_single_copy(&copy, &b2, "cached image after the full disk");
    assert_eq!(
        reg.count_blob_gets_any(&b2.layers[0].digest),
        before,
        "b2's layer is served from the cache"
    );

    // A later pull of b3 succeeds.
    let copy = skopeo::copy(
        &format!("{}/{repo}:b3", mirror.addr()),
        work.path(),
        &CopyOptions::default(),
    )
    .await
    .expect("pull of b3 once eviction made room");
    assert_single_copy(&copy, &b3, "b3 after eviction");
    drop(mirror);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_with_max_size_set_evicts_to_make_room() {
    require_tools!(&["docker-registry", "skopeo", "mount"]);
    if !support::faults::root_available() {
        return;
    }
    let s1 = sized_image("maxsize-s1", 512 * KIB);
    let b1 = sized_image("maxsize-b1", 3 * MIB);
    let g = sized_image("maxsize-g", 5 * MIB);
    let reg = upstream_with(&[("s1", &s1), ("b1", &b1), ("g", &g)]).await;
    let root = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&root.path().join("mnt"), "8m");
    let data_dir = fs.path.join("data");
    // max_size is below the disk size, but cached content plus one download can still exceed the disk.
    let extra = Extra::default()
        .top("max_size", "6MiB")
        .top("gc_interval_secs", 1);
    let mirror = mirror_for(&reg.host(), &reg.url(), root.path(), &data_dir, &extra).await;
    let c = RegistryClient::new(&mirror.url, None);
    let repo = format!("{ALIAS}/disk/app");
    pull_raw(&c, &repo, "s1", &s1, &data_dir).await;
    pull_raw(&c, &repo, "b1", &b1, &data_dir).await;
    assert!(
        fs.free_bytes() < 5 * MIB as u64,
        "g cannot fit next to s1 and b1: {} bytes free",
        fs.free_bytes()
    );

    let work = tempfile::tempdir().unwrap();
    let reference = format!("{}/{repo}:g", mirror.addr());
    let first = skopeo::copy(&reference, work.path(), &CopyOptions::default()).await;
    assert!(first.is_err(), "the first pull of g runs out of disk");
    wait_for(
        "the failed fill's spool file to be removed",
        Duration::from_secs(20),
        || tmp_files(&data_dir).is_empty().then_some(()),
    )
    .await;
    assert!(
        !blob_path(&data_dir, &g.layers[0].digest).exists(),
        "a blob from a failed fill is visible"
    );
    // Cached content is still served meanwhile.
    pull_raw(&c, &repo, "b1", &b1, &data_dir).await;

    // A later pull succeeds: the full disk made eviction free space, although the cache is under max_size.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        match skopeo::copy(&reference, work.path(), &CopyOptions::default()).await {
            Ok(copy) => {
                assert_single_copy(&copy, &g, "g after eviction");
                break;
            }
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "no pull of g succeeded within 30 s: eviction did not make room on the full disk \
             ({} bytes free, cache under max_size 6MiB); last error: {last}",
            fs.free_bytes()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(mirror);
    drop(fs);
}

// ---------------------------------------------------------------------------------------------
// Eviction and the cache CLI

use regmirror::config::human_size as human;

fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_under_max_size_and_cache_ls_du_rm_gc() {
    require_tools!(&["docker-registry"]);
    let e1 = sized_image("evict-e1", MIB);
    let e2 = sized_image("evict-e2", MIB);
    let e3 = sized_image("evict-e3", MIB);
    let reg = upstream_with(&[("e1", &e1), ("e2", &e2), ("e3", &e3)]).await;
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let extra = Extra::default()
        .top("max_size", (5 * MIB / 2) as i64)
        .top("gc_interval_secs", 1);
    let mirror = mirror_for(&reg.host(), &reg.url(), root.path(), &data_dir, &extra).await;
    let c = RegistryClient::new(&mirror.url, None);
    let repo = format!("{ALIAS}/disk/app");
    pull_raw(&c, &repo, "e1", &e1, &data_dir).await;
    pull_raw(&c, &repo, "e2", &e2, &data_dir).await;
    // e1 was last used two hours ago, e2 one hour ago; then e1 is used again now.
    age_image(&data_dir, &e1, 7200);
    age_image(&data_dir, &e2, 3600);
    pull_raw(&c, &repo, "e1", &e1, &data_dir).await;
    let e1_layer = blob_path(&data_dir, &e1.layers[0].digest);
    let recent = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(600))
            .unwrap_or(false)
    };
    assert!(
        recent(&e1_layer),
        "a hit records the access time of e1's layer"
    );

    // e3 pushes the cache over max_size: e2 (least recently used) goes, e1 and e3 stay.
    pull_raw(&c, &repo, "e3", &e3, &data_dir).await;
    let e2_layer = blob_path(&data_dir, &e2.layers[0].digest);
    wait_for("eviction of e2's layer", Duration::from_secs(20), || {
        (!e2_layer.exists()).then_some(())
    })
    .await;
    assert!(e1_layer.exists(), "e1's layer (used recently) was evicted");
    assert!(
        blob_path(&data_dir, &e3.layers[0].digest).exists(),
        "e3's layer (newest) was evicted"
    );
    let objects = || {
        let mut v = files_in(&data_dir.join("blobs"));
        v.extend(files_in(&data_dir.join("manifests")));
        v
    };
    assert!(
        total_size(&objects()) <= (5 * MIB / 2) as u64,
        "cache over max_size after eviction"
    );
    // The eviction task counts each object right after removing it; under load that can come a
    // moment after the file is gone.
    let metrics = wait_for("evictions on /metrics", Duration::from_secs(20), || {
        let text = metrics_text(&mirror.addr());
        (metric(&text, "regmirror_evictions_total", &[]).unwrap_or(0.0) >= 1.0).then_some(text)
    })
    .await;
    assert!(
        metric(&metrics, "regmirror_evictions_total", &[]).unwrap_or(0.0) >= 1.0,
        "evictions_total:\n{metrics}"
    );
    assert!(
        metric(&metrics, "regmirror_evicted_bytes_total", &[]).unwrap_or(0.0) >= MIB as f64,
        "evicted_bytes_total"
    );

    // cache ls: every cached tag with its digest; e2's content is gone.
    let (ok, ls, err) = mirror.cache_cli(&["ls"]);
    assert!(ok, "cache ls: {err}");
    let name = |tag: &str| format!("{}/disk/app:{tag}", reg.host());
    let line = |tag: &str| {
        ls.lines()
            .find(|l| l.starts_with(&format!("{} ", name(tag))))
            .unwrap_or_else(|| panic!("no line for {tag} in:\n{ls}"))
            .to_string()
    };
    for (tag, img) in [("e1", &e1), ("e2", &e2), ("e3", &e3)] {
        assert!(
            line(tag).contains(&img.manifest.digest[..19]),
            "digest of {tag} in `cache ls`:\n{ls}"
        );
    }
    let e1_bytes: u64 = img_files(&data_dir, &e1)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        line("e1").contains(&human(e1_bytes)),
        "size of e1 ({}) in `cache ls`:\n{ls}",
        human(e1_bytes)
    );
    assert!(
        !line("e2").contains("MiB"),
        "e2's layer was evicted; `cache ls` says:\n{ls}"
    );
    let (ok, filtered, _) = mirror.cache_cli(&["ls", &name("e3")]);
    assert!(
        ok && filtered.lines().count() == 2 && filtered.contains(&name("e3")),
        "cache ls FILTER:\n{filtered}"
    );

    // cache du: object counts and totals match the files.
    let (ok, du, err) = mirror.cache_cli(&["du"]);
    assert!(ok, "cache du: {err}");
    let blobs = files_in(&data_dir.join("blobs"));
    let manifests = files_in(&data_dir.join("manifests"));
    let du_line = |kind: &str| {
        du.lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} line in:\n{du}"))
            .to_string()
    };
    let count_of = |l: String| {
        l.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap()
    };
    assert_eq!(
        count_of(du_line("blobs")),
        blobs.len(),
        "blob count in `cache du`:\n{du}"
    );
    assert_eq!(
        count_of(du_line("manifests")),
        manifests.len(),
        "manifest count in `cache du`:\n{du}"
    );
    assert!(
        du_line("blobs").ends_with(&human(total_size(&blobs))),
        "blob bytes in `cache du`:\n{du}"
    );
    assert!(
        du_line("total").ends_with(&human(total_size(&blobs) + total_size(&manifests))),
        "total in `cache du`:\n{du}"
    );
    assert!(
        du_line("tags").contains("3") && du_line("tags").contains(&reg.host()),
        "tags by upstream in `cache du`:\n{du}"
    );

    // cache rm of one tag: its objects go, e1's stay; the server fetches it again when asked.
    let e3_files = img_files(&data_dir, &e3);
    let (ok, rm, err) = mirror.cache_cli(&["rm", &name("e3")]);
    assert!(ok, "cache rm: {err}");
    assert!(
        rm.contains("removed 1 tag(s)") && rm.contains(&format!("{} object(s)", e3_files.len())),
        "cache rm said: {rm}"
    );
    for f in &e3_files {
        assert!(!f.exists(), "{} still there after `cache rm`", f.display());
    }
    assert!(e1_layer.exists(), "`cache rm` of e3 removed e1's layer");
    let (_, ls, _) = mirror.cache_cli(&["ls"]);
    assert!(!ls.contains(&name("e3")), "e3 still listed after rm:\n{ls}");
    let (ok, _, err) = mirror.cache_cli(&["rm", &name("nothing")]);
    assert!(
        !ok && err.contains("nothing cached matches"),
        "rm of an unknown target: {err}"
    );
    pull_raw(&c, &repo, "e3", &e3, &data_dir).await;

    // cache gc with a tiny limit removes every object it reports, while the server runs.
    let before = objects().len();
    let (ok, gc, err) = mirror.cache_cli(&["gc", "--max-size", "1"]);
    assert!(ok, "cache gc: {err}");
    let evicted: usize = gc
        .strip_prefix("evicted ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("gc said: {gc}"));
    assert_eq!(
        evicted, before,
        "gc --max-size 1 evicts everything it found: {gc}"
    );
    assert_eq!(
        objects(),
        Vec::<PathBuf>::new(),
        "objects left after gc: {gc}"
    );
    pull_raw(&c, &repo, "e1", &e1, &data_dir).await;
}

/// Cached files of an image (manifest, config, layers) that exist now.
fn img_files(data_dir: &Path, img: &Image) -> Vec<PathBuf> {
    std::iter::once(manifest_path(data_dir, &img.manifest.digest))
        .chain(img.blobs().iter().map(|b| blob_path(data_dir, &b.digest)))
        .filter(|p| p.exists())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Operator's view

/// The body of `GET /metrics` (blocking; for polling inside `wait_for`).
fn metrics_text(addr: &str) -> String {
    match raw_exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    ) {
        RawOutcome::Status(200, text) => text,
        other => panic!("GET /metrics: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_after_pulls() {
    let up = FaultyUpstream::start("metrics/app");
    let joined = sized_image("metrics-joined", 512 * KIB);
    let plain = sized_image("metrics-plain", 256 * KIB);
    let cut = sized_image("metrics-cut", 256 * KIB);
    up.add_image("joined", &joined, Behaviour::StallAtHalf);
    up.add_image("plain", &plain, Behaviour::Normal);
    up.add_image("cut", &cut, Behaviour::CloseHalfway);
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let extra = Extra::default()
        .top("max_size", "1GiB")
        .top("gc_interval_secs", 1)
        .upstream("tag_ttl_secs", 1);
    let mirror = mirror_for(&up.host(), &up.url(), root.path(), &data_dir, &extra).await;
    let client = http();
    for p in ["/healthz", "/readyz"] {
        let r = client
            .get(format!("{}{p}", mirror.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {p}");
    }

    // Four clients for one blob: one fills, three join while it is in flight.
    let url = format!(
        "{}/v2/{ALIAS}/metrics/app/blobs/{}",
        mirror.url, joined.layers[0].digest
    );
    let first = tokio::spawn({
        let (c, u) = (client.clone(), url.clone());
        async move { get_blob(&c, &u).await }
    });
    wait_for("the fill to stall", Duration::from_secs(20), || {
        (up.stalled.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let others: Vec<_> = (0..3)
        .map(|_| {
            let (c, u) = (client.clone(), url.clone());
            tokio::spawn(async move { get_blob(&c, &u).await })
        })
        .collect();
    wait_for(
        "three requests to join the fill in flight",
        Duration::from_secs(20),
        || {
            (metric(
                &metrics_text(&mirror.addr()),
                "regmirror_coalesced_requests_total",
                &[],
            )
            .unwrap_or(0.0)
                >= 3.0)
                .then_some(())
        },
    )
    .await;
    up.release();
    for h in std::iter::once(first).chain(others) {
        match h.await.unwrap() {
            Transfer::Complete(b) => assert!(b == joined.layers[0].bytes),
            other => panic!("joined transfer: {other:?}"),
        }
    }
    assert_eq!(
        up.blob_gets(&joined.layers[0].digest),
        1,
        "one upstream GET for four clients"
    );

    // A miss then a hit; a failed fill; a stale manifest.
    let c = RegistryClient::new(&mirror.url, None);
    let repo = format!("{ALIAS}/metrics/app");
    pull_raw(&c, &repo, "plain", &plain, &data_dir).await;
    pull_raw(&c, &repo, "plain", &plain, &data_dir).await;
    let _ = get_blob(
        &client,
        &format!("{}/v2/{repo}/blobs/{}", mirror.url, cut.layers[0].digest),
    )
    .await;
    up.set_down(true);
    let mut stale = false;
    for _ in 0..200 {
        let r = c.manifest(Method::GET, &repo, "plain").await;
        assert_eq!(r.status, 200, "cached tag with the upstream answering 503");
        // First "being revalidated" (answered at once, asked in the background), then, once
        // that revalidation failed, "unreachable" (stale).
        if r.header("warning")
            .is_some_and(|w| w.contains("unreachable"))
        {
            stale = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stale,
        "a stale Warning once the 1 s tag TTL passed and the revalidation failed"
    );
    up.set_down(false);

    // The size gauges follow the periodic scan (every second): they end up equal to what is on disk.
    let on_disk = || {
        let mut files = files_in(&data_dir.join("blobs"));
        files.extend(files_in(&data_dir.join("manifests")));
        (files.len() as f64, total_size(&files) as f64)
    };
    let text = wait_for(
        "cache size gauges equal to the disk, no fill in flight",
        Duration::from_secs(20),
        || {
            let t = metrics_text(&mirror.addr());
            let (objects, bytes) = on_disk();
            let gauges = (
                metric(&t, "regmirror_cache_objects", &[]),
                metric(&t, "regmirror_cache_size_bytes", &[]),
            );
            (gauges == (Some(objects), Some(bytes))
                && metric(&t, "regmirror_fills_in_flight", &[]) == Some(0.0))
            .then_some(t)
        },
    )
    .await;
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        metric(&text, name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{text}"))
    };
    assert!(get("regmirror_http_requests_total", &[]) >= 10.0);
    assert!(
        get("regmirror_cache_requests_total", &[("status", "hit")]) >= 1.0,
        "hits after a second pull"
    );
    assert!(get("regmirror_cache_requests_total", &[("status", "miss")]) >= 1.0);
    assert!(get("regmirror_cache_requests_total", &[("status", "joined")]) >= 3.0);
    assert!(get("regmirror_cache_requests_total", &[("status", "stale")]) >= 1.0);
    assert!(
        get("regmirror_coalesced_requests_total", &[]) >= 3.0,
        "coalesced requests after concurrent pulls"
    );
    assert!(get("regmirror_bytes_served_total", &[]) >= (4 * joined.layers[0].size()) as f64);
    assert!(
        get("regmirror_upstream_requests_total", &[]) >= 5.0,
        "{text}"
    );
    assert!(get("regmirror_upstream_request_duration_seconds_count", &[]) >= 5.0);
    assert!(
        get("regmirror_upstream_errors_total", &[]) >= 1.0,
        "the cut-off fill and the outage are upstream errors"
    );
    assert_eq!(get("regmirror_fills_in_flight", &[]), 0.0);
    assert!(get("regmirror_fills_total", &[("outcome", "ok")]) >= 3.0);
    assert!(get("regmirror_fills_total", &[("outcome", "failed")]) >= 1.0);
    assert!(
        get("regmirror_cache_objects", &[]) >= 4.0,
        "joined layer, plain config + layer + manifest"
    );
    assert_eq!(
        get("regmirror_evictions_total", &[]),
        0.0,
        "nothing is evicted under a 1 GiB limit"
    );
    assert_eq!(get("regmirror_evicted_bytes_total", &[]), 0.0);
    assert_eq!(
        get("regmirror_upstream_ratelimit_remaining", &[]),
        97.0,
        "last ratelimit-remaining seen"
    );
    assert!(get("regmirror_stale_served_total", &[]) >= 1.0);
    for p in ["/healthz", "/readyz"] {
        let r = client
            .get(format!("{}{p}", mirror.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {p} at the end");
    }
}

// ---------------------------------------------------------------------------------------------
// Limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_slowloris_and_oversized_manifests_are_refused() {
    let up = FaultyUpstream::start("limits/app");
    let small = sized_image("limits-small", 64 * KIB);
    up.add_image("small", &small, Behaviour::Normal);
    // A valid image manifest padded with an annotation to 100 KiB.
    let mut huge = serde_json::from_slice::<serde_json::Value>(&small.manifest.bytes).unwrap();
    huge["annotations"] = serde_json::json!({"padding": "x".repeat(100 * KIB)});
    let huge = support::image::Blob::new(
        support::image::OCI_MANIFEST,
        serde_json::to_vec(&huge).unwrap(),
    );
    up.add_manifest("huge", &huge);
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let extra = Extra::default()
        .top("max_headers", 20)
        .top("max_header_bytes", 8192)
        .top("header_timeout_secs", 1)
        .top("max_manifest_bytes", 64 * KIB as i64);
    let mirror = mirror_for(&up.host(), &up.url(), root.path(), &data_dir, &extra).await;
    let addr = mirror.addr();
    let head_with = |headers: &[String]| {
        let mut h = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for x in headers {
            h.push_str(x);
            h.push_str("\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    let status = |o: RawOutcome| match o {
        RawOutcome::Status(s, _) => s,
        other => panic!("no response: {other:?}"),
    };

    // Within limits: fine.
    let ok: Vec<String> = (0..10).map(|i| format!("X-Fine-{i}: {i}")).collect();
    assert_eq!(
        status(raw_exchange(&addr, &head_with(&ok))),
        200,
        "10 headers"
    );
    // Too many headers, and one huge header.
    let many: Vec<String> = (0..40).map(|i| format!("X-Many-{i}: {i}")).collect();
    let s = status(raw_exchange(&addr, &head_with(&many)));
    assert!(s == 431 || s == 400, "40 headers (max_headers = 20): {s}");
    let big = vec![format!("X-Big: {}", "b".repeat(20 * KIB))];
    let s = status(raw_exchange(&addr, &head_with(&big)));
    assert!(
        s == 431 || s == 400,
        "a 20 KiB header (max_header_bytes = 8192): {s}"
    );

    // Slowloris: a client that trickles its headers forever is disconnected.
    let slow_addr = addr.clone();
    let trickle = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&slow_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {slow_addr}\r\nX-Slow: ").as_bytes())
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < Duration::from_secs(20) {
            if s.write_all(b"a").is_err() {
                return Some(start.elapsed());
            }
            match s.read(&mut buf) {
                Ok(_) => return Some(start.elapsed()), // closed (0) or an error response before closing
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
        None
    });
    let t = trickle.await.unwrap().expect(
        "a client trickling headers was not disconnected within 20 s (header_timeout_secs = 1)",
    );
    eprintln!("slowloris disconnected after {t:?}");

    // A manifest over max_manifest_bytes: a clear error, nothing cached.
    let c = RegistryClient::new(&mirror.url, None);
    let r = c
        .manifest(Method::GET, &format!("{ALIAS}/limits/app"), "huge")
        .await;
    assert!(
        r.status.is_client_error() || r.status.is_server_error(),
        "oversized manifest: {}",
        r.status
    );
    assert!(r.error_code().is_some(), "OCI error envelope: {}", r.text());
    let msg = r.text().to_lowercase();
    assert!(
        msg.contains("large") || msg.contains("max_manifest_bytes") || msg.contains("limit"),
        "the error says why: {}",
        r.text()
    );
    assert!(
        !manifest_path(&data_dir, &huge.digest).exists(),
        "the oversized manifest was cached"
    );
    // The normal manifest still works.
    let r = c
        .manifest(Method::GET, &format!("{ALIAS}/limits/app"), "small")
        .await;
    assert_eq!(r.status, 200);
}

/// A client that connects and never sends a byte holds a connection (and a file descriptor) as
/// long as a slowloris does: `header_timeout_secs` must close it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let up = FaultyUpstream::start("idle/app");
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let extra = Extra::default().top("header_timeout_secs", 1);
    let mirror = mirror_for(&up.host(), &up.url(), root.path(), &data_dir, &extra).await;
    let idle_addr = mirror.addr();
    let idle = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&idle_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(_) => Some(start.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => Some(start.elapsed()),
        }
    });
    let t = idle.await.unwrap().expect(
        "a connection that sent nothing was still open after 10 s (header_timeout_secs = 1)",
    );
    eprintln!("silent connection closed after {t:?}");
}

// ---------------------------------------------------------------------------------------------
// Soak

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_mixed_concurrent_requests_has_no_unexpected_statuses_and_releases_fds_and_memory()
{
    require_tools!(&["docker-registry", "ss"]);
    let reg = Registry::plain().await;
    let seeded = support::seed::seed(&reg, "library/busybox", "library/hello", "soak").await;
    // Distinct small blobs, each a miss the first time it is asked for.
    let misses: Vec<support::image::Blob> = (0..120)
        .map(|i| {
            support::image::Blob::new(
                "application/octet-stream",
                support::faults::random_bytes(8 * KIB + i * 97, 1000 + i as u64),
            )
        })
        .collect();
    {
        let c = RegistryClient::new(&reg.url(), None);
        for b in &misses {
            c.push_blob("soak/blobs", b).await;
        }
    }
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let mirror = mirror_for(
        &reg.host(),
        &reg.url(),
        root.path(),
        &data_dir,
        &Extra::default(),
    )
    .await;
    let pid = mirror.pid();
    let base = format!("{}/v2/{ALIAS}", mirror.url);
    let img = seeded.index.child("amd64").clone();

    // Warm up: the image is cached, one of each request kind has run.
    {
        let c = RegistryClient::new(&mirror.url, None);
        pull_raw(
            &c,
            &format!("{ALIAS}/library/busybox"),
            &img.manifest.digest,
            &img,
            &data_dir,
        )
        .await;
        let m = c
            .manifest(Method::GET, &format!("{ALIAS}/library/busybox"), "v1")
            .await;
        assert_eq!(m.status, 200);
    }
    let settle = |pid: u32| async move {
        // Let idle connections of the warm-up close.
        let mut last = (fd_count(pid), rss_kib(pid));
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = (fd_count(pid), rss_kib(pid));
        }
        last
    };
    let (fd_base, rss_base) = settle(pid).await;

    let unexpected = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let next_miss = Arc::new(AtomicUsize::new(0));
    let misses = Arc::new(misses);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (peak_fd, peak_rss) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = {
        let (pf, pr) = (peak_fd.clone(), peak_rss.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                pf.fetch_max(fd_count(pid), Ordering::Relaxed);
                pr.fetch_max(rss_kib(pid) as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        let workers: Vec<_> = (0..200u64)
            .map(|w| {
                let (client, base, img, misses) =
                    (client.clone(), base.clone(), img.clone(), misses.clone());
                let (unexpected, done, next_miss, index_digest) = (
                    unexpected.clone(),
                    done.clone(),
                    next_miss.clone(),
                    seeded.index.manifest.digest.clone(),
                );
                tokio::spawn(async move {
                    let mut op = w;
                    while Instant::now() < deadline {
                        op = op
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let kind = (op >> 33) % 10;
                        let r = soak_request(
                            &client,
                            &base,
                            kind,
                            &img,
                            &misses,
                            &next_miss,
                            &index_digest,
                            op,
                        )
                        .await;
                        if let Err(e) = r {
                            let mut u = unexpected.lock().unwrap();
                            if u.len() < 20 {
                                u.push(e);
                            } else {
                                u[19] = format!("... and more; last: {e}");
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        drop(client);
    }
    sampler.await.unwrap();
    let total = done.load(Ordering::Relaxed);
    let errors = unexpected.lock().unwrap().clone();
    eprintln!(
        "soak: {total} requests by 200 clients; misses used {}",
        next_miss.load(Ordering::Relaxed).min(misses.len())
    );
    assert!(
        errors.is_empty(),
        "unexpected answers during the soak:\n{}",
        errors.join("\n")
    );
    assert!(total >= 1000, "the soak ran only {total} requests");

    // Afterwards, descriptors and memory come back near the baseline.
    let fd_slack = 32;
    let rss_slack_kib = 128 * 1024;
    // Idle upstream connections stay in regmirror's pool for its idle timeout (90 s); they are
    // bounded by the number of concurrent requests and not counted against the baseline.
    let (peak_fd, peak_rss) = (
        peak_fd.load(Ordering::Relaxed),
        peak_rss.load(Ordering::Relaxed),
    );
    let report = |f: usize, up: usize, r: u64| {
        format!("fds: baseline {fd_base}, peak {peak_fd}, now {f} of which {up} pooled upstream connections; RSS KiB: baseline {rss_base}, peak {peak_rss}, now {r}")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (f, up, r) = (fd_count(pid), sockets_to(pid, &reg.host()), rss_kib(pid));
        if f.saturating_sub(up) <= fd_base + fd_slack && up <= 200 && r <= rss_base + rss_slack_kib
        {
            eprintln!("soak: back near baseline: {}", report(f, up, r));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back near baseline 30 s after the soak (slack {fd_slack} fds, {rss_slack_kib} KiB): {}",
            report(f, up, r)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = reqwest::get(format!("{}/healthz", mirror.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// One soak request of `kind`; Err describes an unexpected answer.
#[allow(clippy::too_many_arguments)]
async fn soak_request(
    client: &reqwest::Client,
    base: &str,
    kind: u64,
    img: &Image,
    misses: &[support::image::Blob],
    next_miss: &AtomicUsize,
    index_digest: &str,
    rnd: u64,
) -> Result<(), String> {
    use support::image::ALL_MANIFEST_TYPES;
    let accept = ALL_MANIFEST_TYPES.join(", ");
    let blobs = img.blobs();
    let blob = blobs[(rnd as usize >> 7) % blobs.len()];
    let check = |what: &str, status: reqwest::StatusCode, want: u16| {
        if status.as_u16() == want {
            Ok(())
        } else {
            Err(format!("{what}: {status}, expected {want}"))
        }
    };
    let send = |req: reqwest::RequestBuilder, what: String| async move {
        req.send().await.map_err(|e| format!("{what}: {e}"))
    };
    match kind {
        0 | 1 => {
            let method = if kind == 0 { Method::GET } else { Method::HEAD };
            let what = format!("{method} manifest busybox:v1");
            let r = send(
                client
                    .request(method, format!("{base}/library/busybox/manifests/v1"))
                    .header("accept", &accept),
                what.clone(),
            )
            .await?;
            check(&what, r.status(), 200)?;
            if r.headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                != Some(index_digest)
            {
                return Err(format!("{what}: wrong digest header"));
            }
            let body = r.bytes().await.map_err(|e| format!("{what}: body: {e}"))?;
            if kind == 0 && support::env::sha256_digest(&body) != index_digest {
                return Err(format!("{what}: wrong body"));
            }
        }
        2..=4 => {
            let url = format!("{base}/library/busybox/blobs/{}", blob.digest);
            let (req, want, what) = match kind {
                2 => (client.get(&url), 200, format!("GET blob {}", blob.digest)),
                3 => (
                    client.get(&url).header("range", "bytes=10-99"),
                    206,
                    format!("range of blob {}", blob.digest),
                ),
                _ => (client.head(&url), 200, format!("HEAD blob {}", blob.digest)),
            };
            let r = send(req, what.clone()).await?;
            check(&what, r.status(), want)?;
            let body = r.bytes().await.map_err(|e| format!("{what}: body: {e}"))?;
            let ok = match kind {
                2 => body[..] == blob.bytes[..],
                3 => body[..] == blob.bytes[10..100],
                _ => body.is_empty(),
            };
            if !ok {
                return Err(format!("{what}: wrong bytes ({} received)", body.len()));
            }
        }
        5 | 6 => {
            let i = next_miss.fetch_add(1, Ordering::Relaxed) % misses.len();
            let b = &misses[i];
            let what = format!("GET soak blob {i}");
            let r = send(
                client.get(format!("{base}/soak/blobs/blobs/{}", b.digest)),
                what.clone(),
            )
            .await?;
            check(&what, r.status(), 200)?;
            let body = r.bytes().await.map_err(|e| format!("{what}: body: {e}"))?;
            if body[..] != b.bytes[..] {
                return Err(format!("{what}: wrong bytes"));
            }
        }
        7 => {
            // Bad names, unknown tags, bad digests, unknown upstreams.
            let cases: [(String, u16); 4] = [
                (format!("{base}/Bad_Name/manifests/v1"), 400),
                (format!("{base}/library/busybox/manifests/no-such-tag"), 404),
                (format!("{base}/library/busybox/blobs/sha256:xyz"), 400),
                (
                    format!(
                        "{}/v2/no.such.registry/app/manifests/v1",
                        base.trim_end_matches(&format!("/v2/{ALIAS}"))
                    ),
                    404,
                ),
            ];
            let (url, want) = &cases[(rnd as usize >> 11) % cases.len()];
            let r = send(
                client.get(url).header("accept", &accept),
                format!("GET {url}"),
            )
            .await?;
            check(&format!("GET {url}"), r.status(), *want)?;
            let body = r
                .bytes()
                .await
                .map_err(|e| format!("GET {url}: body: {e}"))?;
            if !String::from_utf8_lossy(&body).contains("\"errors\"") {
                return Err(format!("GET {url}: no OCI error envelope"));
            }
        }
        _ => {
            // A client that reads the start of the busybox layer and goes away.
            let big = &img.layers[0];
            let what = format!("partial GET of {}", big.digest);
            let mut r = send(
                client.get(format!("{base}/library/busybox/blobs/{}", big.digest)),
                what.clone(),
            )
            .await?;
            check(&what, r.status(), 200)?;
            let _ = r.chunk().await.map_err(|e| format!("{what}: {e}"))?;
            drop(r);
        }
    }
    Ok(())
}

//! End-to-end tests of the status page (issue 16 part 3) and `[[prefetch]]` schedules in
//! `regmirror serve` (part 1, last bullet).
//!
//! Real parts: distribution 2.8 (Debian's `docker-registry`) as the upstream, its access log
//! counting requests; the regmirror binary; skopeo; Debian's `chromium` rendering the page
//! headless with these flags: `--headless --no-sandbox --disable-gpu --no-first-run
//! --disable-background-networking --disable-component-update --disable-sync
//! --user-data-dir=<temp dir>`, plus `--virtual-time-budget=10000` (the page's script fetches
//! `/api/v1/status` and renders before the DOM is dumped) and `--dump-dom` or
//! `--screenshot=PATH --window-size=W,H`. Screenshots are saved under
//! `target/test-output/ui/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::Method;
use support::client::RegistryClient;
use support::image::Image;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, assert_multi_copy, CopyOptions};

const ALIAS: &str = "up";

async fn world(extra: Extra) -> (Registry, Seeded, Regmirror) {
    let registry = Registry::plain().await;
    let seeded = seed(&registry, "library/busybox", "library/hello", "ui-e2e").await;
    let mut config = MirrorConfig::new(vec![
        UpstreamEntry::new(&registry.host(), &registry.url()).alias(ALIAS)
    ]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    config.extra = extra
        .upstream("tag_ttl_secs", 300i64)
        .top("ui_refresh_secs", 1i64);
    let mirror = Regmirror::start(config).await;
    (registry, seeded, mirror)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn status(mirror: &Regmirror, query: &str) -> serde_json::Value {
    let r = http()
        .get(format!("{}/api/v1/status{query}", mirror.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Poll the status API until `ready` holds (at most 20 s).
async fn status_when(
    mirror: &Regmirror,
    query: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(mirror, query).await;
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One pull of `up/library/hello:docker` by hand: the manifest by tag, then every blob.
async fn pull_hello(client: &RegistryClient, img: &Image) {
    let m = client
        .manifest(Method::GET, &format!("{ALIAS}/library/hello"), "docker")
        .await;
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, img.manifest.bytes);
    for b in img.blobs() {
        let r = client
            .blob(&format!("{ALIAS}/library/hello"), &b.digest)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b.bytes, "blob {}", b.digest);
    }
}

/// The value of `attr` on the element with `id` in serialised HTML.
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

/// The text of the element with `id` (up to its first child tag or closing tag).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open = at + dom[at..].find('>')? + 1;
    let close = open + dom[open..].find('<')?;
    Some(dom[open..close].replace("&amp;", "&"))
}

fn output_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/ui");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Headless chromium on `url` with the documented flags plus `extra`.
fn chromium(url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_and_page_show_a_known_sequence_of_pulls() {
    require_tools!(&["docker-registry", "skopeo", "chromium"]);
    let (registry, seeded, mirror) = world(Extra::default()).await;
    let h = registry.host();
    let client = RegistryClient::new(&mirror.url, None);
    let img = &seeded.docker;
    let blob_bytes: u64 = img.blobs().iter().map(|b| b.bytes.len() as u64).sum();
    let per_pull = 1 + img.blobs().len() as u64; // the manifest by tag and each blob

    // Three pulls of hello:docker: the first from the upstream, the next two from the cache.
    pull_hello(&client, img).await;
    status_when(&mirror, "", "the first pull's fills committed", |s| {
        s["fills"].as_array().unwrap().is_empty()
    })
    .await;
    pull_hello(&client, img).await;
    pull_hello(&client, img).await;
    // One pull of busybox:v1 (its index only), and one through skopeo of busybox:list.
    let m = client
        .manifest(Method::GET, &format!("{ALIAS}/library/busybox"), "v1")
        .await;
    assert_eq!(m.status, 200);
    let requests = 3 * per_pull + 1;
    for b in img.blobs() {
        assert_eq!(
            registry.count_blob_gets("library/hello", &b.digest),
            1,
            "one upstream GET of {}",
            b.digest
        );
    }

    let s = status_when(&mirror, "?q=hello", "the image scan", |s| {
        s["images"]["matched"] == 1
    })
    .await;
    let t = &s["totals"];
    assert_eq!(t["requests"], requests, "{s:#}");
    assert_eq!(t["hits"], 2 * per_pull, "{s:#}");
    assert_eq!(t["misses"], per_pull + 1, "{s:#}");
    assert_eq!(t["bytes_from_cache"], 2 * blob_bytes);
    assert_eq!(t["bytes_saved"], 2 * blob_bytes);
    assert_eq!(t["bytes_from_upstream"], blob_bytes);
    assert_eq!(s["last_hour"]["sums"]["requests"], requests);
    let minutes = s["last_hour"]["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let in_chart: u64 = minutes
        .iter()
        .map(|m| m["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(in_chart, requests);
    let top = &s["top_images_by_pulls"];
    assert_eq!(
        top[0]["name"],
        format!("{h}/library/hello:docker"),
        "{top:#}"
    );
    assert_eq!(top[0]["pulls"], 3);
    assert_eq!(top[1]["name"], format!("{h}/library/busybox:v1"));
    assert_eq!(top[1]["pulls"], 1);
    let by_bytes = &s["top_repositories_by_bytes"];
    assert_eq!(by_bytes[0]["name"], format!("{h}/library/hello"));
    assert_eq!(by_bytes[0]["bytes"], 3 * blob_bytes);
    let up = &s["upstreams"][0];
    assert_eq!(up["name"], h);
    assert_eq!(up["up"], true);
    assert!(up["requests"].as_u64().unwrap() >= per_pull, "{up:#}");
    assert!(up["last_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(s["cache"]["size_bytes"].as_u64().unwrap() >= blob_bytes);
    let row = &s["images"]["items"][0];
    assert_eq!(row["repository"], "library/hello");
    assert_eq!(row["tags"], serde_json::json!(["docker"]));
    assert_eq!(row["digest"], img.manifest.digest);
    assert_eq!(row["platforms"], serde_json::json!(["linux/amd64"]));
    // What the image takes in the cache: its blobs, and its manifest as stored (the media type
    // line the cache keeps before the exact bytes).
    let stored_manifest =
        img.manifest.media_type.len() as u64 + 1 + img.manifest.bytes.len() as u64;
    assert_eq!(row["size_bytes"], blob_bytes + stored_manifest);
    assert_eq!(row["pulls"], 3);
    assert!(row["last_pulled"].as_u64().unwrap() > 0);
    let all = status(&mirror, "?limit=1").await;
    assert_eq!(all["images"]["total"], 2, "hello:docker and busybox:v1");
    assert_eq!(all["images"]["items"].as_array().unwrap().len(), 1, "limit");
    assert_eq!(
        status(&mirror, "?q=nothing-like-this").await["images"]["matched"],
        0
    );

    // A real client's pull through the mirror shows on the page too (not counted above).
    let work = tempfile::tempdir().unwrap();
    let all_platforms = CopyOptions {
        all: true,
        ..Default::default()
    };
    let c = skopeo::copy(
        &format!("{}/{ALIAS}/library/busybox:list", mirror.addr()),
        work.path(),
        &all_platforms,
    )
    .await
    .unwrap();
    assert_multi_copy(&c, &seeded.list, "busybox:list");
    let s = status(&mirror, "").await;
    let requests = s["totals"]["requests"].as_u64().unwrap();
    let hits = s["totals"]["hits"].as_u64().unwrap();
    let saved = s["totals"]["bytes_from_cache"].as_u64().unwrap();

    // The page, rendered by chromium: the same numbers and the top image.
    for path in ["/", "/ui"] {
        let out = chromium(&format!("{}{path}", mirror.url), &["--dump-dom"]);
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            attr(&dom, "body", "data-loaded").is_some() || dom.contains("data-loaded=\""),
            "the page's script did not render: {dom}"
        );
        // Only the page's own requests happened since: the API answers are not counted.
        assert_eq!(
            attr(&dom, "total-requests", "data-value").as_deref(),
            Some(requests.to_string().as_str()),
            "{path}"
        );
        assert_eq!(
            attr(&dom, "total-hits", "data-value").as_deref(),
            Some(hits.to_string().as_str())
        );
        assert_eq!(
            attr(&dom, "total-bytes-cache", "data-value").as_deref(),
            Some(saved.to_string().as_str())
        );
        assert_eq!(
            text_of(&dom, "top-pull-0").as_deref(),
            Some(format!("{h}/library/hello:docker").as_str())
        );
        assert!(
            dom.contains(&format!(
                "docker pull {}/{h}/library/hello:docker",
                mirror.addr()
            )),
            "copy-paste pull command"
        );
        assert_eq!(attr(&dom, "chart", "data-minutes").as_deref(), Some("60"));
    }
    for (name, size) in [("wide", "1400,1800"), ("phone", "390,1600")] {
        let file = output_dir().join(format!("status-{name}.png"));
        let _ = std::fs::remove_file(&file);
        chromium(
            &mirror.url,
            &[
                &format!("--screenshot={}", file.display()),
                &format!("--window-size={size}"),
                "--hide-scrollbars",
            ],
        );
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_the_status_needs_a_user_and_ui_false_turns_it_off() {
    require_tools!(&["docker-registry", "htpasswd"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .arg("-Bbc")
        .arg(&file)
        .args(["alice", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut auth = toml::Table::new();
    auth.insert("htpasswd".into(), file.display().to_string().into());
    let (_registry, _seeded, mirror) =
        world(Extra::default().top("auth", toml::Value::Table(auth))).await;
    let c = http();
    for path in ["/api/v1/status", "/", "/ui"] {
        let url = format!("{}{path}", mirror.url);
        let anon = c.get(&url).send().await.unwrap();
        assert_eq!(anon.status(), 401, "anonymous {path}");
        let challenge = anon.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Basic "),
            "a browser can answer {challenge}"
        );
        let wrong = c
            .get(&url)
            .basic_auth("alice", Some("nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "wrong password {path}");
        let ok = c
            .get(&url)
            .basic_auth("alice", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "alice {path}");
    }

    let mut config = MirrorConfig::new(vec![]);
    config.extra = Extra::default().top("ui", false);
    let off = Regmirror::start(config).await;
    for path in ["/api/v1/status", "/", "/ui"] {
        let r = c.get(format!("{}{path}", off.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "ui = false: {path}");
    }
}

/// The value of the `/metrics` series `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_schedule_warms_an_image_so_a_pull_needs_no_upstream() {
    require_tools!(&["docker-registry", "skopeo"]);
    // The schedule names the image before the registry exists, so seed first and then start
    // the mirror with the schedule.
    let registry = Registry::plain().await;
    let seeded = seed(&registry, "library/busybox", "library/hello", "ui-sched").await;
    let h = registry.host();
    let mut sched = toml::Table::new();
    sched.insert("name".into(), "warm".into());
    sched.insert(
        "images".into(),
        toml::Value::Array(vec![format!("{h}/library/busybox:v1").into()]),
    );
    sched.insert("interval_secs".into(), 2i64.into());
    sched.insert(
        "platforms".into(),
        toml::Value::Array(vec!["linux/amd64".into(), "linux/arm64".into()]),
    );
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(&h, &registry.url()).alias(ALIAS)]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    config.extra = Extra::default()
        .upstream("tag_ttl_secs", 300i64)
        .top("prefetch", toml::Value::Array(vec![sched.into()]));
    let mirror = Regmirror::start(config).await;

    let c = http();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = mirror.metrics_text(&c).await;
        if metric(&m, "regmirror_prefetch_runs_total", &["schedule=\"warm\""]).unwrap_or(0.0) >= 1.0
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no prefetch run on /metrics:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all_blobs: u64 = seeded
        .index
        .children
        .iter()
        .flat_map(|i| i.blobs())
        .map(|b| b.bytes.len() as u64)
        .sum();
    assert_eq!(
        metric(
            &metrics,
            "regmirror_prefetch_last_run_images",
            &["schedule=\"warm\"", "outcome=\"ok\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "regmirror_prefetch_last_run_images",
            &["schedule=\"warm\"", "outcome=\"failed\""]
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &metrics,
            "regmirror_prefetch_last_run_timestamp_seconds",
            &["schedule=\"warm\""]
        )
        .unwrap()
            > 1.7e9
    );
    // The first run fetched every blob of both platforms (shared layers once).
    let fetched = metric(
        &metrics,
        "regmirror_prefetch_fetched_bytes_total",
        &["schedule=\"warm\""],
    )
    .unwrap();
    assert!(
        fetched > 0.0 && fetched <= all_blobs as f64,
        "{fetched} of {all_blobs}"
    );
    let s = status(&mirror, "").await;
    let p = &s["prefetch"][0];
    assert_eq!(p["name"], "warm");
    assert_eq!(p["interval_secs"], 2);
    assert_eq!(p["last"]["images_ok"], 1, "{p:#}");
    assert_eq!(p["last"]["images_failed"], 0);
    assert!(p["runs"].as_u64().unwrap() >= 1);

    // A client's pull of the warmed image now reaches no upstream.
    let before = registry.access_lines().len();
    let work = tempfile::tempdir().unwrap();
    let all_platforms = CopyOptions {
        all: true,
        ..Default::default()
    };
    let copy = skopeo::copy(
        &format!("{}/{ALIAS}/library/busybox:v1", mirror.addr()),
        work.path(),
        &all_platforms,
    )
    .await
    .unwrap();
    assert_multi_copy(&copy, &seeded.index, "busybox:v1");
    assert_eq!(
        registry.access_lines()[before..],
        [] as [String; 0],
        "the pull after the scheduled prefetch reached the upstream"
    );
    let s = status(&mirror, "").await;
    assert_eq!(
        s["totals"]["misses"], 0,
        "every answer came from the cache: {s:#}"
    );
}

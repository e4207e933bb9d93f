//! End-to-end tests for `regmirror prefetch` (issue 16 part 1): a multi-arch list pulled through a
//! running mirror and directly into a data directory, then served with no upstream request; a
//! failing image named with a non-zero exit; a second run fetching only what is missing; the
//! plain, JSON and terminal (under `script`) output.
//!
//! Real parts: distribution 2.8 (Debian's `docker-registry`) as the upstream, its access log
//! counting requests, the regmirror binary, skopeo, util-linux `script` for a pseudo-terminal.

mod support;

use std::process::Output;

use support::env::free_port;
use support::mirror::{run, Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, assert_multi_copy, assert_single_copy, CopyOptions};

const ALIAS: &str = "up";

struct Setup {
    registry: Registry,
    seeded: Seeded,
    mirror: Regmirror,
    /// An upstream configured on a port nothing listens on.
    dead: String,
}

async fn setup() -> Setup {
    let registry = Registry::plain().await;
    let seeded = seed(
        &registry,
        "library/busybox",
        "library/hello",
        "prefetch-e2e",
    )
    .await;
    let dead = format!("127.0.0.1:{}", free_port());
    let mut config = MirrorConfig::new(vec![
        UpstreamEntry::new(&registry.host(), &registry.url()).alias(ALIAS),
        UpstreamEntry::new(&dead, &format!("http://{dead}")),
    ]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    config.extra = Extra::default().upstream("tag_ttl_secs", 300i64);
    let mirror = Regmirror::start(config).await;
    Setup {
        registry,
        seeded,
        mirror,
        dead,
    }
}

impl Setup {
    /// The four standard images by their upstream names.
    fn images(&self) -> Vec<String> {
        let h = self.registry.host();
        vec![
            format!("{h}/library/busybox:v1"),
            format!("{h}/library/busybox:list"),
            format!("{h}/library/hello:oci"),
            format!("{h}/library/hello:docker"),
        ]
    }

    /// Every blob of the standard set, each once.
    fn all_blobs(&self) -> Vec<String> {
        let s = &self.seeded;
        let mut v: Vec<String> = [&s.index, &s.list]
            .iter()
            .flat_map(|m| skopeo::blob_digests_of(m))
            .chain(s.oci.blobs().iter().map(|b| b.digest.clone()))
            .chain(s.docker.blobs().iter().map(|b| b.digest.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn prefetch(&self, args: &[&str]) -> Output {
        let mut a = vec!["prefetch", "--mirror", &self.mirror.url];
        a.extend_from_slice(args);
        run(a)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn all() -> CopyOptions {
    CopyOptions {
        all: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_through_the_mirror_then_pulls_need_no_upstream() {
    require_tools!(&["docker-registry", "skopeo"]);
    let s = setup().await;
    let images = s.images();
    let mut args = vec![
        "--platform",
        "linux/amd64,linux/arm64",
        "--concurrency",
        "3",
    ];
    args.extend(images.iter().map(String::as_str));
    let out = s.prefetch(&args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "prefetch failed: {stdout}\n{}",
        text(&out.stderr)
    );

    // Plain output (stdout is not a terminal), line by line.
    let lines: Vec<&str> = stdout.lines().collect();
    for img in &images {
        let resolved = lines
            .iter()
            .filter(|l| l.starts_with(&format!("resolved {img} sha256:")))
            .count();
        assert_eq!(resolved, 1, "one resolved line for {img}:\n{stdout}");
        let done: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("fetched {img} blobs=")))
            .collect();
        assert_eq!(done.len(), 1, "one fetched line for {img}:\n{stdout}");
    }
    let multi = lines
        .iter()
        .find(|l| l.starts_with(&format!("resolved {}", images[0])))
        .unwrap();
    assert!(
        multi.contains("platforms=linux/amd64,linux/arm64") && multi.contains("blobs=5"),
        "{multi}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("IMAGE "))
        .expect("summary table");
    assert!(lines[header].contains("STATUS") && lines[header].contains("FETCHED"));
    for (i, img) in images.iter().enumerate() {
        let row = lines[header + 1 + i];
        assert!(
            row.starts_with(img.as_str()) && row.contains(" fetched "),
            "{row}"
        );
    }
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("4 image(s): 4 fetched, 0 already cached, 0 failed;"),
        "{stdout}"
    );

    // One upstream fetch per blob, though the index and the list share layers.
    for d in s.all_blobs() {
        assert_eq!(
            s.registry.count_blob_gets_any(&d),
            1,
            "upstream GETs of {d}"
        );
    }

    // Every listed image is now served with no upstream request.
    let before = s.registry.access_lines().len();
    let work = tempfile::tempdir().unwrap();
    let m = s.mirror.addr();
    let c = skopeo::copy(
        &format!("{m}/{ALIAS}/library/busybox:v1"),
        work.path(),
        &all(),
    )
    .await
    .unwrap();
    assert_multi_copy(&c, &s.seeded.index, "busybox:v1");
    let c = skopeo::copy(
        &format!("{m}/{ALIAS}/library/busybox:list"),
        work.path(),
        &all(),
    )
    .await
    .unwrap();
    assert_multi_copy(&c, &s.seeded.list, "busybox:list");
    let c = skopeo::copy(
        &format!("{m}/{ALIAS}/library/hello:oci"),
        work.path(),
        &all(),
    )
    .await
    .unwrap();
    assert_single_copy(&c, &s.seeded.oci, "hello:oci");
    let c = skopeo::copy(
        &format!("{m}/{ALIAS}/library/hello:docker"),
        work.path(),
        &all(),
    )
    .await
    .unwrap();
    assert_single_copy(&c, &s.seeded.docker, "hello:docker");
    assert_eq!(
        s.registry.access_lines()[before..],
        [] as [String; 0],
        "pulls after the prefetch reached the upstream"
    );

    // Again: everything is cached, nothing is asked of the upstream.
    let out = s.prefetch(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("4 image(s): 0 fetched, 4 already cached, 0 failed;"),
        "{stdout}"
    );
    assert_eq!(
        s.registry.access_lines().len(),
        before,
        "a second prefetch reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_images_are_named_and_a_second_run_fetches_only_what_is_missing() {
    require_tools!(&["docker-registry", "skopeo"]);
    let s = setup().await;
    let h = s.registry.host();
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# as kubeadm config images list prints them\n{h}/library/busybox:v1\n{h}/library/busybox:nope\n\n{}/team/app:v1  # upstream down\n",
            s.dead
        ),
    )
    .unwrap();
    let out = s.prefetch(&["--json", "--all-platforms", "-f", list.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status with failures: {}",
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output: {e}\n{}", text(&out.stdout)));
    let by_name = |name: &str| {
        report["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))
            .clone()
    };
    let good = by_name(&format!("{h}/library/busybox:v1"));
    assert_eq!(good["status"], "fetched");
    assert_eq!(good["blobs"], 5);
    assert_eq!(good["blobs_fetched"], 5);
    let unknown = by_name(&format!("{h}/library/busybox:nope"));
    assert_eq!(unknown["status"], "failed");
    let why = unknown["error"].as_str().unwrap();
    assert!(
        why.contains("busybox:nope") && why.contains("not found"),
        "{why}"
    );
    let down = by_name(&format!("{}/team/app:v1", s.dead));
    assert_eq!(down["status"], "failed");
    assert!(
        down["error"].as_str().unwrap().contains("team/app"),
        "{down}"
    );
    assert_eq!(report["totals"]["failed"], 2);
    assert_eq!(report["totals"]["fetched"], 1);

    // The fixed list: v1 is cached already; hello:oci is new but for the busybox layer it shares.
    let v1_blobs = skopeo::blob_digests_of(&s.seeded.index);
    let out = s.prefetch(&[
        "--quiet",
        "--all-platforms",
        &format!("{h}/library/busybox:v1"),
        &format!("{h}/library/hello:oci"),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "cached {h}/library/busybox:v1 blobs=0/5 bytes=0 B "
        ))),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("fetched {h}/library/hello:oci blobs=2/3 "))),
        "{stdout}"
    );
    assert!(
        !stdout.contains("resolved "),
        "--quiet prints outcomes only:\n{stdout}"
    );
    for d in &v1_blobs {
        assert_eq!(s.registry.count_blob_gets_any(d), 1, "upstream GETs of {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_sizes_and_fetches_no_blob() {
    require_tools!(&["docker-registry"]);
    let s = setup().await;
    let img = format!("{}/library/busybox:v1", s.registry.host());
    let out = s.prefetch(&["--dry-run", "--json", "--platform", "linux/arm64", &img]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let child = s.seeded.index.child("arm64");
    let size: usize = child.blobs().iter().map(|b| b.size()).sum();
    let i = &report["images"][0];
    assert_eq!(i["status"], "would_fetch");
    assert_eq!(i["platforms"], serde_json::json!(["linux/arm64/v8"]));
    assert_eq!(i["bytes_fetched"], size as u64, "{report}");
    assert_eq!(
        s.registry.count_prefix("GET", "/v2/library/busybox/blobs/"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_directly_into_a_data_dir_serves_with_the_upstream_gone() {
    require_tools!(&["docker-registry", "skopeo"]);
    let mut s = setup().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("direct");
    let img = format!("{}/library/busybox:v1", s.registry.host());
    let out = run([
        "prefetch",
        "--config",
        s.mirror.config_path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--all-platforms",
        &img,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("1 image(s): 1 fetched"),
        "{}",
        text(&out.stdout)
    );
    s.registry.stop().await;
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(
        &s.registry.host(),
        &format!("http://{}", s.dead),
    )
    .alias(ALIAS)]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    let offline = Regmirror::start_in(work.path(), &data, config).await;
    let c = skopeo::copy(
        &format!("{}/{ALIAS}/library/busybox:v1", offline.addr()),
        work.path(),
        &all(),
    )
    .await
    .unwrap();
    assert_multi_copy(
        &c,
        &s.seeded.index,
        "busybox:v1 from the directly filled cache",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_progress_bars_and_the_summary() {
    require_tools!(&["docker-registry", "script"]);
    let s = setup().await;
    let img = format!("{}/library/busybox:v1", s.registry.host());
    let cmd = format!(
        "{} prefetch --mirror {} --all-platforms {img}",
        env!("CARGO_BIN_EXE_regmirror"),
        s.mirror.url
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("COLUMNS", "160")
        .output()
        .expect("run script");
    let tty = text(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains('\u{1b}'),
        "a terminal gets escape sequences (bars redrawn):\n{tty:?}"
    );
    assert!(tty.contains("overall"), "the overall bar:\n{tty}");
    assert!(
        tty.contains("1/1 images"),
        "the overall bar counts images:\n{tty}"
    );
    assert!(
        !tty.contains("resolved "),
        "no plain lines on a terminal:\n{tty}"
    );
    assert!(
        tty.contains("IMAGE ") && tty.contains("1 image(s): 1 fetched"),
        "the summary:\n{tty}"
    );
}

#[test]
fn from_kubeadm_without_kubeadm_is_a_usage_error_that_says_what_to_do() {
    // PATH without kubeadm (this machine cannot install it): the CLI names it and the -f way.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args([
            "prefetch",
            "--from-kubeadm",
            "v1.31.2",
            "--mirror",
            "http://127.0.0.1:9",
        ])
        .env("PATH", empty.path())
        .output()
        .expect("run regmirror prefetch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--from-kubeadm needs kubeadm on PATH"),
        "{err}"
    );
    assert!(
        err.contains("kubeadm config images list --kubernetes-version v1.31.2"),
        "{err}"
    );
}

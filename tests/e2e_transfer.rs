//! End-to-end tests for air-gapped transport (issue 16 part 2): `regmirror export` of cached images
//! to an OCI image layout tarball, `regmirror import` on a second data directory, and a mirror on
//! that directory serving every image by tag and by digest to skopeo and containerd with every
//! upstream unreachable; a
//! tarball with one byte changed is refused with the digest named and nothing imported; skopeo
//! reads the export as an `oci-archive:`.
//!
//! Real parts: distribution 2.8 (Debian's `docker-registry`), the regmirror binary, skopeo,
//! containerd's `ctr`.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};

use support::clients::{client_config_write, Containerd};
use support::env::{files_under, free_port};
use support::mirror::{run, MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::{seed, Seeded};
use support::skopeo::{self, assert_multi_copy, assert_single_copy, CopyOptions, DirImage};

const ALIAS: &str = "up";

struct Setup {
    registry: Registry,
    seeded: Seeded,
    /// The first mirror, its cache filled by a prefetch of every image.
    mirror: Regmirror,
    work: tempfile::TempDir,
    images: Vec<String>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mirror_config(name: &str, url: &str) -> MirrorConfig {
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new(name, url).alias(ALIAS)]);
    config.no_builtin_upstreams = true;
    config.default_upstream = String::new();
    config
}

async fn setup() -> Setup {
    let registry = Registry::plain().await;
    let seeded = seed(
        &registry,
        "library/busybox",
        "library/hello",
        "transfer-e2e",
    )
    .await;
    let mirror = Regmirror::start(mirror_config(&registry.host(), &registry.url())).await;
    let h = registry.host();
    let images: Vec<String> = [
        "library/busybox:v1",
        "library/busybox:list",
        "library/hello:oci",
        "library/hello:docker",
    ]
    .iter()
    .map(|i| format!("{h}/{i}"))
    .collect();
    let mut args = vec![
        "prefetch",
        "--mirror",
        &mirror.url,
        "--all-platforms",
        "--quiet",
    ];
    args.extend(images.iter().map(String::as_str));
    let out = run(&args);
    assert!(
        out.status.success(),
        "prefetch: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Setup {
        registry,
        seeded,
        mirror,
        work: tempfile::tempdir().unwrap(),
        images,
    }
}

impl Setup {
    fn export(&self, name: &str, extra: &[&str]) -> PathBuf {
        let file = self.work.path().join(name);
        let mut args = vec![
            "export",
            "--data-dir",
            self.mirror.data_dir.to_str().unwrap(),
            "-o",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend(self.images.iter().map(String::as_str));
        let out = run(&args);
        assert!(out.status.success(), "export: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("exported 4 image(s)"),
            "{}",
            text(&out.stdout)
        );
        file
    }
}

fn import(file: &Path, data: &Path) -> std::process::Output {
    run([
        "import",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

fn all() -> CopyOptions {
    CopyOptions {
        all: true,
        ..Default::default()
    }
}

/// Stored objects (not spool or staging files) under a data directory.
fn objects(data: &Path) -> Vec<PathBuf> {
    if !data.exists() {
        return Vec::new();
    }
    files_under(data)
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(data).unwrap().to_string_lossy().to_string();
            ["blobs/", "manifests/", "tags/"]
                .iter()
                .any(|k| rel.starts_with(k))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_serves_every_image_with_the_upstream_gone() {
    require_tools!(&["docker-registry", "skopeo", "containerd", "ctr"]);
    let mut s = setup().await;
    let plain = s.export("images.tar", &[]);
    let zst = s.export("images.tar.zst", &["--zstd"]);
    let mut magic = [0u8; 4];
    std::fs::File::open(&zst)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(
        magic,
        [0x28, 0xb5, 0x2f, 0xfd],
        "--zstd writes a zstd frame"
    );

    for (file, what) in [(&plain, "plain"), (&zst, "zstd")] {
        let data = s.work.path().join(format!("offline-{what}"));
        let out = import(file, &data);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "import {what}: {}", text(&out.stderr));
        for img in &s.images {
            assert!(
                stdout.lines().any(|l| l == format!("imported {img}")),
                "{stdout}"
            );
        }
    }
    s.registry.stop().await;

    // A mirror on the imported directory whose upstream is a port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let root = s.work.path().join("offline-mirror");
    std::fs::create_dir_all(&root).unwrap();
    let offline = Regmirror::start_in(
        &root,
        &s.work.path().join("offline-plain"),
        mirror_config(&s.registry.host(), &dead),
    )
    .await;
    let m = offline.addr();
    let work = s.work.path();
    let copy = |r: String| async move { skopeo::copy(&r, work, &all()).await.unwrap() };
    let sd = &s.seeded;
    assert_multi_copy(
        &copy(format!("{m}/{ALIAS}/library/busybox:v1")).await,
        &sd.index,
        "v1 by tag",
    );
    assert_multi_copy(
        &copy(format!(
            "{m}/{ALIAS}/library/busybox@{}",
            sd.index.manifest.digest
        ))
        .await,
        &sd.index,
        "the index by digest",
    );
    assert_multi_copy(
        &copy(format!("{m}/{ALIAS}/library/busybox:list")).await,
        &sd.list,
        "list",
    );
    assert_single_copy(
        &copy(format!("{m}/{ALIAS}/library/hello:oci")).await,
        &sd.oci,
        "oci",
    );
    assert_single_copy(
        &copy(format!(
            "{m}/{ALIAS}/library/hello@{}",
            sd.docker.manifest.digest
        ))
        .await,
        &sd.docker,
        "docker by digest",
    );

    // containerd, through hosts files from `regmirror client-config` (its fallback, the registry
    // itself, is stopped).
    let hosts = s.work.path().join("certs.d");
    let registry = s.registry.host();
    client_config_write(
        &[
            "containerd",
            "--mirror",
            &offline.url,
            "--style",
            "ns",
            "--registry",
            &registry,
        ],
        &hosts,
    );
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap();
    for (name, digest) in [
        (
            format!("{registry}/library/busybox:v1"),
            &sd.index.manifest.digest,
        ),
        (
            format!("{registry}/library/busybox:list"),
            &sd.list.manifest.digest,
        ),
        (
            format!("{registry}/library/hello:docker"),
            &sd.docker.manifest.digest,
        ),
    ] {
        let out = containerd.pull("offline", &hosts, &name);
        assert!(
            out.status.success(),
            "ctr pull {name}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            containerd.image_digest("offline", &name).as_ref(),
            Some(digest),
            "{name}"
        );
    }
    let content = containerd.content_digests("offline");
    for d in sd.index.child("amd64").digests() {
        assert!(content.contains(&d), "containerd holds {d}");
    }

    // Importing again adds nothing new and still succeeds.
    let out = import(&plain, &s.work.path().join("offline-zstd"));
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("0 blob(s) added"),
        "{}",
        text(&out.stdout)
    );
}

/// Rewrite `src` to `dst` with one byte of `target` (a path in the archive) changed.
fn tamper(src: &Path, dst: &Path, target: &str) {
    let mut input = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for e in input.entries().unwrap() {
        let mut e = e.unwrap();
        let mut header = e.header().clone();
        let path = e.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if path == target {
            let mid = data.len() / 2;
            data[mid] ^= 0x01;
        }
        out.append_data(&mut header, &path, &data[..]).unwrap();
    }
    out.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_archive_is_refused_with_the_digest_named_and_nothing_imported() {
    require_tools!(&["docker-registry", "skopeo"]);
    let s = setup().await;
    let plain = s.export("images.tar", &[]);
    // The arm64 layer of the index: the last blob a reader meets is as good as the first.
    let layer = &s.seeded.index.child("arm64").layers.last().unwrap().digest;
    let target = format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"));
    let bad = s.work.path().join("tampered.tar");
    tamper(&plain, &bad, &target);
    let data = s.work.path().join("refused");
    let out = import(&bad, &data);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a tampered archive was imported: {}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(layer.as_str()),
        "the error names {layer}: {stderr}"
    );
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(
        objects(&data),
        Vec::<PathBuf>::new(),
        "objects stored from a refused archive"
    );
    let leftovers: Vec<PathBuf> = files_under(&data);
    assert_eq!(
        leftovers,
        Vec::<PathBuf>::new(),
        "staging files left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_reads_the_export_as_an_oci_archive() {
    require_tools!(&["docker-registry", "skopeo"]);
    let s = setup().await;
    let plain = s.export("images.tar", &[]);
    let h = s.registry.host();
    let read = |name: String, all: bool| {
        let dest = s
            .work
            .path()
            .join(format!("from-archive-{}", rand::random::<u32>()));
        let mut cmd = std::process::Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy"]);
        if all {
            cmd.arg("--all");
        }
        let out = cmd
            .arg(format!("oci-archive:{}:{name}", plain.display()))
            .arg(format!("dir:{}", dest.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy oci-archive:...:{name}: {}",
            text(&out.stderr)
        );
        let mut files = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&dest).unwrap() {
            let e = e.unwrap();
            files.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
        DirImage { path: dest, files }
    };
    assert_multi_copy(
        &read(format!("{h}/library/busybox:v1"), true),
        &s.seeded.index,
        "index",
    );
    // Entries with Docker media types (a manifest list, a schema2 manifest) are in the archive
    // byte-exact, for `regmirror import` and containerd, but skopeo 1.9's oci transport looks only
    // at entries of OCI media types ("no descriptor found for reference").
    assert_single_copy(
        &read(format!("{h}/library/hello:oci"), false),
        &s.seeded.oci,
        "oci",
    );
}

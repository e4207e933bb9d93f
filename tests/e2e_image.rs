//! The container image (issue #15): CI cannot pull a base image, so the test lays out the runtime
//! tree with deploy/image/rootfs.sh from the binary cargo built (stripped there), builds
//! deploy/image/runtime.Dockerfile (`FROM scratch`) with the dockerd of the client tests, runs it
//! read-only as the non-root user with a named volume for its data, and pulls a multi-arch image
//! through the container with skopeo (every manifest byte-exact); `docker stop` ends it with exit
//! code 0 within a few seconds. The image is at most 1.5x the binary in it; the root Dockerfile's
//! runtime stage is the same as runtime.Dockerfile's.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::clients::{expect_success, read_dir_layout, run_with_timeout, Dockerd};
use support::registry::Registry;
use support::seed::seed;

const TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "dockerd",
    "docker",
    "socat",
    "nsenter",
    "ip",
    "ldd",
    "strip",
    "curl",
];

/// The lines after the `# --- runtime` marker.
fn runtime_stage(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| !l.starts_with("# --- runtime"))
        .skip(1)
        .collect()
}

#[test]
fn root_dockerfile_ends_with_the_tested_runtime_stage() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let runtime =
        std::fs::read_to_string(format!("{root}/deploy/image/runtime.Dockerfile")).unwrap();
    let (a, b) = (runtime_stage(&dockerfile), runtime_stage(&runtime));
    assert!(b.len() > 10, "runtime.Dockerfile has its marker and stage");
    assert_eq!(
        a, b,
        "the root Dockerfile's runtime stage differs from deploy/image/runtime.Dockerfile"
    );
    for needed in [
        "USER 10001:10001",
        "VOLUME [\"/var/lib/regmirror\"]",
        "HEALTHCHECK",
        "org.opencontainers.image.title",
    ] {
        assert!(
            b.iter().any(|l| l.contains(needed)),
            "runtime stage lacks {needed}"
        );
    }
}

fn docker(d: &Dockerd, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", d.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", d.dir.path().join("client"))
            // Debian's dockerd 20.10 with the classic builder: no buildx plugin needed.
            .env("DOCKER_BUILDKIT", "0"),
        Duration::from_secs(300),
    )
}

fn in_netns(d: &Dockerd, program: &str, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new("nsenter")
            .arg(format!("--net={}", d.netns_path()))
            .arg(program)
            .args(args),
        Duration::from_secs(120),
    )
}

fn dir_size(p: &Path) -> u64 {
    let m = std::fs::symlink_metadata(p).unwrap();
    if m.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| dir_size(&e.path()))
            .sum()
    } else {
        m.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_image_runs_read_only_as_non_root_and_serves_pulls() {
    require_tools!(TOOLS);
    let hub = Registry::plain().await;
    let seeded = seed(&hub, "library/busybox", "library/single", "image e2e").await;
    let bridge = Dockerd::bridge(&hub.host());
    let inner_upstream = format!("http://127.0.0.1:{}", bridge.inner_port);
    std::fs::write(bridge.config_dir().join("daemon.json"), "{}").unwrap();
    let d = tokio::task::spawn_blocking(move || bridge.start())
        .await
        .unwrap();

    // The build context: the runtime tree from the binary cargo built, and the runtime stage.
    let ctx = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("sh")
        .arg(format!("{root}/deploy/image/rootfs.sh"))
        .arg(env!("CARGO_BIN_EXE_regmirror"))
        .arg(ctx.path())
        .output()
        .unwrap();
    expect_success(&out, "deploy/image/rootfs.sh");
    std::fs::copy(
        format!("{root}/deploy/image/runtime.Dockerfile"),
        ctx.path().join("Dockerfile"),
    )
    .unwrap();
    let binary = std::fs::metadata(ctx.path().join("rootfs/usr/local/bin/regmirror"))
        .unwrap()
        .len();
    let tree = dir_size(&ctx.path().join("rootfs"));
    let out = docker(
        &d,
        &[
            "build",
            "-q",
            "-t",
            "regmirror:e2e",
            ctx.path().to_str().unwrap(),
        ],
    );
    expect_success(&out, "docker build");
    let size: u64 = expect_success(
        &docker(
            &d,
            &["image", "inspect", "-f", "{{.Size}}", "regmirror:e2e"],
        ),
        "inspect",
    )
    .trim()
    .parse()
    .unwrap();
    let ratio = size as f64 / binary as f64;
    eprintln!("image: {size} bytes, binary (stripped) {binary} bytes, rootfs {tree} bytes: image / binary = {ratio:.3}");
    assert!(
        ratio <= 1.5,
        "image {size} bytes is {ratio:.2}x the binary ({binary} bytes)"
    );

    // The mirror's config, docker.io pointed at the upstream (inside the namespace: the bridge).
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!("[[upstream]]\nname = \"docker.io\"\nurl = \"{inner_upstream}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mount = format!("{}:/etc/regmirror/config.toml:ro", cfg.display());
    let out = docker(
        &d,
        &[
            "run",
            "-d",
            "--name",
            "regmirror-e2e",
            "--read-only",
            "--user",
            "10001:10001",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--network",
            "host",
            "-v",
            "regmirror-e2e-data:/var/lib/regmirror",
            "-v",
            &mount,
            "-e",
            "REGMIRROR_CONFIG=/etc/regmirror/config.toml",
            "regmirror:e2e",
        ],
    );
    expect_success(&out, "docker run");
    let inspect = |f: &str| {
        expect_success(
            &docker(&d, &["inspect", "-f", f, "regmirror-e2e"]),
            "docker inspect",
        )
        .trim()
        .to_string()
    };
    assert_eq!(
        inspect("{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}"),
        "true 10001:10001"
    );

    // Ready: the image's own HEALTHCHECK command, run inside the container.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = docker(
            &d,
            &[
                "exec",
                "regmirror-e2e",
                "/usr/local/bin/regmirror",
                "healthcheck",
            ],
        );
        if out.status.success() {
            break;
        }
        let logs = docker(&d, &["logs", "regmirror-e2e"]);
        assert!(
            Instant::now() < deadline && inspect("{{.State.Running}}") == "true",
            "regmirror in the container is not healthy: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A multi-arch image through the container, byte-exact.
    let dest = tempfile::tempdir().unwrap();
    let layout = dest.path().join("busybox");
    let out = in_netns(
        &d,
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--all",
            "--retry-times=0",
            "--src-no-creds",
            "--src-tls-verify=false",
            "docker://127.0.0.1:5000/library/busybox:v1",
            &format!("dir:{}", layout.display()),
        ],
    );
    expect_success(&out, "skopeo copy --all through the container");
    let got = read_dir_layout(&layout);
    assert_eq!(
        got.manifest(),
        &seeded.index.manifest.bytes[..],
        "the index, byte for byte"
    );
    let mut instances = got.instance_digests();
    instances.sort();
    assert_eq!(
        instances,
        seeded.index.child_digests(),
        "every platform's manifest"
    );
    // The blobs went to the volume, written by the non-root user.
    let mountpoint = expect_success(
        &docker(
            &d,
            &[
                "volume",
                "inspect",
                "-f",
                "{{.Mountpoint}}",
                "regmirror-e2e-data",
            ],
        ),
        "volume inspect",
    );
    let owned: Vec<u32> = support::env::files_under(Path::new(mountpoint.trim()))
        .iter()
        .map(|p| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap()))
        .collect();
    assert!(
        !owned.is_empty() && owned.iter().all(|&u| u == 10001),
        "files in the data volume, all uid 10001: {owned:?}"
    );

    // docker stop: SIGTERM, a clean exit well before docker's 10 s kill.
    let t = Instant::now();
    expect_success(
        &docker(&d, &["stop", "-t", "10", "regmirror-e2e"]),
        "docker stop",
    );
    let took = t.elapsed();
    assert_eq!(
        inspect("{{.State.ExitCode}} {{.State.OOMKilled}}"),
        "0 false"
    );
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    eprintln!("docker stop: {took:?}, exit code 0");
    let _ = docker(&d, &["rm", "-f", "regmirror-e2e"]);
}

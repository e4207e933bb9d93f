//! End-to-end tests with the real clients: dockerd, containerd (ctr) and podman pull through the
//! real regmirror binary from distribution on loopback, each configured with the files
//! `regmirror client-config` wrote. Every test proves the pull went through regmirror (its request
//! log) and could not have gone around it (no route out: a loopback-only network namespace, or a
//! dead loopback port as the registry's own location). Multi-arch: each client pulls an OCI index
//! (amd64 + arm64) and must end up with the amd64 image, this machine's platform.

mod support;

use std::path::Path;

use support::client::raw_request;
use support::clients::{
    self, client_config_print, client_config_write, expect_success, Containerd, Dockerd, Podman,
};
use support::env::free_port;
use support::image::{Image, MultiImage, OCI_INDEX};
use support::mirror::{MirrorConfig, Regmirror, RequestRecord, UpstreamEntry};
use support::registry::Registry;
use support::seed::{push_multi, seed, Seeded};

/// Every tool these tests run.
fn all_tools() -> Vec<&'static str> {
    let mut t: Vec<&str> = support::env::CORE_TOOLS.to_vec();
    for list in [
        clients::DOCKER_TOOLS,
        clients::CONTAINERD_TOOLS,
        clients::PODMAN_TOOLS,
    ] {
        t.extend_from_slice(list);
    }
    t.sort();
    t.dedup();
    t
}

/// A loopback port nothing listens on (bound, then released; a registry "there" is unreachable).
fn dead_port() -> u16 {
    free_port()
}

/// What the image's command prints: the text `support::image::image` put in /etc/regmirror-test.
fn expected_text(img: &Image, label: &str) -> String {
    format!("{label}\narch={}\n", img.platform.architecture)
}

/// Requests regmirror logged that match `pred`, for assertions with context.
fn matching(reqs: &[RequestRecord], pred: impl Fn(&RequestRecord) -> bool) -> Vec<&RequestRecord> {
    reqs.iter().filter(|r| pred(r)).collect()
}

fn ns_of(r: &RequestRecord) -> String {
    r.raw["fields"]["ns"].as_str().unwrap_or("-").to_string()
}

fn summary(reqs: &[RequestRecord]) -> String {
    reqs.iter()
        .map(|r| {
            format!(
                "{} {} ns={} -> {} {} {} {}",
                r.method,
                r.path,
                ns_of(r),
                r.status,
                r.route,
                r.upstream,
                r.repository
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Assert that the client fetched the amd64 image of `multi` through regmirror (manifest, config,
/// every layer, all answered 200) under `upstream`/`repository` by `route`, and never the arm64
/// manifest.
fn assert_pulled_amd64(
    reqs: &[RequestRecord],
    multi: &MultiImage,
    upstream: &str,
    repository: &str,
    route: &str,
    what: &str,
) {
    let ours = matching(reqs, |r| {
        r.upstream == upstream && r.repository == repository && r.route == route
    });
    let amd64 = multi.child("amd64");
    let arm64 = multi.child("arm64");
    let fetched = |digest: &str| {
        ours.iter()
            .any(|r| r.method == "GET" && r.path.ends_with(digest) && r.status == 200)
    };
    assert!(
        fetched(&amd64.manifest.digest),
        "{what}: amd64 manifest not fetched via {route}:\n{}",
        summary(reqs)
    );
    for b in amd64.blobs() {
        assert!(
            fetched(&b.digest),
            "{what}: blob {} not fetched via {route}:\n{}",
            b.digest,
            summary(reqs)
        );
    }
    assert!(
        !reqs
            .iter()
            .any(|r| r.path.ends_with(&arm64.manifest.digest)),
        "{what}: the arm64 manifest was fetched:\n{}",
        summary(reqs)
    );
}

/// An upstream standing in for Docker Hub, seeded with `library/busybox` (tags v1..v4: an OCI
/// index; also `latest`), and regmirror with `docker.io` pointed at it plus `extra` upstreams.
async fn hub_and_mirror(label: &str, extra: Vec<UpstreamEntry>) -> (Registry, Seeded, Regmirror) {
    let hub = Registry::plain().await;
    let seeded = seed(&hub, "library/busybox", "library/single", label).await;
    let client = support::client::RegistryClient::new(&hub.url(), None);
    push_multi(&client, "library/busybox", &seeded.index, &["latest"]).await;
    let mut upstreams = vec![UpstreamEntry::new("docker.io", &hub.url())];
    upstreams.extend(extra);
    let mirror = Regmirror::start(MirrorConfig::new(upstreams)).await;
    (hub, seeded, mirror)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_docker_hub_images_through_registry_mirrors() {
    require_tools!(&all_tools());
    let label = "dockerd hub";
    let (_hub, seeded, mirror) = hub_and_mirror(label, Vec::new()).await;

    let bridge = Dockerd::bridge(&mirror.addr());
    let inner_mirror = format!("http://127.0.0.1:{}", bridge.inner_port);
    // Merged into the operator's daemon.json, whose own settings dockerd must still accept.
    let existing = bridge.config_dir().join("daemon.json");
    std::fs::write(
        &existing,
        r#"{"log-level": "info", "max-concurrent-downloads": 2}"#,
    )
    .unwrap();
    let notes = client_config_write(
        &[
            "docker",
            "--mirror",
            &inner_mirror,
            "--merge",
            existing.to_str().unwrap(),
        ],
        &bridge.config_dir(),
    );
    assert!(
        notes.contains("only docker.io"),
        "client-config docker says Docker mirrors only docker.io: {notes}"
    );
    let daemon_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&existing).unwrap()).unwrap();
    let inner_host = inner_mirror.trim_start_matches("http://");
    assert_eq!(
        daemon_json,
        serde_json::json!({
            "log-level": "info",
            "max-concurrent-downloads": 2,
            "registry-mirrors": [inner_mirror],
            "insecure-registries": [inner_host],
        })
    );
    let docker = tokio::task::spawn_blocking(move || bridge.start())
        .await
        .unwrap();

    // A bare name: dockerd asks its mirror for library/busybox, regmirror's default upstream.
    let out = docker.docker(&["pull", "busybox"]);
    expect_success(&out, "docker pull busybox");
    let reqs = mirror.requests();
    let amd64 = seeded.index.child("amd64");
    assert!(
        reqs.iter()
            .any(|r| r.path == "/v2/library/busybox/manifests/latest" && r.status == 200),
        "dockerd asked the mirror for the tag:\n{}",
        summary(&reqs)
    );
    assert_pulled_amd64(
        &reqs,
        &seeded.index,
        "docker.io",
        "library/busybox",
        "default",
        "docker pull busybox",
    );

    let out = docker.docker(&[
        "image",
        "inspect",
        "busybox",
        "--format",
        "{{.Id}} {{.Architecture}} {{json .RepoDigests}}",
    ]);
    let inspect = expect_success(&out, "docker image inspect");
    let want = format!(
        "{} amd64 [\"busybox@{}\"]",
        amd64.config.digest, seeded.index.manifest.digest
    );
    assert_eq!(
        inspect.trim(),
        want,
        "docker has the amd64 image of the index"
    );

    let out = docker.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "cat",
        "/etc/regmirror-test",
    ]);
    let printed = expect_success(&out, "docker run busybox");
    assert_eq!(printed, expected_text(amd64, &format!("{label} oci amd64")));
    drop(docker);
}

/// A hosts dir written by `client-config containerd` for `registries` in `style`.
fn containerd_hosts(dir: &Path, mirror: &Regmirror, registries: &[&str], style: &str) {
    let mut args = vec![
        "containerd",
        "--mirror",
        mirror.url.as_str(),
        "--style",
        style,
    ];
    for r in registries {
        args.extend(["--registry", r]);
    }
    client_config_write(&args, dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_two_registries_through_ns_style_hosts_files() {
    require_tools!(&all_tools());
    containerd_pulls_two_registries("ns").await;
}

/// containerd sends `?ns=<registry>` to a prefix-style mirror too (`GET
/// /v2/docker.io/library/busybox/manifests/v1?ns=docker.io`): the path prefix must still win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_two_registries_through_prefix_style_hosts_files() {
    require_tools!(&all_tools());
    containerd_pulls_two_registries("prefix").await;
}

/// Pull docker.io and a second registry with `ctr --hosts-dir` written by `client-config
/// containerd --style STYLE`; each pull in a fresh namespace (content is not shared), so every
/// blob must come through regmirror.
async fn containerd_pulls_two_registries(style: &str) {
    // The second registry is named by a dead loopback port: containerd falling back to the
    // registry itself finds nothing there. regmirror knows where it really lives.
    let second = Registry::plain().await;
    let second_seeded = seed(&second, "team/app", "team/single", "second registry").await;
    let second_name = format!("127.0.0.1:{}", dead_port());
    let (_hub, hub_seeded, mirror) = hub_and_mirror(
        "containerd hub",
        vec![UpstreamEntry::new(&second_name, &second.url())],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let registries = ["docker.io", second_name.as_str()];

    let hosts = work.path().join(style);
    containerd_hosts(&hosts, &mirror, &registries, style);
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap();
    let pulls = [
        (
            "docker.io/library/busybox:v1",
            "docker.io",
            "library/busybox",
            &hub_seeded,
        ),
        (
            &*format!("{second_name}/team/app:v1"),
            second_name.as_str(),
            "team/app",
            &second_seeded,
        ),
    ]
    .map(|(n, u, r, s)| (n.to_string(), u, r, s));
    for (i, (name, upstream, repository, seeded)) in pulls.iter().enumerate() {
        let before = mirror.requests().len();
        let ns = format!("e2e{i}");
        let ns = ns.as_str();
        let out = containerd.pull(ns, &hosts, name);
        if !out.status.success() {
            panic!(
                "ctr image pull {name} ({style} style) failed:\n{}\nregmirror saw:\n{}",
                String::from_utf8_lossy(&out.stderr),
                summary(&mirror.requests())
            );
        }
        assert_eq!(
            containerd.image_digest(ns, name).as_deref(),
            Some(seeded.index.manifest.digest.as_str()),
            "{style}: ctr image ls shows the index digest of {name}"
        );
        let content = containerd.content_digests(ns);
        let amd64 = seeded.index.child("amd64");
        for d in amd64.digests() {
            assert!(
                content.contains(&d),
                "{style}: containerd holds amd64 {d} of {name}"
            );
        }
        assert!(
            !content.contains(&seeded.index.child("arm64").manifest.digest),
            "{style}: no arm64 manifest"
        );
        let reqs: Vec<RequestRecord> = mirror.requests().into_iter().skip(before).collect();
        assert_pulled_amd64(
            &reqs,
            &seeded.index,
            upstream,
            repository,
            style,
            &format!("{style}: {name}"),
        );
        // containerd names the registry with ?ns= on every request to a mirror.
        for r in &reqs {
            assert_eq!(
                ns_of(r),
                *upstream,
                "{style}: ?ns= on {} {}",
                r.method,
                r.path
            );
        }
    }
    drop(containerd);
    if style != "ns" {
        return;
    }

    // The ns answer: OCI-Namespace names the registry the request was routed to.
    let cases = [
        (
            "/v2/library/busybox/manifests/v1?ns=docker.io",
            "docker.io",
            hub_seeded.index.manifest.digest.clone(),
        ),
        (
            &*format!(
                "/v2/team/app/manifests/v1?ns={}",
                second_name.replace(':', "%3A")
            ),
            second_name.as_str(),
            second_seeded.index.manifest.digest.clone(),
        ),
    ]
    .map(|(p, n, d)| (p.to_string(), n.to_string(), d));
    for (path, ns, digest) in cases {
        let addr = mirror.addr();
        let reply = tokio::task::spawn_blocking(move || {
            raw_request(&addr, "HEAD", &path, &[("Accept", OCI_INDEX)], b"")
        })
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "HEAD with ?ns={ns}");
        assert_eq!(
            reply.header("OCI-Namespace"),
            Some(ns.as_str()),
            "OCI-Namespace for ?ns={ns}"
        );
        assert_eq!(reply.header("Docker-Content-Digest"), Some(digest.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_the_registry_mirror_with_a_dead_primary_location() {
    require_tools!(&all_tools());
    let label = "podman hub";
    let (_hub, seeded, mirror) = hub_and_mirror(label, Vec::new()).await;
    let work = tempfile::tempdir().unwrap();
    // The operator's own registries.conf sends docker.io to a dead loopback port; client-config
    // merges the mirror in front of it and keeps everything else.
    let existing = work.path().join("existing.conf");
    std::fs::write(
        &existing,
        format!(
            "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n\n\
             [[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:{}\"\n",
            dead_port()
        ),
    )
    .unwrap();
    let conf_dir = work.path().join("containers");
    let merge = existing.to_str().unwrap().to_string();
    client_config_write(
        &["podman", "--mirror", &mirror.url, "--merge", &merge],
        &conf_dir,
    );
    let conf = conf_dir.join("registries.conf");
    let printed = client_config_print(&["podman", "--mirror", &mirror.url, "--merge", &merge]);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        printed,
        "--write and stdout agree"
    );
    let podman = Podman::new(conf);

    let name = "docker.io/library/busybox:v1";
    let p = &podman;
    let out = tokio::task::block_in_place(|| p.run(&["pull", name]));
    expect_success(&out, "podman pull");
    let reqs = mirror.requests();
    assert_pulled_amd64(
        &reqs,
        &seeded.index,
        "docker.io",
        "library/busybox",
        "prefix",
        "podman pull",
    );

    let out = tokio::task::block_in_place(|| {
        p.run(&[
            "image",
            "inspect",
            name,
            "--format",
            "{{.Id}} {{.Architecture}} {{.Digest}}",
        ])
    });
    let inspect = expect_success(&out, "podman image inspect");
    let amd64 = seeded.index.child("amd64");
    let want = format!(
        "{} amd64 {}",
        amd64.config.digest.trim_start_matches("sha256:"),
        seeded.index.manifest.digest
    );
    assert_eq!(
        inspect.trim(),
        want,
        "podman has the amd64 image of the index"
    );

    let out = tokio::task::block_in_place(|| {
        p.run(&[
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            name,
            "cat",
            "/etc/regmirror-test",
        ])
    });
    let printed = expect_success(&out, "podman run");
    assert_eq!(printed, expected_text(amd64, &format!("{label} oci amd64")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_through_prefix_and_host_style_registries_conf() {
    require_tools!(&all_tools());
    // ghcr.io stands in at a second registry, reached by Host header: the mirror URL's host name
    // `localhost` is in the upstream's `hosts`.
    let ghcr = Registry::plain().await;
    let ghcr_seeded = seed(&ghcr, "team/app", "team/single", "skopeo ghcr").await;
    let (_hub, hub_seeded, mirror) = hub_and_mirror(
        "skopeo hub",
        vec![UpstreamEntry::new("ghcr.io", &ghcr.url()).host("localhost")],
    )
    .await;
    let port = mirror.addr().rsplit_once(':').unwrap().1.to_string();
    let work = tempfile::tempdir().unwrap();
    // Both registries' own locations are dead loopback ports: only the mirrors can answer.
    let existing = work.path().join("existing.conf");
    std::fs::write(
        &existing,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:{}\"\n\n\
             [[registry]]\nprefix = \"ghcr.io\"\nlocation = \"127.0.0.1:{}\"\n",
            dead_port(),
            dead_port()
        ),
    )
    .unwrap();
    let step1 = work.path().join("step1");
    client_config_write(
        &[
            "podman",
            "--mirror",
            &mirror.url,
            "--merge",
            existing.to_str().unwrap(),
        ],
        &step1,
    );
    let step2 = work.path().join("step2");
    let host_mirror = format!("http://localhost:{port}");
    let merged = step1.join("registries.conf");
    client_config_write(
        &[
            "podman",
            "--style",
            "host",
            "--registry",
            "ghcr.io",
            "--mirror",
            &host_mirror,
            "--merge",
            merged.to_str().unwrap(),
        ],
        &step2,
    );
    let conf = step2.join("registries.conf");

    let cases = [
        (
            "docker.io/library/busybox:v1",
            &hub_seeded,
            "docker.io",
            "library/busybox",
            "prefix",
        ),
        (
            "ghcr.io/team/app:v1",
            &ghcr_seeded,
            "ghcr.io",
            "team/app",
            "host",
        ),
    ];
    for (i, (reference, seeded, upstream, repository, route)) in cases.into_iter().enumerate() {
        // --all keeps the index, byte for byte.
        let dest = work.path().join(format!("all{i}"));
        let c = conf.clone();
        let d = dest.clone();
        let out =
            tokio::task::spawn_blocking(move || clients::skopeo_copy(&c, reference, &d, true))
                .await
                .unwrap();
        expect_success(&out, &format!("skopeo copy --all {reference}"));
        let copy = clients::read_dir_layout(&dest);
        assert_eq!(
            copy.manifest_digest(),
            seeded.index.manifest.digest,
            "{reference}: index digest kept"
        );
        assert_eq!(
            copy.instance_digests(),
            seeded.index.child_digests(),
            "{reference}: both platforms copied"
        );
        let reqs = mirror.requests();
        let via: Vec<&RequestRecord> = matching(&reqs, |r| {
            r.upstream == upstream && r.repository == repository
        });
        assert!(
            !via.is_empty(),
            "{reference} reached regmirror:\n{}",
            summary(&reqs)
        );
        assert!(
            via.iter().all(|r| r.route == route && r.status == 200),
            "{reference} routed by {route}:\n{}",
            summary(&reqs)
        );

        // Without --all: this machine's platform only.
        let dest = work.path().join(format!("one{i}"));
        let c = conf.clone();
        let d = dest.clone();
        let out =
            tokio::task::spawn_blocking(move || clients::skopeo_copy(&c, reference, &d, false))
                .await
                .unwrap();
        expect_success(&out, &format!("skopeo copy {reference}"));
        let copy = clients::read_dir_layout(&dest);
        assert_eq!(
            copy.manifest_digest(),
            seeded.index.child("amd64").manifest.digest,
            "{reference}: amd64 chosen"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_and_kubespray_image_names_pull_through_the_mirror() {
    require_tools!(&all_tools());
    // registry.k8s.io keeps CoreDNS at coredns/coredns; the pause image at pause.
    let k8s = Registry::plain().await;
    let seeded = seed(&k8s, "coredns/coredns", "pause", "k8s").await;
    let mirror = Regmirror::start(MirrorConfig::new(vec![UpstreamEntry::new(
        "registry.k8s.io",
        &k8s.url(),
    )]))
    .await;

    let kubeadm = client_config_print(&["kubeadm", "--mirror", &mirror.url]);
    let repo = clients::yaml_value(&kubeadm, 0, "imageRepository").expect("imageRepository");
    let dns_repo =
        clients::yaml_value(&kubeadm, 2, "imageRepository").expect("dns.imageRepository");
    let kubespray = client_config_print(&["kubespray", "--mirror", &mirror.url]);
    let kube_image_repo =
        clients::yaml_value(&kubespray, 0, "kube_image_repo").expect("kube_image_repo");
    assert_eq!(kube_image_repo, repo, "kubeadm and kubespray agree");

    // kubeadm pulls <dns.imageRepository>/coredns:<tag> and <imageRepository>/pause:<tag>;
    // kubespray's coredns_image_repo is <kube_image_repo>/coredns/coredns. containerd pulls them
    // from the mirror as from any plain-HTTP registry.
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap();
    let no_hosts = tempfile::tempdir().unwrap();
    let pulls = [
        (
            format!("{dns_repo}/coredns:v1"),
            "coredns/coredns",
            seeded.index.manifest.digest.clone(),
        ),
        (
            format!("{repo}/pause:oci"),
            "pause",
            seeded.oci.manifest.digest.clone(),
        ),
        (
            format!("{kube_image_repo}/coredns/coredns:v2"),
            "coredns/coredns",
            seeded.index.manifest.digest.clone(),
        ),
    ];
    for (i, (name, repository, digest)) in pulls.iter().enumerate() {
        let ns = format!("k8s{i}");
        let out = containerd.pull(&ns, no_hosts.path(), name);
        expect_success(&out, &format!("ctr image pull {name}"));
        assert_eq!(
            containerd.image_digest(&ns, name).as_deref(),
            Some(digest.as_str()),
            "{name}"
        );
        let reqs = mirror.requests();
        let tag = name.rsplit_once(':').unwrap().1;
        let path = format!("/v2/registry.k8s.io/{repository}/manifests/{tag}");
        assert!(
            reqs.iter().any(|r| r.path == path
                && r.status == 200
                && r.route == "prefix"
                && r.upstream == "registry.k8s.io"
                && r.repository == *repository),
            "{name} routed to registry.k8s.io {repository}:\n{}",
            summary(&reqs)
        );
    }
    drop(containerd);
}

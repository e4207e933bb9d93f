//! End-to-end tests of client authentication and the access policy (issue #13 parts 3 and 4):
//! an htpasswd file made by `htpasswd -Bbc`, the Docker token flow, Basic on every request,
//! anonymous pulls on one upstream and not the other, a repository denied to one user with the
//! operator's message, and a wrong password that reaches no upstream.
//!
//! Real parts only: the standard world (two distribution upstreams behind one regmirror), skopeo,
//! and dockerd in a loopback-only network namespace for `docker login` + `docker pull`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use reqwest::StatusCode;
use support::client::{parse_challenge, RegistryClient, Reply};
use support::clients::{expect_success, Dockerd};
use support::env::CORE_TOOLS;
use support::mirror::MirrorConfig;
use support::skopeo::{self, assert_multi_copy, assert_single_copy, CopyOptions};
use support::world::{World, TOK_ALIAS};

const ALICE: (&str, &str) = ("alice", "alice-pw-1");
const INTERN: (&str, &str) = ("intern", "intern-pw-2");
/// What the operator tells a client refused `library/busybox`.
const DENIED: &str = "library/busybox is not mirrored for interns, see https://wiki.example/mirror";

/// `htpasswd -Bbc FILE alice ...` then `htpasswd -Bb FILE intern ...`, as an operator would.
fn htpasswd(dir: &Path) -> PathBuf {
    let file = dir.join("htpasswd");
    for (i, (u, p)) in [ALICE, INTERN].iter().enumerate() {
        let flags = if i == 0 { "-Bbc" } else { "-Bb" };
        let out = Command::new("htpasswd")
            .arg(flags)
            .arg(&file)
            .args([u, p])
            .output()
            .expect("run htpasswd");
        assert!(out.status.success(), "htpasswd: {out:?}");
    }
    file
}

fn basic(user: &str, pass: &str) -> String {
    let raw = format!("{user}:{pass}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The standard world with `[auth]` on: docker.io (the hub upstream) for users only, the token
/// upstream (alias `tok`) open to anonymous pulls, and `library/busybox` denied to `intern`.
async fn auth_world(dir: &Path) -> World {
    let file = htpasswd(dir);
    World::start_with(|c: &mut MirrorConfig| {
        c.upstreams[1].anonymous_pull = Some(true);
        let mut auth = toml::Table::new();
        auth.insert("htpasswd".into(), file.display().to_string().into());
        auth.insert("protect_metrics".into(), true.into());
        c.extra.top.insert("auth".into(), toml::Value::Table(auth));
        let mut rule = toml::Table::new();
        rule.insert("users".into(), toml::Value::Array(vec!["intern".into()]));
        rule.insert(
            "upstreams".into(),
            toml::Value::Array(vec!["docker.io".into()]),
        );
        rule.insert(
            "repositories".into(),
            toml::Value::Array(vec!["library/busybox".into()]),
        );
        rule.insert("action".into(), "deny".into());
        rule.insert("message".into(), DENIED.into());
        c.extra
            .top
            .insert("access".into(), toml::Value::Array(vec![rule.into()]));
    })
    .await
}

async fn get(client: &RegistryClient, path: &str, authorization: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    client.get(path, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_and_the_policy_decides() {
    require_tools!();
    let dir = tempfile::tempdir().unwrap();
    let w = auth_world(dir.path()).await;
    let m = w.mirror_client();
    let hello = "/v2/library/hello/manifests/docker";

    // No credentials: 401 with the challenge pointing at the mirror's own token endpoint.
    let base = get(&m, "/v2/", None).await;
    assert_eq!(base.status, StatusCode::UNAUTHORIZED);
    let challenge = base
        .header("www-authenticate")
        .unwrap_or_default()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let params = parse_challenge(&challenge);
    assert_eq!(
        params.get("realm").map(String::as_str),
        Some(format!("{}/token", w.mirror.url).as_str()),
        "{challenge}"
    );
    assert_eq!(params.get("service").map(String::as_str), Some("regmirror"));

    // `protect_metrics`: /metrics wants a user too.
    assert_eq!(
        get(&m, "/metrics", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let metrics = get(&m, "/metrics", Some(&basic(ALICE.0, ALICE.1))).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains("regmirror_http_requests_total"));
    assert_eq!(
        get(&m, "/healthz", None).await.status,
        StatusCode::OK,
        "probes stay open"
    );

    // A wrong password: 401 on the registry endpoint and on the token endpoint, and the upstream
    // is asked nothing for it.
    let wrong = basic(ALICE.0, "not-the-password");
    let r = get(&m, hello, Some(&wrong)).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED"))
    );
    assert!(r
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Bearer ")));
    let r = get(
        &m,
        "/token?service=regmirror&scope=repository:library/hello:pull",
        Some(&wrong),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = get(&m, hello, None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "docker.io is not open to anonymous pulls"
    );
    assert_eq!(
        w.hub.count_prefix("GET", "/v2/library/hello/"),
        0,
        "the upstream saw a request for a client that was refused"
    );

    // Basic credentials straight on the request.
    let r = get(&m, hello, Some(&basic(ALICE.0, ALICE.1))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        support::env::sha256_digest(&r.body),
        w.hub_seed.docker.manifest.digest
    );
    assert!(
        w.hub.count_prefix("GET", "/v2/library/hello/") > 0,
        "fetched for alice"
    );

    // The token flow: GET with Basic (Docker, podman, skopeo), then the OAuth2 POST (containerd).
    let r = get(
        &m,
        "/token?service=regmirror&scope=repository:library/hello:pull",
        Some(&basic(ALICE.0, ALICE.1)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let t = r.json();
    for k in ["token", "access_token", "expires_in", "issued_at"] {
        assert!(!t[k].is_null(), "{k} in {t}");
    }
    let bearer = format!("Bearer {}", t["token"].as_str().unwrap());
    let r = get(&m, hello, Some(&bearer)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&m, "/v2/", Some(&bearer)).await.status, StatusCode::OK);
    let form = format!(
        "grant_type=password&username={}&password={}&service=regmirror&scope=repository%3Alibrary%2Fhello%3Apull&client_id=containerd-client",
        ALICE.0, ALICE.1
    );
    let r = m
        .http
        .post(format!("{}/token", w.mirror.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let bearer = format!("Bearer {}", t["access_token"].as_str().unwrap());
    assert_eq!(get(&m, hello, Some(&bearer)).await.status, StatusCode::OK);
    let forged = format!("{}x", bearer);
    assert_eq!(
        get(&m, hello, Some(&forged)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // skopeo --src-creds through the challenge and the token endpoint.
    let busybox = format!("{}/library/busybox:v1", w.mirror.addr());
    let alice = CopyOptions {
        all: true,
        creds: Some((ALICE.0.into(), ALICE.1.into())),
        ..Default::default()
    };
    let copy = skopeo::copy(&busybox, w.work.path(), &alice).await.unwrap();
    assert_multi_copy(&copy, &w.hub_seed.index, "alice through the token flow");
    let wrong = CopyOptions {
        creds: Some((ALICE.0.into(), "nope".into())),
        ..alice.clone()
    };
    let err = skopeo::copy(&busybox, w.work.path(), &wrong)
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );

    // The policy: intern may not pull library/busybox and reads the operator's message (on the
    // raw API and in skopeo's error), but may pull library/hello.
    let r = get(
        &m,
        "/v2/library/busybox/manifests/v1",
        Some(&basic(INTERN.0, INTERN.1)),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("DENIED"))
    );
    assert_eq!(r.json()["errors"][0]["message"], DENIED);
    let intern = CopyOptions {
        creds: Some((INTERN.0.into(), INTERN.1.into())),
        ..alice.clone()
    };
    let err = skopeo::copy(&busybox, w.work.path(), &intern)
        .await
        .unwrap_err();
    assert!(
        err.contains(DENIED),
        "skopeo shows the operator's message: {err}"
    );
    let hello_ref = format!("{}/library/hello:docker", w.mirror.addr());
    let copy = skopeo::copy(&hello_ref, w.work.path(), &intern)
        .await
        .unwrap();
    assert_single_copy(&copy, &w.hub_seed.docker, "intern pulls library/hello");

    // Anonymous pulls: open on the token upstream (skopeo without credentials gets an anonymous
    // token), closed on docker.io.
    let tok_ref = format!("{}/{TOK_ALIAS}/team/single:oci", w.mirror.addr());
    let copy = skopeo::copy(&tok_ref, w.work.path(), &CopyOptions::default())
        .await
        .unwrap();
    assert_single_copy(&copy, &w.tok_seed.oci, "anonymous on the open upstream");
    let r = get(
        &m,
        &format!("/v2/{TOK_ALIAS}/team/single/manifests/oci"),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "no token needed where anonymous pulls are on"
    );
    let err = skopeo::copy(&hello_ref, w.work.path(), &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );

    // The request log names the user.
    let logged = w.mirror.requests();
    assert!(
        logged
            .iter()
            .any(|r| r.raw["fields"]["user"] == "intern" && r.status == 200),
        "the log names the user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_changes_apply_without_a_restart() {
    require_tools!();
    let dir = tempfile::tempdir().unwrap();
    let w = auth_world(dir.path()).await;
    let m = w.mirror_client();
    let path = "/v2/library/hello/manifests/oci";
    let bob = basic("bob", "bob-pw");
    assert_eq!(
        get(&m, path, Some(&bob)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let out = Command::new("htpasswd")
        .arg("-Bb")
        .arg(dir.path().join("htpasswd"))
        .args(["bob", "bob-pw"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The file is looked at once a second; poll what a client sees.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get(&m, path, Some(&bob)).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob still refused: {}",
            r.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_bcrypt_htpasswd_is_refused_by_config_check() {
    require_tools!(&["htpasswd"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .arg("-bmc")
        .arg(&file)
        .args(["md5user", "pw"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = dir.path().join("regmirror.toml");
    std::fs::write(
        &config,
        format!("[auth]\nhtpasswd = \"{}\"\n", file.display()),
    )
    .unwrap();
    let out = support::mirror::run([
        std::ffi::OsStr::new("config"),
        "check".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("auth.htpasswd")
            && stderr.contains("md5user")
            && stderr.contains("htpasswd -B"),
        "{stderr}"
    );
}

fn docker_tools() -> Vec<&'static str> {
    let mut t = CORE_TOOLS.to_vec();
    t.extend_from_slice(support::clients::DOCKER_TOOLS);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_then_docker_pull() {
    require_tools!(&docker_tools());
    let dir = tempfile::tempdir().unwrap();
    let w = auth_world(dir.path()).await;
    let bridge = Dockerd::bridge(&w.mirror.addr());
    let inner = format!("127.0.0.1:{}", bridge.inner_port);
    std::fs::write(
        bridge.config_dir().join("daemon.json"),
        serde_json::json!({ "insecure-registries": [inner] }).to_string(),
    )
    .unwrap();
    let docker = tokio::task::spawn_blocking(move || bridge.start())
        .await
        .unwrap();

    // Not logged in: the pull is refused.
    let image = format!("{inner}/library/busybox:v1");
    let out = docker.docker(&["pull", &image]);
    assert!(!out.status.success(), "pulled without logging in");
    // A wrong password is refused by docker login itself.
    let out = docker.docker(&["login", &inner, "-u", ALICE.0, "-p", "wrong"]);
    assert!(
        !out.status.success(),
        "docker login accepted a wrong password"
    );
    let out = docker.docker(&["login", &inner, "-u", ALICE.0, "-p", ALICE.1]);
    let said = expect_success(&out, "docker login");
    assert!(said.contains("Login Succeeded"), "{said}");
    let out = docker.docker(&["pull", &image]);
    expect_success(&out, "docker pull after docker login");
    let out = docker.docker(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{json .RepoDigests}}",
    ]);
    let digests = expect_success(&out, "docker image inspect");
    assert!(
        digests.contains(&w.hub_seed.index.manifest.digest),
        "{digests} names the index {}",
        w.hub_seed.index.manifest.digest
    );
    // intern logs in and is shown the operator's message.
    let out = docker.docker(&["login", &inner, "-u", INTERN.0, "-p", INTERN.1]);
    expect_success(&out, "docker login intern");
    let out = docker.docker(&["pull", &format!("{inner}/library/busybox:v2")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(DENIED), "{stderr}");
    drop(docker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_with_credentials_through_the_oauth_token_flow() {
    let mut tools = CORE_TOOLS.to_vec();
    tools.extend_from_slice(support::clients::CONTAINERD_TOOLS);
    require_tools!(&tools);
    let dir = tempfile::tempdir().unwrap();
    let w = auth_world(dir.path()).await;
    let hosts = dir.path().join("hosts");
    support::clients::client_config_write(
        &[
            "containerd",
            "--mirror",
            w.mirror.url.as_str(),
            "--style",
            "ns",
            "--registry",
            "docker.io",
        ],
        &hosts,
    );
    let containerd = tokio::task::spawn_blocking(support::clients::Containerd::start)
        .await
        .unwrap();
    let hosts_arg = hosts.to_str().unwrap();
    let pull = |ns: &str, user: Option<String>| {
        let mut args = vec![
            "image",
            "pull",
            "--plain-http",
            "--hosts-dir",
            hosts_arg,
            "--snapshotter",
            "native",
        ];
        let user_arg;
        if let Some(u) = user {
            user_arg = u;
            args.extend(["--user", user_arg.as_str()]);
        }
        args.push("docker.io/library/busybox:v1");
        containerd.ctr(ns, &args)
    };
    let out = pull("anon", None);
    assert!(!out.status.success(), "pulled docker.io anonymously");
    let out = pull("alice", Some(format!("{}:{}", ALICE.0, ALICE.1)));
    assert!(
        out.status.success(),
        "ctr pull --user alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        containerd
            .image_digest("alice", "docker.io/library/busybox:v1")
            .as_deref(),
        Some(w.hub_seed.index.manifest.digest.as_str())
    );
    let reqs = w.mirror.requests();
    assert!(
        reqs.iter()
            .any(|r| r.method == "POST" && r.path == "/token" && r.status == 200),
        "containerd used the OAuth2 POST"
    );
    assert!(reqs
        .iter()
        .any(|r| r.raw["fields"]["user"] == "alice" && r.path.contains("/blobs/")));
    let out = pull("intern", Some(format!("{}:{}", INTERN.0, INTERN.1)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("403"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_then_podman_pull() {
    let mut tools = CORE_TOOLS.to_vec();
    tools.extend_from_slice(support::clients::PODMAN_TOOLS);
    require_tools!(&tools);
    let dir = tempfile::tempdir().unwrap();
    let w = auth_world(dir.path()).await;
    let mirror = w.mirror.addr();
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("unqualified-search-registries = []\n[[registry]]\nlocation = \"{mirror}\"\ninsecure = true\n"),
    )
    .unwrap();
    let podman = support::clients::Podman::new(conf);
    let authfile = dir.path().join("auth.json");
    let authfile = authfile.to_str().unwrap();
    let login = |user: &str, pass: &str| {
        podman.run(&[
            "login",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "-u",
            user,
            "-p",
            pass,
            &mirror,
        ])
    };
    let out = login(ALICE.0, "wrong");
    assert!(
        !out.status.success(),
        "podman login accepted a wrong password"
    );
    expect_success(&login(ALICE.0, ALICE.1), "podman login");
    let image = format!("{mirror}/library/busybox:v1");
    let out = podman.run(&["pull", "--tls-verify=false", "--authfile", authfile, &image]);
    expect_success(&out, "podman pull after podman login");
    let out = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &image,
    ]);
    let digests = expect_success(&out, "podman image inspect");
    assert!(
        digests.contains(&w.hub_seed.index.manifest.digest),
        "{digests} names the index {}",
        w.hub_seed.index.manifest.digest
    );
}

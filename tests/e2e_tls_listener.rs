//! HTTPS listeners (issue #13 part 1): regmirror serving TLS with certificates from a CA made in
//! the test. Real clients (skopeo, podman, containerd's ctr, curl, reqwest) pull through it
//! trusting that CA; HTTP/2 where the client offers it (curl, reqwest: the response version and
//! the handshake counter's ALPN label); certificates chosen by SNI; a certificate replaced on disk
//! (and on SIGHUP) is served to the next connection while a 256 MiB download on the old one
//! completes with the right digest; expired, wrong-host and self-signed certificates are refused
//! by the clients; stalled handshakes and garbage do not disturb another client; a key that does
//! not match its certificate stops the start with both files named; the plain-HTTP redirect
//! listener answers `/healthz` and sends everything else to HTTPS.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::Digest as _;
use support::client::RegistryClient;
use support::clients::{expect_success, read_dir_layout, Containerd, Dockerd, Podman};
use support::faults::{metric, random_bytes, wait_for};
use support::image::Blob;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::{push_multi, seed};
use support::tls::{issue, make_certs, served_certificate, Certs, KeyKind};

const MIB: usize = 1024 * 1024;

/// Tools every test here runs besides regmirror.
const TOOLS: &[&str] = &["docker-registry", "openssl", "curl"];

/// The TLS keys of the shared listener, merged into the config.
fn tls_extra(cert: &Path, key: &Path) -> Extra {
    Extra::default()
        .top("tls_cert", cert.display().to_string())
        .top("tls_key", key.display().to_string())
}

/// A client trusting `ca` (HTTP/2 when ALPN agrees), no proxy, generous timeout.
fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
        .timeout(Duration::from_secs(300))
        .build()
        .expect("TLS client")
}

/// `dir/ca.crt`: the CA as containerd's hosts dir and the containers cert dirs want it.
fn cert_dir(dir: &Path, certs: &Certs) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&certs.ca, dir.join("ca.crt")).unwrap();
    dir.to_path_buf()
}

/// Handshakes counted so far with `labels`.
async fn handshakes(client: &reqwest::Client, mirror: &Regmirror, labels: &[(&str, &str)]) -> f64 {
    let text = mirror.metrics_text(client).await;
    metric(&text, "regmirror_tls_handshakes_total", labels).unwrap_or(0.0)
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_podman_and_ctr_pull_over_https_and_curl_and_reqwest_use_http2() {
    let mut tools = TOOLS.to_vec();
    tools.extend_from_slice(&["skopeo", "podman", "runc", "containerd", "ctr"]);
    require_tools!(&tools);
    let hub = Registry::plain().await;
    let seeded = seed(&hub, "library/busybox", "library/single", "tls listener").await;
    let rc = RegistryClient::new(&hub.url(), None);
    push_multi(&rc, "library/busybox", &seeded.index, &["latest"]).await;
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new("docker.io", &hub.url())]);
    config.extra = tls_extra(&certs.cert, &certs.key);
    let mirror = Regmirror::start(config).await;
    assert!(mirror.url.starts_with("https://"), "{}", mirror.url);
    let addr = mirror.addr();
    let https = client_trusting(&certs.ca);
    let amd64 = seeded.index.child("amd64");

    // reqwest: h2 by ALPN, the manifest's bytes are the upstream's.
    let resp = https
        .get(format!(
            "{}/v2/docker.io/library/busybox/manifests/v1",
            mirror.url
        ))
        .header("Accept", support::image::OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        support::env::sha256_digest(&body),
        seeded.index.manifest.digest
    );
    // curl: --http2 gets h2, --http1.1 gets HTTP/1.1 on the same port.
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = run(Command::new("curl").args([
            "-sS",
            "--noproxy",
            "*",
            "--cacert",
            &certs.ca_file(),
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &format!("{}/v2/", mirror.url),
        ]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{want} 200"),
            "curl {flag}"
        );
    }

    // skopeo with the CA in --src-cert-dir.
    let skopeo_certs = cert_dir(&work.path().join("skopeo-certs"), &certs);
    let dest = work.path().join("skopeo-out");
    let out = run(Command::new("skopeo").args([
        "copy",
        "--insecure-policy",
        "--src-cert-dir",
        skopeo_certs.to_str().unwrap(),
        &format!("docker://{addr}/docker.io/library/busybox:v1"),
        &format!("dir:{}", dest.display()),
    ]));
    expect_success(&out, "skopeo copy over https");
    let copied = read_dir_layout(&dest);
    assert_eq!(copied.manifest_digest(), amd64.manifest.digest);
    let mut want: Vec<String> = amd64.blobs().iter().map(|b| b.digest.clone()).collect();
    want.sort();
    assert_eq!(
        copied.blob_digests(),
        want,
        "skopeo: every blob byte-identical"
    );
    let h2_before_podman = handshakes(&https, &mirror, &[("alpn", "h2")]).await;

    // podman: a registry.mirror on the HTTPS listener, the primary location dead, the CA by --cert-dir.
    let dead = support::env::free_port();
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:{dead}\"\n\n\
             [[registry.mirror]]\nlocation = \"{addr}/docker.io\"\n"
        ),
    )
    .unwrap();
    let podman = Podman::new(conf);
    let podman_certs = cert_dir(&work.path().join("podman-certs"), &certs);
    let out = tokio::task::block_in_place(|| {
        podman.run(&[
            "pull",
            "--cert-dir",
            podman_certs.to_str().unwrap(),
            "docker.io/library/busybox:v1",
        ])
    });
    expect_success(&out, "podman pull over https");
    let out = tokio::task::block_in_place(|| {
        podman.run(&[
            "image",
            "inspect",
            "docker.io/library/busybox:v1",
            "--format",
            "{{.Digest}}",
        ])
    });
    assert_eq!(
        expect_success(&out, "podman inspect").trim(),
        seeded.index.manifest.digest
    );
    let h2_after_podman = handshakes(&https, &mirror, &[("alpn", "h2")]).await;

    // containerd: hosts.toml sends docker.io to the mirror, trusting ca.crt beside it.
    let hosts = work.path().join("hosts");
    let host_dir = cert_dir(&hosts.join("docker.io"), &certs);
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://127.0.0.1:{dead}\"\n\n[host.\"https://{addr}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            host_dir.join("ca.crt").display()
        ),
    )
    .unwrap();
    let containerd = tokio::task::block_in_place(Containerd::start);
    let out = tokio::task::block_in_place(|| {
        containerd.ctr(
            "tls",
            &[
                "image",
                "pull",
                "--hosts-dir",
                hosts.to_str().unwrap(),
                "--snapshotter",
                "native",
                "docker.io/library/busybox:v1",
            ],
        )
    });
    expect_success(&out, "ctr pull over https");
    let digest = tokio::task::block_in_place(|| {
        containerd.image_digest("tls", "docker.io/library/busybox:v1")
    });
    assert_eq!(
        digest.as_deref(),
        Some(seeded.index.manifest.digest.as_str())
    );
    let content = tokio::task::block_in_place(|| containerd.content_digests("tls"));
    for b in amd64.blobs() {
        assert!(content.contains(&b.digest), "ctr has {}", b.digest);
    }
    let h2_after_ctr = handshakes(&https, &mirror, &[("alpn", "h2")]).await;

    // Every request above came over TLS: each client's ALPN choice is on record. skopeo, podman
    // and ctr (Go, with a custom TLS configuration) offer no ALPN at all and speak HTTP/1.1; curl
    // and reqwest offer h2 and get it.
    let text = mirror.metrics_text(&https).await;
    let ok = metric(&text, "regmirror_tls_handshakes_total", &[("result", "ok")]).unwrap_or(0.0);
    let h1 = metric(
        &text,
        "regmirror_tls_handshakes_total",
        &[("alpn", "http/1.1")],
    )
    .unwrap_or(0.0);
    eprintln!(
        "handshakes ok={ok} http/1.1={h1}; h2 by podman: {}, by ctr: {}",
        h2_after_podman - h2_before_podman,
        h2_after_ctr - h2_after_podman
    );
    assert!(ok >= 5.0, "{text}");
    let requests = mirror.requests();
    for repo_path in [&amd64.manifest.digest, &amd64.config.digest] {
        assert!(
            requests
                .iter()
                .filter(|r| r.path.ends_with(repo_path.as_str()) && r.status == 200)
                .count()
                >= 3,
            "skopeo, podman and ctr each fetched {repo_path} through the mirror"
        );
    }
}

/// Replace `dst` by `src`'s bytes atomically (a new inode, as `cp` + `mv` or cert-manager does).
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_the_next_connection_while_a_256mb_download_completes()
{
    require_tools!(TOOLS);
    let registry = Registry::plain().await;
    let blob = Blob::new("application/octet-stream", random_bytes(256 * MIB, 0x715));
    RegistryClient::new(&registry.url(), None)
        .push_blob("big/blob", &blob)
        .await;
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let d = work.path();
    let (c1, k1) = issue(
        d,
        Some(&certs),
        "one",
        "one.test",
        "IP:127.0.0.1",
        2,
        KeyKind::Rsa,
    );
    let (c2, k2) = issue(
        d,
        Some(&certs),
        "two",
        "two.test",
        "IP:127.0.0.1",
        2,
        KeyKind::EcdsaP256,
    );
    let (cert, key) = (d.join("live.pem"), d.join("live.key"));
    replace(&c1, &cert);
    replace(&k1, &key);
    let mut config = MirrorConfig::new(vec![
        UpstreamEntry::new(&registry.host(), &registry.url()).alias("up")
    ]);
    config.extra = tls_extra(&cert, &key).top("tls_reload_interval_secs", 1);
    let mirror = Regmirror::start(config).await;
    let addr = mirror.addr();
    assert!(served_certificate(&addr, "x").contains("CN = one.test"));

    // The download starts on a connection made with certificate one, and stalls after 16 MiB
    // (the client stops reading; the server waits on a full socket).
    let https = client_trusting(&certs.ca);
    let mut resp = https
        .get(format!(
            "{}/v2/up/big/blob/blobs/{}",
            mirror.url, blob.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut hasher, mut got) = (sha2::Sha256::new(), 0usize);
    while got < 16 * MIB {
        let chunk = resp.chunk().await.unwrap().expect("more body");
        got += chunk.len();
        hasher.update(&chunk);
    }

    // Certificate two on disk: the key first (a moment of mismatch the reload must survive).
    replace(&k2, &key);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replace(&c2, &cert);
    let served = wait_for(
        "certificate two on a new connection",
        Duration::from_secs(30),
        || {
            let s = served_certificate(&addr, "x");
            s.contains("CN = two.test").then_some(s)
        },
    )
    .await;
    assert!(served.contains("two.test"));
    // A new client on a new connection works with the new certificate.
    let other = client_trusting(&certs.ca);
    let r = other
        .get(format!("{}/v2/", mirror.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A broken file keeps certificate two (and says why in the log).
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let log = wait_for(
        "the refused reload in the log",
        Duration::from_secs(30),
        || {
            let log = mirror.log();
            log.contains("not reloaded").then_some(log)
        },
    )
    .await;
    assert!(
        log.contains(&cert.display().to_string()),
        "the log names the file"
    );
    assert!(served_certificate(&addr, "x").contains("CN = two.test"));

    // The old connection finishes its 256 MiB with the right digest.
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(got, 256 * MIB);
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        blob.digest
    );
    let text = mirror.metrics_text(&other).await;
    assert!(
        metric(&text, "regmirror_tls_reloads_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "regmirror_tls_reloads_total",
            &[("result", "failed")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_when_polling_is_off() {
    require_tools!(TOOLS);
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let d = work.path();
    let (c1, k1) = issue(
        d,
        Some(&certs),
        "one",
        "one.test",
        "IP:127.0.0.1",
        2,
        KeyKind::Rsa,
    );
    let (c2, k2) = issue(
        d,
        Some(&certs),
        "two",
        "two.test",
        "IP:127.0.0.1",
        2,
        KeyKind::Ed25519,
    );
    let (cert, key) = (d.join("live.pem"), d.join("live.key"));
    replace(&c1, &cert);
    replace(&k1, &key);
    let mut config = MirrorConfig::new(vec![]);
    config.extra = tls_extra(&cert, &key).top("tls_reload_interval_secs", 0);
    let mirror = Regmirror::start(config).await;
    let addr = mirror.addr();
    replace(&k2, &key);
    replace(&c2, &cert);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        served_certificate(&addr, "x").contains("CN = one.test"),
        "no reload without SIGHUP"
    );
    let hup = run(Command::new("kill").args(["-HUP", &mirror.pid().to_string()]));
    assert!(hup.status.success());
    wait_for(
        "certificate two after SIGHUP",
        Duration::from_secs(30),
        || {
            served_certificate(&addr, "x")
                .contains("CN = two.test")
                .then_some(())
        },
    )
    .await;
    let https = client_trusting(&certs.ca);
    let r = https
        .get(format!("{}/v2/", mirror.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the process lives on after SIGHUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_the_redirect_listener_sends_http_to_https() {
    require_tools!(TOOLS);
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let d = work.path();
    let (c1, k1) = issue(
        d,
        Some(&certs),
        "one",
        "one.test",
        "DNS:one.test",
        2,
        KeyKind::EcdsaP256,
    );
    let (cw, kw) = issue(
        d,
        Some(&certs),
        "wild",
        "wild.test",
        "DNS:*.wild.test",
        2,
        KeyKind::Ed25519,
    );
    let mut sni1 = toml::Table::new();
    sni1.insert("cert".into(), c1.display().to_string().into());
    sni1.insert("key".into(), k1.display().to_string().into());
    let mut sniw = toml::Table::new();
    sniw.insert("cert".into(), cw.display().to_string().into());
    sniw.insert("key".into(), kw.display().to_string().into());
    sniw.insert(
        "names".into(),
        vec![toml::Value::from("*.wild.test"), "extra.test".into()].into(),
    );
    let mut config = MirrorConfig::new(vec![]);
    config.extra = tls_extra(&certs.cert, &certs.key)
        .top("tls_sni", vec![toml::Value::from(sni1), sniw.into()])
        .top("http_redirect_listen", "127.0.0.1:0");
    let mirror = Regmirror::start(config).await;
    let addr = mirror.addr();
    for (sni, cn) in [
        ("one.test", "one.test"),
        ("a.wild.test", "wild.test"),
        ("extra.test", "wild.test"),
        ("b.a.wild.test", "127.0.0.1"),
        ("other.test", "127.0.0.1"),
    ] {
        let served = served_certificate(&addr, sni);
        assert!(
            served.contains(&format!("CN = {cn}")),
            "SNI {sni}: {served}"
        );
    }
    // curl verifies the SNI certificate with the CA, by name.
    let port = addr.rsplit(':').next().unwrap();
    let out = run(Command::new("curl").args([
        "-sS",
        "--noproxy",
        "*",
        "--cacert",
        &certs.ca_file(),
        "--resolve",
        &format!("x.wild.test:{port}:127.0.0.1"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://x.wild.test:{port}/v2/"),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TLS 1.2 and 1.3 only.
    for (flag, ok) in [("-tls1_3", true), ("-tls1_2", true), ("-tls1_1", false)] {
        let script = format!(
            "openssl s_client -connect {addr} {flag} </dev/null 2>&1 | grep -c 'BEGIN CERTIFICATE'"
        );
        let out = run(Command::new("sh").arg("-c").arg(&script));
        let n: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert_eq!(n > 0, ok, "{flag}");
    }

    // The redirect listener.
    let stdout = std::fs::read_to_string(mirror.root.join("stdout.log")).unwrap();
    let redirect = stdout
        .lines()
        .find(|l| l.contains("(redirect to https"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("a redirect listener line")
        .to_string();
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("{redirect}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = plain
        .get(format!(
            "{redirect}/v2/docker.io/library/busybox/manifests/v1?ns=docker.io"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!(
            "{}/v2/docker.io/library/busybox/manifests/v1?ns=docker.io",
            mirror.url
        )
    );
    // Following it with the CA reaches the mirror.
    let follow = client_trusting(&certs.ca);
    let r = follow.get(format!("{redirect}/v2/")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.url().scheme()), (200, "https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrong_host_and_self_signed_certificates_are_refused_by_clients() {
    let mut tools = TOOLS.to_vec();
    tools.push("skopeo");
    require_tools!(&tools);
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let d = work.path();
    let skopeo_certs = cert_dir(&d.join("skopeo-certs"), &certs);
    let cases = [
        (
            issue(
                d,
                Some(&certs),
                "expired",
                "expired",
                "IP:127.0.0.1",
                -1,
                KeyKind::Rsa,
            ),
            &["expired"][..],
            "expired",
        ),
        (
            issue(
                d,
                Some(&certs),
                "wrong",
                "wrong.test",
                "DNS:wrong.test,IP:127.0.0.2",
                2,
                KeyKind::Rsa,
            ),
            &["valid for 127.0.0.2, not 127.0.0.1"][..],
            "match",
        ),
        (
            issue(
                d,
                None,
                "self",
                "127.0.0.1",
                "IP:127.0.0.1",
                2,
                KeyKind::Rsa,
            ),
            &["unknown authority"][..],
            "self-signed",
        ),
    ];
    for ((cert, key), skopeo_says, curl_says) in cases {
        let mut config = MirrorConfig::new(vec![]);
        config.extra = tls_extra(&cert, &key);
        let mirror = Regmirror::start(config).await;
        let out = run(Command::new("skopeo").args([
            "inspect",
            "--cert-dir",
            skopeo_certs.to_str().unwrap(),
            &format!("docker://{}/library/busybox:v1", mirror.addr()),
        ]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "skopeo accepted {}", cert.display());
        assert!(err.contains("x509"), "skopeo: {err}");
        for s in skopeo_says {
            assert!(err.contains(s), "skopeo for {}: {err}", cert.display());
        }
        let out = run(Command::new("curl").args([
            "-sS",
            "--noproxy",
            "*",
            "--cacert",
            &certs.ca_file(),
            "-o",
            "/dev/null",
            &format!("{}/v2/", mirror.url),
        ]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(curl_says),
            "curl for {}: {err}",
            cert.display()
        );
    }
}

/// Read until EOF or error; true when the peer closed within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_garbage_do_not_disturb_another_client() {
    require_tools!(TOOLS);
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let mut config = MirrorConfig::new(vec![]);
    config.extra = tls_extra(&certs.cert, &certs.key).top("tls_handshake_timeout_secs", 2);
    let mirror = Regmirror::start(config).await;
    let addr = mirror.addr();
    let https = client_trusting(&certs.ca);
    let before = handshakes(&https, &mirror, &[("result", "timeout")]).await;

    let mut silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A ClientHello record header that promises 512 bytes and sends 4.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .unwrap();
    let mut http = TcpStream::connect(&addr).unwrap();
    http.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut noise = TcpStream::connect(&addr).unwrap();
    noise.write_all(&random_bytes(64 * 1024, 7)).unwrap();

    // Meanwhile another client is served at once, over and over.
    for _ in 0..20 {
        let fresh = client_trusting(&certs.ca);
        let r = fresh
            .get(format!("{}/v2/", mirror.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Garbage is refused (closed, perhaps after a TLS alert); stalls end at the handshake timeout.
    assert!(tokio::task::block_in_place(|| closed_within(
        &mut http,
        Duration::from_secs(10)
    )));
    assert!(tokio::task::block_in_place(|| closed_within(
        &mut noise,
        Duration::from_secs(10)
    )));
    assert!(tokio::task::block_in_place(|| closed_within(
        &mut half,
        Duration::from_secs(20)
    )));
    for s in &mut silent {
        assert!(tokio::task::block_in_place(|| closed_within(
            s,
            Duration::from_secs(20)
        )));
    }
    let text = mirror.metrics_text(&https).await;
    let timeouts = metric(
        &text,
        "regmirror_tls_handshakes_total",
        &[("result", "timeout")],
    )
    .unwrap_or(0.0);
    let failed = metric(
        &text,
        "regmirror_tls_handshakes_total",
        &[("result", "failed")],
    )
    .unwrap_or(0.0);
    assert!(timeouts - before >= 21.0, "{text}");
    assert!(failed >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_its_certificate_stops_the_start_naming_both_files() {
    require_tools!(&["openssl"]);
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let certs = make_certs(d);
    let (other_cert, other_key) = issue(
        d,
        Some(&certs),
        "other",
        "other",
        "IP:127.0.0.1",
        2,
        KeyKind::EcdsaP256,
    );
    let missing = d.join("missing.pem");
    let cases: Vec<(PathBuf, PathBuf, Vec<String>)> = vec![
        (
            certs.cert.clone(),
            other_key.clone(),
            vec![
                "does not match".into(),
                certs.cert.display().to_string(),
                other_key.display().to_string(),
            ],
        ),
        (
            other_key.clone(),
            other_key.clone(),
            vec!["no PEM certificate".into(), other_key.display().to_string()],
        ),
        (
            missing.clone(),
            certs.key.clone(),
            vec!["cannot read".into(), missing.display().to_string()],
        ),
        (
            other_cert.clone(),
            other_cert.clone(),
            vec![
                "no PEM private key".into(),
                other_cert.display().to_string(),
            ],
        ),
    ];
    for (i, (cert, key, wants)) in cases.into_iter().enumerate() {
        let config = d.join(format!("c{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                d.join("data").display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        for args in [
            &["serve", "--config"][..],
            &["config", "check", "--config"][..],
        ] {
            let mut argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            argv.push(config.clone().into());
            let out = support::mirror::run(argv);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} case {i} started: {err}");
            for w in &wants {
                assert!(
                    err.contains(w.as_str()),
                    "{args:?} case {i}: want {w:?} in {err}"
                );
            }
        }
    }
}

/// `/etc/docker/certs.d/<host:port>/`, removed on drop: dockerd reads a registry's (and a
/// mirror's) CA only from there (no flag moves it); the port is the test's own, unique.
struct DockerCertsDir(PathBuf);

impl Drop for DockerCertsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_an_https_registry_mirror_trusting_the_ca_from_certs_d() {
    let mut tools = TOOLS.to_vec();
    tools.extend_from_slice(support::clients::DOCKER_TOOLS);
    require_tools!(&tools);
    let hub = Registry::plain().await;
    let seeded = seed(&hub, "library/busybox", "library/single", "tls dockerd").await;
    let rc = RegistryClient::new(&hub.url(), None);
    push_multi(&rc, "library/busybox", &seeded.index, &["latest"]).await;
    let work = tempfile::tempdir().unwrap();
    let certs = make_certs(work.path());
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new("docker.io", &hub.url())]);
    config.extra = tls_extra(&certs.cert, &certs.key);
    let mirror = Regmirror::start(config).await;

    let bridge = Dockerd::bridge(&mirror.addr());
    let inner = format!("127.0.0.1:{}", bridge.inner_port);
    let _ca = DockerCertsDir(cert_dir(
        &Path::new("/etc/docker/certs.d").join(&inner),
        &certs,
    ));
    std::fs::write(
        bridge.config_dir().join("daemon.json"),
        serde_json::json!({ "registry-mirrors": [format!("https://{inner}")] }).to_string(),
    )
    .unwrap();
    let docker = tokio::task::spawn_blocking(move || bridge.start())
        .await
        .unwrap();
    let out = tokio::task::block_in_place(|| docker.docker(&["pull", "busybox"]));
    expect_success(&out, "docker pull busybox through the https mirror");
    let amd64 = seeded.index.child("amd64");
    let out = tokio::task::block_in_place(|| {
        docker.docker(&[
            "image",
            "inspect",
            "busybox",
            "--format",
            "{{.Id}} {{json .RepoDigests}}",
        ])
    });
    assert_eq!(
        expect_success(&out, "docker image inspect").trim(),
        format!(
            "{} [\"busybox@{}\"]",
            amd64.config.digest, seeded.index.manifest.digest
        )
    );
    let reqs = mirror.requests();
    for b in amd64.blobs() {
        assert!(
            reqs.iter()
                .any(|r| r.method == "GET" && r.path.ends_with(&b.digest) && r.status == 200),
            "dockerd fetched {} through the mirror",
            b.digest
        );
    }
    drop(docker);
}

//! An HTTPS upstream: distribution serving TLS with a certificate from a private CA. regmirror
//! trusts it through the upstream's `ca_file`, and refuses it (with a clear error) without.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::env::{free_port, tools_available, ChildGuard};
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::registry::Registry;
use support::seed::seed;
use support::skopeo::{self, CopyOptions};

/// Make a CA and a server certificate for 127.0.0.1 signed by it; returns (ca.pem, cert.pem, key.pem).
fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let p = |n: &str| dir.join(n).display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=regmirror test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("req.csr"),
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &p("req.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    if !tools_available(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    // Seed over plain HTTP, then serve the same storage over TLS.
    let mut plain = Registry::plain().await;
    let seeded = seed(&plain, "team/multi", "team/single", "tls-upstream").await;
    plain.stop().await;
    let (ca, cert, key) = make_certs(plain.dir.path());
    let port = free_port();
    let config = plain.dir.path().join("tls.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: s\n  tls:\n    certificate: {cert}\n    key: {key}\n",
            plain.dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _tls = ChildGuard::new(child, "docker-registry (tls)");
    let pem = std::fs::read(&ca).unwrap();
    let probe = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while probe.get(format!("{url}/v2/")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS registry did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut trusted = UpstreamEntry::new("secure.example", &url).alias("sec");
    trusted.ca_file = Some(ca.clone());
    let untrusted = UpstreamEntry::new("untrusted.example", &url).alias("unsec");
    let mirror = Regmirror::start(MirrorConfig::new(vec![trusted, untrusted])).await;
    let work = tempfile::tempdir().unwrap();

    let copied = skopeo::copy(
        &format!("{}/sec/team/multi:v1", mirror.addr()),
        work.path(),
        &CopyOptions {
            all: true,
            ..Default::default()
        },
    )
    .await
    .expect("copy through the mirror from the TLS upstream");
    assert_eq!(
        copied.manifest_digest(),
        seeded.index.manifest.digest,
        "index digest unchanged over TLS"
    );
    let mut got = copied.blob_digests();
    got.sort();
    let mut want: Vec<String> = seeded
        .index
        .children
        .iter()
        .flat_map(|c| {
            c.blobs()
                .into_iter()
                .map(|b| b.digest.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(got, want, "every blob copied byte-identical");

    // Without the CA the certificate is refused: a clear OCI error, never a silent downgrade.
    let resp = reqwest::get(format!("{}/v2/unsec/team/multi/manifests/v1", mirror.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.to_lowercase().contains("certificate"),
        "{body}"
    );
}

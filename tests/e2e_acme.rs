//! ACME (issue #13 part 2): regmirror gets its certificate from Debian's `pebble` test CA on
//! loopback and serves it; clients trusting only pebble's root connect by name. TLS-ALPN-01 is
//! answered by the HTTPS listener, HTTP-01 by the plain-HTTP redirect listener. A certificate
//! with a lifetime of 30 seconds is renewed before it expires (a new serial is served, the files
//! in `data_dir/acme` are replaced); a restart serves the stored certificate without a new order;
//! an order the CA refuses leaves the mirror serving its certificate file and retrying.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::env::free_port;
use support::faults::metric;
use support::mirror::{Extra, MirrorConfig, Regmirror, UpstreamEntry};
use support::pebble::{Pebble, PebbleOptions};
use support::registry::Registry;
use support::tls::served_certificate;

const TOOLS: &[&str] = &[
    "docker-registry",
    "pebble",
    "pebble-challtestsrv",
    "openssl",
    "curl",
];

/// `[acme]` for `names` against `pebble`, merged into the config.
fn acme_table(pebble: &Pebble, names: &[&str], challenge: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert(
        "domains".into(),
        names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    t.insert("directory".into(), pebble.directory.clone().into());
    t.insert(
        "contact".into(),
        vec!["mailto:ops@mirror.test".to_string()].into(),
    );
    t.insert("accept_terms".into(), true.into());
    t.insert("challenge".into(), challenge.into());
    t.insert("ca_file".into(), pebble.tls.ca_file().into());
    toml::Value::Table(t)
}

/// `curl https://NAME:PORT/PATH` resolving NAME to 127.0.0.1 and trusting only pebble's root:
/// "STATUS" or curl's error.
fn curl_by_name(pebble: &Pebble, name: &str, port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--cacert",
            pebble.root.to_str().unwrap(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{name}:{port}{path}"),
        ])
        .output()
        .expect("run curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The issuer line of the certificate served for `sni`.
fn served_issuer(port: u16, sni: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -issuer"
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The serial of a PEM certificate file.
fn file_serial(path: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", path.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn serial_of(served: &str) -> String {
    served
        .split_whitespace()
        .find(|w| w.starts_with("serial="))
        .unwrap_or("")
        .to_string()
}

async fn metrics_text(mirror: &Regmirror) -> String {
    let client = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    mirror.metrics_text(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_is_issued_served_by_name_and_renewed_before_expiry() {
    require_tools!(TOOLS);
    let hub = Registry::plain().await;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let pebble = Pebble::start(
        &work.path().join("pebble"),
        PebbleOptions {
            http_port: free_port(),
            tls_port: port,
            validity_secs: Some(30),
        },
    )
    .await;
    let names = ["mirror.test", "k8s.mirror.test"];
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new("docker.io", &hub.url())]);
    config.listen = format!("127.0.0.1:{port}");
    config.extra = Extra::default().top("acme", acme_table(&pebble, &names, "tls-alpn-01"));
    // Ready means the listener answered a TLS handshake: the certificate is issued by then.
    let mirror = Regmirror::start(config).await;
    assert!(mirror.url.starts_with("https://"), "{}", mirror.url);

    for name in names {
        assert_eq!(
            curl_by_name(&pebble, name, port, "/v2/"),
            "200",
            "{name}: served a certificate that pebble's root verifies"
        );
        assert!(
            served_issuer(port, name).contains("Pebble"),
            "{name}: issuer {}",
            served_issuer(port, name)
        );
    }
    // A name the certificate does not carry fails verification.
    let other = curl_by_name(&pebble, "other.test", port, "/v2/");
    assert!(!other.starts_with("200"), "other.test: {other}");

    let stored = mirror.data_dir.join("acme/cert.pem");
    let key = mirror.data_dir.join("acme/key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "the key is readable by its owner only"
    );
    let first = serial_of(&served_certificate(&mirror.addr(), "mirror.test"));
    assert!(!first.is_empty(), "a serial is served");
    assert_eq!(
        file_serial(&stored),
        first,
        "the served certificate is the stored one"
    );
    let text = metrics_text(&mirror).await;
    assert!(
        metric(
            &text,
            "regmirror_tls_handshakes_total",
            &[("result", "acme")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "pebble validated each name over TLS-ALPN-01"
    );

    // Renewal: a third of the 30 s lifetime before expiry, a new certificate is ordered and served.
    let deadline = Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        let now = serial_of(&served_certificate(&mirror.addr(), "mirror.test"));
        if !now.is_empty() && now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 60 s; log:\n{}",
            support::mirror::tail(&mirror.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for name in names {
        assert_eq!(
            curl_by_name(&pebble, name, port, "/v2/"),
            "200",
            "{name} after renewal"
        );
    }
    let on_disk = file_serial(&stored);
    assert!(
        on_disk == renewed || on_disk != first,
        "the stored certificate was replaced too ({on_disk} vs first {first})"
    );
    let text = metrics_text(&mirror).await;
    assert!(
        metric(&text, "regmirror_acme_orders_total", &[("result", "ok")]).unwrap_or(0.0) >= 2.0,
        "the first order and the renewal"
    );
    assert!(metric(
        &text,
        "regmirror_acme_certificate_expiry_timestamp_seconds",
        &[]
    )
    .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_redirect_listener_and_a_restart_serves_the_stored_certificate() {
    require_tools!(TOOLS);
    let hub = Registry::plain().await;
    let work = tempfile::tempdir().unwrap();
    let (port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(
        &work.path().join("pebble"),
        PebbleOptions {
            http_port,
            tls_port: free_port(),
            validity_secs: None,
        },
    )
    .await;
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new("docker.io", &hub.url())]);
    config.listen = format!("127.0.0.1:{port}");
    config.extra = Extra::default()
        .top("acme", acme_table(&pebble, &["mirror.test"], "http-01"))
        .top("http_redirect_listen", format!("127.0.0.1:{http_port}"));
    let mut mirror = Regmirror::start(config).await;
    assert_eq!(curl_by_name(&pebble, "mirror.test", port, "/v2/"), "200");
    let first = serial_of(&served_certificate(&mirror.addr(), "mirror.test"));
    assert!(mirror.log().contains("answered an HTTP-01 validation"));
    // The redirect listener still redirects and answers /healthz; unknown tokens are 404.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    assert_eq!(
        plain
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        plain
            .get(format!("{base}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        308
    );
    assert_eq!(
        plain
            .get(format!("{base}/.well-known/acme-challenge/unknown"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Restart on the same data directory: the stored certificate is served, nothing is ordered.
    mirror.kill9();
    mirror.spawn().await;
    let again = serial_of(&served_certificate(&mirror.addr(), "mirror.test"));
    assert_eq!(again, first, "the stored certificate after a restart");
    assert!(mirror.log().contains("serving the stored certificate"));
    let text = metrics_text(&mirror).await;
    assert_eq!(
        metric(&text, "regmirror_acme_orders_total", &[]),
        None,
        "no order after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_order_keeps_the_certificate_file_in_service_and_is_retried() {
    require_tools!(TOOLS);
    let hub = Registry::plain().await;
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    // pebble validates TLS-ALPN-01 on a port where nothing listens: every order fails.
    let pebble = Pebble::start(
        &work.path().join("pebble"),
        PebbleOptions {
            http_port: free_port(),
            tls_port: free_port(),
            validity_secs: None,
        },
    )
    .await;
    std::fs::create_dir_all(work.path().join("files")).unwrap();
    let certs = support::tls::make_certs(&work.path().join("files"));
    let mut config = MirrorConfig::new(vec![UpstreamEntry::new("docker.io", &hub.url())]);
    config.listen = format!("127.0.0.1:{port}");
    config.extra = Extra::default()
        .top("acme", acme_table(&pebble, &["mirror.test"], "tls-alpn-01"))
        .top("tls_cert", certs.cert.display().to_string())
        .top("tls_key", certs.key.display().to_string());
    let mirror = Regmirror::start(config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mirror.log().contains("ACME: order failed") {
        assert!(
            Instant::now() < deadline,
            "no failed order logged:\n{}",
            support::mirror::tail(&mirror.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The file certificate (for 127.0.0.1) still serves: clients trusting its CA pull.
    let client = certs.client();
    let resp = client
        .get(format!("{}/v2/", mirror.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = metrics_text(&mirror).await;
    assert!(
        metric(
            &text,
            "regmirror_acme_orders_total",
            &[("result", "failed")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        !mirror.data_dir.join("acme/cert.pem").exists(),
        "nothing stored from a failed order"
    );
}

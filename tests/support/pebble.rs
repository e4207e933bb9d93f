//! Debian's `pebble` ACME test CA on loopback, with `pebble-challtestsrv` as its DNS server
//! (every name resolves to 127.0.0.1), so the CA validates regmirror's answers on the ports the
//! test chose. The directory is served over HTTPS with a certificate from a test CA made here
//! (what regmirror's `acme.ca_file` trusts); the issued certificates chain to pebble's own root,
//! fetched from its management port (what the test's clients trust).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::env::{free_port, ChildGuard};
use super::tls::{make_certs, Certs};

/// A running pebble and its DNS server; both are killed (by PID) when this drops.
pub struct Pebble {
    _dns: ChildGuard,
    _ca: ChildGuard,
    /// The ACME directory URL.
    pub directory: String,
    /// The test CA that signed the directory's HTTPS certificate (for `acme.ca_file`).
    pub tls: Certs,
    /// pebble's root (PEM file): issued certificates chain to it.
    pub root: PathBuf,
    pub log: PathBuf,
}

/// What pebble validates against: the ports regmirror answers HTTP-01 and TLS-ALPN-01 on.
pub struct PebbleOptions {
    pub http_port: u16,
    pub tls_port: u16,
    /// Lifetime of issued certificates in seconds (None: pebble's default of five years).
    pub validity_secs: Option<u64>,
}

impl Pebble {
    pub async fn start(dir: &Path, opts: PebbleOptions) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let tls = make_certs(dir);
        let (dns_port, dns_mgmt, acme_port, mgmt_port) =
            (free_port(), free_port(), free_port(), free_port());
        let log = dir.join("pebble.log");
        let out = || {
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("pebble.log"))
                    .unwrap(),
            )
        };
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ])
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let dns = ChildGuard::new(dns, "pebble-challtestsrv");
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": tls.cert,
            "privateKey": tls.key,
            "httpPort": opts.http_port,
            "tlsPort": opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = opts.validity_secs {
            pebble["certificateValidityPeriod"] = v.into();
        }
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": pebble })).unwrap(),
        )
        .unwrap();
        let ca = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args([
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
                "-strict=false",
            ])
            // No random validation delays, no injected bad nonces: the test measures regmirror.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates again (a renewal answers its challenges too).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("spawn pebble");
        let ca = ChildGuard::new(ca, "pebble");
        let client = tls.client();
        let directory = format!("https://127.0.0.1:{acme_port}/dir");
        let deadline = Instant::now() + Duration::from_secs(20);
        let root_url = format!("https://127.0.0.1:{mgmt_port}/roots/0");
        let root_pem = loop {
            let ready = client
                .get(&directory)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200);
            if ready.is_some() {
                if let Ok(r) = client.get(&root_url).send().await {
                    if r.status() == 200 {
                        break r.text().await.unwrap();
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let root = dir.join("pebble-root.pem");
        std::fs::write(&root, root_pem).unwrap();
        Pebble {
            _dns: dns,
            _ca: ca,
            directory,
            tls,
            root,
            log,
        }
    }
}

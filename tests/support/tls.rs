//! A private certificate authority for https upstreams: a CA and a server certificate for
//! 127.0.0.1 made with `openssl`, and a client trusting that CA; the `openssl` runner the token
//! server's key uses too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PEM files of one test CA and the server certificate it signed.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA certificate: what regmirror's `ca_file` points at.
    pub ca: PathBuf,
    /// The server certificate (subjectAltName IP:127.0.0.1).
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
}

impl Certs {
    /// The CA file as a string, for configs.
    pub fn ca_file(&self) -> String {
        self.ca.display().to_string()
    }

    /// A readiness-probe client (no proxy, 500 ms an attempt) that also trusts this CA.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).expect("read CA");
        reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .timeout(std::time::Duration::from_millis(500))
            .build()
            .expect("TLS client")
    }
}

/// Make a CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    let p = |n: &str| dir.join(n).display().to_string();
    self_signed(
        "/CN=regmirror test CA",
        &dir.join("ca.key"),
        &dir.join("ca.pem"),
    );
    openssl(&[
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
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write ext.cnf");
    openssl(&[
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
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// A new RSA key (`key`) and a certificate for it signed by itself (`cert`), valid two days.
pub fn self_signed(subject: &str, key: &Path, cert: &Path) {
    let (key, cert) = (key.display().to_string(), cert.display().to_string());
    openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject, "-keyout",
        &key, "-out", &cert,
    ]);
}

/// Run `openssl ARGS...`; panics with its stderr when it fails.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

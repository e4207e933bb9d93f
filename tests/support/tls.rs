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

/// The key type of a certificate [`issue`] makes.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    Rsa,
    EcdsaP256,
    Ed25519,
}

/// A leaf certificate signed by `ca` (or by itself when `ca` is None) in `dir`: `STEM.pem` (the
/// leaf, then the CA when signed by it: a chain) and `STEM.key`. `san` is an openssl
/// subjectAltName value ("DNS:a.test,IP:127.0.0.1"); `days` may be negative (already expired).
pub fn issue(
    dir: &Path,
    ca: Option<&Certs>,
    stem: &str,
    cn: &str,
    san: &str,
    days: i32,
    kind: KeyKind,
) -> (PathBuf, PathBuf) {
    let p = |n: String| dir.join(n).display().to_string();
    let (key, csr, cert, ext) = (
        p(format!("{stem}.key")),
        p(format!("{stem}.csr")),
        p(format!("{stem}.leaf.pem")),
        p(format!("{stem}.ext")),
    );
    let newkey: &[&str] = match kind {
        KeyKind::Rsa => &["-newkey", "rsa:2048"],
        KeyKind::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        KeyKind::Ed25519 => &["-newkey", "ed25519"],
    };
    let subj = format!("/CN={cn}");
    let mut args = vec!["req"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr]);
    openssl(&args);
    std::fs::write(&ext, format!("subjectAltName={san}\n")).expect("write ext");
    let days = days.to_string();
    let mut args = vec![
        "x509", "-req", "-in", &csr, "-days", &days, "-extfile", &ext,
    ];
    let (ca_pem, ca_key);
    match ca {
        Some(ca) => {
            ca_pem = ca.ca.display().to_string();
            ca_key = ca.ca.with_file_name("ca.key").display().to_string();
            args.extend_from_slice(&["-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial"]);
        }
        None => args.extend_from_slice(&["-signkey", &key]),
    }
    args.extend_from_slice(&["-out", &cert]);
    openssl(&args);
    let mut chain = std::fs::read(&cert).expect("read leaf");
    if let Some(ca) = ca {
        chain.extend(std::fs::read(&ca.ca).expect("read CA"));
    }
    let chain_path = dir.join(format!("{stem}.pem"));
    std::fs::write(&chain_path, chain).expect("write chain");
    (chain_path, PathBuf::from(key))
}

/// The subject and serial of the certificate the TLS server at `addr` presents for `sni`
/// (`openssl s_client`), e.g. "subject=CN = one.test serial=1A2B...".
pub fn served_certificate(addr: &str, sni: &str) -> String {
    let script = format!(
        "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -subject -serial"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout)
        .replace('\n', " ")
        .trim()
        .to_string()
}

//! TLS for the listeners: certificates from PEM files, chosen by SNI, reloaded in place.
//!
//! Owns: reading and checking certificate chains and keys, the rustls server configuration
//! (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, the aws-lc-rs provider reqwest already builds),
//! the handshake with its timeout, and the handshake counters. The server hands it each accepted
//! TCP connection of an HTTPS listener ([`Acceptor::accept`]) and serves what comes back with
//! hyper. Must not call `api`, `cache`, `upstream` or `storage`.
//!
//! A listener's certificates live behind one lock that each handshake reads once: a reload
//! ([`reload`]) swaps the whole set, so connections already open keep the keys they agreed and
//! the next handshake gets the new certificate. A file that does not load keeps the old set.

pub(crate) mod acme;
mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, SniCert, UpstreamConfig};

pub(crate) use reload::spawn_reloader;

/// Why a listener's certificates could not be loaded; each message names the files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// A file could not be read.
    #[error("TLS for {what}: cannot read {path}: {source}")]
    Read {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("TLS for {what}: {path}: no PEM certificate (BEGIN CERTIFICATE) in it")]
    NoCertificate { what: String, path: PathBuf },
    /// The key file holds no private key this build can use.
    #[error("TLS for {what}: {path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {why}")]
    NoKey {
        what: String,
        path: PathBuf,
        why: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error("TLS for {what}: the key {key} does not match the certificate {cert}")]
    Mismatch {
        what: String,
        cert: PathBuf,
        key: PathBuf,
    },
    /// The key or certificate is of a kind rustls refuses.
    #[error("TLS for {what}: {cert} / {key}: {source}")]
    Invalid {
        what: String,
        cert: PathBuf,
        key: PathBuf,
        source: Box<rustls::Error>,
    },
}

/// One certificate of a listener: its files and the names it serves (empty: its SAN names).
#[derive(Debug, Clone, PartialEq)]
struct Source {
    cert: PathBuf,
    key: PathBuf,
    names: Vec<String>,
}

/// What one HTTPS listener serves: its certificates (the first answers clients that name no
/// configured host), and its timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The listener, for messages: "all upstreams" or "upstream NAME".
    pub what: String,
    sources: Vec<Source>,
    /// The ACME certificate of the shared listener (`[acme]`), tried before the files.
    acme: Option<Arc<acme::Certs>>,
    handshake_timeout: Duration,
}

impl Settings {
    /// The shared listener's TLS, if `tls_cert` is set or `acme` is given (`[acme]`).
    pub(crate) fn shared(config: &Config, acme: Option<Arc<acme::Certs>>) -> Option<Settings> {
        let files = config.tls_cert.as_ref().zip(config.tls_key.as_ref());
        if files.is_none() && acme.is_none() {
            return None;
        }
        let mut s = Settings::new("all upstreams", files, &config.tls_sni, config);
        s.acme = acme;
        Some(s)
    }

    /// The dedicated listener of `u`, if it sets `tls_cert`.
    pub(crate) fn dedicated(config: &Config, u: &UpstreamConfig) -> Option<Settings> {
        let files = Some((u.tls_cert.as_ref()?, u.tls_key.as_ref()?));
        Some(Settings::new(
            &format!("upstream {}", u.name),
            files,
            &u.tls_sni,
            config,
        ))
    }

    /// One certificate pair for a listener outside the mirror's config (the webhook's).
    pub(crate) fn single(
        what: &str,
        cert: &Path,
        key: &Path,
        handshake_timeout: Duration,
    ) -> Settings {
        Settings {
            what: what.to_string(),
            sources: vec![Source {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                names: Vec::new(),
            }],
            acme: None,
            handshake_timeout,
        }
    }

    fn new(
        what: &str,
        files: Option<(&PathBuf, &PathBuf)>,
        sni: &[SniCert],
        config: &Config,
    ) -> Settings {
        let mut sources: Vec<Source> = files
            .map(|(cert, key)| Source {
                cert: cert.clone(),
                key: key.clone(),
                names: Vec::new(),
            })
            .into_iter()
            .collect();
        sources.extend(sni.iter().map(|s| Source {
            cert: s.cert.clone(),
            key: s.key.clone(),
            names: s.names.clone(),
        }));
        Settings {
            what: what.to_string(),
            sources,
            acme: None,
            handshake_timeout: Duration::from_secs(config.tls_handshake_timeout_secs),
        }
    }
}

/// Load every listener's certificates once, as the server would at start, and the ACME CA's
/// roots (for `config check`).
pub(crate) fn check(config: &Config) -> Result<(), Error> {
    let dedicated = config
        .upstreams
        .iter()
        .filter(|u| u.listen.is_some())
        .filter_map(|u| Settings::dedicated(config, u));
    for s in Settings::shared(config, None).into_iter().chain(dedicated) {
        CertSet::load(&s)?;
    }
    if let Some(path) = config.acme.as_ref().and_then(|a| a.ca_file.as_ref()) {
        let what = "acme.ca_file";
        let pem = read(what, path)?;
        if CertificateDer::pem_slice_iter(&pem).next().is_none() {
            return Err(Error::NoCertificate {
                what: what.to_string(),
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// A loaded certificate and the names it answers.
#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    /// Lower-case names: exact, or `*.suffix` for one label.
    names: Vec<String>,
}

/// One generation of a listener's certificate files; `entries[0]` is the default (none: an
/// ACME-only listener).
#[derive(Debug)]
struct CertSet {
    entries: Vec<Entry>,
}

impl CertSet {
    fn load(settings: &Settings) -> Result<CertSet, Error> {
        let entries = settings
            .sources
            .iter()
            .map(|s| load_entry(&settings.what, s))
            .collect::<Result<_, _>>()?;
        Ok(CertSet { entries })
    }

    /// The certificate for the SNI name `sni` (the default when none matches or none is sent).
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let (Some(sni), true) = (sni, self.entries.len() > 1) {
            let sni = sni.to_ascii_lowercase();
            // Exact names first, then wildcards, so `a.example.com` beats `*.example.com`.
            for exact in [true, false] {
                for e in &self.entries {
                    if e.names.iter().any(|n| name_matches(n, &sni, exact)) {
                        return Some(e.key.clone());
                    }
                }
            }
        }
        self.entries.first().map(|e| e.key.clone())
    }
}

/// Whether the configured (or SAN) `name` covers the client's `sni`; `exact` selects the pass.
fn name_matches(name: &str, sni: &str, exact: bool) -> bool {
    match name.strip_prefix("*.") {
        None => exact && name == sni,
        Some(suffix) => {
            !exact
                && sni
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
        }
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Read, parse and check one certificate chain and its key.
fn load_entry(what: &str, s: &Source) -> Result<Entry, Error> {
    let cert_pem = read(what, &s.cert)?;
    let key_pem = read(what, &s.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            what: what.to_string(),
            path: s.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::NoKey {
        what: what.to_string(),
        path: s.key.clone(),
        why: e.to_string(),
    })?;
    let names = if s.names.is_empty() {
        san_names(&chain[0])
    } else {
        s.names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => Error::Mismatch {
            what: what.to_string(),
            cert: s.cert.clone(),
            key: s.key.clone(),
        },
        source => Error::Invalid {
            what: what.to_string(),
            cert: s.cert.clone(),
            key: s.key.clone(),
            source: Box::new(source),
        },
    })?;
    Ok(Entry {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names of a certificate's subjectAltName, lower-cased (none when it does not parse:
/// rustls then refuses it at the handshake, and the default certificate answers).
fn san_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(str::to_ascii_lowercase).collect())
        .unwrap_or_default()
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The certificate resolver of one listener: the current [`CertSet`], swapped whole on reload,
/// and the ACME certificate and challenge answers when `[acme]` is on.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertSet>>,
    acme: Option<Arc<acme::Certs>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock only means a reload panicked mid-swap; the set inside is whole.
        let set = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sni = hello.server_name();
        if let Some(acme) = &self.acme {
            // The CA validating TLS-ALPN-01 offers only `acme-tls/1` (RFC 8737 section 3).
            let challenge = hello
                .alpn()
                .map(|mut p| p.next() == Some(acme::ALPN_ACME_TLS) && p.next().is_none())
                .unwrap_or(false);
            if challenge {
                return acme.alpn_challenge(sni);
            }
            if let Some(k) = acme.for_name(sni, set.entries.is_empty()) {
                return Some(k);
            }
        }
        set.pick(sni)
    }
}

/// The TLS side of one HTTPS listener.
pub(crate) struct Acceptor {
    settings: Settings,
    resolver: Arc<Resolver>,
    inner: tokio_rustls::TlsAcceptor,
    /// Modification stamps of the files the current set (or the last failed attempt) was read from.
    stamps: std::sync::Mutex<Vec<Stamp>>,
}

/// What tells a changed file: modification time, size and inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(settings: &Settings) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    settings
        .sources
        .iter()
        .flat_map(|s| [&s.cert, &s.key])
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

impl Acceptor {
    /// Load the listener's certificates; refuses a file that does not load, naming it.
    pub(crate) fn new(settings: Settings) -> Result<Acceptor, Error> {
        let before = stamps(&settings);
        let set = CertSet::load(&settings)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(set)),
            acme: settings.acme.clone(),
        });
        let first = settings.sources.first();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| Error::Invalid {
                what: settings.what.clone(),
                cert: first.map(|s| s.cert.clone()).unwrap_or_default(),
                key: first.map(|s| s.key.clone()).unwrap_or_default(),
                source: Box::new(source),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if settings.acme.as_ref().is_some_and(|a| a.wants_alpn()) {
            server.alpn_protocols.push(acme::ALPN_ACME_TLS.to_vec());
        }
        server.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        Ok(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            resolver,
            stamps: std::sync::Mutex::new(before),
            settings,
        })
    }

    /// For the `listening on` line: "TLS, 2 certificates".
    pub(crate) fn describe(&self) -> String {
        let files = match self.settings.sources.len() {
            0 => String::new(),
            1 => "TLS".to_string(),
            n => format!("TLS, {n} certificates by SNI"),
        };
        match (&self.settings.acme, files.is_empty()) {
            (None, _) => files,
            (Some(_), true) => "TLS, ACME".to_string(),
            (Some(_), false) => format!("{files} + ACME"),
        }
    }

    /// The TLS handshake on an accepted connection, bounded by `tls_handshake_timeout_secs`.
    /// None (logged and counted) when it fails or stalls; the connection is then dropped.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        let peer = tcp.peer_addr().ok();
        // The socket stays open until the outcome is counted (a client that sees its connection
        // closed finds the handshake already on /metrics): the failed handshake hands the socket
        // back, and the stalled one is dropped at the end of this function.
        let handshake = self.inner.accept(tcp).into_fallible();
        tokio::pin!(handshake);
        let outcome = tokio::select! {
            r = &mut handshake => Some(r),
            _ = tokio::time::sleep(self.settings.handshake_timeout) => None,
        };
        match outcome {
            Some(Ok(tls)) => {
                let (_, conn) = tls.get_ref();
                let alpn = match conn.alpn_protocol() {
                    Some(b"h2") => "h2",
                    Some(b"http/1.1") => "http/1.1",
                    Some(acme::ALPN_ACME_TLS) => "acme-tls/1",
                    _ => "none",
                };
                let version = match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                    _ => "other",
                };
                if alpn == "acme-tls/1" {
                    // A CA validating TLS-ALPN-01: the handshake was the whole answer.
                    crate::metrics::tls_handshake("acme", alpn, version);
                    tracing::info!(peer = ?peer, "ACME: answered a TLS-ALPN-01 validation");
                    return None;
                }
                crate::metrics::tls_handshake("ok", alpn, version);
                Some(tls)
            }
            Some(Err((e, socket))) => {
                tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
                crate::metrics::tls_handshake("failed", "-", "-");
                drop(socket);
                None
            }
            None => {
                tracing::debug!(peer = ?peer, "TLS handshake timed out");
                crate::metrics::tls_handshake("timeout", "-", "-");
                None
            }
        }
    }

    /// Re-read the files if any changed since the last attempt (or always, when `force`).
    /// A set that does not load leaves the current one in place; the reason is logged.
    pub(crate) fn reload(&self, force: bool) -> Result<bool, Error> {
        let now = stamps(&self.settings);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let set = CertSet::load(&self.settings)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(true)
    }

    /// The listener, for messages.
    pub(crate) fn what(&self) -> &str {
        &self.settings.what
    }
}

#[cfg(test)]
mod tests;

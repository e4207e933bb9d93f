//! ACME: the shared listener's certificate from a CA, obtained at start, renewed before expiry.
//!
//! Owns: the certificate the CA issued ([`Certs`], read by the listener's resolver on every
//! handshake), the answers to the CA's challenges while an order runs (TLS-ALPN-01 certificates
//! for the resolver, HTTP-01 key authorizations for the redirect listener), and the renewal task
//! ([`spawn`]). The account key and the certificate live in `data_dir/acme/` ([`store`]), so a
//! restart serves the stored certificate and orders nothing until renewal is due.
//!
//! A failed order never takes the current certificate away: the listener keeps serving it, and
//! the order is retried with a growing delay (logged, counted on `/metrics`).

mod order;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::AcmeConfig;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub(crate) const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// Why an order or the stored state failed; logged by the renewal task.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("ACME CA {directory}: {message}")]
    Ca { directory: String, message: String },
    #[error("ACME order for {names}: {message}")]
    Order { names: String, message: String },
    #[error("ACME state in {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ACME certificate from the CA: {0}")]
    Certificate(String),
}

/// A certificate in service and when it stops being valid.
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// What the listener and the redirect listener read; what the renewal task writes.
#[derive(Debug)]
pub(crate) struct Certs {
    config: AcmeConfig,
    dir: PathBuf,
    /// Lower-case names the ACME certificate is served for.
    names: Vec<String>,
    current: RwLock<Option<Current>>,
    /// TLS-ALPN-01 answers by lower-case host name, while an order runs.
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 answers: token -> key authorization, while an order runs.
    http: RwLock<HashMap<String, String>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Certs {
    /// The state of `config` kept under `data_dir/acme`; a stored certificate that still covers
    /// every configured name is loaded (and served) at once.
    pub(crate) fn new(config: &AcmeConfig, data_dir: &std::path::Path) -> Arc<Certs> {
        let dir = data_dir.join("acme");
        let names: Vec<String> = config
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        let current = match store::load_certificate(&dir, &names) {
            Ok(Some(c)) => {
                tracing::info!(names = %names.join(","), not_after = ?c.not_after, "ACME: serving the stored certificate");
                Some(c)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ACME: stored certificate not usable; ordering a new one");
                None
            }
        };
        Arc::new(Certs {
            config: config.clone(),
            dir,
            names,
            current: RwLock::new(current),
            alpn: RwLock::new(HashMap::new()),
            http: RwLock::new(HashMap::new()),
        })
    }

    /// Whether the TLS-ALPN-01 protocol must be offered by the listener.
    pub(crate) fn wants_alpn(&self) -> bool {
        self.config.challenge == crate::config::AcmeChallenge::TlsAlpn01
    }

    /// The certificate for a client naming `sni`: the ACME one when it is issued and the name is
    /// one of its names, or when `any` (the listener has no certificate files to fall back on).
    pub(crate) fn for_name(&self, sni: Option<&str>, any: bool) -> Option<Arc<CertifiedKey>> {
        let cur = read(&self.current);
        let cur = cur.as_ref()?;
        let named = sni.is_some_and(|s| self.names.iter().any(|n| n.eq_ignore_ascii_case(s)));
        (named || any).then(|| cur.key.clone())
    }

    /// The TLS-ALPN-01 certificate for `sni` while its order runs.
    pub(crate) fn alpn_challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        read(&self.alpn).get(&sni?.to_ascii_lowercase()).cloned()
    }

    /// The HTTP-01 answer for `token` (the last segment of `/.well-known/acme-challenge/TOKEN`).
    pub(crate) fn http_challenge(&self, token: &str) -> Option<String> {
        read(&self.http).get(token).cloned()
    }

    /// When the current certificate should be renewed (now, when there is none).
    fn renew_at(&self) -> SystemTime {
        let cur = read(&self.current);
        let Some(c) = cur.as_ref() else {
            return SystemTime::UNIX_EPOCH;
        };
        let before = match self.config.renew_before_days {
            Some(d) => Duration::from_secs(d * 86_400),
            None => c.not_after.duration_since(c.not_before).unwrap_or_default() / 3,
        };
        c.not_after.checked_sub(before).unwrap_or(c.not_before)
    }

    fn install(&self, c: Current) {
        crate::metrics::acme_expiry(&c.not_after);
        *write(&self.current) = Some(c);
    }
}

/// Order a certificate now if none is stored, then renew it before it expires, until `stop`.
pub(crate) fn spawn(certs: Arc<Certs>, stop: CancellationToken) {
    if let Some(c) = read(&certs.current).as_ref() {
        crate::metrics::acme_expiry(&c.not_after);
    }
    tokio::spawn(async move {
        let mut retry = Duration::from_secs(5);
        loop {
            let wait = certs
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let names = certs.names.join(",");
            tracing::info!(names = %names, directory = %certs.config.directory, "ACME: ordering a certificate");
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = order::obtain(&certs) => r,
            };
            match outcome {
                Ok(c) => {
                    tracing::info!(names = %names, not_after = ?c.not_after, "ACME: certificate issued; serving it");
                    crate::metrics::acme_order("ok");
                    certs.install(c);
                    retry = Duration::from_secs(5);
                }
                Err(e) => {
                    crate::metrics::acme_order("failed");
                    let still = read(&certs.current).is_some();
                    tracing::warn!(error = %e, retry_in = ?retry, serving_previous = still, "ACME: order failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(3600));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(renew_before_days: Option<u64>, life: Duration) -> Arc<Certs> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AcmeConfig {
            domains: vec!["Mirror.Example".into()],
            accept_terms: true,
            renew_before_days,
            ..AcmeConfig::default()
        };
        let c = Certs::new(&cfg, dir.path());
        let (cert, key) = store::tests::self_signed(&["mirror.example"]);
        let key = store::certified(&cert, &key).unwrap();
        let now = SystemTime::now();
        c.install(Current {
            key,
            not_before: now,
            not_after: now + life,
        });
        c
    }

    #[test]
    fn renews_when_a_third_of_the_lifetime_remains_or_as_configured() {
        let day = Duration::from_secs(86_400);
        let c = certs(None, 90 * day);
        let at = c.renew_at().duration_since(SystemTime::now()).unwrap();
        assert!(at > 59 * day && at <= 60 * day, "{at:?}");
        let c = certs(Some(10), 90 * day);
        let at = c.renew_at().duration_since(SystemTime::now()).unwrap();
        assert!(at > 79 * day && at <= 80 * day, "{at:?}");
        // Asked to renew more days ahead than the certificate lives: renew now.
        let c = certs(Some(100), 90 * day);
        assert!(c.renew_at() <= SystemTime::now());
    }

    #[test]
    fn serves_its_names_or_everything_when_alone() {
        let c = certs(None, Duration::from_secs(3600));
        assert!(c.for_name(Some("mirror.example"), false).is_some());
        assert!(c.for_name(Some("MIRROR.example"), false).is_some());
        assert!(c.for_name(Some("other.example"), false).is_none());
        assert!(c.for_name(None, false).is_none());
        assert!(c.for_name(None, true).is_some());
        assert!(c.alpn_challenge(Some("mirror.example")).is_none());
        assert!(c.http_challenge("token").is_none());
    }
}

//! One ACME order (RFC 8555) for every configured name: account (stored or new), the order,
//! a challenge answered per name (TLS-ALPN-01 or HTTP-01), the CSR with a fresh ECDSA P-256
//! key, the issued chain. The protocol is `instant-acme`'s; this file decides what to answer and
//! where the results go.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;

use super::{store, write, Certs, Current, Error};
use crate::config::AcmeChallenge;

/// How long the CA may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Clears the challenge answers when the order ends, however it ends.
struct Answers<'a>(&'a Certs);

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        write(&self.0.alpn).clear();
        write(&self.0.http).clear();
    }
}

/// Run one order to the end; the chain and key are stored in `data_dir/acme` before they are
/// returned for serving.
pub(super) async fn obtain(certs: &Certs) -> Result<Current, Error> {
    let (account, stored) = account(certs).await?;
    let ids: Vec<Identifier> = certs
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = match account.new_order(&NewOrder::new(&ids)).await {
        Ok(o) => o,
        // The CA forgot the stored account (a test CA restarted, an account deactivated): make a
        // new one, once.
        Err(e) if stored => {
            tracing::info!(error = %e, "ACME: the stored account was refused; creating a new one");
            let (account, _) = account_fresh(certs).await?;
            account
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(|e| order_err(certs, e))?
        }
        Err(e) => return Err(order_err(certs, e)),
    };
    let _answers = Answers(certs);
    let kind = match certs.config.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| order_err(certs, e))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(failed(
                        certs,
                        format!("authorization for {} is {other:?}", a.identifier()),
                    ))
                }
            }
            let name = a.identifier().to_string().to_ascii_lowercase();
            let mut challenge = a.challenge(kind.clone()).ok_or_else(|| {
                failed(
                    certs,
                    format!("the CA offers no {kind:?} challenge for {name}"),
                )
            })?;
            let answer = challenge.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => {
                    let cert = alpn_certificate(&name, answer.digest().as_ref())?;
                    write(&certs.alpn).insert(name.clone(), cert);
                }
                _ => {
                    write(&certs.http).insert(challenge.token.clone(), answer.as_str().to_string());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| order_err(certs, e))?;
        }
    }
    let status = order
        .poll_ready(&POLL)
        .await
        .map_err(|e| order_err(certs, e))?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "no reason given".into());
        return Err(failed(
            certs,
            format!("order is {status:?} after the challenges: {why}"),
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut params = rcgen::CertificateParams::new(certs.names.clone()).map_err(cert_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| order_err(certs, e))?;
    let chain = order
        .poll_certificate(&POLL)
        .await
        .map_err(|e| order_err(certs, e))?;
    let key_pem = key.serialize_pem();
    let served = store::certified(chain.as_bytes(), key_pem.as_bytes())?;
    let (names, not_before, not_after) = store::leaf_facts(chain.as_bytes())?;
    if let Some(missing) = certs.names.iter().find(|n| !names.contains(n)) {
        return Err(Error::Certificate(format!(
            "the issued certificate does not name {missing}"
        )));
    }
    store::save_certificate(&certs.dir, &chain, &key_pem)?;
    Ok(Current {
        key: served,
        not_before,
        not_after,
    })
}

/// The account for the configured directory: the stored one, or a new one (then stored).
/// The flag says whether it was stored.
async fn account(certs: &Certs) -> Result<(Account, bool), Error> {
    if let Some(creds) = store::load_account(&certs.dir, &certs.config.directory)? {
        let account = builder(certs)?
            .from_credentials(creds)
            .await
            .map_err(|e| ca_err(certs, e))?;
        return Ok((account, true));
    }
    account_fresh(certs).await
}

async fn account_fresh(certs: &Certs) -> Result<(Account, bool), Error> {
    let cfg = &certs.config;
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder(certs)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: cfg.accept_terms,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(|e| ca_err(certs, e))?;
    store::save_account(&certs.dir, &cfg.directory, &creds)?;
    tracing::info!(directory = %cfg.directory, "ACME: account created");
    Ok((account, false))
}

/// The HTTP client towards the CA: the public roots, or `acme.ca_file`'s.
fn builder(certs: &Certs) -> Result<instant_acme::AccountBuilder, Error> {
    match &certs.config.ca_file {
        Some(path) => Account::builder_with_root(path).map_err(|e| Error::Ca {
            directory: certs.config.directory.clone(),
            message: format!("acme.ca_file {}: {e}", path.display()),
        }),
        None => Account::builder().map_err(|e| ca_err(certs, e)),
    }
}

/// The self-signed certificate of a TLS-ALPN-01 answer: the name, and the SHA-256 of the key
/// authorization in the critical acmeIdentifier extension (RFC 8737 section 3).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, Error> {
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(cert_err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(cert_err)?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists for.
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der.into())
        .map_err(|e| Error::Certificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

fn ca_err(certs: &Certs, e: instant_acme::Error) -> Error {
    Error::Ca {
        directory: certs.config.directory.clone(),
        message: e.to_string(),
    }
}

fn order_err(certs: &Certs, e: instant_acme::Error) -> Error {
    failed(certs, e.to_string())
}

fn failed(certs: &Certs, message: String) -> Error {
    Error::Order {
        names: certs.names.join(","),
        message,
    }
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

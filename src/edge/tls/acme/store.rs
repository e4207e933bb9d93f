//! `data_dir/acme/`: the account key of each CA directory (`account-<hash>.json`) and the issued
//! certificate (`cert.pem`, chain leaf first, and `key.pem`). Keys are written mode 0600, every
//! file through a temporary name and a rename, so a crash leaves the old file or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::Digest as _;

use super::{Current, Error};

const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

fn store_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Store {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `dir/name` whole (temporary file, fsync, rename), mode 0600 if `secret`.
fn write_file(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(store_err(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(store_err(&tmp))?;
    f.write_all(bytes).map_err(store_err(&tmp))?;
    f.sync_all().map_err(store_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(store_err(&path))
}

fn account_file(directory: &str) -> String {
    let h = sha2::Sha256::digest(directory.as_bytes());
    format!("account-{}.json", &hex::encode(h)[..16])
}

/// The stored account of the CA at `directory`, if one was created.
pub(super) fn load_account(
    dir: &Path,
    directory: &str,
) -> Result<Option<instant_acme::AccountCredentials>, Error> {
    let path = dir.join(account_file(directory));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| store_err(&path)(std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(store_err(&path)(e)),
    }
}

pub(super) fn save_account(
    dir: &Path,
    directory: &str,
    credentials: &instant_acme::AccountCredentials,
) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(credentials)
        .map_err(|e| store_err(dir)(std::io::Error::other(e)))?;
    write_file(dir, &account_file(directory), &json, true)
}

/// Store an issued certificate and its key (the key first: a reader that finds the new
/// certificate finds its key).
pub(super) fn save_certificate(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), Error> {
    write_file(dir, KEY, key_pem.as_bytes(), true)?;
    write_file(dir, CERT, cert_pem.as_bytes(), false)
}

/// The chain and key as rustls serves them; refuses a key that is not the certificate's.
pub(super) fn certified(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(Error::Certificate("no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Certificate(format!("private key: {e}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| Error::Certificate(e.to_string()))
}

/// The DNS names and validity of a PEM chain's leaf.
pub(super) fn leaf_facts(cert_pem: &[u8]) -> Result<(Vec<String>, SystemTime, SystemTime), Error> {
    let der = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| Error::Certificate("no PEM certificate in it".into()))?
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Certificate(format!("not an X.509 certificate: {e}")))?;
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let validity = cert.validity();
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => {
                        Some(n.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((names, time(validity.not_before), time(validity.not_after)))
}

/// The stored certificate, if there is one that names every one of `names` and has not expired.
pub(super) fn load_certificate(dir: &Path, names: &[String]) -> Result<Option<Current>, Error> {
    let (cert_path, key_path): (PathBuf, PathBuf) = (dir.join(CERT), dir.join(KEY));
    let cert_pem = match std::fs::read(&cert_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(store_err(&cert_path)(e)),
    };
    let key_pem = std::fs::read(&key_path).map_err(store_err(&key_path))?;
    let (sans, not_before, not_after) = leaf_facts(&cert_pem)?;
    if let Some(missing) = names.iter().find(|n| !sans.contains(n)) {
        tracing::info!(name = %missing, "ACME: the stored certificate does not name {missing}; ordering a new one");
        return Ok(None);
    }
    if not_after <= SystemTime::now() {
        tracing::info!("ACME: the stored certificate has expired; ordering a new one");
        return Ok(None);
    }
    Ok(Some(Current {
        key: certified(&cert_pem, &key_pem)?,
        not_before,
        not_after,
    }))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, as PEM.
    pub(crate) fn self_signed(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    #[test]
    fn stored_certificate_is_used_only_when_it_names_everything() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a.example".to_string(), "b.example".to_string()];
        assert!(load_certificate(dir.path(), &names).unwrap().is_none());
        let (cert, key) = self_signed(&["a.example"]);
        save_certificate(
            dir.path(),
            std::str::from_utf8(&cert).unwrap(),
            std::str::from_utf8(&key).unwrap(),
        )
        .unwrap();
        assert!(load_certificate(dir.path(), &names).unwrap().is_none());
        let (cert, key) = self_signed(&["a.example", "b.example", "c.example"]);
        save_certificate(
            dir.path(),
            std::str::from_utf8(&cert).unwrap(),
            std::str::from_utf8(&key).unwrap(),
        )
        .unwrap();
        let got = load_certificate(dir.path(), &names).unwrap().unwrap();
        assert!(got.not_after > SystemTime::now());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A key that is not the certificate's is refused.
        let (_, other_key) = self_signed(&["a.example"]);
        std::fs::write(dir.path().join(KEY), other_key).unwrap();
        assert!(load_certificate(dir.path(), &names).is_err());
    }
}

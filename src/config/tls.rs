//! The TLS keys of a listener: certificate files, SNI entries, and their checks (file pairing and
//! names only; the certificates themselves are parsed when the server starts, by `edge::tls`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Default of `tls_handshake_timeout_secs`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default of `tls_reload_interval_secs`.
pub const DEFAULT_TLS_RELOAD_INTERVAL_SECS: u64 = 10;

/// One more certificate of a listener, served to clients that ask for one of its names (SNI).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SniCert {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Host names this certificate is served for: exact ("k8s.mirror.example.com") or one
    /// wildcard label ("*.mirror.example.com"). Empty: the DNS names in the certificate's
    /// subjectAltName.
    pub names: Vec<String>,
}

/// Check one listener's TLS keys; `k(field)` is the full name of a key (`tls_cert`, or
/// `upstream[i].tls_cert (name = ...)` for a dedicated listener).
pub(super) fn validate_listener(
    k: &dyn Fn(&str) -> String,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    sni: &[SniCert],
) -> Result<(), ConfigError> {
    if cert.is_some() != key.is_some() {
        return Err(invalid(k("tls_cert"), "tls_cert and tls_key go together"));
    }
    if cert.is_none() && !sni.is_empty() {
        return Err(invalid(
            k("tls_sni"),
            "needs tls_cert and tls_key (the certificate for clients that name no host)",
        ));
    }
    for (i, s) in sni.iter().enumerate() {
        if s.cert.as_os_str().is_empty() || s.key.as_os_str().is_empty() {
            return Err(invalid(
                k(&format!("tls_sni[{i}]")),
                "needs both `cert` and `key`",
            ));
        }
        for n in &s.names {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty()
                || bare.contains('*')
                || bare.contains(':')
                || bare.contains('/')
                || bare.chars().any(char::is_whitespace)
            {
                return Err(invalid(
                    k(&format!("tls_sni[{i}].names")),
                    format!("{n:?} is not a host name such as \"mirror.example.com\" or \"*.example.com\""),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn tls_mistakes_name_the_key() {
        let cases = [
            ("tls_cert = \"/c.pem\"", "tls_cert"),
            ("tls_key = \"/k.pem\"", "tls_cert"),
            ("[[tls_sni]]\ncert = \"/c\"\nkey = \"/k\"", "tls_sni"),
            (
                "tls_cert = \"/c\"\ntls_key = \"/k\"\n[[tls_sni]]\ncert = \"/c2\"",
                "tls_sni[0]",
            ),
            (
                "tls_cert = \"/c\"\ntls_key = \"/k\"\n[[tls_sni]]\ncert = \"/c2\"\nkey = \"/k2\"\nnames = [\"a.*.example\"]",
                "tls_sni[0].names",
            ),
            ("http_redirect_listen = \"127.0.0.1:80\"", "http_redirect_listen"),
            (
                "tls_cert = \"/c\"\ntls_key = \"/k\"\nhttp_redirect_listen = \"nowhere\"",
                "http_redirect_listen",
            ),
            ("tls_handshake_timeout_secs = 0", "tls_handshake_timeout_secs"),
            (
                "[[upstream]]\nname = \"a.io\"\ntls_cert = \"/c\"\ntls_key = \"/k\"",
                "upstream[0].tls_cert",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nlisten = \"127.0.0.1:0\"\ntls_cert = \"/c\"",
                "upstream[0].tls_cert",
            ),
        ];
        for (text, key) in cases {
            let c = Config::from_toml(text).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} -> {err}");
        }
        let ok = "default_upstream = \"\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\nhttp_redirect_listen = \"127.0.0.1:80\"\n\
                  [[tls_sni]]\ncert = \"/c2\"\nkey = \"/k2\"\nnames = [\"*.mirror.example.com\", \"k8s.example.com\"]\n\
                  [[upstream]]\nname = \"a.io\"\nlisten = \"127.0.0.1:0\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n";
        Config::from_toml(ok).unwrap().validate().unwrap();
    }
}

//! `[acme]`: automatic certificates for the shared listener from an ACME CA (Let's Encrypt,
//! ZeroSSL, a company CA, pebble in tests). Checked here; the orders run in `edge::tls::acme`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Let's Encrypt's production directory, the default `acme.directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the CA checks that the mirror answers for its names.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Challenge {
    /// TLS-ALPN-01 (RFC 8737): answered by the HTTPS listener itself, which must be reachable on
    /// port 443 from the CA.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01: answered on `http_redirect_listen`, which must be reachable on port 80.
    #[serde(rename = "http-01")]
    Http01,
}

/// `[acme]` of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// Host names the certificate is for (one certificate names them all). Wildcards need DNS-01,
    /// which regmirror does not answer.
    pub domains: Vec<String>,
    /// The CA's ACME directory URL (https).
    pub directory: String,
    /// Contact URLs given to the CA for expiry and incident mail ("mailto:ops@example.com").
    pub contact: Vec<String>,
    /// Must be true: the operator accepts the CA's terms of service.
    pub accept_terms: bool,
    /// `tls-alpn-01` (default) or `http-01`.
    pub challenge: Challenge,
    /// PEM roots that verify the directory's own HTTPS certificate (a private or test CA); unset:
    /// the usual public roots.
    pub ca_file: Option<PathBuf>,
    /// Renew when less than this many days of validity remain. Unset: when a third of the
    /// certificate's lifetime remains (30 days of a 90-day certificate).
    pub renew_before_days: Option<u64>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            domains: Vec::new(),
            directory: LETS_ENCRYPT.to_string(),
            contact: Vec::new(),
            accept_terms: false,
            challenge: Challenge::default(),
            ca_file: None,
            renew_before_days: None,
        }
    }
}

impl AcmeConfig {
    /// Check the keys; `http_redirect` is whether `http_redirect_listen` is set (HTTP-01 needs it).
    pub(super) fn validate(&self, http_redirect: bool) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(invalid(
                "acme.domains",
                "name at least one host name to get a certificate for",
            ));
        }
        for (i, d) in self.domains.iter().enumerate() {
            if d.starts_with("*.") {
                return Err(invalid(
                    format!("acme.domains[{i}]"),
                    format!("{d:?}: wildcard certificates need the DNS-01 challenge, which regmirror does not answer; list each name"),
                ));
            }
            if !is_dns_name(d) {
                return Err(invalid(
                    format!("acme.domains[{i}]"),
                    format!("{d:?} is not a DNS host name (letters, digits, '-' and '.'; no port, no IP address)"),
                ));
            }
        }
        match url::Url::parse(&self.directory) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(_) => {
                return Err(invalid(
                    "acme.directory",
                    "ACME directories are served over https",
                ))
            }
            Err(e) => return Err(invalid("acme.directory", format!("not a URL: {e}"))),
        }
        for (i, c) in self.contact.iter().enumerate() {
            if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
                return Err(invalid(
                    format!("acme.contact[{i}]"),
                    format!("{c:?}: expected a mailto: URL, e.g. \"mailto:ops@example.com\""),
                ));
            }
        }
        if !self.accept_terms {
            return Err(invalid(
                "acme.accept_terms",
                "the CA's terms of service must be accepted: read them, then set accept_terms = true",
            ));
        }
        if self.challenge == Challenge::Http01 && !http_redirect {
            return Err(invalid(
                "acme.challenge",
                "http-01 is answered on http_redirect_listen (port 80 as the CA sees it); set it, or use tls-alpn-01",
            ));
        }
        if self.renew_before_days == Some(0) {
            return Err(invalid(
                "acme.renew_before_days",
                "must be at least 1 (or unset: renew when a third of the lifetime remains)",
            ));
        }
        Ok(())
    }
}

/// A host name the CA can validate: labels of letters, digits and inner hyphens, a dot between,
/// not all-numeric (an IP address).
fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> AcmeConfig {
        AcmeConfig {
            domains: vec!["mirror.example.com".into()],
            accept_terms: true,
            ..AcmeConfig::default()
        }
    }

    #[test]
    fn each_bad_key_is_named() {
        assert!(ok().validate(false).is_ok());
        let cases: Vec<(Box<dyn Fn(&mut AcmeConfig)>, bool, &str)> = vec![
            (Box::new(|c| c.domains.clear()), false, "acme.domains"),
            (
                Box::new(|c| c.domains.push("*.example.com".into())),
                false,
                "acme.domains[1]",
            ),
            (
                Box::new(|c| c.domains[0] = "mirror:443".into()),
                false,
                "acme.domains[0]",
            ),
            (
                Box::new(|c| c.domains[0] = "10.0.0.1".into()),
                false,
                "acme.domains[0]",
            ),
            (
                Box::new(|c| c.domains[0] = "-a.example".into()),
                false,
                "acme.domains[0]",
            ),
            (
                Box::new(|c| c.directory = "http://ca.example/dir".into()),
                false,
                "acme.directory",
            ),
            (
                Box::new(|c| c.directory = "not a url".into()),
                false,
                "acme.directory",
            ),
            (
                Box::new(|c| c.contact = vec!["ops@example.com".into()]),
                false,
                "acme.contact[0]",
            ),
            (
                Box::new(|c| c.accept_terms = false),
                false,
                "acme.accept_terms",
            ),
            (
                Box::new(|c| c.challenge = Challenge::Http01),
                false,
                "acme.challenge",
            ),
            (
                Box::new(|c| c.renew_before_days = Some(0)),
                false,
                "acme.renew_before_days",
            ),
        ];
        for (change, redirect, key) in cases {
            let mut c = ok();
            change(&mut c);
            let err = c.validate(redirect).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        let mut http = ok();
        http.challenge = Challenge::Http01;
        assert!(http.validate(true).is_ok());
    }

    #[test]
    fn parses_from_toml() {
        let c: AcmeConfig = toml::from_str(
            "domains = [\"a.example\"]\naccept_terms = true\nchallenge = \"http-01\"\n",
        )
        .unwrap();
        assert_eq!(c.challenge, Challenge::Http01);
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert!(toml::from_str::<AcmeConfig>("challenge = \"dns-01\"").is_err());
    }
}

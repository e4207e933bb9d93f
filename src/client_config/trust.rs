//! What a client needs to trust and log in to an HTTPS mirror: a private CA (`--ca-file`) and
//! credentials (`--username` with `--password-file`), read and checked once; the generators only
//! place them in each client's files.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::{Args, Error, Mirror};

/// The mirror's CA and the client's credentials, when given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Trust {
    /// PEM text of the CA that signed the mirror's certificate.
    pub ca_pem: Option<String>,
    /// User name and password for the mirror's client authentication.
    pub credentials: Option<(String, String)>,
}

impl Trust {
    /// Read `--ca-file` and `--password-file`, checking them against the mirror's scheme.
    pub(crate) fn from_args(args: &Args, mirror: &Mirror) -> Result<Trust, Error> {
        let ca_pem = match &args.ca_file {
            None => None,
            Some(path) => Some(read_ca(path, mirror, args.insecure)?),
        };
        let credentials = match (&args.username, &args.password_file) {
            (None, None) => None,
            (Some(user), Some(file)) => Some(read_credentials(user, file)?),
            _ => {
                return Err(Error::Credentials(
                    "give both --username and --password-file".into(),
                ))
            }
        };
        if credentials.is_some() && mirror.is_plain_http() {
            return Err(Error::Credentials(
                "the mirror is plain HTTP: credentials would cross the network in clear; serve it over \
                 https:// (tls_cert / tls_key) first"
                    .into(),
            ));
        }
        Ok(Trust {
            ca_pem,
            credentials,
        })
    }

    /// The CA as the file `path` (e.g. `certs.d/<host>/ca.crt`), when `--ca-file` was given.
    pub(crate) fn ca_file(&self, path: String) -> Option<super::File> {
        Some(super::File {
            path: path.into(),
            contents: self.ca_pem.clone()?,
            private: false,
        })
    }

    /// The credentials for `host` as the `auths` file `name` (config.json, auth.json), 0600.
    pub(crate) fn auths_file(&self, name: &str, host: &str) -> Option<super::File> {
        Some(super::File {
            path: name.into(),
            contents: self.auths_json(host)?,
            private: true,
        })
    }

    /// `base64(user:password)`: the Basic credentials, as config.json and auth.json store them.
    pub(crate) fn basic(&self) -> Option<String> {
        self.credentials
            .as_ref()
            .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
    }

    /// `{"auths": {"<host>": {"auth": "..."}}}` (docker's config.json, containers' auth.json).
    pub(crate) fn auths_json(&self, host: &str) -> Option<String> {
        let auth = self.basic()?;
        let v = serde_json::json!({ "auths": { host: { "auth": auth } } });
        let mut s = serde_json::to_string_pretty(&v).ok()?;
        s.push('\n');
        Some(s)
    }
}

fn read_ca(path: &Path, mirror: &Mirror, insecure: bool) -> Result<String, Error> {
    let err = |message: &str| Error::CaFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    if mirror.is_plain_http() {
        return Err(err(
            "the mirror is plain HTTP and has no certificate to verify; give an https:// --mirror",
        ));
    }
    if insecure {
        return Err(err(
            "--insecure turns certificate checks off; trust the CA with --ca-file or skip checks with \
             --insecure, not both",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: PathBuf::from(path),
        source,
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(err(
            "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(text)
}

fn read_credentials(user: &str, file: &Path) -> Result<(String, String), Error> {
    if user.is_empty() || user.contains(':') {
        return Err(Error::Credentials(
            "--username must be non-empty and contain no ':' (Basic credentials are user:password)"
                .into(),
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
        path: file.to_path_buf(),
        source,
    })?;
    // The first line, as `printf '%s\n' secret > file` and secret mounts write it.
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(Error::Credentials(format!(
            "--password-file {}: its first line is empty",
            file.display()
        )));
    }
    Ok((user.to_string(), password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_auths() {
        let t = Trust {
            ca_pem: None,
            credentials: Some(("alice".into(), "s3cret".into())),
        };
        assert_eq!(t.basic().as_deref(), Some("YWxpY2U6czNjcmV0"));
        let v: serde_json::Value =
            serde_json::from_str(&t.auths_json("mirror.example.com:8443").unwrap()).unwrap();
        assert_eq!(
            v["auths"]["mirror.example.com:8443"]["auth"],
            "YWxpY2U6czNjcmV0"
        );
        assert_eq!(Trust::default().auths_json("x"), None);
    }

    #[test]
    fn ca_and_password_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello\n").unwrap();
        let https = Mirror::parse("https://m.example.com").unwrap();
        let http = Mirror::parse("http://m.example.com").unwrap();
        assert!(read_ca(&pem, &https, false).unwrap().contains("MIIB"));
        for (path, mirror, insecure, says) in [
            (&pem, &http, false, "plain HTTP"),
            (&pem, &https, true, "not both"),
            (&junk, &https, false, "no PEM"),
        ] {
            let e = read_ca(path, mirror, insecure).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--ca-file"), "{e}");
        }
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "p4ss word\nignored\n").unwrap();
        assert_eq!(
            read_credentials("bob", &pw).unwrap(),
            ("bob".into(), "p4ss word".into())
        );
        assert!(read_credentials("a:b", &pw).is_err());
        std::fs::write(&pw, "\n").unwrap();
        assert!(read_credentials("bob", &pw)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}

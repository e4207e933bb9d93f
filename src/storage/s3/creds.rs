//! What the AWS SDKs read that `object_store` does not: named profiles of the shared
//! credentials file (`s3.profile`) and the `AWS_CA_BUNDLE` certificate file.

use object_store::aws::AwsCredential;
use object_store::Certificate;

use super::super::Error;

fn config_error(key: &str, message: String) -> Error {
    Error::Unavailable {
        key: key.to_string(),
        source: message.into(),
    }
}

/// The certificates of `AWS_CA_BUNDLE`, trusted besides the system's (empty when unset).
pub(super) fn ca_bundle() -> Result<Vec<Certificate>, Error> {
    let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(&path).map_err(|e| {
        config_error(
            "AWS_CA_BUNDLE",
            format!("cannot read {}: {e}", path.to_string_lossy()),
        )
    })?;
    Certificate::from_pem_bundle(&pem).map_err(|e| {
        config_error(
            "AWS_CA_BUNDLE",
            format!("{} holds no PEM certificates: {e}", path.to_string_lossy()),
        )
    })
}

/// The keys of profile `name` in `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`).
pub(super) fn profile(name: &str) -> Result<AwsCredential, Error> {
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials"))
        })
        .ok_or_else(|| config_error("s3.profile", "no HOME to find ~/.aws/credentials".into()))?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| config_error("s3.profile", format!("cannot read {}: {e}", file.display())))?;
    parse_profile(&text, name).ok_or_else(|| {
        config_error(
            "s3.profile",
            format!(
                "{} has no profile [{name}] with aws_access_key_id and aws_secret_access_key",
                file.display()
            ),
        )
    })
}

/// Find `[name]` (or `[profile name]`) in INI text and read its keys.
fn parse_profile(text: &str, name: &str) -> Option<AwsCredential> {
    let (mut inside, mut id, mut secret, mut token) = (false, None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            inside =
                section == name || section.strip_prefix("profile ").map(str::trim) == Some(name);
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(AwsCredential {
        key_id: id?,
        secret_key: secret?,
        token,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    [profile ci]\n# comment\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        let d = super::parse_profile(text, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret_key.as_str()), ("A", "B"));
        let ci = super::parse_profile(text, "ci").unwrap();
        assert_eq!(ci.token.as_deref(), Some("T"));
        assert!(super::parse_profile(text, "missing").is_none());
    }
}

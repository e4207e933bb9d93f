//! Where committed objects live: `storage = "fs"` (the data directory, the default) or
//! `storage = "s3"` with its `[s3]` table, and the per-listener `redirect_blobs` switch.

use serde::{Deserialize, Serialize};

use super::{invalid, ByteSize, ConfigError};

/// The storage backend of the cache (`storage = ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Files under `data_dir` on local disk.
    #[default]
    Fs,
    /// An S3 bucket (`[s3]`); `data_dir` keeps spool files and the optional local tier.
    S3,
}

/// The `[s3]` table: an S3 or S3-compatible bucket (MinIO, Ceph, R2, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (required).
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. "cache/" (several mirrors can share one bucket).
    pub prefix: String,
    /// AWS region of the bucket; taken from `AWS_REGION` / `AWS_DEFAULT_REGION` when unset.
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible servers, e.g. "http://127.0.0.1:9000". Unset: AWS.
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted ones
    /// (`bucket.endpoint/key`); most self-hosted servers need it.
    pub path_style: bool,
    /// Named profile of `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`) holding the keys.
    /// Unset: the environment (`AWS_ACCESS_KEY_ID`, ...), a web identity token
    /// (`AWS_WEB_IDENTITY_TOKEN_FILE`, as on EKS), ECS or EC2 instance metadata.
    pub profile: Option<String>,
    /// Bytes of hot blobs kept on local disk (under `data_dir`) in front of the bucket, served
    /// with `sendfile(2)`; least recently used first out. Unset: no local tier.
    pub local_cache_size: Option<ByteSize>,
    /// Answer GETs of blobs larger than this with `307` to a presigned URL of the object, so the
    /// bytes go from the bucket to the client directly (listeners with `redirect_blobs = false`
    /// never do). Unset: never redirect.
    pub redirect_blobs_over: Option<ByteSize>,
    /// Seconds a presigned URL stays valid.
    pub presign_secs: Option<u64>,
}

impl super::Config {
    /// The bucket to open when `storage = "s3"` (None: local disk).
    pub(crate) fn s3_backend(&self) -> Option<&S3Config> {
        match self.storage {
            StorageKind::S3 => self.s3.as_ref(),
            StorageKind::Fs => None,
        }
    }
}

/// How long presigned blob URLs stay valid unless `s3.presign_secs` says otherwise.
pub(crate) const DEFAULT_PRESIGN_SECS: u64 = 900;

impl S3Config {
    /// Seconds a presigned URL is valid.
    pub fn presign_secs(&self) -> u64 {
        self.presign_secs.unwrap_or(DEFAULT_PRESIGN_SECS)
    }
}

/// Check `storage` and `[s3]` together; errors name the key.
pub(crate) fn validate(kind: StorageKind, s3: &Option<S3Config>) -> Result<(), ConfigError> {
    let Some(s3) = s3 else {
        if kind == StorageKind::S3 {
            return Err(invalid(
                "s3",
                "storage = \"s3\" needs an [s3] table with at least `bucket`",
            ));
        }
        return Ok(());
    };
    if kind != StorageKind::S3 {
        return Err(invalid(
            "storage",
            "an [s3] table is set but storage is \"fs\"; set storage = \"s3\" or remove [s3]",
        ));
    }
    let b = &s3.bucket;
    let bucket_ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && !b.starts_with(['-', '.'])
        && !b.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(invalid(
            "s3.bucket",
            format!("{b:?} is not a bucket name (3-63 lowercase letters, digits, '-' or '.')"),
        ));
    }
    if s3.prefix.starts_with('/') || s3.prefix.contains("//") || s3.prefix.contains("..") {
        return Err(invalid(
            "s3.prefix",
            format!("{:?}: use a relative prefix such as \"cache/\"", s3.prefix),
        ));
    }
    if let Some(r) = &s3.region {
        if r.is_empty() || r.contains(char::is_whitespace) {
            return Err(invalid("s3.region", format!("{r:?} is not a region name")));
        }
    }
    if let Some(e) = &s3.endpoint {
        let ok = url::Url::parse(e)
            .ok()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(invalid(
                "s3.endpoint",
                format!("{e:?}: expected http://host[:port] or https://host[:port]"),
            ));
        }
    }
    if s3.profile.as_deref() == Some("") {
        return Err(invalid("s3.profile", "must not be empty"));
    }
    if s3.local_cache_size.is_some_and(|s| s.0 < 1 << 20) {
        return Err(invalid(
            "s3.local_cache_size",
            "must be at least 1MiB (leave it unset for no local tier)",
        ));
    }
    if s3.redirect_blobs_over.is_some_and(|s| s.0 == 0) {
        return Err(invalid(
            "s3.redirect_blobs_over",
            "must be greater than 0 (leave it unset to never redirect)",
        ));
    }
    if s3.presign_secs.is_some_and(|s| s == 0 || s > 7 * 24 * 3600) {
        return Err(invalid(
            "s3.presign_secs",
            "must be between 1 and 604800 (7 days, the SigV4 maximum)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(f: impl FnOnce(&mut S3Config)) -> Option<S3Config> {
        let mut c = S3Config {
            bucket: "regmirror".into(),
            ..S3Config::default()
        };
        f(&mut c);
        Some(c)
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(StorageKind, Option<S3Config>, &str)> = vec![
            (StorageKind::S3, None, "`s3`"),
            (StorageKind::Fs, s3(|_| {}), "`storage`"),
            (
                StorageKind::S3,
                s3(|c| c.bucket = "A_b".into()),
                "`s3.bucket`",
            ),
            (StorageKind::S3, s3(|c| c.bucket.clear()), "`s3.bucket`"),
            (
                StorageKind::S3,
                s3(|c| c.prefix = "/x".into()),
                "`s3.prefix`",
            ),
            (
                StorageKind::S3,
                s3(|c| c.endpoint = Some("ftp://x".into())),
                "`s3.endpoint`",
            ),
            (
                StorageKind::S3,
                s3(|c| c.region = Some("".into())),
                "`s3.region`",
            ),
            (
                StorageKind::S3,
                s3(|c| c.local_cache_size = Some(ByteSize(10))),
                "`s3.local_cache_size`",
            ),
            (
                StorageKind::S3,
                s3(|c| c.redirect_blobs_over = Some(ByteSize(0))),
                "`s3.redirect_blobs_over`",
            ),
            (
                StorageKind::S3,
                s3(|c| c.presign_secs = Some(0)),
                "`s3.presign_secs`",
            ),
        ];
        for (kind, s3, key) in cases {
            let e = validate(kind, &s3).unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        }
        assert!(validate(StorageKind::Fs, &None).is_ok());
        assert!(validate(
            StorageKind::S3,
            &s3(|c| {
                c.endpoint = Some("http://127.0.0.1:9000".into());
                c.path_style = true;
                c.prefix = "cache/".into();
            })
        )
        .is_ok());
    }

    #[test]
    fn parses_the_agreed_keys() {
        let c = crate::config::Config::from_toml(
            r#"
storage = "s3"
redirect_blobs = false
[s3]
bucket = "regmirror"
prefix = "cache/"
region = "us-east-1"
endpoint = "http://127.0.0.1:9000"
path_style = true
profile = "name"
local_cache_size = "10GiB"
redirect_blobs_over = "32MiB"
"#,
        )
        .unwrap();
        assert_eq!(c.storage, StorageKind::S3);
        let s3 = c.s3.as_ref().unwrap();
        assert_eq!(s3.local_cache_size, Some(ByteSize(10 << 30)));
        assert_eq!(s3.redirect_blobs_over, Some(ByteSize(32 << 20)));
        assert!(!c.redirect_blobs);
        assert!(validate(c.storage, &c.s3).is_ok());
    }
}

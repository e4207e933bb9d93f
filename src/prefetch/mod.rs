//! Prefetch: pull images into the cache ahead of use, with progress like a pull.
//!
//! Owns: the image lists (`inputs`), platform selection, the walk from a tag to every blob of the
//! chosen platforms (`walk`), skipping what is cached, one fetch per blob even when images share
//! layers, and what a person or a script sees (`progress`). Reaches the cache only through a
//! [`source::Source`]: a running mirror over HTTP, or the cache facade opened in this process. Must
//! not touch storage keys directly.
//!
//! # Layout
//! - [`source`]: `MirrorSource` (reqwest, `?ns=<registry>`) and `DirectSource` (`cache::Cache`).
//! - [`inputs`]: `-f FILE` lists and `image:` lines of Kubernetes YAML.
//! - [`walk`]: resolve manifests, pick platforms, fetch blobs with a concurrency limit.
//! - [`progress`]: bars (a terminal), plain lines, JSON, and the summary table.
//! - [`schedule`]: `[[prefetch]]` lists `serve` runs every `interval_secs` through its own cache.

pub(crate) mod inputs;
pub(crate) mod progress;
pub(crate) mod schedule;
pub(crate) mod source;
pub(crate) mod walk;

use serde::Serialize;

/// Why one image could not be prefetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// The registry does not have it (unknown tag, repository or digest).
    #[error("{0} not found")]
    NotFound(String),
    /// The mirror refused or failed the request.
    #[error("{what}: the mirror answered {status}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    /// The mirror could not be reached, or the connection failed.
    #[error("mirror request failed: {}", chain(.0))]
    Http(#[from] reqwest::Error),
    /// The cache (opened directly) failed.
    #[error("{}", chain(.0))]
    Cache(#[from] crate::cache::Error),
    /// Bytes that do not hash to the digest they were asked for.
    #[error("{what}: the bytes do not match {expected}")]
    Digest { what: String, expected: String },
    /// Something that is not what it should be (not a manifest, no matching platform).
    #[error("{0}")]
    Invalid(String),
}

/// `e` and its sources, "a: b: c" (reqwest's own message hides the cause).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// One platform, `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Platform {
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) variant: Option<String>,
}

impl Platform {
    /// Parse "linux/arm64" or "linux/arm/v7".
    pub(crate) fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "platform {s:?} is not os/architecture[/variant], e.g. linux/amd64"
            )),
        }
    }

    /// The platform this process runs on, as registries name it.
    pub(crate) fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry's `platform` object is this platform (a variant only when given).
    pub(crate) fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"].as_str() == Some(&self.os)
            && p["architecture"].as_str() == Some(&self.architecture)
            && self
                .variant
                .as_deref()
                .is_none_or(|v| p["variant"].as_str() == Some(v))
    }
}

/// Which platforms of a multi-platform image to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Platforms {
    /// Every entry of the index (attestations included).
    All,
    /// These (the default: the host's).
    These(Vec<Platform>),
}

/// `os/arch[/variant]` of an index entry's platform object ("unknown/unknown" for attestations).
pub(crate) fn platform_name(p: &serde_json::Value) -> String {
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("unknown"),
        p["architecture"].as_str().unwrap_or("unknown")
    );
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Something was fetched into the cache.
    Fetched,
    /// Everything was cached already.
    Cached,
    /// `--dry-run`: something would be fetched.
    WouldFetch,
    /// It failed; see `error`.
    Failed,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Fetched => "fetched",
            Status::Cached => "cached",
            Status::WouldFetch => "would fetch",
            Status::Failed => "failed",
        }
    }
}

/// The outcome of one image, as printed in the summary and in `--json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ImageReport {
    /// The reference as given, normalised ("docker.io/library/busybox:latest").
    pub(crate) image: String,
    pub(crate) status: Status,
    /// The digest the reference resolved to.
    pub(crate) digest: Option<String>,
    /// Platforms fetched (empty for a single-platform image).
    pub(crate) platforms: Vec<String>,
    /// Blobs (configs and layers) of the chosen platforms.
    pub(crate) blobs: usize,
    /// Blobs this run fetched (or, with `--dry-run`, would fetch).
    pub(crate) blobs_fetched: usize,
    /// Bytes of all those blobs.
    pub(crate) size: u64,
    /// Bytes fetched by this run for this image (or, with `--dry-run`, to fetch).
    pub(crate) bytes_fetched: u64,
    /// Bytes that were already cached (or fetched for another image of this run).
    pub(crate) bytes_cached: u64,
    pub(crate) seconds: f64,
    /// Why it failed.
    pub(crate) error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.matches(
            &serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        ));
        assert!(!p.matches(&serde_json::json!({"os": "linux", "architecture": "amd64"})));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!v7
            .matches(&serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v6"})));
        assert!(
            v7.matches(&serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"}))
        );
        for bad in ["", "linux", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            platform_name(
                &serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"})
            ),
            "linux/arm/v7"
        );
    }
}

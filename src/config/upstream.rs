//! One upstream registry's settings, and the built-in public registries.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// One upstream registry. Fields left out of the file keep the built-in value (for a built-in name)
/// or the documented default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host clients name, e.g. "docker.io", "registry.k8s.io", "127.0.0.1:5101".
    pub name: String,
    /// Where regmirror fetches from. Default `https://<name>`.
    pub url: Option<String>,
    /// Extra path-prefix names (`/v2/<alias>/repo/...`).
    pub aliases: Vec<String>,
    /// `Host` header values (with or without port) that route to this upstream.
    pub hosts: Vec<String>,
    /// Optional dedicated listener serving only this upstream.
    pub listen: Option<String>,
    /// Whether the dedicated `listen` may redirect blob GETs to presigned S3 URLs
    /// (`s3.redirect_blobs_over`). Unset: as the top-level `redirect_blobs`.
    pub redirect_blobs: Option<bool>,
    /// Optional credentials for the upstream.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// File holding the password (trailing newline trimmed).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Outbound proxy for this upstream: "http://host:port", "https://..." or "socks5://host:port".
    pub proxy: Option<String>,
    /// Seconds a cached tag -> digest record is trusted before it is revalidated with a HEAD.
    pub tag_ttl_secs: Option<u64>,
    /// Tag patterns (`*` wildcard) that are never revalidated once cached, e.g. "v*" for immutable releases.
    pub immutable_tags: Vec<String>,
    /// How a cached tag past its TTL is answered: "background" (default) answers from cache at
    /// once and revalidates behind the client's back; "sync" asks the upstream first, for at most
    /// `revalidate_timeout_secs`, then answers from cache.
    pub revalidate: Option<Revalidate>,
    /// Seconds a synchronous revalidation may take before the cached tag is served.
    pub revalidate_timeout_secs: Option<u64>,
    /// Seconds the upstream work on a client's path may take in all (connect, retries, the
    /// answer's head, and the whole body of a manifest or tags list); a flowing blob body is
    /// bounded by `read_timeout_secs` instead.
    pub request_deadline_secs: Option<u64>,
    /// Seconds a "not found" answer (unknown tag, manifest or blob) is remembered.
    pub negative_ttl_secs: Option<u64>,
    /// Seconds a tags list is served from cache before the upstream is asked again.
    pub tags_list_ttl_secs: Option<u64>,
    /// Longest pause between probes of an upstream that is down (they start at 1 s and double).
    pub probe_max_interval_secs: Option<u64>,
    /// Seconds to wait for a TCP/TLS connection to the upstream.
    pub connect_timeout_secs: Option<u64>,
    /// Seconds without any byte from the upstream before a call is abandoned.
    pub read_timeout_secs: Option<u64>,
    /// Accept invalid TLS certificates from this upstream (testing only).
    pub insecure_skip_verify: Option<bool>,
    /// PEM file of extra CA certificates to trust for this upstream (a private registry's CA).
    pub ca_file: Option<PathBuf>,
    /// IP addresses to connect to for the host of `url` instead of asking DNS (as curl's
    /// `--resolve`), e.g. for split-horizon DNS or a registry pinned to known hosts. Tried in this
    /// order, the connect timeout shared between them; the port and TLS name stay the URL's.
    pub resolve: Vec<String>,
    /// With `[auth]`: clients without credentials may pull from this upstream (overrides
    /// `auth.anonymous_pull`).
    pub anonymous_pull: Option<bool>,
    /// Repositories (`*` wildcard, `/` included) clients may pull from this upstream. Empty: all
    /// but those in `deny`.
    pub allow: Vec<String>,
    /// Repositories (`*` wildcard) no client may pull from this upstream, whoever it is.
    pub deny: Vec<String>,
    /// What a client refused by `allow` / `deny` reads (`403 DENIED`), e.g. "this image is not
    /// mirrored here, see https://wiki.example/mirror".
    pub deny_message: Option<String>,
    /// PEM certificate chain of this upstream's dedicated `listen` (HTTPS, as the top-level
    /// `tls_cert` for the shared listener).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// More certificates for the dedicated `listen`, chosen by SNI.
    pub tls_sni: Vec<super::SniCert>,
}

/// How a cached tag past its TTL is revalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revalidate {
    /// Answer from cache at once; one background request per tag asks the upstream.
    #[default]
    Background,
    /// Ask the upstream first (bounded by `revalidate_timeout_secs`), then answer.
    Sync,
}

/// Defaults used when an upstream does not set them.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
/// Connect timeout of an upstream that sets none: a black-holed address costs this per attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole deadline of the upstream work on a client's path (connect, retries, answer head, the
/// body of a manifest or tags list).
pub(super) const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(8);
/// How long a synchronous revalidation may hold a client.
pub(super) const DEFAULT_REVALIDATE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long "not found" is remembered.
pub(super) const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(15);
/// How long a tags list is served from cache.
pub(super) const DEFAULT_TAGS_LIST_TTL: Duration = Duration::from_secs(15);
/// Longest pause between probes of an upstream that is down.
pub(super) const DEFAULT_PROBE_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Read timeout of an upstream that sets none.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl UpstreamConfig {
    /// The URL regmirror fetches from, without a trailing slash.
    pub fn base_url(&self) -> String {
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.name));
        url.trim_end_matches('/').to_string()
    }

    /// How long a tag is trusted without asking the upstream.
    pub fn tag_ttl(&self) -> Duration {
        self.tag_ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TAG_TTL)
    }

    /// The revalidation mode in effect.
    pub fn revalidate(&self) -> Revalidate {
        self.revalidate.unwrap_or_default()
    }

    /// The synchronous revalidation bound in effect.
    pub fn revalidate_timeout(&self) -> Duration {
        secs_or(self.revalidate_timeout_secs, DEFAULT_REVALIDATE_TIMEOUT)
    }

    /// The client-path deadline in effect.
    pub fn request_deadline(&self) -> Duration {
        secs_or(self.request_deadline_secs, DEFAULT_REQUEST_DEADLINE)
    }

    /// How long "not found" is remembered.
    pub fn negative_ttl(&self) -> Duration {
        secs_or(self.negative_ttl_secs, DEFAULT_NEGATIVE_TTL)
    }

    /// How long a tags list is served from cache.
    pub fn tags_list_ttl(&self) -> Duration {
        secs_or(self.tags_list_ttl_secs, DEFAULT_TAGS_LIST_TTL)
    }

    /// The longest pause between probes of an upstream that is down.
    pub fn probe_max_interval(&self) -> Duration {
        secs_or(self.probe_max_interval_secs, DEFAULT_PROBE_MAX_INTERVAL)
    }

    /// The connect timeout in effect.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The read timeout in effect.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_READ_TIMEOUT)
    }

    /// The password from `password`, `password_file` or `password_env`, in that order.
    pub fn resolved_password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    format!("upstream.{}.password_file", self.name),
                    format!("{}: {e}", path.display()),
                )
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var).map(Some).map_err(|_| {
                invalid(
                    format!("upstream.{}.password_env", self.name),
                    format!("environment variable {var} is not set"),
                )
            });
        }
        Ok(None)
    }

    /// Overlay the fields `other` sets onto `self` (used when a file entry names a built-in upstream).
    pub(super) fn overlay(&mut self, other: UpstreamConfig) {
        let d = UpstreamConfig::default();
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f != d.$f { self.$f = other.$f; } )* };
        }
        take!(
            url,
            aliases,
            hosts,
            listen,
            username,
            password,
            password_file,
            password_env,
            proxy,
            tag_ttl_secs,
            immutable_tags,
            revalidate,
            revalidate_timeout_secs,
            request_deadline_secs,
            negative_ttl_secs,
            tags_list_ttl_secs,
            probe_max_interval_secs,
            connect_timeout_secs,
            read_timeout_secs,
            insecure_skip_verify,
            ca_file,
            resolve,
            anonymous_pull,
            allow,
            deny,
            deny_message,
            tls_cert,
            tls_key,
            tls_sni
        );
    }
}

fn secs_or(secs: Option<u64>, default: Duration) -> Duration {
    secs.map(Duration::from_secs).unwrap_or(default)
}

/// The public registries regmirror mirrors with no configuration at all: (name, url, aliases).
const BUILTIN: &[(&str, &str, &[&str])] = &[
    (
        "docker.io",
        "https://registry-1.docker.io",
        &["dockerhub", "index.docker.io", "registry-1.docker.io"],
    ),
    ("registry.k8s.io", "https://registry.k8s.io", &["k8s"]),
    ("k8s.gcr.io", "https://k8s.gcr.io", &["k8s-gcr"]),
    ("gcr.io", "https://gcr.io", &["gcr"]),
    ("ghcr.io", "https://ghcr.io", &["ghcr"]),
    ("quay.io", "https://quay.io", &["quay"]),
    (
        "docker.elastic.co",
        "https://docker.elastic.co",
        &["elastic"],
    ),
    ("mcr.microsoft.com", "https://mcr.microsoft.com", &["mcr"]),
    ("nvcr.io", "https://nvcr.io", &["nvcr"]),
    ("cr.l5d.io", "https://cr.l5d.io", &["l5d"]),
    ("public.ecr.aws", "https://public.ecr.aws", &["ecr"]),
];

/// The built-in upstream list.
pub fn builtin_upstreams() -> Vec<UpstreamConfig> {
    BUILTIN
        .iter()
        .map(|(name, url, aliases)| UpstreamConfig {
            name: name.to_string(),
            url: Some(url.to_string()),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
        .collect()
}

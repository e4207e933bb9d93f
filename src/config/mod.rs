//! Configuration: the TOML file, its embedded defaults, environment overrides and validation.
//!
//! Owns: parsing and checking. Must not open sockets or touch the data directory.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod access;
mod acme;
pub(crate) mod coord;
mod limits;

pub use access::{AccessAction, AccessRule, AuthConfig, ANONYMOUS};
pub use acme::{AcmeConfig, Challenge as AcmeChallenge, LETS_ENCRYPT};
pub(crate) use limits::parse_trusted_proxies;
pub use limits::LimitsConfig;

mod prefetch;
mod storage;
mod tls;
mod upstream;

pub use prefetch::{PrefetchSchedule, DEFAULT_PREFETCH_INTERVAL_SECS};
pub use storage::{S3Config, StorageKind};

pub use tls::{SniCert, DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS, DEFAULT_TLS_RELOAD_INTERVAL_SECS};
pub use upstream::{
    builtin_upstreams, Revalidate, UpstreamConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT,
    DEFAULT_TAG_TTL,
};

/// A configuration mistake, phrased so the operator knows which key to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid {
        /// The key to change.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration of one `regmirror serve` process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the shared listener that serves every upstream (routing by Host, `?ns=`, path prefix, default).
    pub listen: String,
    /// Directory holding the cache (blobs, manifests, tag records, temporary files).
    pub data_dir: PathBuf,
    /// Upstream that serves names matching no other routing rule (`/v2/library/alpine` -> docker.io).
    /// Empty string: such names get `404 NAME_UNKNOWN`.
    pub default_upstream: String,
    /// Serve names whose first path segment is any registry host, even one not configured.
    /// Off by default: regmirror must not become an open proxy unless the operator asks for it.
    pub allow_any_upstream: bool,
    /// Leave out the built-in public registries and use only the `[[upstream]]` entries of this file.
    pub no_builtin_upstreams: bool,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// Largest manifest accepted from an upstream, in bytes.
    pub max_manifest_bytes: u64,
    /// Seconds a background blob fill may take before it is abandoned.
    pub fill_timeout_secs: u64,
    /// Seconds a client may take to send a request's headers (also the keep-alive idle limit).
    pub header_timeout_secs: u64,
    /// Largest request head (request line and headers) in bytes.
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Most blob downloads from upstreams running at once; further misses wait for a slot.
    pub max_concurrent_fills: usize,
    /// Cache size limit, e.g. "200GiB", "500MB" or a number of bytes; least recently used content
    /// is evicted above it. Unset: no limit.
    pub max_size: Option<ByteSize>,
    /// Evict content not accessed for this many seconds. Unset: no age limit.
    pub max_age_secs: Option<u64>,
    /// Seconds between background eviction runs (when max_size or max_age_secs is set).
    pub gc_interval_secs: u64,
    /// Bytes of manifests kept in memory besides on disk, so warm manifest requests read no file
    /// (0: none).
    pub hot_manifest_bytes: ByteSize,
    /// Tag records kept in memory besides on disk (0: none).
    pub hot_tag_entries: usize,
    /// Links (which repository holds which digest) kept in memory besides on disk, so a warm
    /// read checks its repository's link without a file (0: none; every read then stats one).
    pub hot_link_entries: usize,
    /// Addresses or CIDR blocks of reverse proxies in front of the mirror whose
    /// `X-Forwarded-For` / `Forwarded` headers are believed (and only theirs) when deciding which
    /// client a request is from (limits, request log). Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Per-client and global limits (`[limits]`); all off by default.
    pub limits: LimitsConfig,
    /// PEM certificate chain (leaf first) of `listen`; with `tls_key` the listener speaks HTTPS
    /// (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`) instead of plain HTTP. Reloaded when the file
    /// changes and on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// More certificates for `listen`, chosen by the name the client asks for (TLS SNI); a client
    /// naming none of them, or no name, gets `tls_cert`.
    pub tls_sni: Vec<SniCert>,
    /// Seconds a client may take to finish the TLS handshake after connecting.
    pub tls_handshake_timeout_secs: u64,
    /// Seconds between checks of the certificate and key files for changes (0: reload on SIGHUP only).
    pub tls_reload_interval_secs: u64,
    /// Optional plain-HTTP listener (e.g. "0.0.0.0:80") that answers `/healthz` and redirects
    /// every other request to the same host, path and query over HTTPS (308) on the port of
    /// `listen`. Needs `tls_cert`.
    pub http_redirect_listen: Option<String>,
    /// Automatic certificates for `listen` from an ACME CA (`[acme]`); `listen` then speaks HTTPS
    /// even without `tls_cert` (whose certificate, if set, still answers the names ACME does not).
    pub acme: Option<AcmeConfig>,
    /// The upstream registries.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Client authentication (`[auth]`). Unset: every client is admitted without credentials.
    pub auth: Option<AuthConfig>,
    /// The access policy (`[[access]]`): rules tried in order, the first match decides.
    #[serde(rename = "access")]
    pub access: Vec<AccessRule>,
    /// Serve the status page at `/` and `/ui` and its JSON at `/api/v1/status` on `listen`.
    pub ui: bool,
    /// Seconds between the status page's background scans of the cache (image list, size).
    pub ui_refresh_secs: u64,
    /// Image lists pulled into the cache on a schedule (`[[prefetch]]`).
    pub prefetch: Vec<PrefetchSchedule>,
    /// Where committed objects live: "fs" (`data_dir`, the default) or "s3" (`[s3]`).
    pub storage: StorageKind,
    /// The S3 bucket of `storage = "s3"`.
    pub s3: Option<S3Config>,
    /// Whether `listen` may answer blob GETs with a redirect to a presigned S3 URL
    /// (`s3.redirect_blobs_over`); false for clients that cannot reach the bucket.
    pub redirect_blobs: bool,
    /// Redis that coordinates replicas (see `config::coord` for the accepted forms). Unset: this
    /// process coalesces its own fills only.
    pub redis_url: Option<String>,
    /// PEM CA certificates trusted for `rediss://` Redis instead of the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Seconds a fill or tag revalidation lease lasts in Redis; renewed while it runs.
    pub lease_secs: u64,
    /// How other replicas reach this one to join its fills ("http://10.0.0.5:5000"). Unset:
    /// derived from the bound `listen` address (its host name when it listens on every address).
    pub replica_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".into(),
            data_dir: PathBuf::from("./regmirror-data"),
            default_upstream: "docker.io".into(),
            allow_any_upstream: false,
            no_builtin_upstreams: false,
            log_format: "text".into(),
            max_manifest_bytes: 4 * 1024 * 1024,
            fill_timeout_secs: 3600,
            header_timeout_secs: 30,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_fills: 64,
            max_size: None,
            max_age_secs: None,
            gc_interval_secs: 60,
            hot_manifest_bytes: ByteSize(32 << 20),
            hot_tag_entries: 100_000,
            hot_link_entries: 200_000,
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
            tls_cert: None,
            tls_key: None,
            tls_sni: Vec::new(),
            tls_handshake_timeout_secs: DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
            tls_reload_interval_secs: DEFAULT_TLS_RELOAD_INTERVAL_SECS,
            http_redirect_listen: None,
            acme: None,
            upstreams: Vec::new(),
            auth: None,
            access: Vec::new(),
            ui: true,
            ui_refresh_secs: 30,
            prefetch: Vec::new(),
            storage: StorageKind::Fs,
            s3: None,
            redirect_blobs: true,
            redis_url: None,
            redis_ca_file: None,
            lease_secs: coord::DEFAULT_LEASE_SECS,
            replica_url: None,
        }
    }
}

impl Config {
    /// Load from a file (or the embedded defaults when `path` is None), apply environment overrides,
    /// merge with the built-in upstreams and validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, |_| None)
    }

    /// [`Config::load`] with command-line overrides: `flag(NAME)` is consulted before the
    /// environment variable NAME (e.g. `serve --listen` before REGMIRROR_LISTEN).
    pub fn load_with(
        path: Option<&Path>,
        flag: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?
            }
            None => Config::default(),
        };
        config.apply_env(|k| flag(k).or_else(|| std::env::var(k).ok()))?;
        config.merge_builtins();
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML text without merging or validating.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Environment overrides for the common keys: REGMIRROR_LISTEN, REGMIRROR_DATA_DIR,
    /// REGMIRROR_DEFAULT_UPSTREAM, REGMIRROR_LOG_FORMAT, REGMIRROR_ALLOW_ANY_UPSTREAM, and for
    /// the per-pod keys of replicas: REGMIRROR_REDIS_URL, REGMIRROR_REPLICA_URL (Kubernetes expands
    /// `$(POD_IP)` in environment values, not in files).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("REGMIRROR_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("REGMIRROR_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("REGMIRROR_DEFAULT_UPSTREAM") {
            self.default_upstream = v;
        }
        if let Some(v) = get("REGMIRROR_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("REGMIRROR_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = get("REGMIRROR_REPLICA_URL") {
            self.replica_url = Some(v);
        }
        if let Some(v) = get("REGMIRROR_ALLOW_ANY_UPSTREAM") {
            self.allow_any_upstream = match v.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                _ => {
                    return Err(invalid(
                        "REGMIRROR_ALLOW_ANY_UPSTREAM",
                        "expected true or false",
                    ))
                }
            };
        }
        Ok(())
    }

    /// Put the built-in upstreams first, overlaid by file entries of the same name; append the rest.
    pub fn merge_builtins(&mut self) {
        if self.no_builtin_upstreams {
            return;
        }
        let mut merged = builtin_upstreams();
        for entry in std::mem::take(&mut self.upstreams) {
            match merged.iter_mut().find(|u| u.name == entry.name) {
                Some(existing) => existing.overlay(entry),
                None => merged.push(entry),
            }
        }
        self.upstreams = merged;
    }

    /// The coordination keys, checked (None: no `redis_url`).
    pub(crate) fn coord(&self) -> Result<Option<coord::CoordSettings>, ConfigError> {
        coord::validate(coord::CoordKeys {
            redis_url: self.redis_url.as_deref(),
            redis_ca_file: self.redis_ca_file.as_deref(),
            lease_secs: self.lease_secs,
            replica_url: self.replica_url.as_deref(),
        })
    }

    /// Check every key; the first problem is returned with the key's name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("listen", &self.listen)?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid("log_format", "expected \"text\" or \"json\""));
        }
        if self.max_header_bytes < 8192 {
            return Err(invalid("max_header_bytes", "must be at least 8192"));
        }
        if self.max_headers == 0
            || self.max_concurrent_fills == 0
            || self.header_timeout_secs == 0
            || self.gc_interval_secs == 0
        {
            return Err(invalid(
                "max_headers / max_concurrent_fills / header_timeout_secs / gc_interval_secs",
                "must be greater than 0",
            ));
        }
        if self.max_manifest_bytes == 0 {
            return Err(invalid("max_manifest_bytes", "must be greater than 0"));
        }
        parse_trusted_proxies(&self.trusted_proxies)?;
        self.limits.validate()?;
        if self.ui_refresh_secs == 0 {
            return Err(invalid("ui_refresh_secs", "must be at least 1 second"));
        }
        prefetch::validate(&self.prefetch)?;
        storage::validate(self.storage, &self.s3)?;
        self.coord()?;
        tls::validate_listener(
            &|f: &str| f.to_string(),
            &self.tls_cert,
            &self.tls_key,
            &self.tls_sni,
        )?;
        if self.tls_handshake_timeout_secs == 0 {
            return Err(invalid(
                "tls_handshake_timeout_secs",
                "must be at least 1 second",
            ));
        }
        if let Some(a) = &self.acme {
            a.validate(self.http_redirect_listen.is_some())?;
        }
        if let Some(r) = &self.http_redirect_listen {
            let addr = parse_addr("http_redirect_listen", r)?;
            if self.tls_cert.is_none() && self.acme.is_none() {
                return Err(invalid(
                    "http_redirect_listen",
                    "redirects to HTTPS, so `listen` needs `tls_cert` and `tls_key`, or `[acme]`",
                ));
            }
            if addr == parse_addr("listen", &self.listen)? && addr.port() != 0 {
                return Err(invalid("http_redirect_listen", "must differ from `listen`"));
            }
        }
        let mut prefixes = HashSet::new();
        let mut hosts = HashSet::new();
        let mut listens = HashSet::new();
        listens.insert(parse_addr("listen", &self.listen)?);
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = |field: &str| format!("upstream[{i}].{field} (name = {:?})", u.name);
            if u.name.is_empty() || u.name.contains('/') || u.name.chars().any(char::is_whitespace)
            {
                return Err(invalid(
                    key("name"),
                    "must be a registry host such as \"docker.io\" or \"127.0.0.1:5000\"",
                ));
            }
            let url = u.base_url();
            let parsed =
                url::Url::parse(&url).map_err(|e| invalid(key("url"), format!("{url}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(invalid(
                    key("url"),
                    format!("{url}: expected http://host[:port] or https://host[:port]"),
                ));
            }
            for p in std::iter::once(&u.name).chain(u.aliases.iter()) {
                if p.is_empty() || p.contains('/') {
                    return Err(invalid(
                        key("aliases"),
                        format!("{p:?} is not a single path segment"),
                    ));
                }
                if !prefixes.insert(p.to_ascii_lowercase()) {
                    return Err(invalid(
                        key("aliases"),
                        format!("{p:?} names two upstreams"),
                    ));
                }
            }
            for h in &u.hosts {
                if !hosts.insert(h.to_ascii_lowercase()) {
                    return Err(invalid(
                        key("hosts"),
                        format!("{h:?} routes to two upstreams"),
                    ));
                }
            }
            if let Some(l) = &u.listen {
                let addr = parse_addr(&key("listen"), l)?;
                if addr.port() != 0 && !listens.insert(addr) {
                    return Err(invalid(
                        key("listen"),
                        format!("{l} is already used by another listener"),
                    ));
                }
            }
            tls::validate_listener(&key, &u.tls_cert, &u.tls_key, &u.tls_sni)?;
            if u.listen.is_none() && (u.tls_cert.is_some() || !u.tls_sni.is_empty()) {
                return Err(invalid(
                    key("tls_cert"),
                    "is for the upstream's dedicated `listen`, which is not set",
                ));
            }
            if let Some(p) = &u.proxy {
                let proxy =
                    url::Url::parse(p).map_err(|e| invalid(key("proxy"), format!("{p}: {e}")))?;
                if !matches!(proxy.scheme(), "http" | "https" | "socks5" | "socks5h") {
                    return Err(invalid(
                        key("proxy"),
                        format!("{p}: expected http://, https://, socks5:// or socks5h://"),
                    ));
                }
            }
            if u.username.is_some()
                != (u.password.is_some() || u.password_file.is_some() || u.password_env.is_some())
            {
                return Err(invalid(
                    key("username"),
                    "username and password (or password_file / password_env) go together",
                ));
            }
            u.resolved_password()?;
            for (field, v) in [
                ("request_deadline_secs", u.request_deadline_secs),
                ("revalidate_timeout_secs", u.revalidate_timeout_secs),
                ("probe_max_interval_secs", u.probe_max_interval_secs),
                ("connect_timeout_secs", u.connect_timeout_secs),
            ] {
                if v == Some(0) {
                    return Err(invalid(key(field), "must be at least 1 second"));
                }
            }
            for (j, a) in u.resolve.iter().enumerate() {
                if a.trim().parse::<std::net::IpAddr>().is_err() {
                    return Err(invalid(
                        key(&format!("resolve[{j}]")),
                        format!(
                            "{a:?} is not an IP address such as \"10.0.0.5\" or \"2001:db8::5\""
                        ),
                    ));
                }
            }
            if let Some(ca) = &u.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| invalid(key("ca_file"), format!("{}: {e}", ca.display())))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(invalid(
                        key("ca_file"),
                        format!("{}: no PEM certificate in it", ca.display()),
                    ));
                }
            }
        }
        if !self.default_upstream.is_empty() && self.upstream(&self.default_upstream).is_none() {
            return Err(invalid(
                "default_upstream",
                format!(
                    "{:?} is not a configured upstream (known: {})",
                    self.default_upstream,
                    self.upstream_names()
                ),
            ));
        }
        self.validate_access()
    }

    /// The upstream with this exact name.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// Comma-separated names, for error messages.
    pub fn upstream_names(&self) -> String {
        self.upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The effective configuration as TOML (passwords masked), for `config check`.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        for u in &mut shown.upstreams {
            if u.password.is_some() {
                u.password = Some("********".into());
            }
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// A byte count written as a number or with a unit: "200GiB", "500 MB", "1048576".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = (t[..split].trim(), t[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as \"200GiB\""))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
                ))
            }
        };
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

/// A size for people: `512 B`, `1.5 KiB`, `2.9 MiB` (what `regmirror cache` prints).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Parse a listen address, naming the key on failure.
pub fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address such as \"0.0.0.0:5000\""),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every complete config file shown in README.md (a ```toml block whose first line names
    /// its file, `# /etc/regmirror/...`) parses and passes the checks `serve` makes.
    #[test]
    fn readme_config_files_are_valid() {
        let doc = include_str!("../../README.md");
        let mut checked = 0;
        for block in doc.split("```toml\n").skip(1) {
            let text = &block[..block
                .find("```")
                .expect("an unclosed toml block in README.md")];
            if !text.starts_with("# /etc/regmirror/") {
                continue;
            }
            let mut c = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            c.merge_builtins();
            c.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
            checked += 1;
        }
        assert!(checked >= 1, "README.md shows a complete config file");
    }

    #[test]
    fn defaults_are_valid_and_include_public_registries() {
        let c = Config::load(None).unwrap();
        for name in [
            "docker.io",
            "registry.k8s.io",
            "k8s.gcr.io",
            "gcr.io",
            "ghcr.io",
            "quay.io",
            "public.ecr.aws",
        ] {
            assert!(c.upstream(name).is_some(), "{name}");
        }
        assert_eq!(
            c.upstream("docker.io").unwrap().base_url(),
            "https://registry-1.docker.io"
        );
    }

    #[test]
    fn file_entry_overrides_builtin_fields() {
        let mut c = Config::from_toml(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:5101\"\n\n[[upstream]]\nname = \"local:5\"\naliases=[\"loc\"]\n",
        )
        .unwrap();
        c.merge_builtins();
        c.validate().unwrap();
        let d = c.upstream("docker.io").unwrap();
        assert_eq!(d.base_url(), "http://127.0.0.1:5101");
        assert!(
            d.aliases.contains(&"dockerhub".to_string()),
            "built-in aliases kept"
        );
        assert_eq!(c.upstream("local:5").unwrap().base_url(), "https://local:5");
    }

    #[test]
    fn bad_config_names_the_key() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("default_upstream = \"nope.example\"", "default_upstream"),
            ("log_format = \"xml\"", "log_format"),
            ("[[upstream]]\nname = \"a.io\"\nurl = \"ftp://x\"", "url"),
            (
                "[[upstream]]\nname = \"a.io\"\naliases = [\"ghcr\"]",
                "aliases",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nproxy = \"gopher://x\"",
                "proxy",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nusername = \"u\"",
                "username",
            ),
            ("[[upstream]]\nname = \"a/b\"", "name"),
            (
                "[[upstream]]\nname = \"a.io\"\nlisten = \"0.0.0.0:5000\"",
                "listen",
            ),
        ];
        for (text, key) in cases {
            let mut c = Config::from_toml(text).unwrap();
            c.merge_builtins();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} -> {err}");
        }
        let err = Config::from_toml("lisen = \"x\"").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn sizes() {
        let cases = [
            ("200GiB", Some(200u64 << 30)),
            ("500 MB", Some(500_000_000)),
            ("1048576", Some(1 << 20)),
            ("1.5KiB", Some(1536)),
            ("5 parsecs", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<ByteSize>().ok().map(|b| b.0), want, "{s}");
        }
        let c = Config::from_toml("max_size = \"2GiB\"").unwrap();
        assert_eq!(c.max_size, Some(ByteSize(2 << 30)));
        let c = Config::from_toml("max_size = 1000").unwrap();
        assert_eq!(c.max_size, Some(ByteSize(1000)));
        assert!(Config::from_toml("max_size = \"lots\"")
            .unwrap_err()
            .contains("max_size"));
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "REGMIRROR_LISTEN" => Some("127.0.0.1:9".into()),
            "REGMIRROR_DATA_DIR" => Some("/tmp/x".into()),
            "REGMIRROR_REPLICA_URL" => Some("http://10.1.2.3:5000".into()),
            "REGMIRROR_REDIS_URL" => Some("redis://redis:6379".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.replica_url.as_deref(), Some("http://10.1.2.3:5000"));
        assert_eq!(c.redis_url.as_deref(), Some("redis://redis:6379"));
    }

    #[test]
    fn hot_cache_sizes_are_keys_with_units() {
        let c = Config::from_toml("hot_manifest_bytes = \"1MiB\"\nhot_tag_entries = 0\n").unwrap();
        assert_eq!((c.hot_manifest_bytes.0, c.hot_tag_entries), (1 << 20, 0));
        let d = Config::default();
        assert_eq!(
            (d.hot_manifest_bytes.0, d.hot_tag_entries),
            (32 << 20, 100_000)
        );
        let bad = Config::from_toml("hot_manifest_bytes = \"lots\"\n").unwrap_err();
        assert!(bad.to_string().contains("hot_manifest_bytes"), "{bad}");
    }

    #[test]
    fn human_sizes() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (3 << 20, "3.0 MiB"),
            (5 << 40, "5.0 TiB"),
        ] {
            assert_eq!(human_size(n), want);
        }
    }
}

//! Cache: the pull-through logic between the API and the two sources of bytes.
//!
//! Owns: hit / miss / in-flight decisions, single-flight fills per blob digest and per manifest
//! reference, tag freshness, serving stale content through upstream outages, and the storage key
//! scheme. Calls [`crate::upstream`] and [`crate::storage`]; must not know HTTP statuses or OCI
//! error codes (that is [`crate::api`]'s job).

mod blobs;
pub mod evict;
pub mod fill;
mod hot;
pub mod inventory;
mod manifests;
mod region;
pub mod tags;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::config::Config;
use crate::oci::Digest;
use crate::storage::{self, Storage};
use crate::upstream::{self, Upstream};

pub use blobs::{Blob, BlobBody, RangeSpec};
use fill::Fills;
pub use manifests::{Manifest, TagsPage};
pub use region::FileRegion;
use tags::{TagPolicy, TagTtl};

/// A cache failure. `ManifestUnknown` / `BlobUnknown` are distinct so the API can answer 404.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error("digest mismatch: expected {expected}, upstream sent {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("manifest larger than the {limit}-byte limit")]
    ManifestTooLarge { limit: u64 },
    #[error("invalid content from upstream: {0}")]
    Invalid(String),
    #[error("requested range not satisfiable (size {size})")]
    RangeNotSatisfiable { size: u64 },
    #[error("cache storage error: {0}")]
    Storage(String),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where an answer came from (logged per request, counted in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache without asking the upstream (or after a HEAD confirmed it).
    Hit,
    /// Fetched from the upstream by this request.
    Miss,
    /// Joined a fill another request started.
    Joined,
    /// Served from the cache because the upstream could not be reached.
    Stale,
    /// Answered by the upstream without caching (HEAD of uncached content, tags list).
    Passthrough,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Joined => "joined",
            CacheStatus::Stale => "stale",
            CacheStatus::Passthrough => "passthrough",
        }
    }
}

/// The pull-through cache shared by every listener.
pub struct Cache {
    storage: Arc<dyn Storage>,
    spool_dir: PathBuf,
    upstreams: RwLock<HashMap<String, Arc<Upstream>>>,
    policies: HashMap<String, TagPolicy>,
    default_policy: TagPolicy,
    allow_any: bool,
    max_manifest_bytes: u64,
    fill_timeout_secs: u64,
    fills: Fills,
    tag_ttl: TagTtl,
    manifest_flights: manifests::Flights,
    in_use: Arc<evict::InUse>,
    hot: hot::Hot,
    /// When each key's access time was last written to storage (throttles `touch`).
    touched: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
    evict_policy: evict::Policy,
    /// Bounds upstream blob downloads running at once (`max_concurrent_fills`).
    fill_slots: Arc<tokio::sync::Semaphore>,
}

impl Cache {
    /// Build the cache from a validated configuration. `spool_dir` must be on local disk.
    pub fn new(config: &Config, storage: Arc<dyn Storage>, spool_dir: PathBuf) -> Result<Cache> {
        let mut upstreams = HashMap::new();
        let mut policies = HashMap::new();
        for u in &config.upstreams {
            upstreams.insert(u.name.clone(), Arc::new(Upstream::new(u)?));
            policies.insert(
                u.name.clone(),
                TagPolicy {
                    ttl: u.tag_ttl(),
                    immutable: u.immutable_tags.clone(),
                },
            );
        }
        Ok(Cache {
            storage,
            spool_dir,
            upstreams: RwLock::new(upstreams),
            policies,
            default_policy: TagPolicy {
                ttl: crate::config::DEFAULT_TAG_TTL,
                immutable: Vec::new(),
            },
            allow_any: config.allow_any_upstream,
            max_manifest_bytes: config.max_manifest_bytes,
            fill_timeout_secs: config.fill_timeout_secs,
            fills: Fills::default(),
            tag_ttl: TagTtl::default(),
            manifest_flights: Default::default(),
            in_use: Arc::default(),
            hot: hot::Hot::new(32 << 20, 100_000),
            touched: Default::default(),
            fill_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_fills)),
            evict_policy: Cache::policy_from_config(config),
        })
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The client for upstream `name`; with `allow_any_upstream`, one is made for any host.
    pub fn upstream(&self, name: &str) -> Result<Arc<Upstream>> {
        if let Some(u) = self
            .upstreams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(u.clone());
        }
        if !self.allow_any {
            return Err(Error::UnknownUpstream(name.to_string()));
        }
        let cfg = crate::config::UpstreamConfig {
            name: name.to_string(),
            ..Default::default()
        };
        let u = Arc::new(Upstream::new(&cfg)?);
        let mut map = self.upstreams.write().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(name.to_string()).or_insert(u).clone())
    }

    fn policy(&self, upstream: &str) -> &TagPolicy {
        self.policies.get(upstream).unwrap_or(&self.default_policy)
    }

    /// The eviction policy from the configuration.
    pub fn evict_policy(&self) -> evict::Policy {
        self.evict_policy
    }

    /// Refresh an object's last-access time (for LRU eviction), at most about once a minute per
    /// object. `modified` is the stored time when the caller already knows it.
    async fn note_access(&self, key: &str, modified: Option<u64>) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if modified.is_some_and(|m| now_unix.saturating_sub(m) < EVERY.as_secs()) {
            return;
        }
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched.get(key).is_some_and(|t| t.elapsed() < EVERY) {
                return;
            }
            if touched.len() > 100_000 {
                touched.retain(|_, t| t.elapsed() < EVERY);
            }
            touched.insert(key.to_string(), tokio::time::Instant::now());
        }
        if let Err(e) = self.storage.touch(key).await {
            tracing::debug!(%key, error = %e, "cannot record access time");
        }
    }

    /// Ready to serve: storage accepts a write and a delete.
    pub async fn check_ready(&self) -> Result<()> {
        self.storage
            .put("readyz-probe", Bytes::from_static(b"ok"))
            .await?;
        self.storage.delete("readyz-probe").await?;
        Ok(())
    }

    /// Number of blob fills running now.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }
}

/// Storage keys, drawn as a tree in [`crate::storage`].
pub mod keys {
    use crate::oci::Digest;

    pub fn blob(d: &Digest) -> String {
        format!("blobs/{}/{}/{}", d.algorithm_name(), &d.hex()[..2], d.hex())
    }
    pub fn manifest(d: &Digest) -> String {
        format!(
            "manifests/{}/{}/{}",
            d.algorithm_name(),
            &d.hex()[..2],
            d.hex()
        )
    }
    pub fn tag(upstream: &str, repo: &str, tag: &str) -> String {
        format!("tags/{upstream}/{repo}/_tag/{tag}")
    }
    pub fn tags_list(upstream: &str, repo: &str) -> String {
        format!("tags/{upstream}/{repo}/_list")
    }
}

/// Encode a stored manifest: media type line, then the exact bytes.
fn encode_manifest(media_type: &str, body: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(media_type.len() + 1 + body.len());
    v.extend_from_slice(media_type.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(body);
    Bytes::from(v)
}

/// Decode a stored manifest into (media type, body).
fn decode_manifest(stored: Bytes) -> Option<(String, Bytes)> {
    let nl = stored.iter().position(|b| *b == b'\n')?;
    let media_type = std::str::from_utf8(&stored[..nl]).ok()?.to_string();
    Some((media_type, stored.slice(nl + 1..)))
}

/// Parse a digest the upstream sent in `Docker-Content-Digest`.
fn header_digest(h: &http::HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;

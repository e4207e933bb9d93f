//! Cache: the pull-through logic between the API and the two sources of bytes.
//!
//! Owns: hit / miss / in-flight decisions, single-flight fills per blob digest and per manifest
//! reference, tag freshness, serving stale content through upstream outages, and the storage key
//! scheme. Calls [`crate::upstream`] (its typed calls), [`crate::storage`] (the trait only) and
//! [`crate::staging`]; must not know HTTP statuses or OCI error codes (that is [`crate::api`]'s
//! job), nor which storage backend it runs on.
//!
//! # Layout
//! - [`Cache`] (here): the facade the API calls, and the error type.
//! - `blobs`: [`BlobCache`], blob hits, fills through the single-flight of `flight`, ranges;
//!   `blob_fill`: the fill task (download or relay, spool and verify, commit).
//! - `flight`: the fill single-flight interface (`FillTable`) and its in-process table.
//! - `manifests`: [`ManifestCache`], manifests by digest and tag, tags lists; `manifest_fetch`:
//!   its upstream side (the one fetch of a flight, revalidation by HEAD, stale answers); `tags`: tag
//!   freshness; `hot`: the in-memory copies of small objects.
//! - `access`: what is being read and last-access times; `evict`: the eviction policy and runs;
//!   `shared_access` / `shared_evict`: the same for a store the replicas share (Redis records,
//!   one evicting replica at a time through a lease).
//! - `links`: which (upstream, repository) holds which digest; nothing is served without one.
//! - `upstreams`: the upstream clients by name; `inventory`: what is cached, for the CLI;
//!   `records`: manifests, tag records, blob presence and links for prefetch, export and import.

mod access;
mod blob_fill;
mod blobs;
pub(crate) mod evict;
mod flight;
mod hot;
pub(crate) mod inventory;
mod links;
mod lists;
mod manifest_fetch;
mod manifests;
mod negative;
mod peer_fills;
pub(crate) mod records;
mod revalidate;
mod shared_access;
pub(crate) mod shared_evict;
mod shared_fills;
mod shared_tags;
mod tags;
mod upstreams;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::Config;
use crate::storage::{self, Storage};
use crate::upstream;

pub(crate) use crate::staging::FileRegion;
use blobs::BlobCache;
pub(crate) use blobs::{Blob, BlobBody};
pub(crate) use flight::FillProgress;
use manifests::ManifestCache;
pub(crate) use manifests::{Manifest, TagsPage};
pub(crate) use peer_fills::PeerFill;

/// A cache failure. `ManifestUnknown` / `BlobUnknown` are distinct so the API can answer 404.
/// Clone, because one fill's outcome is shared by every client that joined it (sources are
/// behind `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// The upstream does not have this manifest.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// The upstream does not have this blob.
    #[error("blob unknown")]
    BlobUnknown,
    /// No upstream of that name is configured.
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
    /// The upstream failed (unreachable, refused, rate-limited, ...).
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The upstream sent bytes that do not hash to the digest they were fetched as.
    #[error("digest mismatch: expected {expected}, upstream sent {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// A manifest (or tags list) over `max_manifest_bytes`.
    #[error("manifest larger than the {limit}-byte limit")]
    ManifestTooLarge { limit: u64 },
    /// The upstream sent something that is not what it should be.
    #[error("invalid content from upstream: {0}")]
    Invalid(String),
    /// The requested range lies outside the blob.
    #[error("requested range not satisfiable (size {size})")]
    RangeNotSatisfiable { size: u64 },
    /// The disk the cache writes to is full (storage or a spool file).
    #[error("the cache's disk is full: {0}")]
    DiskFull(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Storage failed for another reason.
    #[error("cache storage error: {0}")]
    Storage(#[source] Arc<storage::Error>),
    /// A spool file could not be created or written for another reason.
    #[error("cache spool file: {0}")]
    Spool(#[source] Arc<std::io::Error>),
    /// A blob fill ended without an outcome (its task panicked or was cancelled).
    #[error("blob fill abandoned")]
    Abandoned,
    /// The process is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl Error {
    /// Whether the disk is full (then eviction makes room for the next try).
    pub(crate) fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull(_))
    }

    fn spool(e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::StorageFull {
            Error::DiskFull(Arc::new(e))
        } else {
            Error::Spool(Arc::new(e))
        }
    }
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        if e.is_full() {
            Error::DiskFull(Arc::new(e))
        } else {
            Error::Storage(Arc::new(e))
        }
    }
}

impl From<crate::oci::range::Unsatisfiable> for Error {
    fn from(e: crate::oci::range::Unsatisfiable) -> Self {
        Error::RangeNotSatisfiable { size: e.size }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Where an answer came from (logged per request, counted in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served from the cache without asking the upstream (or after a HEAD confirmed it).
    Hit,
    /// Fetched from the upstream by this request.
    Miss,
    /// Joined a fill another request started.
    Joined,
    /// Served from the cache because the upstream could not be reached.
    Stale,
    /// Served from the cache past its TTL while a background request revalidates it.
    Revalidating,
    /// Answered by the upstream without caching (HEAD of uncached content, tags list).
    Passthrough,
}

impl CacheStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Joined => "joined",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidating => "revalidating",
            CacheStatus::Passthrough => "passthrough",
        }
    }
}

/// The pull-through cache shared by every listener: a facade over the blob side and the
/// manifest side, which share only storage, the upstream clients and access tracking.
pub(crate) struct Cache {
    storage: Arc<dyn Storage>,
    upstreams: Arc<upstreams::Upstreams>,
    blobs: Arc<BlobCache>,
    manifests: Arc<ManifestCache>,
    evictor: Arc<evict::Evictor>,
    /// Coordination with the other replicas (`redis_url`), when on.
    coord: Option<Arc<crate::coord::Coord>>,
}

impl Cache {
    /// Build the cache from a validated configuration. `staging_dir` must be on local disk.
    pub(crate) fn new(
        config: &Config,
        storage: Arc<dyn Storage>,
        staging_dir: PathBuf,
    ) -> Result<Cache> {
        let upstreams = Arc::new(upstreams::Upstreams::new(config)?);
        let coord = match config.coord() {
            Ok(Some(settings)) => Some(
                crate::coord::Coord::new(settings)
                    .map_err(|e| Error::Invalid(format!("redis_url: {e}")))?,
            ),
            _ => None,
        };
        let shared = shared_store(coord.as_ref(), storage.as_ref());
        let access = Arc::new(match &shared {
            Some(store) => access::Access::shared(storage.clone(), store.clone()),
            None => access::Access::new(storage.clone()),
        });
        let mut evictor = evict::Evictor::new(
            storage.clone(),
            access.in_use().clone(),
            evict::Policy::from_config(config),
        );
        if let Some(store) = shared {
            evictor = evictor.shared_with(store);
        }
        let evictor = Arc::new(evictor);
        let policies = Arc::new(tags::Policies::from_config(config));
        let not_found = Arc::new(negative::NotFound::default());
        let links = Arc::new(links::Links::new(storage.clone(), config.hot_link_entries));
        let known = blobs::Known {
            not_found: not_found.clone(),
            links: links.clone(),
        };
        let blobs = Arc::new(BlobCache::new(
            config,
            storage.clone(),
            staging_dir,
            access.clone(),
            evictor.clone(),
            policies.clone(),
            known,
            coord.clone(),
        ));
        let manifests = Arc::new(ManifestCache::new(
            config,
            storage.clone(),
            access,
            policies,
            not_found,
            links,
            coord.clone().map(|c| {
                Arc::new(shared_tags::RedisTagRecords::new(c)) as Arc<dyn tags::TagRecords>
            }),
        ));
        Ok(Cache {
            storage,
            upstreams,
            blobs,
            manifests,
            evictor,
            coord,
        })
    }

    /// Set how other replicas reach this one (unless `replica_url` says), and connect to Redis
    /// in the background. No-op without `redis_url`.
    pub(crate) fn start_coordination(&self, derived_replica_url: String) {
        let Some(coord) = self.coord.clone() else {
            return;
        };
        coord.set_replica_url(derived_replica_url);
        tokio::spawn(async move {
            // Learn the fleet's secret early, so that this replica answers peers at once; then
            // keep `regmirror_redis_up` current between requests.
            loop {
                if coord.peer_secret().await.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let _ = coord.ping().await;
            }
        });
    }

    /// Redis as `/readyz` reports it, after one ping (None: coordination is off).
    pub(crate) async fn coordination_status(&self) -> Option<crate::coord::Status> {
        let coord = self.coord.as_ref()?;
        let _ = coord.ping().await;
        Some(coord.status())
    }

    /// The internal fill endpoint: bytes of `digest` from `from` for another replica that shows
    /// `secret`. None: nothing to give (or not allowed).
    pub(crate) async fn fill_for_peer(
        &self,
        digest: &crate::oci::Digest,
        from: u64,
        secret: Option<&str>,
    ) -> Result<Option<PeerFill>> {
        self.blobs.for_peer(digest, from, secret).await
    }

    /// GET (`head = false`) or HEAD a blob, optionally a range of it.
    pub(crate) async fn blob(
        &self,
        upstream: &str,
        repo: &str,
        digest: &crate::oci::Digest,
        range: Option<crate::oci::RangeSpec>,
        head: bool,
    ) -> Result<Blob> {
        self.blobs
            .blob(&self.upstreams, upstream, repo, digest, range, head)
            .await
    }

    /// A URL the client may fetch a cached blob from directly (a presigned storage URL), when
    /// `repo` holds it and storage redirects blobs of its size; None: serve it here.
    pub(crate) async fn blob_redirect(
        &self,
        upstream: &str,
        repo: &str,
        digest: &crate::oci::Digest,
    ) -> Result<Option<String>> {
        self.blobs.redirect(upstream, repo, digest).await
    }

    /// Whether a GET of `digest` would start an upstream download now: it is neither stored nor
    /// being downloaded (what a per-client limit on upstream downloads counts).
    pub(crate) async fn blob_would_fetch(&self, digest: &crate::oci::Digest) -> bool {
        self.blobs.would_fetch(digest).await
    }

    /// GET or HEAD a manifest by tag or digest; `accept` is the client's media types.
    pub(crate) async fn manifest(
        &self,
        upstream: &str,
        repo: &str,
        reference: &crate::oci::Reference,
        accept: &[String],
        head: bool,
    ) -> Result<Manifest> {
        let up = self.upstreams.get(upstream)?;
        self.manifests
            .manifest(&up, repo, reference, accept, head)
            .await
    }

    /// One page of an upstream's tags list (`query`: the client's pagination).
    pub(crate) async fn tags_list(
        &self,
        upstream: &str,
        repo: &str,
        query: Option<String>,
    ) -> Result<TagsPage> {
        let up = self.upstreams.get(upstream)?;
        self.manifests.tags_list(&up, repo, query).await
    }

    /// The rate-limit headers last seen from `upstream` (Docker Hub's), to pass on to clients.
    pub(crate) fn rate_limit(&self, upstream: &str) -> upstream::RateLimit {
        self.upstreams
            .existing(upstream)
            .map(|u| u.rate_limit())
            .unwrap_or_default()
    }

    /// The configured eviction policy.
    pub(crate) fn evict_policy(&self) -> evict::Policy {
        self.evictor.policy()
    }

    /// Run eviction now with `policy`, protecting what clients are reading.
    pub(crate) async fn evict(&self, policy: evict::Policy) -> Result<evict::Report> {
        self.evictor.evict(policy).await
    }

    /// The health of every upstream client made so far.
    pub(crate) fn upstream_health(&self) -> Vec<upstream::HealthReport> {
        self.upstreams.health()
    }

    /// How far each blob fill running now has got (no I/O).
    pub(crate) fn fill_progress(&self) -> Vec<FillProgress> {
        self.blobs.fill_progress()
    }

    /// Health, latency, last failure and rate limit of every upstream client made so far.
    pub(crate) fn upstream_status(&self) -> Vec<UpstreamStatus> {
        self.upstreams
            .all()
            .into_iter()
            .map(|u| UpstreamStatus {
                health: u.health(),
                stats: u.stats(),
                rate_limit: u.rate_limit(),
            })
            .collect()
    }

    /// What the last measurement or eviction run found in the cache, and when (no I/O).
    pub(crate) fn usage(&self) -> Option<(evict::Report, std::time::SystemTime)> {
        self.evictor.last_measured()
    }

    /// Measure the cache now (lists every object; evicts nothing).
    pub(crate) async fn measure(&self) -> Result<evict::Report> {
        self.evictor.evict(evict::Policy::default()).await
    }

    /// Every cached tag with its size and platforms (reads storage: for background refreshes).
    pub(crate) async fn images(&self) -> Result<Vec<(inventory::Image, Vec<String>)>> {
        let mut out = Vec::new();
        for i in inventory::images(self.storage.as_ref(), "").await? {
            let platforms = match i.digest.parse() {
                Ok(d) => inventory::platforms(self.storage.as_ref(), &d).await,
                Err(_) => Vec::new(),
            };
            out.push((i, platforms));
        }
        Ok(out)
    }

    /// Ready to serve: storage accepts a write and a delete.
    pub(crate) async fn check_ready(&self) -> Result<()> {
        self.storage
            .put("readyz-probe", Bytes::from_static(b"ok"))
            .await?;
        self.storage.delete("readyz-probe").await?;
        Ok(())
    }

    /// Number of blob fills running now.
    #[cfg(test)]
    pub(crate) fn fills_in_flight(&self) -> usize {
        self.blobs.fills_in_flight()
    }
}

/// The store's records in Redis when replicas share it (a bucket) and coordinate (`redis_url`).
/// A local data directory is each replica's own: it evicts it alone, as without Redis.
pub(crate) fn shared_store(
    coord: Option<&Arc<crate::coord::Coord>>,
    storage: &dyn Storage,
) -> Option<shared_access::SharedStore> {
    Some(shared_access::SharedStore::new(
        coord?.clone(),
        storage.shared_location()?,
    ))
}

/// What the status page shows of one upstream.
pub(crate) struct UpstreamStatus {
    pub(crate) health: upstream::HealthReport,
    pub(crate) stats: upstream::StatsReading,
    pub(crate) rate_limit: upstream::RateLimit,
}

/// Storage keys, drawn as a tree in [`crate::storage`].
pub(crate) mod keys {
    use crate::oci::Digest;

    pub(crate) fn blob(d: &Digest) -> String {
        format!("blobs/{}/{}/{}", d.algorithm_name(), &d.hex()[..2], d.hex())
    }
    pub(crate) fn manifest(d: &Digest) -> String {
        format!(
            "manifests/{}/{}/{}",
            d.algorithm_name(),
            &d.hex()[..2],
            d.hex()
        )
    }
    pub(crate) fn tag(upstream: &str, repo: &str, tag: &str) -> String {
        format!("tags/{upstream}/{repo}/_tag/{tag}")
    }
    pub(crate) fn tags_list(upstream: &str, repo: &str) -> String {
        format!("tags/{upstream}/{repo}/_list")
    }
    pub(crate) fn link(kind: super::links::Kind, upstream: &str, repo: &str, d: &Digest) -> String {
        let dir = match kind {
            super::links::Kind::Blob => "_blobs",
            super::links::Kind::Manifest => "_manifests",
        };
        format!(
            "links/{upstream}/{repo}/{dir}/{}/{}",
            d.algorithm_name(),
            d.hex()
        )
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_freshness;
#[cfg(test)]
mod tests_links;
#[cfg(test)]
mod tests_shared_evict;

//! Blob reads: hits from storage, misses through one fill per digest, ranges.
//!
//! A miss starts a fill (or joins the one in flight through [`FillTable`]): the blob streams from
//! the upstream into a spool file ([`crate::staging`]) that every client of it tails, and is
//! committed to storage only after its digest matched. The fill runs in its own task, so it
//! finishes (or times out) even when every client has gone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::access::Access;
use super::evict::Evictor;
use super::flight::{Fill, FillTable, Flight, LocalFills};
use super::links::{Kind, Links};
use super::negative::NotFound;
use super::tags::Policies;
use super::upstreams::Upstreams;
use super::{keys, CacheStatus, Error, Result};
use crate::config::Config;
use crate::coord::Coord;
use crate::oci::{Digest, RangeSpec};
use crate::staging::{ByteStream, FileRegion, Spool};
use crate::storage::{self, Storage};
use crate::upstream::{self, Upstream};

/// The body of a blob answer.
pub(crate) enum BlobBody {
    /// Bytes as a stream of buffers (ranges fetched from the upstream, fills of unknown size).
    Stream(ByteStream),
    /// A range of a local file (a cached blob or the spool of a fill), which the HTTP/1.1 front
    /// sends with `sendfile(2)`.
    File(FileRegion),
}

impl BlobBody {
    /// The bytes as a stream, whichever form they are in.
    #[cfg(test)]
    pub(crate) fn into_stream(self) -> ByteStream {
        match self {
            BlobBody::Stream(s) => s,
            BlobBody::File(r) => r.into_stream(),
        }
    }
}

/// What the API needs to answer a blob request.
pub(crate) struct Blob {
    pub(crate) digest: Digest,
    /// Total size of the blob, when known.
    pub(crate) size: Option<u64>,
    /// The part served, when a range was asked for: (start, end exclusive).
    pub(crate) range: Option<(u64, u64)>,
    /// None for HEAD.
    pub(crate) body: Option<BlobBody>,
    pub(crate) status: CacheStatus,
}

/// What the blob side knows about repositories, shared with the manifest side.
pub(crate) struct Known {
    /// Blobs an upstream said a repository does not have, for a short time.
    pub(crate) not_found: Arc<NotFound>,
    /// Which repositories hold which blobs.
    pub(crate) links: Arc<Links>,
}

/// The blob side of the cache.
pub(crate) struct BlobCache {
    pub(super) storage: Arc<dyn Storage>,
    /// Where fills write their spool files (local disk).
    pub(super) staging_dir: PathBuf,
    pub(super) fills: Box<dyn FillTable>,
    /// Bounds upstream blob downloads running at once (`max_concurrent_fills`).
    pub(super) fill_slots: tokio::sync::Semaphore,
    pub(super) fill_timeout: Duration,
    access: Arc<Access>,
    pub(super) evictor: Arc<Evictor>,
    policies: Arc<Policies>,
    /// Blobs an upstream said it does not have, for a short time.
    not_found: Arc<NotFound>,
    /// Which repositories hold which blobs: nothing is served under a repository without one.
    pub(super) links: Arc<Links>,
    /// Storage may redirect large blobs (`s3.redirect_blobs_over`).
    redirects: bool,
    /// The fleet's coordination (`redis_url`), when on.
    coord: Option<Arc<Coord>>,
}

impl BlobCache {
    /// Neither stored nor in flight: a GET would start a download.
    pub(super) async fn would_fetch(&self, d: &Digest) -> bool {
        self.fills.join(d).is_none() && self.storage.head(&keys::blob(d)).await.is_err()
    }

    #[allow(clippy::too_many_arguments)] // the parts `Cache::new` builds once
    pub(crate) fn new(
        config: &Config,
        storage: Arc<dyn Storage>,
        staging_dir: PathBuf,
        access: Arc<Access>,
        evictor: Arc<Evictor>,
        policies: Arc<Policies>,
        known: Known,
        coord: Option<Arc<Coord>>,
    ) -> BlobCache {
        let fills: Box<dyn FillTable> = match &coord {
            Some(c) => Box::new(super::shared_fills::SharedFills::new(c.clone())),
            None => Box::new(LocalFills::default()),
        };
        BlobCache {
            storage,
            staging_dir,
            fills,
            fill_slots: tokio::sync::Semaphore::new(config.max_concurrent_fills),
            fill_timeout: Duration::from_secs(config.fill_timeout_secs.max(1)),
            access,
            evictor,
            policies,
            not_found: known.not_found,
            links: known.links,
            redirects: config
                .s3_backend()
                .is_some_and(|s3| s3.redirect_blobs_over.is_some()),
            coord,
        }
    }

    /// A presigned URL of a stored blob that `repo` holds, when storage redirects its size.
    /// Any storage failure means "serve it here" (the GET then reports it).
    pub(crate) async fn redirect(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<String>> {
        if !self.redirects || !self.links.holds(Kind::Blob, upstream, repo, digest).await? {
            return Ok(None);
        }
        let key = keys::blob(digest);
        let Ok(meta) = self.storage.head(&key).await else {
            return Ok(None);
        };
        match self.storage.redirect_url(&key, meta.size).await {
            Ok(Some(url)) => {
                self.access.note(&key, Some(meta.modified)).await;
                Ok(Some(url))
            }
            _ => Ok(None),
        }
    }

    /// How far each fill running now has got.
    pub(crate) fn fill_progress(&self) -> Vec<super::FillProgress> {
        self.fills.progress()
    }

    /// Number of blob fills running now.
    #[cfg(test)]
    pub(crate) fn fills_in_flight(&self) -> usize {
        self.fills.in_flight()
    }

    /// GET (`head = false`) or HEAD a blob, optionally a range of it. Served under `repo` only
    /// when it is linked there (fetched or confirmed for it); see `links`.
    pub(crate) async fn blob(
        self: &Arc<Self>,
        upstreams: &Upstreams,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<Blob> {
        let linked = self.links.holds(Kind::Blob, upstream, repo, digest).await?;
        if linked {
            if let Some(hit) = self.from_storage(digest, range, head).await? {
                return Ok(hit);
            }
        }
        let up = upstreams.get(upstream)?;
        let missing = format!("blob {upstream}/{repo}@{digest}");
        if self.not_found.contains(&missing) {
            metrics::counter!(crate::metrics::NEGATIVE_HITS, "kind" => "blob").increment(1);
            return Err(Error::BlobUnknown);
        }
        let answer = self
            .blob_upstream(&up, repo, digest, range, head, linked)
            .await;
        if matches!(answer, Err(Error::BlobUnknown)) {
            let ttl = self.policies.get(upstream).negative_ttl;
            self.not_found.insert(missing, ttl);
        }
        answer
    }

    /// A blob that is not served from storage for this repository: confirm a stored one, join
    /// its fill, start one, or ask the upstream (HEAD). `linked`: the repository holds it.
    async fn blob_upstream(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
        linked: bool,
    ) -> Result<Blob> {
        if let Some(fill) = self.fills.join(digest) {
            return self.serve_joined(up, repo, fill, range, head, linked).await;
        }
        if !linked && self.is_stored(digest).await? {
            // Cached for another repository (or before links existed): the upstream must say
            // this one holds it too.
            self.confirm(up, repo, digest).await?;
            if let Some(hit) = self.from_storage(digest, range, head).await? {
                return Ok(hit);
            }
        }
        if head {
            let size = up.head_blob(repo, digest).await.map_err(blob_error)?;
            self.links.note(Kind::Blob, up.name(), repo, digest);
            return Ok(Blob {
                digest: digest.clone(),
                size,
                range: None,
                body: None,
                status: CacheStatus::Passthrough,
            });
        }
        match self.fills.start_or_join(digest, up.name(), repo).await {
            Flight::Join(fill) => self.serve_joined(up, repo, fill, range, head, linked).await,
            Flight::Start(fill, permit) => {
                // A fill may have committed between our storage check and now.
                if let Some(hit) = self.from_storage(digest, range, head).await? {
                    permit.finish();
                    if !linked {
                        self.confirm(up, repo, digest).await?;
                    }
                    return Ok(hit);
                }
                let (cache, task_up, task_repo) = (self.clone(), up.clone(), repo.to_string());
                let task_digest = digest.clone();
                tokio::spawn(async move {
                    cache
                        .run_fill(task_up, task_repo, task_digest, permit)
                        .await
                });
                self.serve_fill(up, repo, fill, range, head, CacheStatus::Miss)
                    .await
            }
        }
    }

    /// Join a fill, which may be fetching for another repository: unless this one is linked,
    /// wait until the fill's upstream answered (a fill for this repository links it then) and
    /// confirm with the upstream if it is still not known.
    async fn serve_joined(
        &self,
        up: &Upstream,
        repo: &str,
        fill: Arc<Fill>,
        range: Option<RangeSpec>,
        head: bool,
        linked: bool,
    ) -> Result<Blob> {
        if !linked {
            let state = fill.wait_started().await;
            let failed = matches!(state.outcome, Some(Err(_)));
            if !failed && !self.links.known(Kind::Blob, up.name(), repo, fill.digest()) {
                self.confirm(up, repo, fill.digest()).await?;
            }
        }
        self.serve_fill(up, repo, fill, range, head, CacheStatus::Joined)
            .await
    }

    /// Ask the upstream whether `repo` holds `digest` (one HEAD, shared by concurrent callers),
    /// and link it when it does. An upstream that cannot answer is an outage, never a hit.
    async fn confirm(&self, up: &Upstream, repo: &str, digest: &Digest) -> Result<()> {
        let ask = async {
            metrics::counter!(crate::metrics::LINK_CONFIRMS, "kind" => "blob").increment(1);
            match up.head_blob(repo, digest).await {
                Ok(_) => Ok(()),
                Err(e) => Err(super::links::refused(
                    up.name(),
                    repo,
                    digest,
                    e,
                    Error::BlobUnknown,
                )),
            }
        };
        self.links
            .confirm(Kind::Blob, up.name(), repo, digest, ask)
            .await
    }

    /// Whether the blob's bytes are in storage (for any repository).
    async fn is_stored(&self, digest: &Digest) -> Result<bool> {
        match self.storage.head(&keys::blob(digest)).await {
            Ok(_) => Ok(true),
            Err(storage::Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn from_storage(
        &self,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<Option<Blob>> {
        let key = keys::blob(digest);
        let meta = match self.storage.head(&key).await {
            Ok(m) => m,
            Err(storage::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let r = range.map(|r| r.resolve(meta.size)).transpose()?;
        self.access.note(&key, Some(meta.modified)).await;
        let body = if head {
            None
        } else {
            let in_use = self.access.in_use();
            match self.storage.open_file(&key).await {
                Ok(Some((file, len))) => {
                    let r = r.clone().unwrap_or(0..len);
                    let r = r.start.min(len)..r.end.min(len);
                    let reading = Box::new(in_use.hold(key.clone()));
                    Some(BlobBody::File(FileRegion::committed(
                        Arc::new(file),
                        r,
                        reading,
                    )))
                }
                Ok(None) => match self.storage.get_stream(&key, r.clone()).await {
                    Ok(s) => Some(BlobBody::Stream(in_use.guard(key.clone(), s))),
                    Err(storage::Error::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                },
                // Removed (evicted) between head and open: treat as a miss.
                Err(storage::Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Some(Blob {
            digest: digest.clone(),
            size: Some(meta.size),
            range: r.map(|r| (r.start, r.end)),
            body,
            status: CacheStatus::Hit,
        }))
    }

    async fn serve_fill(
        &self,
        up: &Upstream,
        repo: &str,
        fill: Arc<Fill>,
        range: Option<RangeSpec>,
        head: bool,
        status: CacheStatus,
    ) -> Result<Blob> {
        if status == CacheStatus::Joined {
            metrics::counter!(crate::metrics::JOINED, "kind" => "blob").increment(1);
        }
        let state = fill.wait_started().await;
        let spool = match (state.spool, state.outcome) {
            (_, Some(Err(e))) => return Err(e),
            (Some(spool), _) => spool,
            // Ended without a spool: the fill found the blob already committed.
            (None, _) => {
                return self
                    .from_storage(fill.digest(), range, head)
                    .await?
                    .ok_or(Error::BlobUnknown);
            }
        };
        let digest = fill.digest().clone();
        let size = spool.size();
        match (range, size) {
            (None, size) => Ok(Blob {
                digest,
                size,
                range: None,
                body: (!head).then(|| fill_body(spool, 0, size)),
                status,
            }),
            (Some(r), Some(size)) => {
                let r = r.resolve(size)?;
                Ok(Blob {
                    digest,
                    size: Some(size),
                    range: Some((r.start, r.end)),
                    body: (!head).then(|| fill_body(spool, r.start, Some(r.end))),
                    status,
                })
            }
            // A range of a blob whose size is not known yet: forward the range to the upstream.
            (Some(r), None) => {
                let part = up
                    .blob_range(repo, &digest, r, head)
                    .await
                    .map_err(blob_error)?;
                let body = part
                    .body
                    .map(|b| BlobBody::Stream(b.map(|c| c.map_err(std::io::Error::other)).boxed()));
                Ok(Blob {
                    digest,
                    size: part.size,
                    range: Some((part.start, part.end)),
                    body,
                    status: CacheStatus::Passthrough,
                })
            }
        }
    }
}

impl BlobCache {
    /// The fleet's coordination, when on.
    pub(super) fn coord(&self) -> Option<&Arc<Coord>> {
        self.coord.as_ref()
    }

    /// The fill of `digest` in flight here, if any.
    pub(super) fn fills_join(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.fills.join(digest)
    }

    /// Ask the upstream whether `repo` holds `digest`, and link it.
    pub(super) async fn confirm_blob(&self, up: &Upstream, repo: &str, d: &Digest) -> Result<()> {
        self.confirm(up, repo, d).await
    }

    /// The committed blob from byte `from` (whole when 0), if stored.
    pub(super) async fn stored(&self, digest: &Digest, from: u64) -> Result<Option<Blob>> {
        let range = (from > 0).then_some(RangeSpec::From(from, None));
        self.from_storage(digest, range, false).await
    }

    /// Start the download from the upstream.
    pub(super) async fn fetch_upstream(
        &self,
        up: &Upstream,
        repo: &str,
        digest: &Digest,
    ) -> Result<upstream::BlobStream> {
        let blob = up.get_blob(repo, digest).await.map_err(blob_error)?;
        // The upstream serves it for this repository: joiners for it need not ask again.
        self.links.note(Kind::Blob, up.name(), repo, digest);
        Ok(blob)
    }
}

/// A reader of a fill's spool from `start` to `end` (the blob's size when known): a file region
/// when the end is known, a stream otherwise.
fn fill_body(spool: Arc<Spool>, start: u64, end: Option<u64>) -> BlobBody {
    match end {
        Some(end) => BlobBody::File(FileRegion::filling(spool, start..end)),
        None => BlobBody::Stream(spool.reader(start, end)),
    }
}

fn blob_error(e: upstream::Error) -> Error {
    match e {
        upstream::Error::NotFound => Error::BlobUnknown,
        e => Error::Upstream(e),
    }
}

//! Blob reads: from storage on a hit, from the in-flight fill on a miss, HEAD from the upstream.

use std::sync::Arc;

use futures::TryStreamExt;
use http::Method;

use super::fill::{Fill, FillWriter, Joined};
use super::region::FileRegion;
use super::{keys, Cache, CacheStatus, Error, Result};
use crate::oci::Digest;
use crate::storage::{self, ByteStream};
use crate::upstream::{self, Request, Upstream};

/// A byte range as a client asked for it (`bytes=a-b`, `bytes=a-`, `bytes=-n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// First byte and optional last byte, inclusive.
    From(u64, Option<u64>),
    /// The last n bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// The half-open byte range within a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<std::ops::Range<u64>> {
        let r = match self {
            RangeSpec::From(start, end) => {
                start..end.map(|e| e.saturating_add(1)).unwrap_or(size).min(size)
            }
            RangeSpec::Suffix(n) => size.saturating_sub(n)..size,
        };
        if r.start >= r.end {
            return Err(Error::RangeNotSatisfiable { size });
        }
        Ok(r)
    }
}

/// The body of a blob answer.
pub enum BlobBody {
    /// Bytes as a stream of buffers (ranges fetched from the upstream, fills of unknown size).
    Stream(ByteStream),
    /// A range of a local file (a cached blob or the spool of a fill), which the HTTP/1.1 front
    /// sends with `sendfile(2)`.
    File(FileRegion),
}

impl BlobBody {
    pub fn into_stream(self) -> ByteStream {
        match self {
            BlobBody::Stream(s) => s,
            BlobBody::File(r) => r.into_stream(),
        }
    }
}

/// What the API needs to answer a blob request.
pub struct Blob {
    pub digest: Digest,
    /// Total size of the blob, when known.
    pub size: Option<u64>,
    /// The part served, when a range was asked for: (start, end exclusive).
    pub range: Option<(u64, u64)>,
    /// None for HEAD.
    pub body: Option<BlobBody>,
    pub status: CacheStatus,
}

impl Cache {
    /// GET (`head = false`) or HEAD a blob, optionally a range of it.
    pub async fn blob(
        self: &Arc<Self>,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<Blob> {
        if let Some(hit) = self.blob_from_storage(digest, range, head).await? {
            return Ok(hit);
        }
        let up = self.upstream(upstream)?;
        if let Some(fill) = self.fills.get(digest) {
            return self
                .serve_fill(&up, repo, fill, range, head, CacheStatus::Joined)
                .await;
        }
        if head {
            return self.head_upstream(&up, repo, digest).await;
        }
        match self.fills.join_or_start(digest) {
            Joined::Existing(fill) => {
                self.serve_fill(&up, repo, fill, range, head, CacheStatus::Joined)
                    .await
            }
            Joined::New(fill, writer) => {
                // A fill may have committed between our storage check and now.
                if let Some(hit) = self.blob_from_storage(digest, range, head).await? {
                    writer.finish(Ok(()));
                    self.fills.remove(&fill);
                    return Ok(hit);
                }
                let cache = self.clone();
                let (task_fill, task_repo, task_up) = (fill.clone(), repo.to_string(), up.clone());
                tokio::spawn(
                    async move { cache.run_fill(task_up, task_repo, task_fill, writer).await },
                );
                self.serve_fill(&up, repo, fill, range, head, CacheStatus::Miss)
                    .await
            }
        }
    }

    async fn blob_from_storage(
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
        self.note_access(&key, Some(meta.modified)).await;
        let body = if head {
            None
        } else {
            let reading = self.in_use.hold(key.clone());
            match self.storage.open_file(&key).await {
                Ok(Some((file, len))) => {
                    let r = r.clone().unwrap_or(0..len);
                    let r = r.start.min(len)..r.end.min(len);
                    Some(BlobBody::File(FileRegion::committed(
                        Arc::new(file),
                        r,
                        reading,
                    )))
                }
                Ok(None) => match self.storage.get_stream(&key, r.clone()).await {
                    Ok(s) => Some(BlobBody::Stream(self.in_use.guard(key.clone(), s))),
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
        self: &Arc<Self>,
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
        match &state.outcome {
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(())) if !state.started => {
                // The fill found the blob already committed.
                return self
                    .blob_from_storage(&fill.digest, range, head)
                    .await?
                    .ok_or(Error::BlobUnknown);
            }
            _ => {}
        }
        let digest = fill.digest.clone();
        match (range, state.size) {
            (None, size) => {
                let body = (!head).then(|| fill_body(&fill, 0, size));
                Ok(Blob {
                    digest,
                    size,
                    range: None,
                    body,
                    status,
                })
            }
            (Some(r), Some(size)) => {
                let r = r.resolve(size)?;
                let body = (!head).then(|| fill_body(&fill, r.start, Some(r.end)));
                Ok(Blob {
                    digest,
                    size: Some(size),
                    range: Some((r.start, r.end)),
                    body,
                    status,
                })
            }
            (Some(r), None) => self.range_from_upstream(up, repo, &digest, r, head).await,
        }
    }

    /// HEAD of a blob that is neither cached nor being fetched: ask the upstream.
    async fn head_upstream(&self, up: &Upstream, repo: &str, digest: &Digest) -> Result<Blob> {
        let req = Request::new(Method::HEAD, repo, format!("blobs/{digest}"));
        let resp = up.send(&req).await.map_err(blob_error)?;
        let size = content_length(resp.headers());
        Ok(Blob {
            digest: digest.clone(),
            size,
            range: None,
            body: None,
            status: CacheStatus::Passthrough,
        })
    }

    /// A range of a blob whose size is not known yet: forward the range to the upstream.
    async fn range_from_upstream(
        &self,
        up: &Upstream,
        repo: &str,
        digest: &Digest,
        r: RangeSpec,
        head: bool,
    ) -> Result<Blob> {
        let method = if head { Method::HEAD } else { Method::GET };
        let mut req = Request::new(method, repo, format!("blobs/{digest}"));
        req.streaming = true;
        let spec = match r {
            RangeSpec::From(a, Some(b)) => format!("bytes={a}-{b}"),
            RangeSpec::From(a, None) => format!("bytes={a}-"),
            RangeSpec::Suffix(n) => format!("bytes=-{n}"),
        };
        req.headers.insert(
            http::header::RANGE,
            spec.parse().map_err(|_| Error::Invalid("range".into()))?,
        );
        let resp = up.send(&req).await.map_err(blob_error)?;
        let parsed = resp
            .headers()
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range)
            .filter(|_| resp.status() == http::StatusCode::PARTIAL_CONTENT)
            .ok_or_else(|| Error::Invalid("upstream ignored the range request".into()))?;
        let (start, end, size) = parsed;
        let body = (!head).then(|| {
            BlobBody::Stream(
                resp.bytes_stream()
                    .map_err(std::io::Error::other)
                    .boxed_stream(),
            )
        });
        Ok(Blob {
            digest: digest.clone(),
            size,
            range: Some((start, end)),
            body,
            status: CacheStatus::Passthrough,
        })
    }

    /// Download a blob into the spool and commit it; runs in its own task.
    async fn run_fill(
        self: Arc<Self>,
        up: Arc<Upstream>,
        repo: String,
        fill: Arc<Fill>,
        mut writer: FillWriter,
    ) {
        let deadline = std::time::Duration::from_secs(self.fill_timeout_secs.max(1));
        let digest = fill.digest.clone();
        let work = async {
            // Wait for a download slot; the wait counts against the fill deadline.
            let _slot = self
                .fill_slots
                .acquire()
                .await
                .map_err(|_| Error::Storage("shutting down".into()))?;
            let mut req = Request::new(Method::GET, &repo, format!("blobs/{digest}"));
            req.streaming = true;
            let resp = up.send(&req).await.map_err(blob_error)?;
            let size = content_length(resp.headers());
            let file = writer
                .start(&self.spool_dir, size)
                .map_err(|e| Error::Storage(format!("spool file: {e}")))?;
            let body = resp.bytes_stream().map_err(|e| upstream::describe(&e));
            let path = writer.write_body(file, body, size).await?;
            if let Err(e) = self.storage.put_file(&keys::blob(&digest), &path).await {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e.into());
            }
            Ok(())
        };
        metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT).increment(1.0);
        let outcome = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Upstream(upstream::Error::Unavailable(format!(
                "blob fill exceeded {}s",
                deadline.as_secs()
            )))),
        };
        if matches!(&outcome, Err(Error::Storage(m)) if m.contains("No space left")) {
            // Disk full: make room for this blob in the background so that the next try succeeds.
            // The cache may be under max_size and still not fit (the disk is smaller, or shared),
            // so the target is the blob's size below what is stored now, and never above max_size.
            let cache = self.clone();
            let needed = fill.state().size;
            tokio::spawn(async move {
                let mut policy = cache.evict_policy();
                if let Ok(all) = super::evict::objects(cache.storage.as_ref()).await {
                    let total: u64 = all.iter().map(|m| m.size).sum();
                    let room = total.saturating_sub(needed.unwrap_or(total / 10).max(total / 10));
                    policy.max_size = Some(policy.max_size.map_or(room, |m| m.min(room)));
                }
                if let Err(e) = cache.evict(policy).await {
                    tracing::warn!(error = %e, "eviction after a full disk failed");
                }
            });
        }
        match &outcome {
            Ok(()) => tracing::info!(upstream = %up.name(), %repo, %digest, "blob cached"),
            Err(e) => {
                tracing::warn!(upstream = %up.name(), %repo, %digest, error = %e, "blob fill failed")
            }
        }
        metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT).decrement(1.0);
        let label = if outcome.is_ok() { "ok" } else { "failed" };
        metrics::counter!(crate::metrics::FILLS_TOTAL, "outcome" => label).increment(1);
        writer.finish(outcome);
        self.fills.remove(&fill);
    }
}

trait BoxedStream {
    fn boxed_stream(self) -> ByteStream;
}
impl<S> BoxedStream for S
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    fn boxed_stream(self) -> ByteStream {
        Box::pin(self)
    }
}

/// A reader of a fill from `start` to `end` (the blob's size when known): a file region when
/// both the spool and the end are known, a stream otherwise.
fn fill_body(fill: &Arc<Fill>, start: u64, end: Option<u64>) -> BlobBody {
    match (fill.spool(), end) {
        (Some(file), Some(end)) => {
            BlobBody::File(FileRegion::filling(fill.clone(), file, start..end))
        }
        _ => BlobBody::Stream(fill.reader(start, end)),
    }
}

fn blob_error(e: upstream::Error) -> Error {
    match e {
        upstream::Error::NotFound => Error::BlobUnknown,
        e => Error::Upstream(e),
    }
}

pub(super) fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `bytes a-b/size` -> (a, b + 1, Some(size)); size may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    Some((a, b.checked_add(1)?, size.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve() {
        let cases = [
            (RangeSpec::From(0, Some(9)), 100, Some(0..10)),
            (RangeSpec::From(90, None), 100, Some(90..100)),
            (RangeSpec::From(90, Some(500)), 100, Some(90..100)),
            (RangeSpec::Suffix(10), 100, Some(90..100)),
            (RangeSpec::Suffix(1000), 100, Some(0..100)),
            (RangeSpec::From(100, None), 100, None),
            (RangeSpec::Suffix(0), 100, None),
        ];
        for (spec, size, want) in cases {
            assert_eq!(spec.resolve(size).ok(), want, "{spec:?}");
        }
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 6, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}

//! Blob uploads while a fill runs: bytes are buffered to one part (8 MiB), then streamed as
//! parts of a multipart upload straight to the final key. S3 shows nothing under the key until
//! the upload is completed, and [`S3Upload`] completes it only in `commit` (after the caller
//! verified the digest); `abort` and drop abort it. A blob that fits in one part is sent with a
//! single PUT at commit.
//!
//! `object_store` cannot list multipart uploads, so each upload is recorded as a small object
//! `_uploads/<random>` (key and upload id), rewritten every `stale/4` while the upload runs and
//! removed when it ends. The janitor (start-up, then every `stale`) aborts uploads whose record
//! was not refreshed for `stale` (default 600 s, `REGMIRROR_S3_STALE_UPLOAD_SECS`): their
//! process died mid-fill.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::tier::Tier;
use super::{timed, Error, Result, Upload, PART_SIZE, TOUCH};

/// Prefix (under the bucket prefix) of the records of running multipart uploads.
pub(super) const RECORDS: &str = "_uploads/";

/// Parts being sent at once per upload (bounds memory: this many parts plus one buffer).
const PARTS_IN_FLIGHT: usize = 2;

/// Age after which an upload whose record is not refreshed is abandoned.
fn stale() -> Duration {
    let secs = std::env::var("REGMIRROR_S3_STALE_UPLOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &u64| *s > 0)
        .unwrap_or(600);
    Duration::from_secs(secs)
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    pub(super) path: String,
    pub(super) id: String,
}

struct Multipart {
    id: String,
    record: ObjPath,
    parts: Vec<PartId>,
    pending: std::collections::VecDeque<JoinHandle<Result<PartId>>>,
    heartbeat: JoinHandle<()>,
}

/// An object being uploaded; see the module doc.
pub(super) struct S3Upload {
    store: Arc<AmazonS3>,
    prefix: String,
    path: ObjPath,
    key: String,
    buf: BytesMut,
    multipart: Option<Multipart>,
    tier: Option<Arc<Tier>>,
    ended: bool,
}

impl S3Upload {
    pub(super) async fn start(
        store: Arc<AmazonS3>,
        prefix: &str,
        path: ObjPath,
        key: &str,
        size: Option<u64>,
        tier: Option<Arc<Tier>>,
    ) -> Result<S3Upload> {
        let cap = size.map_or(PART_SIZE, |s| (s as usize).min(PART_SIZE));
        Ok(S3Upload {
            store,
            prefix: prefix.to_string(),
            path,
            key: key.to_string(),
            buf: BytesMut::with_capacity(cap),
            multipart: None,
            tier,
            ended: false,
        })
    }

    async fn begin_multipart(&mut self) -> Result<&mut Multipart> {
        if self.multipart.is_none() {
            let id = timed("create", &self.key, self.store.create_multipart(&self.path)).await?;
            metrics::gauge!(crate::metrics::S3_MULTIPART_IN_FLIGHT).increment(1.0);
            let record = ObjPath::parse(format!(
                "{}{RECORDS}{}",
                self.prefix,
                crate::staging::temp_name("u")
            ))
            .map_err(|_| Error::InvalidKey(self.key.clone()))?;
            let body = serde_json::to_vec(&Record {
                path: self.path.to_string(),
                id: id.clone(),
            })
            .map_err(|e| Error::Io {
                key: self.key.clone(),
                source: std::io::Error::other(e),
            })?;
            let body = Bytes::from(body);
            if let Err(e) = timed(
                "put",
                &self.key,
                self.store.put(&record, body.clone().into()),
            )
            .await
            {
                let _ = self.store.abort_multipart(&self.path, &id).await;
                metrics::gauge!(crate::metrics::S3_MULTIPART_IN_FLIGHT).decrement(1.0);
                return Err(e);
            }
            let (store, rec) = (self.store.clone(), record.clone());
            let heartbeat = tokio::spawn(async move {
                // A quarter of `stale`: three refreshes may be late before the janitor of
                // any replica takes the upload for abandoned.
                let every = (stale() / 4).max(Duration::from_millis(250));
                loop {
                    tokio::time::sleep(every).await;
                    let _ = store.put(&rec, body.clone().into()).await;
                }
            });
            self.multipart = Some(Multipart {
                id,
                record,
                parts: Vec::new(),
                pending: Default::default(),
                heartbeat,
            });
        }
        Ok(self.multipart.as_mut().expect("set above"))
    }

    /// Send `part` as the next part, waiting while too many are in flight.
    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        let (store, path, key) = (self.store.clone(), self.path.clone(), self.key.clone());
        let key_for_errors = key.clone();
        let mp = self.begin_multipart().await?;
        let idx = mp.parts.len() + mp.pending.len();
        let id = mp.id.clone();
        mp.pending.push_back(tokio::spawn(async move {
            timed("part", &key, store.put_part(&path, &id, idx, part.into())).await
        }));
        while mp.pending.len() >= PARTS_IN_FLIGHT {
            Self::settle_one(mp, &key_for_errors).await?;
        }
        Ok(())
    }

    async fn settle_one(mp: &mut Multipart, key: &str) -> Result<()> {
        if let Some(h) = mp.pending.pop_front() {
            let part = h.await.map_err(|e| Error::Io {
                key: key.to_string(),
                source: std::io::Error::other(e),
            })??;
            mp.parts.push(part);
        }
        Ok(())
    }

    /// Complete the upload (or PUT a blob that fit in one part): the object becomes visible.
    pub(super) async fn finish(&mut self) -> Result<()> {
        let rest = self.buf.split().freeze();
        if self.multipart.is_none() {
            self.ended = true;
            timed("put", &self.key, self.store.put(&self.path, rest.into())).await?;
            return Ok(());
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        let key = self.key.clone();
        let mp = self.multipart.as_mut().expect("multipart checked above");
        while !mp.pending.is_empty() {
            Self::settle_one(mp, &key).await?;
        }
        let parts = std::mem::take(&mut mp.parts);
        let id = mp.id.clone();
        timed(
            "complete",
            &key,
            self.store.complete_multipart(&self.path, &id, parts),
        )
        .await?;
        self.end_record().await;
        Ok(())
    }

    /// Stop the heartbeat and remove the record of the multipart upload.
    async fn end_record(&mut self) {
        self.ended = true;
        if let Some(mp) = self.multipart.take() {
            mp.heartbeat.abort();
            for p in mp.pending {
                p.abort();
            }
            metrics::gauge!(crate::metrics::S3_MULTIPART_IN_FLIGHT).decrement(1.0);
            let _ = timed("delete", &self.key, self.store.delete(&mp.record)).await;
        }
    }

    async fn abort_now(&mut self) {
        self.ended = true;
        if let Some(mp) = &self.multipart {
            let id = mp.id.clone();
            if let Err(e) = timed(
                "abort",
                &self.key,
                self.store.abort_multipart(&self.path, &id),
            )
            .await
            {
                // The record stays, so the janitor tries again later.
                tracing::warn!(key = %self.key, error = %e, "cannot abort a multipart upload");
                if let Some(mp) = self.multipart.take() {
                    mp.heartbeat.abort();
                    metrics::gauge!(crate::metrics::S3_MULTIPART_IN_FLIGHT).decrement(1.0);
                }
                return;
            }
        }
        self.end_record().await;
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(mp) = self.multipart.take() {
            mp.heartbeat.abort();
            metrics::gauge!(crate::metrics::S3_MULTIPART_IN_FLIGHT).decrement(1.0);
            let (store, path) = (self.store.clone(), self.path.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if store.abort_multipart(&path, &mp.id).await.is_ok() {
                        let _ = store.delete(&mp.record).await;
                    }
                });
            }
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, mut bytes: Bytes) -> Result<()> {
        while !bytes.is_empty() {
            let room = PART_SIZE - self.buf.len();
            let take = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes.split_to(take));
            if self.buf.len() == PART_SIZE {
                let part = self.buf.split().freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, local: &Path) -> Result<()> {
        if let Err(e) = self.finish().await {
            self.abort_now().await;
            // A part lost on the way (the upload aborted under it, a server error) does not
            // lose the verified bytes: send the complete local copy once more.
            tracing::warn!(key = %self.key, error = %e, "streaming upload failed at its end; uploading the verified copy");
            let again = put_file(&self.store, &self.prefix, &self.path, &self.key, local).await;
            if let Err(e) = again {
                let _ = tokio::fs::remove_file(local).await;
                return Err(e);
            }
        }
        match &self.tier {
            Some(t) => t.adopt(&self.key, local).await,
            None => tokio::fs::remove_file(local)
                .await
                .map_err(|source| Error::Io {
                    key: self.key.clone(),
                    source,
                }),
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_now().await;
    }
}

/// Upload a complete local file to `path` (the file stays; the caller decides its fate).
pub(super) async fn put_file(
    store: &Arc<AmazonS3>,
    prefix: &str,
    path: &ObjPath,
    key: &str,
    file: &Path,
) -> Result<()> {
    let io = |source| Error::Io {
        key: key.to_string(),
        source,
    };
    let mut f = tokio::fs::File::open(file).await.map_err(io)?;
    let size = f.metadata().await.map_err(io)?.len();
    let mut up =
        S3Upload::start(store.clone(), prefix, path.clone(), key, Some(size), None).await?;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        if let Err(e) = up.write(Bytes::copy_from_slice(&chunk[..n])).await {
            up.abort_now().await;
            return Err(e);
        }
    }
    if let Err(e) = up.finish().await {
        up.abort_now().await;
        return Err(e);
    }
    Ok(())
}

/// Clean up after dead processes, now and every `stale`, for the life of the process.
pub(super) fn spawn_janitor(store: Arc<AmazonS3>, prefix: String) {
    tokio::spawn(async move {
        loop {
            match clean(&store, &prefix, stale().as_secs()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(aborted = n, "aborted abandoned multipart uploads"),
                Err(e) => tracing::warn!(error = %e, "cannot clean abandoned multipart uploads"),
            }
            tokio::time::sleep(stale()).await;
        }
    });
}

/// Abort the multipart uploads whose record is stale, and remove stale `_touch/` copies.
/// Returns how many uploads were aborted.
pub(super) async fn clean(store: &AmazonS3, prefix: &str, stale_secs: u64) -> Result<usize> {
    // In milliseconds: whole seconds would take a record refreshed 1.1 s ago for 2 s old.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let stale_ms = stale_secs as i64 * 1000;
    let cutoff = now - stale_ms;
    let mut aborted = 0;
    for dir in [RECORDS, TOUCH] {
        let p =
            ObjPath::parse(format!("{prefix}{dir}")).map_err(|_| Error::InvalidKey(dir.into()))?;
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| super::map_err("list", dir, e))?;
        for m in listed {
            if m.last_modified.timestamp_millis() > cutoff {
                continue;
            }
            if dir == RECORDS {
                let body = match store.get(&m.location).await {
                    Ok(g) => g.bytes().await.ok(),
                    Err(_) => None,
                };
                if let Some(r) = body.and_then(|b| serde_json::from_slice::<Record>(&b).ok()) {
                    let Ok(path) = ObjPath::parse(&r.path) else {
                        continue;
                    };
                    match store.abort_multipart(&path, &r.id).await {
                        Ok(()) => aborted += 1,
                        // Already completed or aborted: only the record is left.
                        Err(object_store::Error::NotFound { .. }) => {}
                        // Servers answer differently for an upload they no longer know (MinIO
                        // NoSuchUpload, s3s AccessDenied): a record ten times stale is dropped.
                        Err(e) if m.last_modified.timestamp_millis() > now - 10 * stale_ms => {
                            tracing::warn!(key = %r.path, error = %e, "cannot abort an abandoned upload");
                            continue;
                        }
                        Err(_) => {}
                    }
                }
            }
            let _ = store.delete(&m.location).await;
        }
    }
    Ok(aborted)
}

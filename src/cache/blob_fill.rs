//! A blob fill: the task that downloads one blob (from the upstream, or relayed from the
//! replica that owns the fill), spools and verifies it for every client tailing it, and commits
//! it to storage (streaming into a backend upload while it arrives, where the backend can).

use std::sync::Arc;

use futures::StreamExt;

use super::blobs::BlobCache;
use super::flight::{FillPermit, FillSource};
use super::links::Kind;
use super::{keys, Error, Result};
use crate::oci::Digest;
use crate::staging::{SpoolWriter, WriteError};
use crate::storage;
use crate::upstream::{self, Upstream};

impl BlobCache {
    /// Download a blob into a spool and commit it; runs in its own task.
    pub(super) async fn run_fill(
        self: Arc<Self>,
        up: Arc<Upstream>,
        repo: String,
        digest: Digest,
        permit: FillPermit,
    ) {
        let in_flight = metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT);
        in_flight.set(self.fills.in_flight() as f64);
        // The spool outlives the attempt, so that a fill cut short by its deadline still ends
        // its readers with the real reason.
        let mut spool = None;
        let work = self.fill(&up, &repo, &digest, &permit, &mut spool);
        let outcome = match tokio::time::timeout(self.fill_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Upstream(upstream::Error::Unavailable(format!(
                "blob fill exceeded {}s",
                self.fill_timeout.as_secs()
            )))),
        };
        match &outcome {
            Ok(()) => {
                tracing::info!(upstream = %up.name(), %repo, %digest, "blob cached");
                self.announce_stored(&digest);
            }
            Err(e) => {
                tracing::warn!(upstream = %up.name(), %repo, %digest, error = %e, "blob fill failed")
            }
        }
        let label = if outcome.is_ok() { "ok" } else { "failed" };
        metrics::counter!(crate::metrics::FILLS_TOTAL, "outcome" => label).increment(1);
        let announced = spool.as_ref().and_then(SpoolWriter::size);
        // Readers may now send the last byte (or end with the error, and the spool is removed);
        // joiners learn the outcome, and a request after this starts a fresh fill.
        match (spool, &outcome) {
            (Some(w), Ok(())) => w.verified(),
            (Some(w), Err(e)) => w.fail(&e.to_string()),
            (None, _) => {}
        }
        match &outcome {
            Ok(()) => permit.finish(),
            Err(e) => permit.fail(e.clone()),
        }
        in_flight.set(self.fills.in_flight() as f64);
        if outcome.as_ref().is_err_and(Error::is_disk_full) {
            // Make room for this blob in the background so that the next try succeeds.
            let evictor = self.evictor.clone();
            tokio::spawn(async move {
                if let Err(e) = evictor.make_room(announced).await {
                    tracing::warn!(error = %e, "eviction after a full disk failed");
                }
            });
        }
    }

    /// The fill itself: wait for a slot, fetch, spool and verify, commit. The spool writer is
    /// left in `spool` for the caller to end.
    async fn fill(
        &self,
        up: &Upstream,
        repo: &str,
        digest: &Digest,
        permit: &FillPermit,
        spool: &mut Option<SpoolWriter>,
    ) -> Result<()> {
        // Wait for a download slot; the wait counts against the fill deadline.
        let _slot = self
            .fill_slots
            .acquire()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let (blob, from_owner) = match permit.source() {
            FillSource::Upstream => (self.fetch_upstream(up, repo, digest).await?, false),
            FillSource::Peer { .. } => self.fetch_from_owner(up, repo, digest, permit).await?,
        };
        let (writer, reader) =
            SpoolWriter::create(&self.staging_dir, blob.size).map_err(Error::spool)?;
        permit.started(Arc::new(reader));
        let writer = spool.insert(writer);
        let key = keys::blob(digest);
        // Relayed from the owner replica onto storage it shares (a bucket): the owner commits
        // the object, so this replica only verifies what it relays (see `owner_committed`).
        let relayed = from_owner && self.storage.shared_location().is_some();
        // Backends that can (S3) receive the bytes while they arrive; committed below only
        // after the digest matched.
        let upload = match relayed {
            true => Ok(None),
            false => self.storage.begin_upload(&key, blob.size).await,
        };
        let tee = Arc::new(tokio::sync::Mutex::new(Tee::new(upload, &key)));
        let feed = tee.clone();
        let body = blob.body.then(move |chunk| {
            let feed = feed.clone();
            async move {
                if let Ok(c) = &chunk {
                    feed.lock().await.write(c.clone()).await;
                }
                chunk
            }
        });
        let written = writer.write(Box::pin(body), digest).await;
        let upload = tee.lock().await.upload.take();
        if let Err(e) = written {
            if let Some(u) = upload {
                u.abort().await;
            }
            return Err(write_error(e));
        }
        let path = writer.path().ok_or(Error::Abandoned)?;
        if relayed && self.owner_committed(&key).await {
            // Readers hold the spool open; its name is no longer needed.
            let _ = std::fs::remove_file(path);
            metrics::counter!(crate::metrics::PEER_FILLS, "role" => "joined", "outcome" => "owner_committed").increment(1);
            return self.links.link(Kind::Blob, up.name(), repo, digest).await;
        }
        match upload {
            Some(u) => u.commit(path).await?,
            None => self.storage.put_file(&key, path).await?,
        }
        self.links.link(Kind::Blob, up.name(), repo, digest).await
    }
}

impl BlobCache {
    /// Whether the object under `key` appeared in shared storage: the owner of a relayed fill
    /// commits about when its last byte is relayed, so this waits a little for it (5 s) before
    /// the relaying replica commits its own verified copy instead.
    async fn owner_committed(&self, key: &str) -> bool {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.storage.head(key).await {
                Ok(_) => return true,
                Err(storage::Error::NotFound(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(_) => return false,
            }
        }
    }
}

/// The storage upload a fill feeds while it spools (None: commit with `put_file` at the end).
/// A failed write drops the upload (aborting it) and the fill falls back to `put_file`.
struct Tee {
    upload: Option<Box<dyn storage::Upload>>,
    key: String,
}

impl Tee {
    fn new(upload: storage::Result<Option<Box<dyn storage::Upload>>>, key: &str) -> Tee {
        let upload = upload.unwrap_or_else(|e| {
            tracing::warn!(%key, error = %e, "cannot start a streaming upload; committing at the end");
            None
        });
        Tee {
            upload,
            key: key.to_string(),
        }
    }

    async fn write(&mut self, bytes: bytes::Bytes) {
        let Some(u) = self.upload.as_mut() else {
            return;
        };
        if let Err(e) = u.write(bytes).await {
            tracing::warn!(key = %self.key, error = %e, "streaming upload failed; committing at the end");
            if let Some(u) = self.upload.take() {
                u.abort().await;
            }
        }
    }
}

fn write_error(e: WriteError<upstream::Error>) -> Error {
    match e {
        WriteError::Body(e) => Error::Upstream(e),
        e @ WriteError::TooLong { .. } => Error::Invalid(e.to_string()),
        e @ WriteError::Short { .. } => {
            Error::Upstream(upstream::Error::Unavailable(e.to_string()))
        }
        WriteError::Mismatch { expected, actual } => Error::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        },
        WriteError::Io(e) => Error::spool(e),
    }
}

//! Spool files: one writer downloads a blob into a local file, hashing as it goes, and publishes
//! how many bytes are on disk; any number of readers tail the file from their own offsets.
//!
//! Memory does not grow with blob size or reader count, and a reader that goes away affects
//! nobody. [`Spool::wait_readable`] is the one place that decides what a reader of an unfinished
//! spool may see: never the blob's last byte before the digest is verified, and an error (never
//! a clean end) when the writer fails.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::ByteStream;
use crate::oci::{Digest, Hasher};

/// How a spool stands, as readers see it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpoolState {
    /// Total size once known: announced by the upstream, or counted when the body ended.
    size: Option<u64>,
    /// Bytes written so far.
    written: u64,
    /// Set when the writer is done.
    end: Option<End>,
}

#[derive(Debug, Clone)]
enum End {
    /// The digest matched: every byte may be sent.
    Verified,
    /// The fill failed: every reader's stream ends with this error.
    Failed(Arc<str>),
}

/// A spool file being written (or just finished), as its readers hold it.
pub(crate) struct Spool {
    file: Arc<File>,
    state: watch::Receiver<SpoolState>,
}

impl Spool {
    /// The open file (it stays readable after it was moved into storage).
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The blob's size, once known.
    pub(crate) fn size(&self) -> Option<u64> {
        self.state.borrow().size
    }

    /// Bytes written so far and the total size once known (for the status page).
    pub(crate) fn received(&self) -> (u64, Option<u64>) {
        let s = self.state.borrow();
        (s.written, s.size)
    }

    /// A receiver of this spool's progress, for [`Spool::wait_readable`].
    pub(crate) fn progress(&self) -> watch::Receiver<SpoolState> {
        self.state.clone()
    }

    /// Wait until bytes after `pos` (up to `end`, None: the end of the blob) may be sent, and
    /// return the offset they may be sent up to (exclusive), or None when the read is complete.
    pub(crate) async fn wait_readable(
        rx: &mut watch::Receiver<SpoolState>,
        pos: u64,
        end: Option<u64>,
    ) -> std::io::Result<Option<u64>> {
        loop {
            let s = rx.borrow_and_update().clone();
            let verified = matches!(s.end, Some(End::Verified));
            if let Some(End::Failed(e)) = &s.end {
                return Err(std::io::Error::other(format!("blob fill failed: {e}")));
            }
            let total = s.size.unwrap_or(u64::MAX);
            let stop = end.unwrap_or(total).min(total);
            // Whether this read includes the blob's last byte: then it must not end before
            // the digest is verified.
            let includes_last = stop >= total || (end.is_none() && s.size.is_none());
            if verified && pos >= s.written.min(stop) {
                return Ok(None);
            }
            if pos >= stop && !includes_last {
                return Ok(None);
            }
            let mut readable = s.written.min(stop);
            if !verified && includes_last && readable >= total {
                readable = total.saturating_sub(1);
            }
            if readable > pos {
                return Ok(Some(readable));
            }
            if rx.changed().await.is_err() {
                return Err(std::io::Error::other("fill ended without an outcome"));
            }
        }
    }

    /// Stream bytes `start..end` (end = None: to the end of the blob) as they arrive.
    pub(crate) fn reader(&self, start: u64, end: Option<u64>) -> ByteStream {
        let file = Some(self.file.clone());
        let rx = self.state.clone();
        futures::stream::unfold((rx, file, start), move |(mut rx, file, pos)| async move {
            let file = file?;
            let readable = match Spool::wait_readable(&mut rx, pos, end).await {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), (rx, None, pos))),
            };
            let len = (readable - pos).min(CHUNK as u64) as usize;
            match super::read_chunk(file.clone(), pos, len).await {
                Ok(b) if b.is_empty() => Some((
                    Err(std::io::Error::other("spool file shorter than announced")),
                    (rx, None, pos),
                )),
                Ok(b) => {
                    let n = b.len() as u64;
                    Some((Ok(b), (rx, Some(file), pos + n)))
                }
                Err(e) => Some((Err(e), (rx, None, pos))),
            }
        })
        .boxed()
    }
}

/// Size of one read from a spool file.
const CHUNK: usize = 128 * 1024;

/// Why writing a spool failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError<E> {
    /// The body stream failed.
    #[error("reading blob: {0}")]
    Body(E),
    /// The upstream sent more than it announced.
    #[error("upstream sent more than the announced {announced} bytes")]
    TooLong { announced: u64 },
    /// The body ended before the announced size.
    #[error("upstream closed after {received} of {announced} bytes")]
    Short { received: u64, announced: u64 },
    /// The bytes do not hash to the digest they were fetched as.
    #[error("digest mismatch: expected {expected}, upstream sent {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    /// Writing the local file failed (a full disk is `ErrorKind::StorageFull`).
    #[error("writing spool file: {0}")]
    Io(#[source] std::io::Error),
}

/// The writer half of a spool, held by the task that downloads.
pub(crate) struct SpoolWriter {
    tx: Arc<watch::Sender<SpoolState>>,
    file: Arc<File>,
    /// The spool's path until it was handed over ([`SpoolWriter::verified`]) or removed.
    path: Option<PathBuf>,
}

impl SpoolWriter {
    /// Create a spool file in `dir` for a blob of `size` bytes (when announced).
    pub(crate) fn create(dir: &Path, size: Option<u64>) -> std::io::Result<(SpoolWriter, Spool)> {
        let path = dir.join(super::temp_name("fill"));
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)?,
        );
        let (tx, rx) = watch::channel(SpoolState {
            size,
            ..Default::default()
        });
        let spool = Spool {
            file: file.clone(),
            state: rx,
        };
        let writer = SpoolWriter {
            tx: Arc::new(tx),
            file,
            path: Some(path),
        };
        Ok((writer, spool))
    }

    /// The blob's size: announced, or counted once the body ended.
    pub(crate) fn size(&self) -> Option<u64> {
        self.tx.borrow().size
    }

    /// The spool file's path (until it is removed).
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Copy `body` into the spool, checking its length against the announced size and its
    /// bytes against `digest`.
    ///
    /// Receiving, writing and hashing overlap: a blocking thread writes each batch and publishes
    /// progress to readers while another hashes it. Readers never wait for the hash, except for
    /// the blob's last byte.
    pub(crate) async fn write<S, E>(
        &mut self,
        body: S,
        digest: &Digest,
    ) -> Result<(), WriteError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let size = self.tx.borrow().size;
        let mut hasher = Hasher::new(digest.algorithm());
        let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE * 4);
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(chunks) = hash_rx.blocking_recv() {
                for c in &chunks {
                    hasher.update(c);
                }
            }
            hasher
        });
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel::<(u64, Vec<Bytes>)>(WRITE_QUEUE);
        let (progress, file) = (self.tx.clone(), self.file.clone());
        let mut reserved = Preallocation { size, until: 0 };
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            while let Some((offset, chunks)) = batch_rx.blocking_recv() {
                let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                reserved.cover(&file, offset + len);
                let end = write_chunks(&file, offset, &chunks)?;
                progress.send_modify(|s| s.written = end);
            }
            Ok(())
        });
        let mut received: u64 = 0;
        // Take every chunk that is already there in one go: one write call per batch.
        let mut batches = body.ready_chunks(16);
        let mut failure = None;
        while let Some(batch) = batches.next().await {
            let offset = received;
            let mut chunks = Vec::with_capacity(batch.len());
            for item in batch {
                match item {
                    Ok(chunk) => {
                        received += chunk.len() as u64;
                        chunks.push(chunk);
                    }
                    Err(e) => {
                        failure = Some(WriteError::Body(e));
                        break;
                    }
                }
            }
            if let Some(s) = size.filter(|s| received > *s) {
                failure = Some(WriteError::TooLong { announced: s });
            }
            if failure.is_some() {
                break;
            }
            let hash_input = chunks.clone(); // reference-counted: no byte copy
            if batch_tx.send((offset, chunks)).await.is_err() {
                break; // the writer failed; its error is collected below
            }
            if hash_tx.send(hash_input).await.is_err() {
                break;
            }
        }
        drop(batch_tx);
        drop(hash_tx);
        let hasher = hashing.await.map_err(|e| WriteError::Io(e.into()))?;
        let written = writer.await.map_err(|e| WriteError::Io(e.into()))?;
        if let Some(f) = failure {
            return Err(f);
        }
        written.map_err(WriteError::Io)?;
        if let Some(s) = size {
            if received != s {
                return Err(WriteError::Short {
                    received,
                    announced: s,
                });
            }
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(WriteError::Mismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if size.is_none() {
            self.tx.send_modify(|s| s.size = Some(received));
        }
        Ok(())
    }

    /// The spool was verified and handed to storage: readers may now see every byte. The file
    /// is no longer the writer's to remove.
    pub(crate) fn verified(mut self) {
        self.path = None;
        self.tx.send_modify(|s| s.end = Some(End::Verified));
    }

    /// End the spool with an error: every reader fails with `reason`; the file is removed.
    pub(crate) fn fail(mut self, reason: &str) {
        self.end_failed(reason);
    }

    fn end_failed(&mut self, reason: &str) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
        let reason: Arc<str> = reason.into();
        self.tx.send_modify(|s| s.end = Some(End::Failed(reason)));
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // A writer dropped without an end (panic, cancelled task, timeout) fails the spool.
        if self.tx.borrow().end.is_none() {
            self.end_failed("blob fill abandoned");
        }
    }
}

/// Write `chunks` at `offset`; returns the offset after them.
fn write_chunks(f: &File, mut offset: u64, chunks: &[Bytes]) -> std::io::Result<u64> {
    for c in chunks {
        f.write_all_at(c, offset)?;
        offset += c.len() as u64;
    }
    Ok(offset)
}

/// Batches queued between the receiving task and the spool writer (bounds memory per fill).
const WRITE_QUEUE: usize = 2;

/// Disk space reserved ahead of a spool's writes, when the upstream announced the blob's size.
///
/// With the blocks reserved, the file system allocates them in large extents once per window
/// instead of page by page as the writes arrive (measured: ext4's per-page delayed allocation was
/// a third of a cold fill's write cost). The reservation runs at most one window ahead of the
/// bytes actually received, so an upstream that announces a huge size and sends little cannot hold
/// more disk than it has sent plus a window. Best effort: where the file system refuses, writes
/// allocate as usual (and a full disk still fails them).
struct Preallocation {
    size: Option<u64>,
    /// Offsets below this are reserved.
    until: u64,
}

/// How far ahead of the received bytes disk is reserved.
const PREALLOCATION_WINDOW: u64 = 64 << 20;

impl Preallocation {
    /// Make sure offsets below `end` are reserved, a window at a time.
    fn cover(&mut self, file: &File, end: u64) {
        let Some(size) = self.size else {
            return;
        };
        if end <= self.until || self.until >= size {
            return;
        }
        let next = end.max(self.until + PREALLOCATION_WINDOW).min(size);
        crate::sys::reserve(file, self.until, next - self.until);
        self.until = next;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn preallocation_stays_one_window_ahead_of_the_writes_and_never_passes_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dir.path().join("spool"))
            .unwrap();
        // An upstream that announces 10 TB and sends one byte reserves one window, not 10 TB.
        let mut huge = Preallocation {
            size: Some(10 << 40),
            until: 0,
        };
        huge.cover(&file, 1);
        assert_eq!(huge.until, PREALLOCATION_WINDOW);

        let size = 2 * PREALLOCATION_WINDOW + 5;
        let mut p = Preallocation {
            size: Some(size),
            until: PREALLOCATION_WINDOW,
        };
        p.cover(&file, PREALLOCATION_WINDOW);
        assert_eq!(p.until, PREALLOCATION_WINDOW, "already covered");
        p.cover(&file, PREALLOCATION_WINDOW + 1);
        assert_eq!(p.until, 2 * PREALLOCATION_WINDOW);
        p.cover(&file, 2 * PREALLOCATION_WINDOW + 1);
        assert_eq!(p.until, size, "the last window stops at the announced size");
        p.cover(&file, size + 100);
        assert_eq!(p.until, size, "never past the announced size");

        // The blocks are reserved; the length stays the writes' business.
        let m = file.metadata().unwrap();
        assert_eq!(m.len(), 0);
        assert!(
            m.blocks() * 512 >= size,
            "{} bytes reserved for {size}",
            m.blocks() * 512
        );

        let mut unknown = Preallocation {
            size: None,
            until: 0,
        };
        unknown.cover(&file, 10);
        assert_eq!(unknown.until, 0, "no size announced: nothing reserved");
    }
}

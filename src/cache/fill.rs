//! Blob fills: one upstream download per digest, streamed to every client while it is written.
//!
//! A fill downloads a blob into a local spool file, hashing as it goes, and publishes how many
//! bytes are on disk through a watch channel. Any number of readers tail the spool file from their
//! own offsets, so memory does not grow with blob size or reader count, and a reader that goes away
//! affects nobody. The fill runs in its own task: it finishes (or times out) even when every client
//! has disconnected. Only after the digest matches is the spool handed to storage.
//!
//! Readers never deliver the final byte of a blob before the digest is verified, and a failed fill
//! ends every reader's stream with an error, so no client sees a clean end of wrong or short bytes.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::Error;
use crate::oci::{Digest, Hasher};
use crate::storage::ByteStream;
use crate::upstream;

/// How a fill stands, as readers see it.
#[derive(Debug, Clone, Default)]
pub struct FillState {
    /// Total size once the upstream said it (Content-Length).
    pub size: Option<u64>,
    /// The upstream answered and the spool file exists.
    pub started: bool,
    /// Bytes written to the spool so far.
    pub written: u64,
    /// Set when the fill ends: Ok when verified and committed.
    pub outcome: Option<Result<(), super::Error>>,
}

/// One in-flight download.
pub struct Fill {
    pub digest: Digest,
    state: watch::Receiver<FillState>,
    spool: Mutex<Option<Arc<File>>>,
}

impl Fill {
    pub fn state(&self) -> FillState {
        self.state.borrow().clone()
    }

    /// Wait until the upstream has answered (or the fill failed) and return the state then.
    pub async fn wait_started(&self) -> FillState {
        let mut rx = self.state.clone();
        loop {
            let s = rx.borrow_and_update().clone();
            if s.started || s.outcome.is_some() {
                return s;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }

    /// The spool file, once the upstream has answered.
    pub fn spool(&self) -> Option<Arc<File>> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A receiver of this fill's progress, for [`Fill::wait_readable`].
    pub fn progress(&self) -> watch::Receiver<FillState> {
        self.state.clone()
    }

    /// Wait until bytes after `pos` (up to `end`, None: the end of the blob) may be sent, and
    /// return the offset they may be sent up to (exclusive), or None when the read is complete.
    ///
    /// This is the one place that decides what a reader of an unfinished fill may see: the blob's
    /// last byte only after the digest is verified, and an error (never a clean end) when the fill
    /// fails.
    pub async fn wait_readable(
        rx: &mut watch::Receiver<FillState>,
        pos: u64,
        end: Option<u64>,
    ) -> std::io::Result<Option<u64>> {
        loop {
            let s = rx.borrow_and_update().clone();
            let verified = matches!(s.outcome, Some(Ok(())));
            if let Some(Err(e)) = &s.outcome {
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
    pub fn reader(self: &Arc<Self>, start: u64, end: Option<u64>) -> ByteStream {
        let file = self.spool();
        let rx = self.state.clone();
        futures::stream::unfold((rx, file, start), move |(mut rx, file, pos)| async move {
            let file = file?;
            let readable = match Fill::wait_readable(&mut rx, pos, end).await {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), (rx, None, pos))),
            };
            let len = (readable - pos).min(CHUNK as u64) as usize;
            match crate::storage::fs::read_chunk(file.clone(), pos, len).await {
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

/// The writer half of a fill, held by the task that downloads.
pub struct FillWriter {
    tx: Arc<watch::Sender<FillState>>,
    fill: Arc<Fill>,
    path: Option<PathBuf>,
}

impl FillWriter {
    /// The upstream answered with this size: create the spool file and let readers in.
    pub fn start(
        &mut self,
        spool_dir: &std::path::Path,
        size: Option<u64>,
    ) -> std::io::Result<Arc<File>> {
        let path = spool_dir.join(crate::storage::fs::temp_name("fill"));
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)?,
        );
        self.path = Some(path);
        *self.fill.spool.lock().unwrap_or_else(|p| p.into_inner()) = Some(file.clone());
        self.tx.send_modify(|s| {
            s.size = size;
            s.started = true;
        });
        Ok(file)
    }

    /// Copy `body` into the spool, verifying length and digest. Returns the spool path on success.
    ///
    /// Hashing and writing run in parallel: this task hashes each batch while a blocking thread
    /// writes the previous one and publishes progress to readers. Readers never wait for the
    /// hash, except for the blob's last byte.
    pub async fn write_body<S>(
        &mut self,
        file: Arc<File>,
        body: S,
        size: Option<u64>,
    ) -> Result<PathBuf, Error>
    where
        S: Stream<Item = Result<Bytes, String>> + Unpin,
    {
        // Hashing runs on its own thread too: receiving, writing and hashing overlap.
        let mut hasher = Hasher::new(self.fill.digest.algorithm());
        let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE * 4);
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(chunks) = hash_rx.blocking_recv() {
                for c in &chunks {
                    hasher.update(c);
                }
            }
            hasher
        });
        let mut received: u64 = 0;
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel::<(u64, Vec<Bytes>)>(WRITE_QUEUE);
        let progress = self.tx.clone();
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
                        failure = Some(Error::Upstream(upstream::Error::Unavailable(format!(
                            "reading blob: {e}"
                        ))));
                        break;
                    }
                }
            }
            if let Some(s) = size.filter(|s| received > *s) {
                failure = Some(Error::Invalid(format!(
                    "upstream sent more than the announced {s} bytes"
                )));
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
        let hasher = hashing.await.map_err(|e| Error::Storage(e.to_string()))?;
        let written = writer.await.map_err(|e| Error::Storage(e.to_string()))?;
        if let Some(f) = failure {
            return Err(f);
        }
        written.map_err(|e| Error::Storage(format!("writing spool file: {e}")))?;
        if let Some(s) = size {
            if received != s {
                return Err(Error::Upstream(upstream::Error::Unavailable(format!(
                    "upstream closed after {received} of {s} bytes"
                ))));
            }
        }
        let actual = hasher.finish();
        if actual != self.fill.digest {
            return Err(Error::DigestMismatch {
                expected: self.fill.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.fill.state().size.is_none() {
            self.tx.send_modify(|s| s.size = Some(received));
        }
        self.path
            .clone()
            .ok_or_else(|| Error::Storage("spool file missing".into()))
    }

    /// End the fill. On failure the spool file is removed.
    pub fn finish(mut self, outcome: Result<(), Error>) {
        if outcome.is_err() {
            if let Some(p) = self.path.take() {
                let _ = std::fs::remove_file(p);
            }
        }
        self.tx.send_modify(|s| s.outcome = Some(outcome));
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        // A writer dropped without finish() (panic, cancelled task, timeout) fails the fill.
        if self.tx.borrow().outcome.is_none() {
            if let Some(p) = self.path.take() {
                let _ = std::fs::remove_file(p);
            }
            self.tx.send_modify(|s| {
                s.outcome = Some(Err(Error::Invalid("blob fill abandoned".into())))
            });
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
        use std::os::fd::AsRawFd;
        let Some(size) = self.size else {
            return;
        };
        if end <= self.until || self.until >= size {
            return;
        }
        let next = end.max(self.until + PREALLOCATION_WINDOW).min(size);
        let (Ok(offset), Ok(len)) = (
            libc::off_t::try_from(self.until),
            libc::off_t::try_from(next - self.until),
        ) else {
            return;
        };
        // SAFETY: the fd is open while `file` is borrowed; fallocate only reserves blocks, and
        // FALLOC_FL_KEEP_SIZE leaves the file's length to the writes.
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
        self.until = next;
    }
}

/// Batches queued between the hashing task and the spool writer (bounds memory per fill).
const WRITE_QUEUE: usize = 2;

/// The in-flight fills of one cache, by digest: the single-flight table.
#[derive(Default)]
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
}

/// What [`Fills::join_or_start`] handed out.
pub enum Joined {
    /// Another request is already downloading this digest.
    Existing(Arc<Fill>),
    /// The caller must run the fill with this writer.
    New(Arc<Fill>, FillWriter),
}

impl Fills {
    pub fn join_or_start(&self, digest: &Digest) -> Joined {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(digest) {
            if f.state().outcome.is_none() {
                return Joined::Existing(f.clone());
            }
        }
        let (tx, rx) = watch::channel(FillState::default());
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            state: rx,
            spool: Mutex::new(None),
        });
        map.insert(digest.clone(), fill.clone());
        Joined::New(
            fill.clone(),
            FillWriter {
                tx: Arc::new(tx),
                fill,
                path: None,
            },
        )
    }

    /// The in-flight fill for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        let map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest)
            .filter(|f| f.state().outcome.is_none())
            .cloned()
    }

    /// Forget `fill` once it has ended (only if it is still the registered one).
    pub fn remove(&self, fill: &Arc<Fill>) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&fill.digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(&fill.digest);
        }
    }

    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

//! File regions: a blob body that is a byte range of a local file, so that the HTTP/1.1 front can
//! hand it to the kernel (`sendfile(2)`) instead of copying it through user space.
//!
//! A region is either a committed blob (all bytes are there) or a spool still being written;
//! then [`FileRegion::ready`] waits for bytes through [`Spool::wait_readable`], the same rule the
//! streaming reader follows (no last byte before the digest is verified). A region holds whatever
//! guard its maker gave it (the cache's "being read" mark, so eviction leaves the blob alone)
//! until it is dropped.

use std::any::Any;
use std::fs::File;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;

use super::spool::{Spool, SpoolState};
use super::ByteStream;

/// Something kept alive as long as a region (or the stream made from it) is.
type Keep = Box<dyn Any + Send + Sync>;

/// Bytes `pos..end` of a local file.
pub(crate) struct FileRegion {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// Some while the file is a spool still being written.
    spool: Option<(Arc<Spool>, watch::Receiver<SpoolState>)>,
    _keep: Option<Keep>,
}

impl FileRegion {
    /// A range of a complete (verified) file; `keep` lives as long as the region.
    pub(crate) fn committed(file: Arc<File>, range: std::ops::Range<u64>, keep: Keep) -> Self {
        FileRegion {
            file,
            pos: range.start,
            end: range.end,
            spool: None,
            _keep: Some(keep),
        }
    }

    /// A range of a spool; bytes become sendable as the writer writes and verifies them.
    pub(crate) fn filling(spool: Arc<Spool>, range: std::ops::Range<u64>) -> Self {
        let rx = spool.progress();
        FileRegion {
            file: spool.file().clone(),
            pos: range.start,
            end: range.end,
            spool: Some((spool, rx)),
            _keep: None,
        }
    }

    /// The file the bytes are in.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Whether the file is a spool still being written.
    pub(crate) fn is_filling(&self) -> bool {
        self.spool.is_some()
    }

    /// The next offset to send.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes left to send.
    pub(crate) fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Wait until bytes from [`FileRegion::pos`] may be sent; returns how many (0: all sent).
    /// Fails when the spool behind the region fails: the answer must then end with an error.
    pub(crate) async fn ready(&mut self) -> std::io::Result<u64> {
        if self.pos >= self.end {
            return Ok(0);
        }
        match &mut self.spool {
            None => Ok(self.end - self.pos),
            Some((_, rx)) => {
                // The region's end is the blob's size or the end of a range inside it.
                match Spool::wait_readable(rx, self.pos, Some(self.end)).await? {
                    Some(upto) => Ok(upto.min(self.end) - self.pos),
                    None => Err(std::io::Error::other(
                        "blob fill ended before the announced length",
                    )),
                }
            }
        }
    }

    /// Record that `n` bytes from [`FileRegion::pos`] were sent.
    pub(crate) fn advance(&mut self, n: u64) {
        self.pos = (self.pos + n).min(self.end);
    }

    /// The same bytes as a stream of buffers, for connections that cannot use `sendfile` (HTTP/2).
    pub(crate) fn into_stream(self) -> ByteStream {
        let keep = self._keep;
        let stream = match self.spool {
            Some((spool, _)) => spool.reader(self.pos, Some(self.end)),
            None => super::positional_stream(self.file, self.pos, self.end),
        };
        stream
            .map(move |item| {
                let _keep = &keep;
                item
            })
            .boxed()
    }
}

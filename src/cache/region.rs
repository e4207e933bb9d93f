//! File regions: a blob body that is a byte range of a local file, so that the HTTP/1.1 front can
//! hand it to the kernel (`sendfile(2)`) instead of copying it through user space.
//!
//! A region is either a committed blob (all bytes are there) or the spool file of a fill still
//! being written; then [`FileRegion::ready`] waits for bytes through [`Fill::wait_readable`], the
//! same rule the streaming reader follows (no last byte before the digest is verified). A region
//! keeps its blob marked as being read, so eviction leaves it alone, until it is dropped.

use std::fs::File;
use std::sync::Arc;

use tokio::sync::watch;

use super::evict::ReaderGuard;
use super::fill::{Fill, FillState};
use crate::storage::ByteStream;

/// Bytes `pos..end` of a local file.
pub struct FileRegion {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// Some while the file is the spool of an unfinished fill.
    fill: Option<(Arc<Fill>, watch::Receiver<FillState>)>,
    _reading: Option<ReaderGuard>,
}

impl FileRegion {
    /// A range of a committed (verified) blob file.
    pub(super) fn committed(
        file: Arc<File>,
        range: std::ops::Range<u64>,
        reading: ReaderGuard,
    ) -> Self {
        FileRegion {
            file,
            pos: range.start,
            end: range.end,
            fill: None,
            _reading: Some(reading),
        }
    }

    /// A range of a fill's spool file; bytes become sendable as the fill writes and verifies them.
    pub(super) fn filling(fill: Arc<Fill>, file: Arc<File>, range: std::ops::Range<u64>) -> Self {
        let rx = fill.progress();
        FileRegion {
            file,
            pos: range.start,
            end: range.end,
            fill: Some((fill, rx)),
            _reading: None,
        }
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Whether the file is the spool of a fill still being written.
    pub fn is_filling(&self) -> bool {
        self.fill.is_some()
    }

    /// The next offset to send.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes left to send.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Wait until bytes from [`FileRegion::pos`] may be sent; returns how many (0: all sent).
    /// Fails when the fill behind the region fails: the answer must then end with an error.
    pub async fn ready(&mut self) -> std::io::Result<u64> {
        if self.pos >= self.end {
            return Ok(0);
        }
        match &mut self.fill {
            None => Ok(self.end - self.pos),
            Some((_, rx)) => {
                // The region's end is the blob's size or the end of a range inside it.
                match Fill::wait_readable(rx, self.pos, Some(self.end)).await? {
                    Some(upto) => Ok(upto.min(self.end) - self.pos),
                    None => Err(std::io::Error::other(
                        "blob fill ended before the announced length",
                    )),
                }
            }
        }
    }

    /// Record that `n` bytes from [`FileRegion::pos`] were sent.
    pub fn advance(&mut self, n: u64) {
        self.pos = (self.pos + n).min(self.end);
    }

    /// The same bytes as a stream of buffers, for connections that cannot use `sendfile` (HTTP/2).
    pub fn into_stream(self) -> ByteStream {
        use futures::StreamExt;
        match self.fill {
            Some((fill, _)) => {
                let (start, end) = (self.pos, self.end);
                let reading = self._reading;
                fill.reader(start, Some(end))
                    .map(move |item| {
                        let _keep = &reading;
                        item
                    })
                    .boxed()
            }
            None => {
                let reading = self._reading;
                crate::storage::fs::positional_stream(self.file, self.pos, self.end)
                    .map(move |item| {
                        let _keep = &reading;
                        item
                    })
                    .boxed()
            }
        }
    }
}

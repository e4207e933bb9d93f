//! Staging: the local files a blob passes through on its way into storage, and the reads that
//! serve them.
//!
//! Owns: spool files (one per fill, written once, tailed by any number of readers, verified
//! before their last byte may leave), file regions (a byte range of a local file that the HTTP/1.1
//! front sends with `sendfile(2)`), and reads of local files that are served from the page cache
//! in place when they can be (the local-disk storage backend reads its files with them too).
//! Usable in front of any storage backend: a verified spool is handed to the backend's
//! `put_file`. Must not call the cache, storage or upstreams.

mod region;
mod spool;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

pub(crate) use region::FileRegion;
pub(crate) use spool::{Spool, SpoolWriter, WriteError};

/// A stream of a file's (or an object's) bytes.
pub(crate) type ByteStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// Read buffer for streaming files out: large enough to keep syscalls rare, small enough that
/// many concurrent readers stay cheap.
const READ_CHUNK: usize = 128 * 1024;

/// A unique temporary file name.
pub(crate) fn temp_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Stream `start..end` of a file with positional reads: one copy from the page cache into a
/// fresh buffer that is handed to the socket writer as is.
pub(crate) fn positional_stream(file: Arc<std::fs::File>, start: u64, end: u64) -> ByteStream {
    futures::stream::try_unfold(start, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(READ_CHUNK as u64) as usize;
            let buf = read_chunk(file, pos, len).await?;
            if buf.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shorter than expected",
                ));
            }
            let next = pos + buf.len() as u64;
            Ok(Some((buf, next)))
        }
    })
    .boxed()
}

/// Read up to `len` bytes at `pos`. Served from the page cache in place when the data is there
/// (a read that never blocks); otherwise the read goes to the blocking pool, so a cold disk never
/// stalls the async workers.
pub(crate) async fn read_chunk(
    file: Arc<std::fs::File>,
    pos: u64,
    len: usize,
) -> std::io::Result<Bytes> {
    let mut buf = bytes::BytesMut::with_capacity(len);
    if let Some(n) = crate::sys::read_nowait(&file, &mut buf, pos, len) {
        return Ok(buf.split_to(n).freeze());
    }
    tokio::task::spawn_blocking(move || {
        buf.resize(len, 0);
        let n = file.read_at(&mut buf, pos)?;
        buf.truncate(n);
        Ok(buf.freeze())
    })
    .await
    .map_err(std::io::Error::other)?
}

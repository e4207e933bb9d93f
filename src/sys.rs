//! The operating-system calls that no crate wraps the way a mirror needs them: non-blocking
//! page-cache reads, page-cache probes, `readahead`, `sendfile`, `TCP_CORK`, disk reservation and
//! allocator tuning.
//!
//! Owns: every `unsafe` block and every `libc` call of the crate, each with its SAFETY argument.
//! Linux-only calls have a portable fallback that reports "not done" (callers then take the slow
//! path), so the rest of the crate has no `cfg(target_os)`. Must not know anything about caching.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Read up to `len` bytes at `pos` into `buf`'s spare capacity only if that does not wait for
/// the disk (`preadv2` with `RWF_NOWAIT`): Some(n) when at least the first byte was in the page
/// cache (a short read is fine: the caller asks again), None otherwise (not cached, end of file,
/// or an error: a blocking read tells them apart).
#[cfg(target_os = "linux")]
pub(crate) fn read_nowait(
    file: &File,
    buf: &mut bytes::BytesMut,
    pos: u64,
    len: usize,
) -> Option<usize> {
    let spare = buf.spare_capacity_mut();
    let len = len.min(spare.len());
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off_t::try_from(pos).ok()?;
    // SAFETY: `iov` describes `len` bytes of `buf`'s spare capacity, writable for the whole call;
    // the kernel only writes into it. The fd stays open while `file` is borrowed.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n <= 0 {
        return None;
    }
    // SAFETY: the kernel initialised the first `n` (<= len <= capacity) bytes.
    unsafe { buf.set_len(n as usize) };
    Some(n as usize)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read_nowait(
    _file: &File,
    _buf: &mut bytes::BytesMut,
    _pos: u64,
    _len: usize,
) -> Option<usize> {
    None
}

/// Whether the byte at `at` is in the page cache (a one-byte `RWF_NOWAIT` read succeeds).
#[cfg(target_os = "linux")]
pub(crate) fn byte_cached(file: &File, at: u64) -> bool {
    let mut byte = [0u8; 1];
    let iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let Ok(offset) = libc::off_t::try_from(at) else {
        return false;
    };
    // SAFETY: `iov` describes the one-byte local buffer, writable for the call; the fd is open
    // while `file` is borrowed.
    unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) == 1 }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn byte_cached(_file: &File, _at: u64) -> bool {
    false
}

/// Read `pos..pos+count` of `file` into the page cache, waiting for the disk (blocking).
#[cfg(target_os = "linux")]
pub(crate) fn readahead(file: &File, pos: u64, count: usize) -> io::Result<()> {
    let offset = libc::off64_t::try_from(pos).map_err(io::Error::other)?;
    // SAFETY: the fd is open while `file` is borrowed; readahead only fills the page cache.
    if unsafe { libc::readahead(file.as_raw_fd(), offset, count) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn readahead(_file: &File, _pos: u64, _count: usize) -> io::Result<()> {
    Ok(())
}

/// Send `count` bytes of `file` from `pos` to `socket` inside the kernel; returns the bytes sent.
/// A non-blocking socket that is full fails with `WouldBlock`.
#[cfg(target_os = "linux")]
pub(crate) fn sendfile(
    socket: &impl AsRawFd,
    file: &File,
    pos: u64,
    count: usize,
) -> io::Result<usize> {
    let mut offset = libc::off_t::try_from(pos).map_err(io::Error::other)?;
    // SAFETY: both fds are open for the whole call (the socket and the file are borrowed);
    // `offset` is a valid, exclusively borrowed off_t.
    let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut offset, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn sendfile(
    _socket: &impl AsRawFd,
    _file: &File,
    _pos: u64,
    _count: usize,
) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "sendfile(2) is Linux-only here",
    ))
}

/// Set or clear `TCP_CORK` (best effort: an error only costs segment sizes).
#[cfg(target_os = "linux")]
pub(crate) fn set_cork(socket: &impl AsRawFd, on: bool) {
    let value: libc::c_int = on.into();
    // SAFETY: the fd is open while `socket` is borrowed; `value` is a c_int that outlives the call
    // and its size is passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn set_cork(_socket: &impl AsRawFd, _on: bool) {}

/// Reserve disk blocks for `offset..offset+len` of `file` without changing its length
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`). Best effort: false where the file system refuses.
#[cfg(target_os = "linux")]
pub(crate) fn reserve(file: &File, offset: u64, len: u64) -> bool {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: the fd is open while `file` is borrowed; fallocate only reserves blocks, and
    // FALLOC_FL_KEEP_SIZE leaves the file's length to the writes.
    unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) == 0 }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reserve(_file: &File, _offset: u64, _len: u64) -> bool {
    false
}

/// Tune glibc's allocator. glibc gives every thread that allocates its own arena, so memory freed
/// by one blocking thread is not reused by another and resident memory creeps up with the thread
/// count: two arenas keep the footprint flat (allocation is per chunk, not per byte, so contention
/// is low). A fixed mmap threshold keeps the 128 KiB read buffers in those arenas instead of a fresh
/// mmap and page faults per chunk. Up to 32 MiB of freed heap is kept instead of returned after
/// every burst: a cold fill frees and reallocates its receive buffers constantly, and trimming made
/// each round fault fresh pages in (measured: 12-15 % of a cold GET's CPU).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune_allocator() {}

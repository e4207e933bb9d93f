//! Storage: the one trait for committed cache objects, and its backends.
//!
//! Owns: where verified bytes live. Knows nothing of HTTP, upstreams or digests' meaning: a key is
//! a path-like string, an object is bytes. Must not call the cache or upstreams.
//!
//! Objects are only ever written whole: small ones with [`Storage::put`], blobs by handing over a
//! fully written and verified local spool file with [`Storage::put_file`], or (backends that can
//! stream a blob while it is filled, S3) through an [`Upload`] that is committed only after the
//! digest matched. A reader therefore never sees a partial object, whichever backend is used.
//!
//! # Key layout
//!
//! ```text
//! <root>/
//! ├── blobs/sha256/<hex[0..2]>/<hex>            layer and config bytes, content-addressed
//! ├── manifests/sha256/<hex[0..2]>/<hex>        "<media type>\n" followed by the manifest bytes
//! ├── tags/<upstream>/<repository>/
//! │   ├── _tag/<tag>                             JSON tag record: digest, media type, size
//! │   └── _list                                  the last whole tags list (served during outages)
//! └── links/<upstream>/<repository>/             the repository holds these digests (their text):
//!     ├── _blobs/sha256/<hex>                    a blob is served under a repository only
//!     └── _manifests/sha256/<hex>                through its link (no cross-repository reads)
//! ```
//!
//! The local-disk backend also keeps `<root>/tmp/` for spool files (see [`crate::staging`]).
//! The S3 backend keeps the same tree under `<bucket>/<prefix>`, plus `_uploads/<id>` records of
//! multipart uploads in progress (so abandoned ones can be aborted) and `_touch/` for a moment
//! while an access time is refreshed; locally, `<data_dir>/tmp/` for spools and
//! `<data_dir>/tier/` for the local tier (same tree as the bucket). See [`s3`].
//!
//! [`open`] is the one place a backend is chosen; nothing outside this module names one.

#[cfg(test)]
mod conformance;
mod fs;
mod s3;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// A storage failure. `NotFound` is distinct all the way up: the cache branches on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// No object under this key.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A key that could escape the store or is not in the key scheme.
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
    /// The backend failed on this key.
    #[error("storage I/O error on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// The object store cannot be reached or refused the request (network, credentials,
    /// server error): the object may well exist.
    #[error("object store unavailable ({key}): {source}")]
    Unavailable {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stored bytes of a content-addressed object do not match its digest (changed behind
    /// the mirror's back). The object has been deleted; the next read misses.
    #[error("stored object {key} is corrupt (content digest {actual}); it was removed")]
    Corrupt { key: String, actual: String },
}

impl Error {
    /// Whether the object store could not be reached (an outage, not a missing object).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Corrupt { .. })
    }

    /// Whether the failure is a full disk (or quota): eviction can make room.
    pub(crate) fn is_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Storage as the configuration names it, ready to use.
pub(crate) struct Opened {
    /// The store of committed objects.
    pub(crate) storage: Arc<dyn Storage>,
    /// A local directory for spool files, where [`Storage::put_file`] is cheapest (a rename).
    pub(crate) staging_dir: PathBuf,
    /// Temporary files a previous process left, removed while opening.
    pub(crate) cleaned: usize,
}

/// Who opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The server: it owns the temporary files, and removes those a crashed or killed process
    /// left behind.
    Server,
    /// A tool that may run beside a server (the cache CLI): it touches no temporary file.
    Tool,
}

/// Open (creating if needed) the store: files under `data_dir`, or the S3 bucket of `s3` (with
/// spool files and the local tier under `data_dir`).
pub(crate) async fn open(
    data_dir: &Path,
    s3: Option<&crate::config::S3Config>,
    role: Role,
) -> Result<Opened> {
    if let Some(cfg) = s3 {
        return s3::open(cfg, data_dir, role).await;
    }
    let fs = fs::FsStorage::open(data_dir).await?;
    let cleaned = match role {
        Role::Tool => 0,
        Role::Server => match fs.clean_tmp().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot clean temporary files");
                0
            }
        },
    };
    Ok(Opened {
        staging_dir: fs.tmp_dir(),
        storage: Arc::new(fs),
        cleaned,
    })
}

/// Size and age of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Seconds since the Unix epoch of the last write or [`Storage::touch`].
    pub modified: u64,
}

/// A stream of an object's bytes.
pub(crate) use crate::staging::ByteStream;

/// The storage boundary. Every method is atomic with respect to readers.
#[async_trait]
pub(crate) trait Storage: Send + Sync + 'static {
    /// Size and modification time, or `NotFound`.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    /// The whole object (for small objects: manifests, tag records).
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// A byte range of the object (the whole object when `range` is None), streamed.
    async fn get_stream(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream>;
    /// The object as an open local file and its size, when this backend keeps objects in local
    /// files (None otherwise, the default). Lets the HTTP/1.1 front send it with `sendfile(2)`.
    async fn open_file(&self, key: &str) -> Result<Option<(std::fs::File, u64)>> {
        let _ = key;
        Ok(None)
    }
    /// Store a small object, replacing any previous one atomically.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()>;
    /// Move a complete local file into the store under `key`. The file is consumed.
    async fn put_file(&self, key: &str, file: &Path) -> Result<()>;
    /// Record an access now (last-access time drives LRU eviction). Missing objects are ignored.
    async fn touch(&self, key: &str) -> Result<()>;
    /// Remove an object. Removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Start streaming a new object under `key` while its bytes arrive (`size` when known), for
    /// backends where that beats a [`Storage::put_file`] at the end. None (the default, local
    /// disk): the caller spools and calls `put_file`.
    async fn begin_upload(&self, key: &str, size: Option<u64>) -> Result<Option<Box<dyn Upload>>> {
        let _ = (key, size);
        Ok(None)
    }
    /// The name of this store when several processes may share it (an S3 bucket and prefix:
    /// `s3://bucket/prefix/`), so that they coordinate its eviction and a blob another replica
    /// is committing there need not be written again; None (the default) for a store only this
    /// process uses (a local data directory).
    fn shared_location(&self) -> Option<String> {
        None
    }
    /// A URL a client may fetch the object's bytes from directly (a presigned S3 URL) when this
    /// backend redirects objects of `size` bytes; None (the default) otherwise.
    async fn redirect_url(&self, key: &str, size: u64) -> Result<Option<String>> {
        let _ = (key, size);
        Ok(None)
    }
}

/// An object being written while its bytes arrive. Nothing is visible under its key until
/// [`Upload::commit`]; dropping it without commit leaves nothing visible either (the backend
/// aborts it, or cleans it up later).
#[async_trait]
pub(crate) trait Upload: Send {
    /// Append bytes. May wait for earlier bytes to be sent (bounded memory).
    async fn write(&mut self, bytes: Bytes) -> Result<()>;
    /// Make the object visible: every byte was written and verified. `local` is a complete local
    /// copy of the same bytes, which the backend consumes (keeps it as a local copy or removes it).
    async fn commit(self: Box<Self>, local: &Path) -> Result<()>;
    /// Give up: nothing becomes visible.
    async fn abort(self: Box<Self>);
}

/// A store in a fresh temporary directory (removed when the guard drops), for tests.
#[cfg(test)]
pub(crate) async fn temporary() -> (tempfile::TempDir, Opened) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opened = open(dir.path(), None, Role::Server)
        .await
        .expect("open the store");
    (dir, opened)
}

/// Reject keys that could escape the store: absolute, `..`, empty segments, odd characters.
/// Create `dir` and its parents; an error names `key` (the object it was for, or the dir).
pub(crate) async fn create_dir(dir: &std::path::Path, key: &str) -> Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| Error::Io {
            key: key.into(),
            source,
        })
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKey(key.chars().take(300).collect()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys() {
        for good in ["blobs/sha256/ab/abc", "tags/127.0.0.1:5000/a/b/_tag/v1.0"] {
            assert!(super::check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "a/./b",
            "a b",
            "a\\b",
            "..",
            "a/%2e%2e",
        ] {
            assert!(super::check_key(bad).is_err(), "{bad}");
        }
    }
}

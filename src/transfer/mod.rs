//! Air-gapped transport: cached images out to an OCI image layout tarball ([`export`]) and back
//! into a cache on the other side ([`import`]), every digest verified before anything is stored.
//!
//! Owns: the archive format (the OCI image layout: `oci-layout`, `index.json` naming each image by
//! its full reference in `org.opencontainers.image.ref.name` and `io.containerd.image.name`, and
//! `blobs/sha256/<hex>` for manifests, configs and layers, each once), optionally zstd-compressed.
//! Reads and writes the cache only through [`crate::cache::records`] and the storage trait; must
//! not call upstreams.

pub(crate) mod export;
pub(crate) mod import;

use crate::oci::{media, Digest};

/// An export or import failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// An image (or part of it) to export is not in the cache.
    #[error("{0} is not cached (run `regmirror prefetch` first)")]
    NotCached(String),
    /// A file of the archive does not hash to the digest it is named by.
    #[error("{path} in the archive does not match its digest {expected} (its bytes hash to {actual}); the archive is damaged or was altered, nothing was imported")]
    Tampered {
        path: String,
        expected: String,
        actual: String,
    },
    /// Something an image needs is missing from the archive.
    #[error("{0}; nothing was imported")]
    Missing(String),
    /// The archive is not an OCI image layout regmirror can import.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] crate::cache::Error),
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The annotation OCI tools name an image by.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd (`ctr import`) names an image by.
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn is_index(media_type: &str) -> bool {
    media_type == media::OCI_INDEX || media_type == media::DOCKER_LIST
}

/// What a manifest references: index entries (digest, descriptor) and blobs (digest, size).
type Refs = (Vec<(Digest, serde_json::Value)>, Vec<(Digest, u64)>);

/// Children of an index (digest, descriptor), or configs and layers of a manifest.
fn references(body: &[u8]) -> Refs {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (Vec::new(), Vec::new());
    };
    let children = v["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["digest"].as_str()?.parse().ok()?, e.clone())))
        .collect();
    let blobs = std::iter::once(&v["config"])
        .chain(v["layers"].as_array().into_iter().flatten())
        .filter_map(|e| Some((e["digest"].as_str()?.parse().ok()?, e["size"].as_u64()?)))
        .collect();
    (children, blobs)
}

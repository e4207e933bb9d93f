//! Records: the narrow interface through which tools outside the request path (prefetch, export,
//! import) read and write what the cache holds: manifests by digest, tag records, blob presence.
//!
//! The encodings stay owned by the cache (`encode_manifest`, [`TagRecord`]); callers see digests,
//! media types and bytes. [`put_manifest`] also writes the links of `(upstream, repository)` to
//! the manifest and to every manifest and blob it references (`cache/links.rs`: nothing is
//! served under a repository without one), so an imported image is served with no upstream.

use bytes::Bytes;

use super::links::Kind;
use super::tags::TagRecord;
use super::{decode_manifest, encode_manifest, keys, Result};
use crate::oci::Digest;
use crate::storage::{self, Storage};

/// A stored manifest: its media type and exact bytes, or None when it is not cached.
pub(crate) async fn manifest(storage: &dyn Storage, d: &Digest) -> Result<Option<(String, Bytes)>> {
    match storage.get(&keys::manifest(d)).await {
        Ok(raw) => Ok(decode_manifest(raw)),
        Err(storage::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a cached tag points to: (digest, media type), or None when the tag is not cached.
pub(crate) async fn tag(
    storage: &dyn Storage,
    upstream: &str,
    repo: &str,
    tag: &str,
) -> Result<Option<(Digest, String)>> {
    let raw = match storage.get(&keys::tag(upstream, repo, tag)).await {
        Ok(raw) => raw,
        Err(storage::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Ok(rec) = serde_json::from_slice::<TagRecord>(&raw) else {
        return Ok(None);
    };
    Ok(rec.digest.parse().ok().map(|d| (d, rec.media_type)))
}

/// The storage key of a blob (for `Storage::put_file`, `open_file`, `head`).
pub(crate) fn blob_key(d: &Digest) -> String {
    keys::blob(d)
}

/// Size of a cached blob, or None when it is not cached.
pub(crate) async fn blob_size(storage: &dyn Storage, d: &Digest) -> Result<Option<u64>> {
    match storage.head(&keys::blob(d)).await {
        Ok(m) => Ok(Some(m.size)),
        Err(storage::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `upstream`/`repo` holds the cached blob `d`: stored, and linked to that repository
/// (a blob cached for another repository is not served under this one until confirmed).
pub(crate) async fn blob_held(
    storage: &dyn Storage,
    (upstream, repo): (&str, &str),
    d: &Digest,
) -> Result<bool> {
    if blob_size(storage, d).await?.is_none() {
        return Ok(false);
    }
    match storage
        .head(&keys::link(Kind::Blob, upstream, repo, d))
        .await
    {
        Ok(_) => Ok(true),
        Err(storage::Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Store a verified manifest of `repo` (the caller checked `body` hashes to `d`).
/// Write it after the blobs and child manifests it references: its links follow it.
pub(crate) async fn put_manifest(
    storage: &dyn Storage,
    (upstream, repo): (&str, &str),
    d: &Digest,
    media_type: &str,
    body: &[u8],
) -> Result<()> {
    storage
        .put(&keys::manifest(d), encode_manifest(media_type, body))
        .await?;
    let mut links = vec![(Kind::Manifest, d.clone())];
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
        let digests = |field: &str| -> Vec<Digest> {
            let list = match &doc[field] {
                serde_json::Value::Array(a) => a.clone(),
                v @ serde_json::Value::Object(_) => vec![v.clone()],
                _ => Vec::new(),
            };
            list.iter()
                .filter_map(|x| x["digest"].as_str()?.parse().ok())
                .collect()
        };
        links.extend(
            digests("manifests")
                .into_iter()
                .map(|c| (Kind::Manifest, c)),
        );
        for field in ["config", "layers", "blobs"] {
            links.extend(digests(field).into_iter().map(|b| (Kind::Blob, b)));
        }
    }
    for (kind, target) in links {
        storage
            .put(
                &keys::link(kind, upstream, repo, &target),
                Bytes::from(target.to_string()),
            )
            .await?;
    }
    Ok(())
}

/// Point `upstream/repo:tag` at a stored manifest. Write it after everything it references.
pub(crate) async fn put_tag(
    storage: &dyn Storage,
    upstream: &str,
    repo: &str,
    tag: &str,
    d: &Digest,
    media_type: &str,
    size: u64,
) -> Result<()> {
    let rec = TagRecord::new(d, media_type, size);
    let json = serde_json::to_vec(&rec).map_err(|e| super::Error::Invalid(e.to_string()))?;
    storage
        .put(&keys::tag(upstream, repo, tag), Bytes::from(json))
        .await?;
    // A tags list kept for outages would not name the new tag: let the next list be fetched.
    storage.delete(&keys::tags_list(upstream, repo)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let (_dir, opened) = crate::storage::temporary().await;
        let s = opened.storage.as_ref();
        let body = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256_of(body);
        assert_eq!(manifest(s, &d).await.unwrap(), None);
        put_manifest(s, ("u", "r"), &d, "x/y", body).await.unwrap();
        put_tag(s, "u", "r/x", "v1", &d, "x/y", body.len() as u64)
            .await
            .unwrap();
        let (mt, got) = manifest(s, &d).await.unwrap().unwrap();
        assert_eq!((mt.as_str(), &got[..]), ("x/y", &body[..]));
        assert_eq!(
            tag(s, "u", "r/x", "v1").await.unwrap(),
            Some((d.clone(), "x/y".into()))
        );
        assert_eq!(tag(s, "u", "r/x", "v2").await.unwrap(), None);
        let images = super::super::inventory::images(s, "").await.unwrap();
        assert_eq!(images.len(), 1, "the inventory sees the tag");
        assert_eq!(blob_size(s, &d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_blob_is_held_only_by_the_repositories_a_manifest_links_it_to() {
        let (_dir, opened) = crate::storage::temporary().await;
        let s = opened.storage.as_ref();
        let layer = Bytes::from_static(b"layer bytes");
        let ld = Digest::sha256_of(&layer);
        s.put(&blob_key(&ld), layer.clone()).await.unwrap();
        assert!(
            !blob_held(s, ("u", "a"), &ld).await.unwrap(),
            "stored, but no repository holds it yet"
        );
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{ld}","size":11}},"layers":[{{"digest":"{ld}","size":11}}]}}"#
        );
        let md = Digest::sha256_of(body.as_bytes());
        put_manifest(s, ("u", "a"), &md, "x/y", body.as_bytes())
            .await
            .unwrap();
        assert!(blob_held(s, ("u", "a"), &ld).await.unwrap());
        assert!(
            !blob_held(s, ("u", "b"), &ld).await.unwrap(),
            "another repository of the same upstream does not"
        );
        assert!(
            !blob_held(s, ("v", "a"), &ld).await.unwrap(),
            "nor another upstream"
        );
        let missing = Digest::sha256_of(b"not stored");
        assert!(!blob_held(s, ("u", "a"), &missing).await.unwrap());
    }
}

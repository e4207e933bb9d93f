//! Inventory: what the cache holds, per upstream / repository / tag, and removal of images.
//!
//! Works on any [`Storage`] through the key layout alone, so `regmirror cache ...` can run on the
//! data directory while the server runs: every change is a whole-object delete, which readers that
//! already opened an object do not notice, and the server refetches what is gone.

use std::collections::{BTreeSet, HashSet};

use super::tags::TagRecord;
use super::{decode_manifest, keys, Result};
use crate::oci::Digest;
use crate::storage::{self, Storage};

/// One cached tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Image {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// Bytes of the manifests and blobs of this image that are in the cache.
    pub cached_bytes: u64,
    /// Seconds since the epoch of the last access of the top manifest (0 when it is gone).
    pub last_access: u64,
}

/// Every cached tag whose `upstream/repository:tag` starts with `filter` (empty: all).
pub(crate) async fn images(storage: &dyn Storage, filter: &str) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for meta in storage.list("tags/").await? {
        let Some((upstream, repository, tag)) = parse_tag_key(&meta.key) else {
            continue;
        };
        if !format!("{upstream}/{repository}:{tag}").starts_with(filter) {
            continue;
        }
        let Ok(raw) = storage.get(&meta.key).await else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<TagRecord>(&raw) else {
            continue;
        };
        let Ok(digest) = record.digest.parse::<Digest>() else {
            continue;
        };
        let last_access = storage
            .head(&keys::manifest(&digest))
            .await
            .map(|m| m.modified)
            .unwrap_or(0);
        let mut cached_bytes = 0;
        for key in closure(storage, &digest).await? {
            cached_bytes += storage.head(&key).await.map(|m| m.size).unwrap_or(0);
        }
        out.push(Image {
            upstream,
            repository,
            tag,
            digest: record.digest,
            media_type: record.media_type,
            cached_bytes,
            last_access,
        });
    }
    Ok(out)
}

/// `tags/<upstream>/<repo>/_tag/<tag>` -> (upstream, repo, tag).
pub(crate) fn parse_tag_key(key: &str) -> Option<(String, String, String)> {
    let rest = key.strip_prefix("tags/")?;
    let (path, tag) = rest.rsplit_once("/_tag/")?;
    let (upstream, repo) = path.split_once('/')?;
    Some((upstream.to_string(), repo.to_string(), tag.to_string()))
}

/// Storage keys of a manifest and everything it references that is stored (children of an
/// index, config and layers), the manifest's own key first.
pub(crate) async fn closure(storage: &dyn Storage, top: &Digest) -> Result<BTreeSet<String>> {
    let mut keys_found = BTreeSet::new();
    let mut pending = vec![top.clone()];
    let mut seen = HashSet::new();
    while let Some(d) = pending.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let mkey = keys::manifest(&d);
        match storage.get(&mkey).await {
            Ok(raw) => {
                keys_found.insert(mkey);
                let Some((_, body)) = decode_manifest(raw) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    continue;
                };
                for child in v["manifests"].as_array().into_iter().flatten() {
                    if let Some(cd) = child["digest"].as_str().and_then(|s| s.parse().ok()) {
                        pending.push(cd);
                    }
                }
                let blobs = std::iter::once(&v["config"])
                    .chain(v["layers"].as_array().into_iter().flatten());
                for b in blobs {
                    if let Some(bd) = b["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()) {
                        let bkey = keys::blob(&bd);
                        if storage.head(&bkey).await.is_ok() {
                            keys_found.insert(bkey);
                        }
                    }
                }
            }
            Err(storage::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(keys_found)
}

/// The platforms (`os/arch[/variant]`) of a cached image: its index's entries (attestations
/// left out), or the os and architecture of a single manifest's config. Empty when unknown.
pub(crate) async fn platforms(storage: &dyn Storage, top: &Digest) -> Vec<String> {
    let Ok(raw) = storage.get(&keys::manifest(top)).await else {
        return Vec::new();
    };
    let Some(v) = decode_manifest(raw)
        .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
    else {
        return Vec::new();
    };
    let name = |p: &serde_json::Value| -> Option<String> {
        let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
        if os == "unknown" {
            return None;
        }
        Some(match p["variant"].as_str() {
            Some(var) => format!("{os}/{arch}/{var}"),
            None => format!("{os}/{arch}"),
        })
    };
    if let Some(children) = v["manifests"].as_array() {
        let mut out: Vec<String> = children
            .iter()
            .filter_map(|c| name(&c["platform"]))
            .collect();
        out.dedup();
        return out;
    }
    let Some(cd) = v["config"]["digest"]
        .as_str()
        .and_then(|s| s.parse::<Digest>().ok())
    else {
        return Vec::new();
    };
    match storage.get(&keys::blob(&cd)).await {
        Ok(b) if b.len() < 1 << 20 => serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|c| name(&c))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// What a removal did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    pub tags: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// Remove the tags matching `filter` (`upstream`, `upstream/repo` or `upstream/repo:tag`) and the
/// manifests and blobs that no remaining tag needs.
pub(crate) async fn remove(storage: &dyn Storage, filter: &str) -> Result<Removed> {
    let all = images(storage, "").await?;
    let matches = |i: &Image| {
        let full = format!("{}/{}:{}", i.upstream, i.repository, i.tag);
        full == filter
            || full.starts_with(&format!("{filter}/"))
            || full.starts_with(&format!("{filter}:"))
    };
    let (gone, kept): (Vec<&Image>, Vec<&Image>) = all.iter().partition(|i| matches(i));
    let mut needed = BTreeSet::new();
    for i in &kept {
        if let Ok(d) = i.digest.parse() {
            needed.extend(closure(storage, &d).await?);
        }
    }
    let mut report = Removed::default();
    let mut candidates = BTreeSet::new();
    for i in &gone {
        storage
            .delete(&keys::tag(&i.upstream, &i.repository, &i.tag))
            .await?;
        storage
            .delete(&keys::tags_list(&i.upstream, &i.repository))
            .await?;
        report.tags += 1;
        if let Ok(d) = i.digest.parse() {
            candidates.extend(closure(storage, &d).await?);
        }
    }
    for key in candidates.difference(&needed) {
        report.bytes += storage.head(key).await.map(|m| m.size).unwrap_or(0);
        storage.delete(key).await?;
        report.objects += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    async fn put_image(
        s: &dyn Storage,
        up: &str,
        repo: &str,
        tag: &str,
        layers: &[&[u8]],
    ) -> Digest {
        let mut descs = Vec::new();
        for l in layers {
            let d = Digest::sha256_of(l);
            s.put(&keys::blob(&d), Bytes::copy_from_slice(l))
                .await
                .unwrap();
            descs.push(serde_json::json!({"digest": d.to_string(), "size": l.len()}));
        }
        let body =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": descs})).unwrap();
        let d = Digest::sha256_of(&body);
        s.put(
            &keys::manifest(&d),
            super::super::encode_manifest("x/y", &body),
        )
        .await
        .unwrap();
        let rec = TagRecord {
            digest: d.to_string(),
            media_type: "x/y".into(),
            size: body.len() as u64,
        };
        s.put(
            &keys::tag(up, repo, tag),
            Bytes::from(serde_json::to_vec(&rec).unwrap()),
        )
        .await
        .unwrap();
        d
    }

    #[tokio::test]
    async fn list_and_remove_keep_shared_blobs() {
        let (_dir, opened) = crate::storage::temporary().await;
        let s = opened.storage.as_ref();
        put_image(s, "docker.io", "library/a", "1", &[b"shared", b"only-a"]).await;
        put_image(s, "docker.io", "library/b", "1", &[b"shared", b"only-b"]).await;
        put_image(s, "ghcr.io", "o/c", "v2", &[b"only-c"]).await;
        let all = images(s, "").await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(images(s, "docker.io/").await.unwrap().len(), 2);
        let a = &images(s, "docker.io/library/a:1").await.unwrap()[0];
        assert!(
            a.cached_bytes > 12,
            "manifest + two layers: {}",
            a.cached_bytes
        );

        let r = remove(s, "docker.io/library/a").await.unwrap();
        assert_eq!(
            (r.tags, r.objects),
            (1, 2),
            "manifest and only-a go; shared stays"
        );
        assert!(s
            .head(&keys::blob(&Digest::sha256_of(b"shared")))
            .await
            .is_ok());
        assert!(s
            .head(&keys::blob(&Digest::sha256_of(b"only-a")))
            .await
            .is_err());

        let r = remove(s, "ghcr.io").await.unwrap();
        assert_eq!((r.tags, r.objects), (1, 2));
        assert_eq!(images(s, "").await.unwrap().len(), 1);
        assert_eq!(
            remove(s, "docker.io/library/b:2").await.unwrap(),
            Removed::default(),
            "no such tag"
        );
    }

    #[test]
    fn tag_keys() {
        assert_eq!(
            parse_tag_key("tags/127.0.0.1:5000/a/b/_tag/v1"),
            Some(("127.0.0.1:5000".into(), "a/b".into(), "v1".into()))
        );
        assert_eq!(parse_tag_key("blobs/x"), None);
    }
}

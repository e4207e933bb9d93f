//! The local tier (`s3.local_cache_size`): verified copies of hot blobs on local disk in front of
//! the bucket, so warm reads are `sendfile(2)` from a local file and survive a bucket outage.
//!
//! Files live at `<data_dir>/tier/<key>`; an in-memory index (rebuilt from the directory at
//! start-up) keeps sizes and last-access order, and adding a blob evicts the least recently used
//! ones until the total fits. Only blobs whose digest matched are ever adopted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use super::super::{Error, ObjectMeta, Result};

struct Entry {
    size: u64,
    /// Seconds since the epoch of the last write or access.
    modified: u64,
    /// Access order: larger is more recent.
    seq: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    seq: u64,
}

pub(super) struct Tier {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Tier {
    /// Open (creating) the tier under `root`, indexing the files already there.
    pub(super) async fn open(root: PathBuf, capacity: u64) -> Result<Tier> {
        let r = root.clone();
        let index = tokio::task::spawn_blocking(move || scan(&r))
            .await
            .map_err(|e| Error::Io {
                key: root.display().to_string(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| Error::Io {
                key: root.display().to_string(),
                source,
            })?;
        let tier = Tier {
            root,
            capacity,
            index: Mutex::new(index),
        };
        let doomed = tier.over_capacity(None);
        tier.unlink(doomed).await;
        tier.gauge();
        Ok(tier)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauge(&self) {
        let total = self.lock().total;
        metrics::gauge!(crate::metrics::LOCAL_TIER_BYTES).set(total as f64);
    }

    /// Size and time of a blob in the tier.
    pub(super) fn meta(&self, key: &str) -> Option<ObjectMeta> {
        self.lock().entries.get(key).map(|e| ObjectMeta {
            key: key.to_string(),
            size: e.size,
            modified: e.modified,
        })
    }

    /// The blob's file, marking it as just used.
    pub(super) async fn open_blob(&self, key: &str) -> Option<(std::fs::File, u64)> {
        let known = {
            let mut ix = self.lock();
            ix.seq += 1;
            let seq = ix.seq;
            ix.entries.get_mut(key).map(|e| e.seq = seq).is_some()
        };
        let outcome = if known { "hit" } else { "miss" };
        metrics::counter!(crate::metrics::LOCAL_TIER_REQUESTS, "outcome" => outcome).increment(1);
        if !known {
            return None;
        }
        let path = self.root.join(key);
        let opened = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(path)?;
            let len = f.metadata()?.len();
            Ok::<_, std::io::Error>((f, len))
        })
        .await
        .ok()?;
        match opened {
            Ok(hit) => Some(hit),
            Err(_) => {
                // Removed behind our back: forget it.
                self.forget(key);
                None
            }
        }
    }

    /// Record an access.
    pub(super) fn touch(&self, key: &str) {
        let mut ix = self.lock();
        ix.seq += 1;
        let seq = ix.seq;
        if let Some(e) = ix.entries.get_mut(key) {
            e.seq = seq;
            e.modified = now();
        }
    }

    /// Move a verified local file into the tier under `key` (consumed), evicting as needed.
    pub(super) async fn adopt(&self, key: &str, file: &Path) -> Result<()> {
        let io = |source| Error::Io {
            key: key.to_string(),
            source,
        };
        let size = tokio::fs::metadata(file).await.map_err(io)?.len();
        if size > self.capacity {
            return tokio::fs::remove_file(file).await.map_err(io);
        }
        let dest = self.root.join(key);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        tokio::fs::rename(file, &dest).await.map_err(io)?;
        let doomed = {
            let mut ix = self.lock();
            ix.seq += 1;
            let seq = ix.seq;
            let old = ix.entries.insert(
                key.to_string(),
                Entry {
                    size,
                    modified: now(),
                    seq,
                },
            );
            ix.total = ix.total + size - old.map_or(0, |o| o.size);
            drop(ix);
            self.over_capacity(Some(key))
        };
        self.unlink(doomed).await;
        self.gauge();
        Ok(())
    }

    /// Drop a blob from the tier.
    pub(super) async fn remove(&self, key: &str) {
        if self.forget(key) {
            let _ = tokio::fs::remove_file(self.root.join(key)).await;
            self.gauge();
        }
    }

    fn forget(&self, key: &str) -> bool {
        let mut ix = self.lock();
        match ix.entries.remove(key) {
            Some(e) => {
                ix.total -= e.size;
                true
            }
            None => false,
        }
    }

    /// Take least recently used entries out of the index until the total fits (never `keep`).
    fn over_capacity(&self, keep: Option<&str>) -> Vec<String> {
        let mut ix = self.lock();
        if ix.total <= self.capacity {
            return Vec::new();
        }
        let mut order: Vec<(u64, String, u64)> = ix
            .entries
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != keep)
            .map(|(k, e)| (e.seq, k.clone(), e.size))
            .collect();
        order.sort();
        let mut doomed = Vec::new();
        for (_, key, size) in order {
            if ix.total <= self.capacity {
                break;
            }
            ix.entries.remove(&key);
            ix.total -= size;
            doomed.push(key);
        }
        doomed
    }

    async fn unlink(&self, keys: Vec<String>) {
        for k in keys {
            tracing::debug!(key = %k, "evicted from the local tier");
            let _ = tokio::fs::remove_file(self.root.join(&k)).await;
        }
    }
}

/// Index the files under `root` (oldest modification first in the access order).
fn scan(root: &Path) -> std::io::Result<Index> {
    std::fs::create_dir_all(root)?;
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let m = entry.metadata()?;
            if m.is_dir() {
                stack.push(entry.path());
            } else if let Ok(rel) = entry.path().strip_prefix(root) {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                found.push((modified, rel.to_string_lossy().to_string(), m.len()));
            }
        }
    }
    found.sort();
    let mut ix = Index::default();
    for (modified, key, size) in found {
        ix.seq += 1;
        ix.total += size;
        let seq = ix.seq;
        ix.entries.insert(
            key,
            Entry {
                size,
                modified,
                seq,
            },
        );
    }
    Ok(ix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let tier = Tier::open(dir.path().join("tier"), 2500).await.unwrap();
        for k in ["blobs/a", "blobs/b"] {
            let f = dir.path().join("f");
            std::fs::write(&f, vec![0u8; 1000]).unwrap();
            tier.adopt(k, &f).await.unwrap();
        }
        assert!(
            tier.open_blob("blobs/a").await.is_some(),
            "a is now the most recent"
        );
        let f = dir.path().join("f");
        std::fs::write(&f, vec![0u8; 1000]).unwrap();
        tier.adopt("blobs/c", &f).await.unwrap();
        assert!(
            tier.meta("blobs/b").is_none(),
            "b was the least recently used"
        );
        assert!(!dir.path().join("tier/blobs/b").exists());
        assert!(tier.meta("blobs/a").is_some() && tier.meta("blobs/c").is_some());
        drop(tier);
        let again = Tier::open(dir.path().join("tier"), 2500).await.unwrap();
        assert_eq!(
            again.meta("blobs/a").unwrap().size,
            1000,
            "rebuilt from disk"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 3000]).unwrap();
        again.adopt("blobs/big", &big).await.unwrap();
        assert!(
            again.meta("blobs/big").is_none() && !big.exists(),
            "larger than the tier"
        );
    }
}

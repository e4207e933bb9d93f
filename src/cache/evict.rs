//! Eviction: keep the cache under `max_size` and drop content not accessed for `max_age`.
//!
//! Least recently used first, by the storage's last-access time (refreshed by
//! [`super::access::Access`] on hits).
//! Objects that a client is reading right now are skipped; downloads in progress live in spool
//! files, outside the evictable set. Tag records whose manifest is gone are harmless: the next
//! request for the tag fetches it again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::access::InUse;
use super::Result;
use crate::storage::{ObjectMeta, Storage};

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Policy {
    pub max_size: Option<u64>,
    pub max_age: Option<Duration>,
}

/// What a run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub objects: u64,
    pub bytes: u64,
    pub evicted_objects: u64,
    pub evicted_bytes: u64,
}

/// Every evictable object: blobs and manifests.
pub(crate) async fn objects(storage: &dyn Storage) -> Result<Vec<ObjectMeta>> {
    let mut all = storage.list("blobs/").await?;
    all.extend(storage.list("manifests/").await?);
    Ok(all)
}

/// Evict per `policy`, oldest access first, skipping keys for which `in_use` is true.
pub(crate) async fn run(
    storage: &dyn Storage,
    policy: Policy,
    in_use: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Report> {
    let mut all = objects(storage).await?;
    all.sort_by_key(|m| m.modified);
    let mut report = Report {
        objects: all.len() as u64,
        bytes: all.iter().map(|m| m.size).sum(),
        ..Default::default()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut remaining = report.bytes;
    for m in &all {
        let too_old = policy
            .max_age
            .is_some_and(|age| now.saturating_sub(m.modified) > age.as_secs());
        let too_big = policy.max_size.is_some_and(|max| remaining > max);
        if !(too_old || too_big) {
            if policy.max_age.is_none() {
                break; // sorted by age: nothing further is over the size limit either
            }
            continue;
        }
        if in_use(&m.key) {
            continue;
        }
        storage.delete(&m.key).await?;
        // Counted as each object goes, so that /metrics never lags behind the disk.
        metrics::counter!(crate::metrics::EVICTIONS).increment(1);
        metrics::counter!(crate::metrics::EVICTED_BYTES).increment(m.size);
        remaining -= m.size;
        report.evicted_objects += 1;
        report.evicted_bytes += m.size;
    }
    report.objects -= report.evicted_objects;
    report.bytes = remaining;
    Ok(report)
}

/// Eviction for one cache: its policy, and what its clients are reading (never evicted).
pub(crate) struct Evictor {
    storage: Arc<dyn Storage>,
    in_use: Arc<InUse>,
    policy: Policy,
    /// What the last run measured, and when (the status page's cache size).
    last: std::sync::Mutex<Option<(Report, SystemTime)>>,
}

impl Evictor {
    pub(crate) fn new(storage: Arc<dyn Storage>, in_use: Arc<InUse>, policy: Policy) -> Evictor {
        Evictor {
            storage,
            in_use,
            policy,
            last: std::sync::Mutex::new(None),
        }
    }

    /// What the last run measured (bytes and objects left), and when; None before the first.
    pub(crate) fn last_measured(&self) -> Option<(Report, SystemTime)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configured policy.
    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Run eviction now with `policy`, protecting what clients are reading.
    pub(crate) async fn evict(&self, policy: Policy) -> Result<Report> {
        let in_use = self.in_use.clone();
        let report = run(self.storage.as_ref(), policy, &move |k| in_use.contains(k)).await?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((report.clone(), SystemTime::now()));
        metrics::gauge!(crate::metrics::CACHE_BYTES).set(report.bytes as f64);
        metrics::gauge!(crate::metrics::CACHE_OBJECTS).set(report.objects as f64);
        // The removals were counted as they happened; this makes both series exist from the first
        // run on, at 0 while nothing was evicted.
        metrics::counter!(crate::metrics::EVICTIONS).increment(0);
        metrics::counter!(crate::metrics::EVICTED_BYTES).increment(0);
        if report.evicted_objects > 0 {
            tracing::info!(
                evicted = report.evicted_objects,
                evicted_bytes = report.evicted_bytes,
                remaining_bytes = report.bytes,
                "eviction"
            );
        }
        Ok(report)
    }

    /// The disk filled up while a blob of `needed` bytes (when known) was being written: make room
    /// for it. The cache may be under `max_size` and still not fit (the disk is smaller, or
    /// shared), so the target is the blob's size (at least a tenth of the cache) below what is
    /// stored now, and never above `max_size`.
    pub(crate) async fn make_room(&self, needed: Option<u64>) -> Result<Report> {
        let mut policy = self.policy;
        if let Ok(all) = objects(self.storage.as_ref()).await {
            let total: u64 = all.iter().map(|m| m.size).sum();
            let room = total.saturating_sub(needed.unwrap_or(total / 10).max(total / 10));
            policy.max_size = Some(policy.max_size.map_or(room, |m| m.min(room)));
        }
        self.evict(policy).await
    }
}

impl Policy {
    /// The configured eviction policy.
    pub(crate) fn from_config(config: &crate::config::Config) -> Policy {
        Policy {
            max_size: config.max_size.map(|s| s.0),
            max_age: config.max_age_secs.map(Duration::from_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn evicts_least_recently_used_until_under_size_and_skips_readers() {
        let (dir, opened) = crate::storage::temporary().await;
        let s = opened.storage.as_ref();
        for (i, key) in [
            "blobs/sha256/aa/a1",
            "blobs/sha256/bb/b2",
            "manifests/sha256/cc/c3",
            "blobs/sha256/dd/d4",
        ]
        .iter()
        .enumerate()
        {
            s.put(key, Bytes::from(vec![0u8; 100])).await.unwrap();
            let t = SystemTime::now() - Duration::from_secs(1000 - i as u64 * 100);
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(key))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        s.put("tags/u/r/_tag/t", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        // Oldest is a1, but it is being read: b2 and c3 go instead.
        let report = run(
            s,
            Policy {
                max_size: Some(250),
                max_age: None,
            },
            &|k| k == "blobs/sha256/aa/a1",
        )
        .await
        .unwrap();
        assert_eq!(
            report,
            Report {
                objects: 2,
                bytes: 200,
                evicted_objects: 2,
                evicted_bytes: 200
            }
        );
        let left: Vec<String> = objects(s)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(left, vec!["blobs/sha256/aa/a1", "blobs/sha256/dd/d4"]);
        // Age limit: everything older than 800 s goes (a1 at 1000 s, now not in use; d4 is 700 s old).
        let report = run(
            s,
            Policy {
                max_size: None,
                max_age: Some(Duration::from_secs(800)),
            },
            &|_| false,
        )
        .await
        .unwrap();
        assert_eq!((report.evicted_objects, report.objects), (1, 1));
        assert!(
            s.head("tags/u/r/_tag/t").await.is_ok(),
            "tag records are not evicted"
        );
    }
}

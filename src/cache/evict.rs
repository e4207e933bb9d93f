//! Eviction: keep the cache under `max_size` and drop content not accessed for `max_age`.
//!
//! Least recently used first, by the storage's last-access time (refreshed by
//! [`super::access::Access`] on hits). A store that replicas share (S3 with `redis_url`) is
//! evicted by one replica at a time, in the order of reads recorded in Redis, without what any
//! replica reads: [`super::shared_evict`].
//! Objects that a client is reading right now are skipped; downloads in progress live in spool
//! files, outside the evictable set. Tag records whose manifest is gone are harmless: the next
//! request for the tag fetches it again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::access::InUse;
use super::shared_access::SharedStore;
use super::{shared_evict, Result};
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

/// An object as eviction sees it: its metadata and when it was last read (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub meta: ObjectMeta,
    pub last_access: u64,
}

/// What [`select`] chose.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// To delete, least recently used first.
    pub victims: Vec<ObjectMeta>,
    /// Over a limit but kept because someone reads them.
    pub protected: Vec<String>,
    /// Bytes of everything considered.
    pub total_bytes: u64,
}

/// Which objects `policy` evicts at `now` (unix seconds): least recently used first (ties by
/// key), those not read for `max_age`, then more until the rest fits in `max_size`, never one
/// for which `protected` is true (the next object goes instead).
pub(crate) fn select(
    mut all: Vec<Candidate>,
    policy: Policy,
    now: u64,
    protected: &(dyn Fn(&str) -> bool + Sync),
) -> Selection {
    all.sort_by(|a, b| (a.last_access, &a.meta.key).cmp(&(b.last_access, &b.meta.key)));
    let total_bytes = all.iter().map(|c| c.meta.size).sum();
    let mut out = Selection {
        total_bytes,
        ..Selection::default()
    };
    let mut remaining = total_bytes;
    for c in all {
        let too_old = policy
            .max_age
            .is_some_and(|age| now.saturating_sub(c.last_access) > age.as_secs());
        let too_big = policy.max_size.is_some_and(|max| remaining > max);
        if !(too_old || too_big) {
            if policy.max_age.is_none() {
                break; // sorted by age: nothing further is over the size limit either
            }
            continue;
        }
        if protected(&c.meta.key) {
            out.protected.push(c.meta.key);
            continue;
        }
        remaining -= c.meta.size;
        out.victims.push(c.meta);
    }
    out
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Delete one evicted object, counted as it goes so that /metrics never lags behind storage.
pub(crate) async fn delete(
    storage: &dyn Storage,
    m: &ObjectMeta,
    report: &mut Report,
) -> Result<()> {
    storage.delete(&m.key).await?;
    metrics::counter!(crate::metrics::EVICTIONS).increment(1);
    metrics::counter!(crate::metrics::EVICTED_BYTES).increment(m.size);
    report.evicted_objects += 1;
    report.evicted_bytes += m.size;
    Ok(())
}

/// Evict per `policy` from a store only this process uses, oldest access (the storage's
/// modification time) first, skipping keys for which `in_use` is true.
pub(crate) async fn run(
    storage: &dyn Storage,
    policy: Policy,
    in_use: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Report> {
    let all: Vec<Candidate> = objects(storage)
        .await?
        .into_iter()
        .map(|meta| Candidate {
            last_access: meta.modified,
            meta,
        })
        .collect();
    let objects = all.len() as u64;
    let chosen = select(all, policy, unix_now(), in_use);
    metrics::counter!(crate::metrics::EVICTION_KEPT_IN_USE)
        .increment(chosen.protected.len() as u64);
    let mut report = Report {
        objects,
        bytes: chosen.total_bytes,
        ..Default::default()
    };
    for m in &chosen.victims {
        delete(storage, m, &mut report).await?;
    }
    report.objects -= report.evicted_objects;
    report.bytes -= report.evicted_bytes;
    Ok(report)
}

/// Eviction for one cache: its policy, and what its clients are reading (never evicted).
pub(crate) struct Evictor {
    storage: Arc<dyn Storage>,
    in_use: Arc<InUse>,
    policy: Policy,
    /// What the last run measured, and when (the status page's cache size).
    last: std::sync::Mutex<Option<(Report, SystemTime)>>,
    /// The store the replicas share, when it is one: runs go through its lease.
    shared: Option<SharedStore>,
    /// When a run skipped because of Redis was last logged (once a minute).
    down_logged: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Evictor {
    pub(crate) fn new(storage: Arc<dyn Storage>, in_use: Arc<InUse>, policy: Policy) -> Evictor {
        Evictor {
            storage,
            in_use,
            policy,
            last: std::sync::Mutex::new(None),
            shared: None,
            down_logged: std::sync::Mutex::new(None),
        }
    }

    /// Evict `store`, which other replicas share, in turns with them (see
    /// [`super::shared_evict`]).
    pub(crate) fn shared_with(mut self, store: SharedStore) -> Evictor {
        self.shared = Some(store);
        self
    }

    /// What the last run measured (bytes and objects left), and when; None before the first.
    pub(crate) fn last_measured(&self) -> Option<(Report, SystemTime)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configured policy.
    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Run eviction now with `policy`, protecting what clients are reading. On a shared store
    /// a run this replica skips (another one runs, or Redis is down) reports the last
    /// measurement, unchanged.
    pub(crate) async fn evict(&self, policy: Policy) -> Result<Report> {
        let in_use = self.in_use.clone();
        let local = move |k: &str| in_use.contains(k);
        let limits = policy.max_size.is_some() || policy.max_age.is_some();
        let report = match &self.shared {
            Some(store) if limits => {
                match shared_evict::run(self.storage.as_ref(), store, policy, &local).await? {
                    shared_evict::Outcome::Ran(r) => {
                        count_run("ran");
                        r
                    }
                    shared_evict::Outcome::SkippedLease => {
                        count_run("skipped_lease");
                        tracing::debug!("eviction skipped: another replica runs it");
                        return Ok(self.previous());
                    }
                    shared_evict::Outcome::SkippedRedisDown(e) => {
                        count_run("skipped_redis_down");
                        self.log_down(&e);
                        return Ok(self.previous());
                    }
                }
            }
            _ => {
                let r = run(self.storage.as_ref(), policy, &local).await?;
                if limits {
                    count_run("ran");
                }
                r
            }
        };
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

    fn previous(&self) -> Report {
        self.last_measured().map(|(r, _)| r).unwrap_or_default()
    }

    fn log_down(&self, error: &str) {
        let mut last = self.down_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(%error, "eviction of the shared store skipped: redis unavailable (no replica evicts without the lease; logged once a minute)");
        }
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

fn count_run(result: &'static str) {
    metrics::counter!(crate::metrics::EVICTION_RUNS, "result" => result).increment(1);
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

    fn cand(key: &str, size: u64, last_access: u64) -> Candidate {
        Candidate {
            meta: ObjectMeta {
                key: key.to_string(),
                size,
                modified: 0,
            },
            last_access,
        }
    }

    #[test]
    fn selection_is_least_recently_used_first_skips_protected_and_honours_both_limits() {
        let now = 10_000;
        // (policy, protected key, expected victims in order, expected protected)
        let size = |n| Policy {
            max_size: Some(n),
            max_age: None,
        };
        let age = |s| Policy {
            max_size: None,
            max_age: Some(Duration::from_secs(s)),
        };
        let cases: &[(Policy, &str, &[&str], &[&str])] = &[
            // 400 bytes stored, 250 allowed: the two least recently read go.
            (size(250), "", &["b", "c"], &[]),
            // Exactly at the limit: nothing.
            (size(400), "", &[], &[]),
            // The oldest is being read: the next one goes instead, and one more to fit.
            (size(250), "b", &["c", "a"], &["b"]),
            // Ties of last access are broken by key, not by listing order (a and b both at 1000
            // here, b listed first).
            (size(350), "", &["a"], &[]),
            // Not read for more than 5000 s: b (9000 s ago) and c (5500 s ago); a (5000 s) stays.
            (age(5000), "", &["b", "c"], &[]),
            (age(5000), "c", &["b"], &["c"]),
            (
                Policy {
                    max_size: Some(100),
                    max_age: Some(Duration::from_secs(5000)),
                },
                "",
                &["b", "c", "a"],
                &[],
            ),
        ];
        for (policy, protected, victims, kept) in cases {
            let all = vec![
                cand("a", 100, 5000),
                cand("d", 100, 9000),
                cand("b", 100, 1000),
                cand("c", 100, 4500),
            ];
            let mut all = all;
            if policy.max_size == Some(350) {
                all[0] = cand("a", 100, 1000);
                all.swap(0, 2);
            }
            let got = select(all, *policy, now, &|k| k == *protected);
            let names: Vec<&str> = got.victims.iter().map(|m| m.key.as_str()).collect();
            assert_eq!(&names, victims, "{policy:?} protecting {protected:?}");
            assert_eq!(&got.protected, kept, "{policy:?} protecting {protected:?}");
            assert_eq!(got.total_bytes, 400);
        }
    }

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

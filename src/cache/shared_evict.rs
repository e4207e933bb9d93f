//! Eviction of a store several replicas share (S3 with `redis_url`): one replica at a time,
//! in the order of reads on all of them, never deleting what any live replica reads.
//!
//! A run takes the store's eviction lease (`coord` [`LeaseKind::Evict`], fenced and renewed
//! while it runs); when another replica holds it, this one skips its run. The last access of an
//! object is the later of its modification time and its entry in Redis. Victims are chosen
//! without the keys any replica announced it reads; after [`GRACE`] the reads are looked at
//! again and the lease checked (renewed) before the deletions, and again every second while
//! they go on: a run whose lease expired (Redis gone for a whole lease) stops deleting.
//!
//! Redis unreachable: no run at all. Two replicas evicting the same bucket without the lease
//! could both delete, and neither would see the other's readers; serving is unaffected.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::evict::{self, Candidate, Policy, Report};
use super::shared_access::{SharedStore, GRACE};
use super::Result;
use crate::coord::{Acquired, LeaseKind};
use crate::storage::Storage;

/// How a shared eviction run went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// This replica held the lease and ran.
    Ran(Report),
    /// Another replica holds the lease (runs now).
    SkippedLease,
    /// Redis could not be reached (or the lease was lost before any deletion).
    SkippedRedisDown(String),
}

/// Entries of keys gone from the store are forgotten once they are this old (a read just noted
/// may belong to an object written after the listing).
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// One run on `storage` (shared as `store`) under `policy`; `local` are the keys this process
/// reads (always protected, whether announced yet or not).
pub(crate) async fn run(
    storage: &dyn Storage,
    store: &SharedStore,
    policy: Policy,
    local: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Outcome> {
    let lease = match store
        .coord
        .acquire(LeaseKind::Evict, &store.name, "", "")
        .await
    {
        Ok(Acquired::Mine(lease)) => lease,
        Ok(Acquired::Held(_)) => return Ok(Outcome::SkippedLease),
        Err(e) => return Ok(Outcome::SkippedRedisDown(e.to_string())),
    };
    let listed = evict::objects(storage).await?;
    let (access, reading) = match (store.last_access().await, store.being_read().await) {
        (Ok(a), Ok(r)) => (a, r),
        (Err(e), _) | (_, Err(e)) => return Ok(Outcome::SkippedRedisDown(e.to_string())),
    };
    let now = evict::unix_now();
    let present: HashSet<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    let stale: Vec<String> = access
        .iter()
        .filter(|(k, t)| {
            !present.contains(k.as_str()) && now.saturating_sub(**t) > FORGET_AFTER.as_secs()
        })
        .map(|(k, _)| k.clone())
        .collect();
    drop(present);
    let objects = listed.len() as u64;
    let candidates: Vec<Candidate> = listed
        .into_iter()
        .map(|meta| Candidate {
            last_access: access
                .get(&meta.key)
                .copied()
                .unwrap_or(0)
                .max(meta.modified),
            meta,
        })
        .collect();
    let chosen = evict::select(candidates, policy, now, &|k| {
        local(k) || reading.contains(k)
    });
    let mut report = Report {
        objects,
        bytes: chosen.total_bytes,
        ..Report::default()
    };
    let mut kept = chosen.protected.len() as u64;
    let mut deleted = Vec::new();
    if !chosen.victims.is_empty() {
        // Reads that began just before the choice are announced within two syncs.
        tokio::time::sleep(GRACE).await;
        let mut reading = match store.being_read().await {
            Ok(r) => r,
            Err(e) => return Ok(Outcome::SkippedRedisDown(e.to_string())),
        };
        let mut checked: Option<Instant> = None;
        for m in &chosen.victims {
            if checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                match lease.still_held().await {
                    Ok(true) => {}
                    Ok(false) | Err(_) if deleted.is_empty() => {
                        return Ok(Outcome::SkippedRedisDown(
                            "eviction lease lost before deleting".into(),
                        ))
                    }
                    _ => {
                        tracing::warn!(
                            evicted = deleted.len(),
                            "eviction lease lost mid-run: stopping (another replica may go on)"
                        );
                        break;
                    }
                }
                if checked.is_some() {
                    if let Ok(r) = store.being_read().await {
                        reading = r;
                    }
                }
                checked = Some(Instant::now());
            }
            if local(&m.key) || reading.contains(&m.key) {
                kept += 1;
                continue;
            }
            evict::delete(storage, m, &mut report).await?;
            deleted.push(m.key.clone());
        }
    }
    metrics::counter!(crate::metrics::EVICTION_KEPT_IN_USE).increment(kept);
    deleted.extend(stale);
    if let Err(e) = store.forget(&deleted).await {
        tracing::debug!(error = %e, "cannot forget the last accesses of evicted objects");
    }
    drop(lease);
    report.objects -= report.evicted_objects;
    report.bytes -= report.evicted_bytes;
    Ok(Outcome::Ran(report))
}

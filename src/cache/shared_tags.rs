//! Tag records shared by the fleet: a tag confirmed by one replica is fresh on all, and a
//! restarted replica does not revalidate every tag.
//!
//! [`RedisTagRecords`] keeps `tag:<upstream>/<repo>:<tag>` records in Redis ([`TagRecords`]):
//! the digest, media type and size the upstream confirmed, and when (wall clock, milliseconds;
//! replicas' clocks are assumed NTP-synchronised to well within a TTL). The revalidation of one
//! tag is leased (`lease:tag:...`): the other replicas wait briefly for the record it shares
//! instead of asking the upstream too.
//!
//! The read side is here too, as [`ManifestCache`] methods: the freshness rules stay in
//! `tags.rs`; a shared record only stands in for a local confirmation. Redis unavailable: every
//! call answers "nothing shared", and the replica decides alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manifests::{Manifest, ManifestCache};
use super::tags::{TagRecord, TagRecords};
use super::{CacheStatus, Result};
use crate::coord::{Acquired, Coord, LeaseKind};
use crate::oci::{Digest, Reference};
use crate::upstream::Upstream;

/// How long a replica waits for another one's revalidation of the same tag.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(3);

#[derive(Serialize, Deserialize)]
struct Shared {
    #[serde(flatten)]
    record: TagRecord,
    /// When the upstream confirmed it, in Unix milliseconds.
    confirmed_ms: u64,
}

/// Tag records in Redis.
pub(crate) struct RedisTagRecords {
    coord: Arc<Coord>,
}

impl RedisTagRecords {
    pub(crate) fn new(coord: Arc<Coord>) -> RedisTagRecords {
        RedisTagRecords { coord }
    }
}

fn name(upstream: &str, repo: &str, tag: &str) -> String {
    format!("{upstream}/{repo}:{tag}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl TagRecords for RedisTagRecords {
    async fn get(&self, upstream: &str, repo: &str, tag: &str) -> Option<(TagRecord, Duration)> {
        let raw = self
            .coord
            .get_record(&format!("tag:{}", name(upstream, repo, tag)))
            .await
            .ok()??;
        let shared: Shared = serde_json::from_slice(&raw).ok()?;
        let age = Duration::from_millis(now_ms().saturating_sub(shared.confirmed_ms));
        Some((shared.record, age))
    }

    async fn put(&self, upstream: &str, repo: &str, tag: &str, record: &TagRecord, keep: Duration) {
        let shared = Shared {
            record: record.clone(),
            confirmed_ms: now_ms(),
        };
        let Ok(json) = serde_json::to_vec(&shared) else {
            return;
        };
        let _ = self
            .coord
            .put_record(&format!("tag:{}", name(upstream, repo, tag)), &json, keep)
            .await;
    }

    async fn lead(&self, upstream: &str, repo: &str, tag: &str) -> Option<Box<dyn Send + Sync>> {
        match self
            .coord
            .acquire(LeaseKind::Tag, &name(upstream, repo, tag), upstream, repo)
            .await
        {
            Ok(Acquired::Mine(lease)) => Some(Box::new(lease)),
            Ok(Acquired::Held(o)) if Some(&o.owner) == self.coord.replica_url().as_ref() => {
                Some(Box::new(()))
            }
            Ok(Acquired::Held(_)) => None,
            // Redis down: revalidate alone.
            Err(_) => Some(Box::new(())),
        }
    }
}

impl ManifestCache {
    /// A shared record of the tag, when it is fresh by this upstream's rules.
    pub(super) async fn shared_fresh(
        &self,
        up: &Upstream,
        repo: &str,
        tag: &str,
    ) -> Option<(TagRecord, Duration)> {
        let shared = self.shared.as_ref()?;
        let policy = self.policies.get(up.name());
        let found = shared.get(up.name(), repo, tag).await;
        let result = match &found {
            Some((_, age)) if policy.is_immutable(tag) || *age < policy.ttl => "fresh",
            Some(_) => "stale",
            None => "missing",
        };
        metrics::counter!(crate::metrics::SHARED_TAGS, "result" => result).increment(1);
        found.filter(|_| result == "fresh")
    }

    /// Share what the upstream just confirmed (in the background; best effort).
    pub(super) fn share_tag(&self, up: &Upstream, repo: &str, tag: &str, record: TagRecord) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let policy = self.policies.get(up.name());
        // Immutable tags stay shared a week; others as long as they are fresh.
        let keep = if policy.is_immutable(tag) {
            Duration::from_secs(7 * 24 * 3600)
        } else {
            policy.ttl.max(Duration::from_secs(1))
        };
        let (u, r, t) = (up.name().to_string(), repo.to_string(), tag.to_string());
        tokio::spawn(async move { shared.put(&u, &r, &t, &record, keep).await });
    }

    /// Serve a tag from a fresh shared record: `cached` is this replica's manifest of the tag,
    /// if any. None: no fresh shared record, or it names a manifest this replica cannot get
    /// without asking the upstream by tag.
    pub(super) async fn answer_from_shared(
        &self,
        up: &Arc<Upstream>,
        repo: &str,
        tag: &str,
        cached: Option<&Manifest>,
        accept: &[String],
    ) -> Result<Option<Manifest>> {
        let Some((record, age)) = self.shared_fresh(up, repo, tag).await else {
            return Ok(None);
        };
        let Ok(digest) = record.digest.parse::<Digest>() else {
            return Ok(None);
        };
        if let Some(m) = cached.filter(|m| m.digest == digest) {
            self.tag_ttl.confirm_ago(up.name(), repo, tag, age);
            return Ok(Some(m.clone()));
        }
        // Another digest than ours, or none here: get it by digest (immutable, linked for this
        // repository by the fetch) and keep the tag record locally.
        let m = self
            .manifest_shared(up, repo, &Reference::Digest(digest.clone()), accept)
            .await?;
        self.store_tag_record(up.name(), repo, tag, &record).await?;
        self.tag_ttl.confirm_ago(up.name(), repo, tag, age);
        let mut m = m;
        m.status = CacheStatus::Hit;
        Ok(Some(m))
    }

    /// A fresh shared record naming `cached`'s digest confirms it here too.
    pub(super) async fn confirmed_by_fleet(
        &self,
        up: &Upstream,
        repo: &str,
        tag: &str,
        cached: &Manifest,
    ) -> bool {
        match self.shared_fresh(up, repo, tag).await {
            Some((record, age)) if record.digest == cached.digest.to_string() => {
                self.tag_ttl.confirm_ago(up.name(), repo, tag, age);
                true
            }
            _ => false,
        }
    }

    /// Revalidate only if no other replica is doing it: Some(guard) to go ahead; None after
    /// another replica's revalidation shared a fresh record in the meantime.
    pub(super) async fn lead_revalidation(
        &self,
        up: &Upstream,
        repo: &str,
        tag: &str,
    ) -> Option<Box<dyn Send + Sync>> {
        let Some(shared) = self.shared.as_ref() else {
            return Some(Box::new(()));
        };
        let started = tokio::time::Instant::now();
        loop {
            if let Some(guard) = shared.lead(up.name(), repo, tag).await {
                return Some(guard);
            }
            if self.shared_fresh(up, repo, tag).await.is_some() {
                return None;
            }
            if started.elapsed() >= WAIT_FOR_LEADER {
                return Some(Box::new(()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

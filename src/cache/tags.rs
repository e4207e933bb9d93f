//! Tag freshness: how long a cached tag -> digest record is trusted without asking the upstream.
//!
//! The one place the freshness policy lives. Digests are immutable and never revalidated; a tag is
//! trusted for its upstream's `tag_ttl_secs` after it was last confirmed, forever if it matches one
//! of the upstream's `immutable_tags` patterns. Confirmation times are kept in memory (on the tokio
//! clock, so tests can pause time): after a restart every tag is revalidated once, with a HEAD —
//! unless the fleet shares them ([`TagRecords`], `shared_tags.rs`): then a record another
//! replica confirmed counts from when it was confirmed there.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::{Revalidate, UpstreamConfig};
use crate::oci::glob_match;
use tokio::time::{Duration, Instant};

/// The stored record of what a tag pointed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

impl TagRecord {
    pub(super) fn new(digest: &impl std::fmt::Display, media_type: &str, size: u64) -> TagRecord {
        TagRecord {
            digest: digest.to_string(),
            media_type: media_type.to_string(),
            size,
        }
    }
}

/// Tag records and their confirmation times shared by the replicas of a fleet (Redis). The
/// cache keeps the rules (TTL, immutable patterns); this only keeps and hands out records.
#[async_trait::async_trait]
pub(super) trait TagRecords: Send + Sync {
    /// The record another replica (or this one) shared, and how long ago it was confirmed.
    async fn get(&self, upstream: &str, repo: &str, tag: &str) -> Option<(TagRecord, Duration)>;
    /// Share a record the upstream confirmed just now; kept for `keep`.
    async fn put(&self, upstream: &str, repo: &str, tag: &str, record: &TagRecord, keep: Duration);
    /// Lead the revalidation of a tag: Some(guard) to go ahead (held until dropped), None when
    /// another replica is revalidating it right now.
    async fn lead(&self, upstream: &str, repo: &str, tag: &str) -> Option<Box<dyn Send + Sync>>;
}

/// Per-upstream freshness settings.
#[derive(Debug, Clone)]
pub(super) struct TagPolicy {
    /// How long a confirmed tag is trusted.
    pub(super) ttl: Duration,
    /// Tag patterns never revalidated once cached.
    pub(super) immutable: Vec<String>,
    /// How an expired tag is revalidated.
    pub(super) revalidate: Revalidate,
    /// The bound of a synchronous revalidation.
    pub(super) revalidate_timeout: Duration,
    /// How long "not found" is remembered.
    pub(super) negative_ttl: Duration,
    /// How long a tags list is served from cache.
    pub(super) tags_list_ttl: Duration,
}

impl TagPolicy {
    fn from_config(u: &UpstreamConfig) -> TagPolicy {
        TagPolicy {
            ttl: u.tag_ttl(),
            immutable: u.immutable_tags.clone(),
            revalidate: u.revalidate(),
            revalidate_timeout: u.revalidate_timeout(),
            negative_ttl: u.negative_ttl(),
            tags_list_ttl: u.tags_list_ttl(),
        }
    }

    pub(super) fn is_immutable(&self, tag: &str) -> bool {
        self.immutable.iter().any(|p| glob_match(p, tag))
    }
}

/// The freshness settings of every upstream.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    by_upstream: HashMap<String, TagPolicy>,
    default: TagPolicy,
}

impl Policies {
    pub(crate) fn from_config(config: &crate::config::Config) -> Policies {
        let by_upstream = config
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), TagPolicy::from_config(u)))
            .collect();
        Policies {
            by_upstream,
            default: TagPolicy::from_config(&UpstreamConfig::default()),
        }
    }

    /// The policy of `upstream` (the default for an upstream made by `allow_any_upstream`).
    pub(crate) fn get(&self, upstream: &str) -> &TagPolicy {
        self.by_upstream.get(upstream).unwrap_or(&self.default)
    }
}

/// When each (upstream, repository, tag) was last confirmed with the upstream.
#[derive(Debug, Default)]
pub(super) struct TagTtl {
    confirmed: Mutex<HashMap<(String, String, String), Instant>>,
}

impl TagTtl {
    /// Whether the tag may be served from cache without asking the upstream.
    pub(super) fn is_fresh(
        &self,
        policy: &TagPolicy,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> bool {
        let map = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&(upstream.to_string(), repo.to_string(), tag.to_string())) {
            Some(_) if policy.is_immutable(tag) => true,
            Some(at) => at.elapsed() < policy.ttl,
            None => false,
        }
    }

    /// Record that the upstream just confirmed the tag.
    pub(super) fn confirm(&self, upstream: &str, repo: &str, tag: &str) {
        self.confirm_ago(upstream, repo, tag, Duration::ZERO);
    }

    /// Record that the upstream confirmed the tag `age` ago (to another replica, which shared
    /// the record): its TTL runs from then, not from now.
    pub(super) fn confirm_ago(&self, upstream: &str, repo: &str, tag: &str, age: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let mut map = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            (upstream.to_string(), repo.to_string(), tag.to_string()),
            at,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_and_immutable_does_not() {
        let t = TagTtl::default();
        let policy = TagPolicy {
            ttl: Duration::from_secs(300),
            immutable: vec!["v*".into()],
            ..TagPolicy::from_config(&UpstreamConfig::default())
        };
        assert!(!t.is_fresh(&policy, "u", "r", "latest"), "never confirmed");
        t.confirm("u", "r", "latest");
        t.confirm("u", "r", "v1");
        assert!(t.is_fresh(&policy, "u", "r", "latest"));
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(!t.is_fresh(&policy, "u", "r", "latest"));
        assert!(t.is_fresh(&policy, "u", "r", "v1"));
        t.confirm("u", "r", "latest");
        assert!(t.is_fresh(&policy, "u", "r", "latest"));
    }
}

//! Negative cache: "not found" answers remembered for a short time, so that a storm of requests
//! for a missing tag, manifest or blob does not become a storm of upstream requests (as nginx's
//! `proxy_cache_valid 404`). A name that then appears upstream is served once the time is over.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// Most entries kept; past it, expired ones are dropped, then the table is cleared.
const MAX_ENTRIES: usize = 100_000;

/// Keys that were "not found" upstream, each until its expiry.
#[derive(Debug, Default)]
pub(crate) struct NotFound {
    until: Mutex<HashMap<String, Instant>>,
}

impl NotFound {
    /// Remember `key` as missing for `ttl` (a zero `ttl` remembers nothing).
    pub(crate) fn insert(&self, key: String, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, t| *t > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, Instant::now() + ttl);
    }

    /// Whether `key` is known missing now.
    pub(crate) fn contains(&self, key: &str) -> bool {
        let map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|t| *t > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembered_for_the_ttl_only() {
        let n = NotFound::default();
        n.insert("a".into(), Duration::from_secs(10));
        n.insert("zero".into(), Duration::ZERO);
        assert!(n.contains("a") && !n.contains("b") && !n.contains("zero"));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!n.contains("a"));
    }
}

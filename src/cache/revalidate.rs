//! Stale-while-revalidate (RFC 5861, nginx's `proxy_cache_use_stale updating` with
//! `proxy_cache_background_update`): a cached tag past its TTL is answered from the cache at once
//! and revalidated behind the client's back, once per tag however many clients ask. The answer
//! changes for later requests only after the upstream confirmed a new digest.
//!
//! With `revalidate = "sync"` the client waits for that revalidation, for at most
//! `revalidate_timeout_secs`, then gets the cached copy. Either way, an upstream known to be down
//! costs no wait at all, and a tag whose revalidation just failed (5xx, 429) is served stale for
//! a few seconds before it is tried again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::{Duration, Instant};

use super::manifests::{Manifest, ManifestCache};
use super::{CacheStatus, Error, Result};
use crate::config::Revalidate;
use crate::oci::Reference;
use crate::upstream::Upstream;

/// A revalidation in flight, which any number of clients may wait on.
type Revalidation = Shared<BoxFuture<'static, Result<Manifest>>>;

type Key = (String, String, String);

/// After a revalidation failed (the upstream answered 5xx, 429, or could not be reached), the
/// tag is served stale without another attempt for this long.
const AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The revalidations of one cache, by (upstream, repository, tag): those in flight, and when the
/// last one of a tag failed.
#[derive(Default)]
pub(crate) struct Revalidations {
    running: Mutex<HashMap<Key, Revalidation>>,
    failed: Mutex<HashMap<Key, Instant>>,
}

impl Revalidations {
    fn failed_recently(&self, key: &Key) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(key)
            .is_some_and(|at| at.elapsed() < AFTER_FAILURE)
    }

    fn finished(&self, key: &Key, ok: bool) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failed.remove(key);
        } else {
            if failed.len() >= 10_000 {
                failed.retain(|_, at| at.elapsed() < AFTER_FAILURE);
            }
            failed.insert(key.clone(), Instant::now());
        }
    }
}

impl ManifestCache {
    /// Answer a cached tag whose TTL has passed: `cached` is what the cache holds.
    pub(super) async fn expired(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &str,
        tag: &str,
        cached: Manifest,
        accept: &[String],
    ) -> Result<Manifest> {
        if up.is_down() {
            return Ok(self.stale(up, repo, tag, cached, &"the upstream is unreachable"));
        }
        let key = (up.name().to_string(), repo.to_string(), tag.to_string());
        if self.revalidating.failed_recently(&key) {
            return Ok(self.stale(up, repo, tag, cached, &"its last revalidation failed"));
        }
        let policy = self.policies.get(up.name());
        let revalidation = self.revalidate(up, repo, tag, &cached, accept);
        let mut served = cached;
        match policy.revalidate {
            Revalidate::Background => {
                served.status = CacheStatus::Revalidating;
                Ok(served)
            }
            Revalidate::Sync => {
                match tokio::time::timeout(policy.revalidate_timeout, revalidation).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(self.stale(
                        up,
                        repo,
                        tag,
                        served,
                        &format!(
                            "no answer within revalidate_timeout_secs ({} s)",
                            policy.revalidate_timeout.as_secs()
                        ),
                    )),
                }
            }
        }
    }

    /// The revalidation of `tag` in flight, started now if there is none. It runs in its own
    /// task, so it finishes whether or not anyone waits for it.
    fn revalidate(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &str,
        tag: &str,
        cached: &Manifest,
        accept: &[String],
    ) -> Revalidation {
        let key = (up.name().to_string(), repo.to_string(), tag.to_string());
        let mut running = self
            .revalidating
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get(&key) {
            return r.clone();
        }
        let (cache, up, accept) = (self.clone(), up.clone(), accept.to_vec());
        let (task_key, before) = (key.clone(), cached.digest.clone());
        let work = async move {
            let (_, repo, tag) = &task_key;
            let reference = Reference::Tag(tag.clone());
            let answer = cache.manifest_shared(&up, repo, &reference, &accept).await;
            let outcome = match &answer {
                Ok(m) if m.status == CacheStatus::Stale => "failed",
                Ok(m) if m.digest == before => "same",
                Ok(_) => "changed",
                Err(Error::ManifestUnknown) => {
                    cache.forget_tag(up.name(), repo, tag).await;
                    "gone"
                }
                Err(_) => "failed",
            };
            metrics::counter!(crate::metrics::REVALIDATIONS, "upstream" => up.name().to_string(), "outcome" => outcome).increment(1);
            cache.revalidating.finished(&task_key, outcome != "failed");
            answer
        };
        let shared = work.boxed().shared();
        running.insert(key, shared.clone());
        tokio::spawn(shared.clone());
        shared
    }
}

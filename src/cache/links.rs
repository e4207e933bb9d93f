//! Links: which (upstream, repository) holds which digest. Content is stored once by digest; a
//! repository "has" a blob or manifest only through a link (distribution's linked blob store), so
//! a digest cached for one repository is never served under another the upstream did not confirm.
//!
//! A link is made when regmirror fetched the digest for that repository, or when the upstream
//! answered a `HEAD` for it there ([`Links::confirm`], one such request per link at a time). Links
//! are stored (`links/...` in the key tree of [`crate::storage`]), so they survive restarts, and
//! the most recent ones are also kept in memory so that a warm read costs one hash lookup.
//!
//! A link whose content is gone (evicted, removed) is harmless: the content is not cached, and
//! is fetched again for that repository. Calls storage only; the upstream request is the caller's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::{keys, Error, Result};
use crate::oci::Digest;
use crate::storage::{self, Storage};
use crate::upstream;

/// What a link points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Blob,
    Manifest,
}

/// Confirmations in flight, by link key.
type Confirming = Mutex<HashMap<String, Arc<OnceCell<Result<()>>>>>;

/// The links of every repository: stored, with the latest in memory.
pub(super) struct Links {
    storage: Arc<dyn Storage>,
    known: Mutex<Known>,
    confirming: Confirming,
}

impl Links {
    /// Links over `storage`, at most `memory_entries` of them also in memory.
    pub(super) fn new(storage: Arc<dyn Storage>, memory_entries: usize) -> Links {
        Links {
            storage,
            known: Mutex::new(Known::new(memory_entries)),
            confirming: Confirming::default(),
        }
    }

    /// Whether `upstream`/`repo` is known to hold `digest`: from memory, else from storage.
    pub(super) async fn holds(
        &self,
        kind: Kind,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool> {
        let key = keys::link(kind, upstream, repo, digest);
        if self.in_memory(&key) {
            return Ok(true);
        }
        match self.storage.head(&key).await {
            Ok(_) => {
                self.remember(key);
                Ok(true)
            }
            Err(storage::Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the link is in memory (no storage read): the fills' joiners ask this.
    pub(super) fn known(&self, kind: Kind, upstream: &str, repo: &str, digest: &Digest) -> bool {
        self.in_memory(&keys::link(kind, upstream, repo, digest))
    }

    /// Remember in memory only that the repository holds the digest (the upstream just answered
    /// a GET for it there); [`Links::link`] stores it once the content is committed.
    pub(super) fn note(&self, kind: Kind, upstream: &str, repo: &str, digest: &Digest) {
        self.remember(keys::link(kind, upstream, repo, digest));
    }

    /// Record, in storage and memory, that `upstream`/`repo` holds `digest`.
    pub(super) async fn link(
        &self,
        kind: Kind,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<()> {
        let key = keys::link(kind, upstream, repo, digest);
        self.storage
            .put(&key, Bytes::from(digest.to_string()))
            .await?;
        self.remember(key);
        Ok(())
    }

    /// Ask the upstream (`ask`: its `HEAD` for this repository) whether the repository holds
    /// the digest, once for all concurrent callers of the same link, and link it when it does.
    /// `ask`'s error (not found, outage) is every caller's answer; nothing is remembered then.
    pub(super) async fn confirm<F>(
        &self,
        kind: Kind,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        ask: F,
    ) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        let key = keys::link(kind, upstream, repo, digest);
        let cell = {
            let mut map = self.confirming.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                ask.await?;
                self.link(kind, upstream, repo, digest).await
            })
            .await
            .clone();
        let mut map = self.confirming.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        result
    }

    fn in_memory(&self, key: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn remember(&self, key: String) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
    }
}

/// The error for an upstream that did not confirm that `repo` holds `digest`: `unknown` (the
/// kind's "not found") when it says it does not, an outage naming the upstream when it cannot
/// answer (clients retry; unconfirmed content is never served), its own answer otherwise.
pub(super) fn refused(
    upstream: &str,
    repo: &str,
    digest: &Digest,
    e: upstream::Error,
    unknown: Error,
) -> Error {
    match e {
        upstream::Error::NotFound => unknown,
        e @ upstream::Error::TooManyRequests { .. } => Error::Upstream(e),
        e if e.is_outage() => Error::Upstream(upstream::Error::Unavailable(format!(
            "upstream {upstream:?} cannot confirm that {repo} holds {digest}, and cached content \
             is served under a repository only once its upstream confirmed it: {e}"
        ))),
        e => Error::Upstream(e),
    }
}

/// A bounded set of link keys; the oldest inserted goes first.
struct Known {
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    max: usize,
}

impl Known {
    fn new(max: usize) -> Known {
        Known {
            set: HashSet::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: String) {
        if self.max == 0 || self.set.contains(key.as_str()) {
            return;
        }
        while self.set.len() >= self.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.set.remove(&oldest);
        }
        let key: Arc<str> = Arc::from(key);
        self.set.insert(key.clone());
        self.order.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_is_bounded_oldest_first() {
        let mut k = Known::new(2);
        k.insert("a".into());
        k.insert("b".into());
        k.insert("a".into());
        k.insert("c".into());
        assert!(!k.contains("a") && k.contains("b") && k.contains("c"));
        let mut none = Known::new(0);
        none.insert("a".into());
        assert!(!none.contains("a"));
    }

    #[tokio::test]
    async fn stored_links_survive_a_new_table() {
        let (_dir, opened) = storage::temporary().await;
        let d = Digest::sha256_of(b"x");
        let links = Links::new(opened.storage.clone(), 10);
        assert!(!links.holds(Kind::Blob, "up", "a/b", &d).await.unwrap());
        links.link(Kind::Blob, "up", "a/b", &d).await.unwrap();
        let fresh = Links::new(opened.storage.clone(), 10);
        assert!(fresh.holds(Kind::Blob, "up", "a/b", &d).await.unwrap());
        assert!(!fresh.holds(Kind::Manifest, "up", "a/b", &d).await.unwrap());
        assert!(!fresh.holds(Kind::Blob, "up", "a", &d).await.unwrap());
        assert!(!fresh.holds(Kind::Blob, "other", "a/b", &d).await.unwrap());
    }
}

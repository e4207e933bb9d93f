//! Hot set: manifests and tag records kept in memory, so that warm manifest requests touch no disk.
//!
//! Bounded by bytes (manifests) and entries (tag records); the oldest inserted entry goes first.
//! Storage stays the source of truth: everything here is also on disk, and a miss here falls
//! through to storage.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use bytes::Bytes;

use super::tags::TagRecord;
use crate::oci::Digest;

/// A bounded map with first-in-first-out eviction by a weight.
struct Bounded<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    weight: usize,
    max_weight: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> Bounded<K, V> {
    fn new(max_weight: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            weight: 0,
            max_weight,
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    fn remove(&mut self, k: &K) {
        if let Some((_, w)) = self.map.remove(k) {
            self.weight -= w;
            self.order.retain(|o| o != k);
        }
    }

    fn insert(&mut self, k: K, v: V, w: usize) {
        if w > self.max_weight {
            return;
        }
        if let Some((_, old)) = self.map.insert(k.clone(), (v, w)) {
            self.weight -= old;
        } else {
            self.order.push_back(k);
        }
        self.weight += w;
        while self.weight > self.max_weight {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, ow)) = self.map.remove(&oldest) {
                self.weight -= ow;
            }
        }
    }
}

/// In-memory copies of small cache objects.
pub(super) struct Hot {
    manifests: Mutex<Bounded<Digest, (String, Bytes)>>,
    tags: Mutex<Bounded<(String, String, String), TagRecord>>,
}

impl Hot {
    /// `manifest_bytes` of manifests and `tag_entries` tag records at most.
    pub(super) fn new(manifest_bytes: usize, tag_entries: usize) -> Hot {
        Hot {
            manifests: Mutex::new(Bounded::new(manifest_bytes)),
            tags: Mutex::new(Bounded::new(tag_entries)),
        }
    }

    pub(super) fn manifest(&self, d: &Digest) -> Option<(String, Bytes)> {
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
    }

    pub(super) fn put_manifest(&self, d: Digest, media_type: String, body: Bytes) {
        let w = body.len() + media_type.len();
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d, (media_type, body), w);
    }

    pub(super) fn tag(&self, upstream: &str, repo: &str, tag: &str) -> Option<TagRecord> {
        let key = (upstream.to_string(), repo.to_string(), tag.to_string());
        self.tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
    }

    pub(super) fn remove_tag(&self, upstream: &str, repo: &str, tag: &str) {
        let key = (upstream.to_string(), repo.to_string(), tag.to_string());
        self.tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    pub(super) fn put_tag(&self, upstream: &str, repo: &str, tag: &str, record: TagRecord) {
        let key = (upstream.to_string(), repo.to_string(), tag.to_string());
        self.tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, record, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_weight_oldest_first() {
        let mut b = Bounded::new(10);
        b.insert("a", 1, 4);
        b.insert("b", 2, 4);
        b.insert("a", 3, 4);
        assert_eq!((b.get(&"a"), b.weight), (Some(3), 8));
        b.insert("c", 4, 4);
        assert_eq!(b.get(&"a"), None, "oldest inserted goes first");
        assert_eq!((b.get(&"b"), b.get(&"c"), b.weight), (Some(2), Some(4), 8));
        b.insert("huge", 5, 11);
        assert_eq!(b.get(&"huge"), None, "heavier than the bound: not kept");
    }
}

//! Access tracking: what clients are reading now (eviction skips it) and when each object was
//! last read (the LRU order eviction follows): the storage's modification time, refreshed with
//! `Storage::touch`, or for a store the replicas share, records in Redis
//! ([`super::shared_access`]; then `touch` is never called).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use super::shared_access::SharedAccess;
use crate::storage::{ByteStream, Storage};

/// Records reads of stored objects.
pub(crate) struct Access {
    storage: Arc<dyn Storage>,
    in_use: Arc<InUse>,
    /// When each key's access time was last written to storage (throttles `touch`).
    touched: Mutex<HashMap<String, tokio::time::Instant>>,
    /// A shared store's last accesses and reads go to Redis instead.
    shared: Option<Arc<SharedAccess>>,
}

impl Access {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Access {
        Access {
            storage,
            in_use: Arc::default(),
            touched: Mutex::default(),
            shared: None,
        }
    }

    /// Tracking for a store the replicas share: accesses and reads are announced in Redis.
    pub(crate) fn shared(
        storage: Arc<dyn Storage>,
        store: super::shared_access::SharedStore,
    ) -> Access {
        let in_use: Arc<InUse> = Arc::default();
        Access {
            storage,
            shared: Some(SharedAccess::new(store, in_use.clone())),
            in_use,
            touched: Mutex::default(),
        }
    }

    /// The keys being read now.
    pub(crate) fn in_use(&self) -> &Arc<InUse> {
        &self.in_use
    }

    /// Refresh an object's last-access time (for LRU eviction), at most about once a minute per
    /// object. `modified` is the stored time when the caller already knows it.
    pub(crate) async fn note(&self, key: &str, modified: Option<u64>) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // A recent write is a recent access (on a shared store, the record in Redis is what
        // orders reads of all replicas, written or not).
        if self.shared.is_none()
            && modified.is_some_and(|m| now_unix.saturating_sub(m) < EVERY.as_secs())
        {
            return;
        }
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched.get(key).is_some_and(|t| t.elapsed() < EVERY) {
                return;
            }
            if touched.len() > 100_000 {
                touched.retain(|_, t| t.elapsed() < EVERY);
            }
            touched.insert(key.to_string(), tokio::time::Instant::now());
        }
        if let Some(shared) = &self.shared {
            shared.note(key, now_unix);
            return;
        }
        if let Err(e) = self.storage.touch(key).await {
            tracing::debug!(%key, error = %e, "cannot record access time");
        }
    }
}

/// Keys being read now, with a count per key.
#[derive(Debug, Default)]
pub(crate) struct InUse {
    readers: Mutex<HashMap<String, usize>>,
}

impl InUse {
    /// Every key being read now.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Count `key` as in use until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>, key: String) -> ReaderGuard {
        *self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        ReaderGuard {
            in_use: self.clone(),
            key,
        }
    }

    /// Wrap a stream so that `key` counts as in use until the stream is dropped.
    pub(crate) fn guard(self: &Arc<Self>, key: String, stream: ByteStream) -> ByteStream {
        let guard = self.hold(key);
        stream
            .map(move |item| {
                let _keep = &guard;
                item
            })
            .boxed()
    }
}

/// Marks one key as being read; see [`InUse::hold`].
pub(crate) struct ReaderGuard {
    in_use: Arc<InUse>,
    key: String,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut map = self
            .in_use
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

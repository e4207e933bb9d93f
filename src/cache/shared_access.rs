//! Access tracking of a store several replicas share (S3 with `redis_url`): the last read of each
//! object and the reads in progress on every replica, kept in Redis so that the one replica that
//! evicts sees them all.
//!
//! The hot path never waits for Redis: a read notes its key in memory (last access, throttled as
//! for local storage) and holds it in [`InUse`]; a background task sends both every
//! [`SYNC`] in one `ZADD` each (`coord` sorted sets `access:<store>` and `reading:<store>`).
//! A read entry carries the time until which it holds ([`READ_TTL`] ahead, refreshed while the
//! read lasts), so the reads of a replica that died stop counting on their own. The evicter waits
//! [`GRACE`] between choosing its victims and deleting them, and looks at the reads again: a
//! read that began before the choice has been announced by then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::access::InUse;
use crate::coord::{self, Coord};

/// How often a replica sends its reads and last accesses to Redis.
pub(crate) const SYNC: Duration = Duration::from_secs(1);
/// How long a read entry holds without a refresh (a dead replica's reads expire after it).
pub(crate) const READ_TTL: Duration = Duration::from_secs(15);
/// How often the entries of reads still running are refreshed.
const REFRESH: Duration = Duration::from_secs(5);
/// How long the evicter waits before deleting what it chose (two syncs and some margin).
pub(crate) const GRACE: Duration = Duration::from_millis(2500);
/// Last accesses kept in memory while Redis is unreachable (the rest are dropped).
const MAX_PENDING: usize = 100_000;

/// One shared store's records in Redis.
#[derive(Clone)]
pub(crate) struct SharedStore {
    pub(crate) coord: Arc<Coord>,
    /// The store's shared name (`s3://bucket/prefix/`): the lease and set names.
    pub(crate) name: String,
}

impl SharedStore {
    pub(crate) fn new(coord: Arc<Coord>, name: String) -> SharedStore {
        SharedStore { coord, name }
    }

    fn access_set(&self) -> String {
        format!("access:{}", self.name)
    }

    fn reading_set(&self) -> String {
        format!("reading:{}", self.name)
    }

    /// Last read (unix seconds) of every key some replica has reported.
    pub(crate) async fn last_access(&self) -> coord::Result<HashMap<String, u64>> {
        Ok(self
            .coord
            .zrange_from(&self.access_set(), 0)
            .await?
            .into_iter()
            .collect())
    }

    /// The keys that a live replica reads now (and drop the entries of reads that expired).
    pub(crate) async fn being_read(&self) -> coord::Result<HashSet<String>> {
        let now = unix_ms();
        let set = self.reading_set();
        let live = self.coord.zrange_from(&set, now).await?;
        let _ = self.coord.zrem_below(&set, now).await;
        Ok(live
            .into_iter()
            .filter_map(|(member, _)| member.split_once(' ').map(|(_, key)| key.to_string()))
            .collect())
    }

    /// Forget the last-access entries of `keys` (deleted objects).
    pub(crate) async fn forget(&self, keys: &[String]) -> coord::Result<()> {
        for chunk in keys.chunks(500) {
            self.coord.zrem(&self.access_set(), chunk).await?;
        }
        Ok(())
    }
}

/// The reads of this replica, announced to the others.
pub(crate) struct SharedAccess {
    store: SharedStore,
    /// This process among the replicas (random: a restarted replica is a new reader).
    replica: String,
    in_use: Arc<InUse>,
    /// Last accesses not yet sent: key -> unix seconds.
    pending: Mutex<HashMap<String, u64>>,
    /// Keys whose read entries are in Redis now, and when they were last refreshed.
    announced: Mutex<(HashSet<String>, Option<Instant>)>,
}

impl SharedAccess {
    pub(crate) fn new(store: SharedStore, in_use: Arc<InUse>) -> Arc<SharedAccess> {
        let a = Arc::new(SharedAccess {
            store,
            replica: hex::encode(rand::random::<[u8; 8]>()),
            in_use,
            pending: Mutex::default(),
            announced: Mutex::default(),
        });
        // Outside a runtime (never in the server) nothing is sent.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sync_loop(Arc::downgrade(&a)));
        }
        a
    }

    /// `key` was read now (sent with the next sync).
    pub(crate) fn note(&self, key: &str, now_unix: u64) {
        let mut p = lock(&self.pending);
        if p.len() < MAX_PENDING || p.contains_key(key) {
            p.insert(key.to_string(), now_unix);
        }
    }

    /// Send the pending last accesses and this replica's reads.
    pub(super) async fn sync(&self) {
        let pending: Vec<(String, u64)> = lock(&self.pending).drain().collect();
        if let Err(e) = self
            .store
            .coord
            .zadd(&self.store.access_set(), &pending)
            .await
        {
            tracing::debug!(error = %e, "cannot record last accesses in redis");
        }
        let now: HashSet<String> = self.in_use.keys().into_iter().collect();
        let (ended, refresh) = {
            let a = lock(&self.announced);
            let ended: Vec<String> = a.0.difference(&now).map(|k| self.member(k)).collect();
            let stale = a.1.is_none_or(|t| t.elapsed() >= REFRESH);
            let refresh = !now.is_empty() && (stale || now.iter().any(|k| !a.0.contains(k)));
            (ended, refresh)
        };
        if refresh {
            let until = unix_ms() + READ_TTL.as_millis() as u64;
            let entries: Vec<(String, u64)> = now.iter().map(|k| (self.member(k), until)).collect();
            if let Err(e) = self
                .store
                .coord
                .zadd(&self.store.reading_set(), &entries)
                .await
            {
                tracing::debug!(error = %e, "cannot announce reads in redis");
                return;
            }
        }
        if !ended.is_empty() {
            if let Err(e) = self
                .store
                .coord
                .zrem(&self.store.reading_set(), &ended)
                .await
            {
                tracing::debug!(error = %e, "cannot withdraw ended reads from redis");
                return;
            }
        }
        let mut a = lock(&self.announced);
        if refresh {
            a.1 = Some(Instant::now());
        }
        a.0 = now;
    }

    fn member(&self, key: &str) -> String {
        format!("{} {key}", self.replica)
    }
}

async fn sync_loop(access: Weak<SharedAccess>) {
    loop {
        tokio::time::sleep(SYNC).await;
        let Some(a) = access.upgrade() else {
            return;
        };
        a.sync().await;
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! Leases: who in the fleet runs one fill (or one tag revalidation) now.
//!
//! A lease is a Redis key set with `SET NX PX lease_secs` whose value names its owner (the
//! replica URL others read the fill from, and the upstream and repository it fetches for) and a
//! fencing token from `INCR regmirror:fence`, strictly greater than every token handed out before.
//! While the holder runs, a task renews it every third of its length; renewal and release are Lua
//! scripts that act only when the key still holds this very value (compare-and-pexpire,
//! compare-and-delete), so a holder whose lease expired can never extend or delete the lease of
//! whoever took over. A holder killed mid-fill stops renewing and its lease expires within
//! `lease_secs`; the next request takes it.
//!
//! The shape follows pingora-cache's lock: [`Lease`] is the write permit (dropping it releases),
//! [`Acquired::Held`] tells the others whom to follow.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Coord, Result, PREFIX};

/// What a lease is for (the metric label and the key prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseKind {
    /// One blob download from the upstream.
    Fill,
    /// One revalidation of a tag.
    Tag,
    /// The eviction run of one shared store.
    Evict,
}

impl LeaseKind {
    fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Fill => "fill",
            LeaseKind::Tag => "tag",
            LeaseKind::Evict => "evict",
        }
    }
}

/// The value of a lease key: who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseOwner {
    /// The fencing token: greater than that of every lease taken before.
    pub(crate) token: u64,
    /// The owner's replica URL.
    pub(crate) owner: String,
    /// The upstream and repository the owner fetches for.
    pub(crate) upstream: String,
    pub(crate) repo: String,
}

/// The outcome of [`Coord::acquire`].
pub(crate) enum Acquired {
    /// The caller holds the lease now.
    Mine(Lease),
    /// Someone else does.
    Held(LeaseOwner),
}

/// Only the holder renews: extend the key if it still holds this value.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Only the holder releases: delete the key if it still holds this value.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A lease this process holds; renewed until dropped or released.
pub(crate) struct Lease {
    coord: Arc<Coord>,
    kind: LeaseKind,
    key: String,
    value: String,
    owner: LeaseOwner,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Coord {
    /// Take the lease `kind`:`name` for `upstream`/`repo`, or learn who holds it.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        kind: LeaseKind,
        name: &str,
        upstream: &str,
        repo: &str,
    ) -> Result<Acquired> {
        let key = format!("{PREFIX}lease:{}:{name}", kind.as_str());
        let ttl_ms = self.lease_ttl().as_millis() as u64;
        let owner_url = self.replica_url().unwrap_or_default();
        // Twice at most: the holder may release between our SET and our GET.
        for _ in 0..2 {
            let token: u64 = self
                .query("incr", redis::cmd("INCR").arg(format!("{PREFIX}fence")))
                .await?;
            let owner = LeaseOwner {
                token,
                owner: owner_url.clone(),
                upstream: upstream.to_string(),
                repo: repo.to_string(),
            };
            // Serializing a struct of strings and a number cannot fail.
            let value = serde_json::to_string(&owner).unwrap_or_default();
            let set: Option<String> = self
                .query(
                    "lease",
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms),
                )
                .await?;
            if set.is_some() {
                metrics::counter!(crate::metrics::LEASES, "kind" => kind.as_str(), "result" => "acquired").increment(1);
                metrics::gauge!(crate::metrics::LEASES_HELD, "kind" => kind.as_str())
                    .increment(1.0);
                return Ok(Acquired::Mine(Lease::start(
                    self.clone(),
                    kind,
                    key,
                    value,
                    owner,
                )));
            }
            let held: Option<String> = self.query("get", redis::cmd("GET").arg(&key)).await?;
            if let Some(held) = held {
                metrics::counter!(crate::metrics::LEASES, "kind" => kind.as_str(), "result" => "held").increment(1);
                let owner = serde_json::from_str(&held).unwrap_or(LeaseOwner {
                    token: 0,
                    owner: String::new(),
                    upstream: String::new(),
                    repo: String::new(),
                });
                return Ok(Acquired::Held(owner));
            }
        }
        Err(super::Error::Unavailable(
            "lease changed hands twice while it was taken".into(),
        ))
    }

    /// Who holds the lease `kind`:`name` now, if anyone.
    #[cfg(test)]
    pub(crate) async fn holder(&self, kind: LeaseKind, name: &str) -> Result<Option<LeaseOwner>> {
        let key = format!("{PREFIX}lease:{}:{name}", kind.as_str());
        let held: Option<String> = self.query("get", redis::cmd("GET").arg(&key)).await?;
        Ok(held.and_then(|h| serde_json::from_str(&h).ok()))
    }
}

impl Lease {
    fn start(
        coord: Arc<Coord>,
        kind: LeaseKind,
        key: String,
        value: String,
        owner: LeaseOwner,
    ) -> Lease {
        let every = (coord.lease_ttl() / 3).max(Duration::from_millis(200));
        let renewal = tokio::spawn({
            let (coord, key, value, label) =
                (coord.clone(), key.clone(), value.clone(), kind.as_str());
            async move {
                let ms = coord.lease_ttl().as_millis() as u64;
                let script = redis::Script::new(RENEW);
                loop {
                    tokio::time::sleep(every).await;
                    let mut inv = script.prepare_invoke();
                    inv.key(&key).arg(&value).arg(ms);
                    match coord.script::<i64>("renew", inv).await {
                        Ok(1) => {}
                        Ok(_) => {
                            // Expired (Redis unreachable for a whole lease) and maybe taken.
                            tracing::warn!(%key, "lease lost before the work ended; another replica may repeat it");
                            metrics::counter!(crate::metrics::LEASES, "kind" => label, "result" => "lost").increment(1);
                            return;
                        }
                        // Redis is down: keep trying; the key expires on its own if we die.
                        Err(_) => {}
                    }
                }
            }
        });
        Lease {
            coord,
            kind,
            key,
            value,
            owner,
            renewal,
            released: false,
        }
    }

    /// The fencing token of this lease.
    pub(crate) fn token(&self) -> u64 {
        self.owner.token
    }

    /// Renew the lease now: Ok(true) while it is still this holder's, Ok(false) once it expired
    /// (and maybe went to someone else). The fence of work done in steps: check before each one.
    pub(crate) async fn still_held(&self) -> Result<bool> {
        let script = redis::Script::new(RENEW);
        let mut inv = script.prepare_invoke();
        inv.key(&self.key)
            .arg(&self.value)
            .arg(self.coord.lease_ttl().as_millis() as u64);
        Ok(self.coord.script::<i64>("renew", inv).await? == 1)
    }

    /// Stop renewing without releasing, as a killed process does (tests).
    #[cfg(test)]
    pub(crate) fn stop_renewing(&self) {
        self.renewal.abort();
    }

    /// Release now; true when the key still was ours and is deleted (dropping releases too,
    /// in the background).
    #[cfg(test)]
    pub(crate) async fn release(mut self) -> bool {
        self.released = true;
        self.renewal.abort();
        metrics::gauge!(crate::metrics::LEASES_HELD, "kind" => self.kind.as_str()).decrement(1.0);
        release(&self.coord, &self.key, &self.value).await
    }
}

async fn release(coord: &Coord, key: &str, value: &str) -> bool {
    let script = redis::Script::new(RELEASE);
    let mut inv = script.prepare_invoke();
    inv.key(key).arg(value);
    matches!(coord.script::<i64>("release", inv).await, Ok(1))
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.renewal.abort();
        metrics::gauge!(crate::metrics::LEASES_HELD, "kind" => self.kind.as_str()).decrement(1.0);
        let (coord, key, value) = (self.coord.clone(), self.key.clone(), self.value.clone());
        // Outside a runtime (process exit) the key simply expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release(&coord, &key, &value).await });
        }
    }
}

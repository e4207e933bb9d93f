//! Coordination of replicas through Redis: leases with fencing tokens, small shared records, the
//! secret replicas show each other, and the HTTP client that reads a fill from the replica that
//! owns it.
//!
//! Owns: the Redis connection (one server through a `ConnectionManager`, a Cluster, or the master
//! a set of sentinels names; see `connect`), its
//! health (`regmirror_redis_up`, errors, latency; one log line a minute while it is down), and
//! the key layout below. Must not call the cache or the api: the cache decides what a lease or a
//! record means; this room only keeps them.
//!
//! Every call fails fast with [`Error::Unavailable`] while Redis is unreachable, so callers fall
//! back to what one replica can do alone; nothing here ever blocks a request for longer than
//! [`COMMAND_TIMEOUT`].
//!
//! ```text
//! regmirror:fence                         INCR counter: the fencing token of every lease
//! regmirror:lease:fill:<digest>           {"token","owner","upstream","repo"}, PX lease_secs
//! regmirror:lease:tag:<up>/<repo>:<tag>   same shape, the revalidation of one tag
//! regmirror:lease:evict:<store>           same shape, the eviction run of one shared store
//! regmirror:access:<store>                ZSET storage key -> unix seconds of its last read
//! regmirror:reading:<store>               ZSET "<replica id> <storage key>" -> unix ms until
//!                                         which that replica says it reads the key
//!                                         (<store>: a shared store's name, s3://bucket/prefix/)
//! regmirror:tag:<up>/<repo>:<tag>         a shared tag record (JSON, set by the cache), PX
//! regmirror:peer-secret                   random; replicas send it on internal fill requests
//! ```

mod connect;
mod lease;
pub(crate) mod peer;
mod sets;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::TlsCertificates;

pub(crate) use lease::{Acquired, LeaseKind};

use crate::config::coord::CoordSettings;

/// The longest one Redis command may take before it counts as Redis being unavailable.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Prefix of every key regmirror writes.
const PREFIX: &str = "regmirror:";

/// A coordination failure. Callers treat every one as "coordinate alone for now".
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// Redis cannot be reached, refused the command, or did not answer in time.
    #[error("redis unavailable: {0}")]
    Unavailable(Arc<str>),
    /// The replica owning a fill cannot be reached or does not have it.
    #[error("peer replica {url}: {reason}")]
    Peer { url: String, reason: Arc<str> },
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The coordination client of one process.
pub(crate) struct Coord {
    settings: CoordSettings,
    /// How other replicas reach this one (set once the listener is bound).
    replica_url: Mutex<Option<String>>,
    conn: Mutex<Option<Conn>>,
    /// Sentinel: who names the master. The connection to the master is dropped when a command
    /// on it fails, and the next one asks again (a failover promoted a replica).
    sentinels: Option<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    /// Sentinel: the address of the master `conn` is on.
    master: Mutex<Option<redis::ConnectionAddr>>,
    /// `redis_ca_file`, for the connections made later.
    certs: Option<TlsCertificates>,
    /// A Cluster or a Sentinel master connects eagerly: at most one attempt a second while down.
    last_connect: Mutex<Option<Instant>>,
    health: Mutex<Health>,
    secret: Mutex<Option<Arc<str>>>,
    peers: peer::Peers,
}

#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    /// When the last command failed: for a second after, commands fail at once (a black-holed
    /// Redis must not cost every request the command timeout).
    failed_at: Option<Instant>,
    last_logged: Option<Instant>,
    last_error: Option<String>,
}

/// What `/readyz` says about Redis.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    /// The Redis addresses, without passwords.
    pub(crate) target: String,
    /// None while Redis answers; else how long it has not, and the last error.
    pub(crate) down: Option<(Duration, String)>,
}

impl Coord {
    /// A client for `settings`. Connects lazily: Redis down at start-up is not an error.
    pub(crate) fn new(settings: CoordSettings) -> Result<Arc<Coord>> {
        let certs = connect::certificates(&settings)?;
        let sentinels = match &settings.sentinel {
            Some(master) => Some(tokio::sync::Mutex::new(connect::sentinels(
                &settings.nodes,
                master,
                certs.clone(),
            )?)),
            None => None,
        };
        let conn = match settings.nodes.as_slice() {
            [one] if sentinels.is_none() => {
                Some(Conn::Single(connect::single(one, certs.clone())?))
            }
            _ => None,
        };
        metrics::gauge!(crate::metrics::REDIS_UP).set(0.0);
        Ok(Arc::new(Coord {
            replica_url: Mutex::new(settings.replica_url.clone()),
            settings,
            conn: Mutex::new(conn),
            sentinels,
            master: Mutex::new(None),
            certs,
            last_connect: Mutex::new(None),
            // Down until Redis first answers.
            health: Mutex::new(Health {
                down_since: Some(Instant::now()),
                ..Health::default()
            }),
            secret: Mutex::new(None),
            peers: peer::Peers::new(),
        }))
    }

    /// The lease length.
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    /// Set how other replicas reach this one, unless configured (`replica_url`).
    pub(crate) fn set_replica_url(&self, derived: String) {
        let mut u = lock(&self.replica_url);
        if u.is_none() {
            tracing::info!(replica_url = %derived, "coordination: other replicas reach this one here");
            *u = Some(derived);
        }
    }

    /// How other replicas reach this one.
    pub(crate) fn replica_url(&self) -> Option<String> {
        lock(&self.replica_url).clone()
    }

    /// The HTTP client to other replicas.
    pub(crate) fn peers(&self) -> &peer::Peers {
        &self.peers
    }

    /// Redis as `/readyz` reports it.
    pub(crate) fn status(&self) -> Status {
        let h = lock(&self.health);
        let target = self.target();
        Status {
            target,
            down: h.down_since.map(|s| {
                (
                    s.elapsed(),
                    h.last_error
                        .clone()
                        .unwrap_or_else(|| "not connected yet".into()),
                )
            }),
        }
    }

    /// The Redis addresses, without passwords, as `/readyz` shows them.
    fn target(&self) -> String {
        let nodes = self
            .settings
            .nodes
            .iter()
            .map(|n| redact(n))
            .collect::<Vec<_>>()
            .join(",");
        match &self.settings.sentinel {
            Some(m) => format!("sentinels {nodes} master {:?}", m.name),
            None => nodes,
        }
    }

    /// Whether Redis answered the last command.
    #[cfg(test)]
    pub(crate) fn is_up(&self) -> bool {
        lock(&self.health).down_since.is_none()
    }

    /// Ping Redis (start-up, and the readiness report).
    pub(crate) async fn ping(&self) -> Result<()> {
        self.follow_master().await;
        let _: String = self.query("ping", &redis::cmd("PING")).await?;
        Ok(())
    }

    /// Sentinel: when the sentinels name another master than the one connected to (an
    /// operator's failover leaves the old one up and taking writes until it is demoted), move.
    async fn follow_master(&self) {
        let Some(s) = &self.sentinels else { return };
        if lock(&self.conn).is_none() {
            return; // the next command asks the sentinels anyway
        }
        let Ok((m, addr)) = Box::pin(connect::sentinel_master(s)).await else {
            return; // sentinels unreachable: keep the master we have
        };
        let mut current = lock(&self.master);
        if current.as_ref() != Some(&addr) {
            tracing::info!(master = %addr, "sentinel names another master: moving to it");
            *lock(&self.conn) = Some(Conn::Single(m));
            *current = Some(addr);
        }
    }

    /// The shared secret of internal fill requests: made by the first replica, read by the rest.
    pub(crate) async fn peer_secret(&self) -> Result<Arc<str>> {
        if let Some(s) = lock(&self.secret).clone() {
            return Ok(s);
        }
        let key = format!("{PREFIX}peer-secret");
        let mine = hex::encode(rand::random::<[u8; 32]>());
        let _: Option<String> = self
            .query("secret", redis::cmd("SET").arg(&key).arg(&mine).arg("NX"))
            .await?;
        let s: String = self.query("secret", redis::cmd("GET").arg(&key)).await?;
        let s: Arc<str> = s.into();
        *lock(&self.secret) = Some(s.clone());
        Ok(s)
    }

    /// The secret, only if already known (the fill endpoint never waits for Redis).
    pub(crate) fn known_secret(&self) -> Option<Arc<str>> {
        lock(&self.secret).clone()
    }

    /// A small shared record (JSON bytes), if present.
    pub(crate) async fn get_record(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.query("get", redis::cmd("GET").arg(format!("{PREFIX}{name}")))
            .await
    }

    /// Store a small shared record for `ttl`.
    pub(crate) async fn put_record(&self, name: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let ms = ttl.as_millis().max(1) as u64;
        let _: () = self
            .query(
                "set",
                redis::cmd("SET")
                    .arg(format!("{PREFIX}{name}"))
                    .arg(value)
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(())
    }

    async fn connection(&self) -> Result<Conn> {
        if let Some(c) = lock(&self.conn).clone() {
            return Ok(c);
        }
        {
            let mut last = lock(&self.last_connect);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(Error::Unavailable("not connected (retrying)".into()));
            }
            *last = Some(Instant::now());
        }
        // Boxed: the lookups are deep futures, and every request's future would carry them.
        let c = match &self.sentinels {
            Some(s) => {
                let (m, addr) = Box::pin(connect::sentinel_master(s)).await?;
                *lock(&self.master) = Some(addr);
                Conn::Single(m)
            }
            None => Conn::Cluster(
                Box::pin(connect::cluster(&self.settings.nodes, self.certs.clone())).await?,
            ),
        };
        *lock(&self.conn) = Some(c.clone());
        Ok(c)
    }

    /// Run one command, with the timeout, the metrics and the health bookkeeping.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        self.run(op, async |conn| match conn {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        })
        .await
    }

    /// Run a Lua script (compare-and-delete, compare-and-renew).
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.run(op, async |conn| match conn {
            Conn::Single(mut c) => invocation.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => invocation.invoke_async(&mut c).await,
        })
        .await
    }

    /// One call on a connection: fail fast after a recent failure, bounded by the command
    /// timeout, timed and counted.
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl AsyncFnOnce(Conn) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.fail_fast()?;
        let started = Instant::now();
        let result = async {
            let conn = self.connection().await?;
            let r = match tokio::time::timeout(COMMAND_TIMEOUT, call(conn)).await {
                Ok(r) => r.map_err(unavailable),
                Err(_) => Err(Error::Unavailable("no answer in time".into())),
            };
            if r.is_err() && self.sentinels.is_some() {
                // The master may have gone, or become a replica (READONLY): ask the sentinels.
                *lock(&self.conn) = None;
            }
            r
        }
        .await;
        self.record(op, started, &result);
        result
    }

    /// Err at once within a second of a failure.
    fn fail_fast(&self) -> Result<()> {
        let h = lock(&self.health);
        match h.failed_at {
            Some(t) if t.elapsed() < Duration::from_secs(1) => Err(Error::Unavailable(
                h.last_error.clone().unwrap_or_default().into(),
            )),
            _ => Ok(()),
        }
    }

    fn record<T>(&self, op: &'static str, started: Instant, result: &Result<T>) {
        metrics::histogram!(crate::metrics::REDIS_SECONDS, "op" => op)
            .record(started.elapsed().as_secs_f64());
        let mut h = lock(&self.health);
        match result {
            Ok(_) => {
                h.failed_at = None;
                if let Some(since) = h.down_since.take() {
                    tracing::info!(
                        down_secs = since.elapsed().as_secs(),
                        "redis reachable again: coordinating with the other replicas"
                    );
                }
                metrics::gauge!(crate::metrics::REDIS_UP).set(1.0);
            }
            Err(e) => {
                metrics::counter!(crate::metrics::REDIS_ERRORS, "op" => op).increment(1);
                metrics::gauge!(crate::metrics::REDIS_UP).set(0.0);
                h.down_since.get_or_insert_with(Instant::now);
                h.failed_at = Some(Instant::now());
                h.last_error = Some(e.to_string());
                if h.last_logged
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    h.last_logged = Some(Instant::now());
                    tracing::warn!(error = %e, "redis unavailable: serving what is cached and coalescing fills per replica until it is back (logged once a minute)");
                }
            }
        }
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(e.to_string().into())
}

/// A Redis URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod modes_tests;
#[cfg(test)]
pub(crate) mod tests;

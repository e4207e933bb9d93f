//! The single-flight of blob fills: one upstream download per digest, however many clients ask.
//!
//! [`FillTable`] is the whole interface the blob path uses: a request either joins the [`Fill`]
//! in flight or gets the [`FillPermit`] and must run the download. The permit has two ways out,
//! [`FillPermit::finish`] and [`FillPermit::fail`]; dropping it without either (a panic, a
//! cancelled task) fails the fill, so no joiner waits forever. Joiners follow a fill's
//! progress: [`Fill::wait_started`] until the upstream answered, then the spool's own progress.
//!
//! [`LocalFills`] is the in-process table. [`super::shared_fills::SharedFills`] puts a Redis
//! lease behind it: the permit then says where the bytes come from ([`FillSource`]): the
//! upstream, for the lease holder, or the replica holding the lease, for everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use super::Error;
use crate::oci::Digest;
use crate::staging::Spool;

/// The single-flight table of blob fills.
#[async_trait::async_trait]
pub(crate) trait FillTable: Send + Sync + 'static {
    /// Join the fill of `digest` in flight, or become its owner; `upstream`/`repo` is what the
    /// fill would fetch for.
    async fn start_or_join(&self, digest: &Digest, upstream: &str, repo: &str) -> Flight;
    /// The fill of `digest` in flight, if any (never starts one).
    fn join(&self, digest: &Digest) -> Option<Arc<Fill>>;
    /// Fills running now.
    fn in_flight(&self) -> usize;
}

/// What [`FillTable::start_or_join`] handed out.
pub(crate) enum Flight {
    /// Another request is already downloading this digest.
    Join(Arc<Fill>),
    /// The caller must run the fill (its own request joins it through the `Fill`).
    Start(Arc<Fill>, FillPermit),
}

/// How a fill stands, as its joiners see it.
#[derive(Clone, Default)]
pub(crate) struct FillStatus {
    /// The spool, once the upstream answered.
    pub(crate) spool: Option<Arc<Spool>>,
    /// Set when the fill ends: Ok when verified and committed.
    pub(crate) outcome: Option<Result<(), Error>>,
}

/// One download in flight, as joiners hold it.
pub(crate) struct Fill {
    digest: Digest,
    status: watch::Receiver<FillStatus>,
}

impl Fill {
    /// The blob being fetched.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    fn ended(&self) -> bool {
        self.status.borrow().outcome.is_some()
    }

    /// Wait until the upstream has answered (a spool exists) or the fill ended, and return the
    /// status then.
    pub(crate) async fn wait_started(&self) -> FillStatus {
        let mut rx = self.status.clone();
        loop {
            let s = rx.borrow_and_update().clone();
            if s.spool.is_some() || s.outcome.is_some() {
                return s;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }
}

/// Where a fill reads its bytes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FillSource {
    /// The upstream registry (this replica holds the fleet's lease, or there is no fleet).
    Upstream,
    /// The replica holding the lease: its URL, the lease's fencing token, and the upstream and
    /// repository it fetches for.
    Peer {
        owner: String,
        token: u64,
        upstream: String,
        repo: String,
    },
}

/// The right, and the duty, to run one fill.
pub(crate) struct FillPermit {
    tx: watch::Sender<FillStatus>,
    fill: Arc<Fill>,
    table: Weak<LocalFillsInner>,
    source: FillSource,
    /// What must live as long as the fill (a lease), dropped when the permit ends.
    held: Mutex<Option<Box<dyn Send + Sync>>>,
}

impl FillPermit {
    /// Where the bytes come from.
    pub(crate) fn source(&self) -> &FillSource {
        &self.source
    }

    pub(super) fn set_source(&mut self, source: FillSource) {
        self.source = source;
    }

    /// Keep `guard` (a lease) until the fill ends.
    pub(super) fn hold(&self, guard: Box<dyn Send + Sync>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }

    /// The upstream answered: joiners may read `spool` from now on.
    pub(crate) fn started(&self, spool: Arc<Spool>) {
        self.tx.send_modify(|s| s.spool = Some(spool));
    }

    /// The blob is verified and committed (or was found committed): joiners read it, and the
    /// table forgets the fill.
    pub(crate) fn finish(mut self) {
        self.end(Ok(()));
    }

    /// The fill failed: every joiner gets `e`, and the table forgets the fill, so the next
    /// request starts a fresh one.
    pub(crate) fn fail(mut self, e: Error) {
        self.end(Err(e));
    }

    fn end(&mut self, outcome: Result<(), Error>) {
        if self.fill.ended() {
            return;
        }
        self.tx.send_modify(|s| s.outcome = Some(outcome));
        if let Some(table) = self.table.upgrade() {
            table.remove(&self.fill);
        }
        // Release the lease as soon as the fill is over, not when the permit is freed.
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Drop for FillPermit {
    fn drop(&mut self) {
        self.end(Err(Error::Abandoned));
    }
}

/// The in-process fill table: fills of this process, by digest.
#[derive(Default)]
pub(crate) struct LocalFills {
    inner: Arc<LocalFillsInner>,
}

#[derive(Default)]
struct LocalFillsInner {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl LocalFillsInner {
    /// Forget `fill` (only if it is still the registered one).
    fn remove(&self, fill: &Arc<Fill>) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&fill.digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(&fill.digest);
        }
    }
}

impl LocalFills {
    /// [`FillTable::start_or_join`] without waiting: the in-process decision.
    pub(super) fn start_or_join_now(&self, digest: &Digest) -> Flight {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(digest) {
            if !f.ended() {
                return Flight::Join(f.clone());
            }
        }
        let (tx, rx) = watch::channel(FillStatus::default());
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            status: rx,
        });
        map.insert(digest.clone(), fill.clone());
        let permit = FillPermit {
            tx,
            fill: fill.clone(),
            table: Arc::downgrade(&self.inner),
            source: FillSource::Upstream,
            held: Mutex::new(None),
        };
        Flight::Start(fill, permit)
    }
}

#[async_trait::async_trait]
impl FillTable for LocalFills {
    async fn start_or_join(&self, digest: &Digest, _upstream: &str, _repo: &str) -> Flight {
        self.start_or_join_now(digest)
    }

    fn join(&self, digest: &Digest) -> Option<Arc<Fill>> {
        let map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(digest).filter(|f| !f.ended()).cloned()
    }

    fn in_flight(&self) -> usize {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[tokio::test]
    async fn one_owner_per_digest_until_it_ends() {
        let t = LocalFills::default();
        let Flight::Start(fill, permit) = t.start_or_join_now(&digest(1)) else {
            panic!("the first request owns the fill");
        };
        assert!(
            matches!(t.start_or_join_now(&digest(1)), Flight::Join(f) if Arc::ptr_eq(&f, &fill))
        );
        assert!(matches!(t.start_or_join_now(&digest(2)), Flight::Start(..)));
        assert!(t.join(&digest(1)).is_some());
        permit.finish();
        assert!(matches!(fill.wait_started().await.outcome, Some(Ok(()))));
        assert!(t.join(&digest(1)).is_none(), "an ended fill is forgotten");
        assert!(matches!(t.start_or_join_now(&digest(1)), Flight::Start(..)));
    }

    #[tokio::test]
    async fn a_dropped_permit_fails_the_fill_for_every_joiner() {
        let t = LocalFills::default();
        let Flight::Start(fill, permit) = t.start_or_join_now(&digest(3)) else {
            panic!("owner");
        };
        let joiner = tokio::spawn({
            let fill = fill.clone();
            async move { fill.wait_started().await.outcome }
        });
        drop(permit);
        assert!(matches!(joiner.await.unwrap(), Some(Err(Error::Abandoned))));
        assert_eq!(t.in_flight(), 0);
    }
}

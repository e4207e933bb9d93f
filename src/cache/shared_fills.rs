//! The fill single-flight across replicas: one upstream download per blob in the whole fleet.
//!
//! In front sits the in-process table ([`LocalFills`]): requests of this replica for a blob
//! always share one fill. The fill that starts here then asks Redis for the blob's lease
//! (`coord::Coord::acquire`):
//! - taken: this replica downloads from the upstream, and holds the lease (renewed) until the
//!   fill ends; other replicas read the bytes from its spool through the internal fill endpoint;
//! - held by another replica: the fill reads from that replica ([`FillSource::Peer`]) instead of
//!   the upstream, verifies the digest itself, and commits to this replica's storage;
//! - Redis unavailable, or the lease is a leftover of this very replica: the upstream, with
//!   per-replica coalescing only (never an error because of Redis).

use std::sync::Arc;

use super::flight::{Fill, FillSource, FillTable, Flight, LocalFills};
use crate::coord::{Acquired, Coord, LeaseKind};
use crate::oci::Digest;

/// Fills coalesced in this process and leased across the fleet.
pub(crate) struct SharedFills {
    local: LocalFills,
    coord: Arc<Coord>,
}

impl SharedFills {
    pub(crate) fn new(coord: Arc<Coord>) -> SharedFills {
        SharedFills {
            local: LocalFills::default(),
            coord,
        }
    }
}

#[async_trait::async_trait]
impl FillTable for SharedFills {
    async fn start_or_join(&self, digest: &Digest, upstream: &str, repo: &str) -> Flight {
        let (fill, mut permit) = match self.local.start_or_join_now(digest) {
            Flight::Join(f) => return Flight::Join(f),
            Flight::Start(fill, permit) => (fill, permit),
        };
        let name = digest.to_string();
        match self
            .coord
            .acquire(LeaseKind::Fill, &name, upstream, repo)
            .await
        {
            Ok(Acquired::Mine(lease)) => permit.hold(Box::new(lease)),
            Ok(Acquired::Held(o)) if !o.owner.is_empty() && Some(&o.owner) != self.coord.replica_url().as_ref() => {
                permit.set_source(FillSource::Peer {
                    owner: o.owner,
                    token: o.token,
                    upstream: o.upstream,
                    repo: o.repo,
                });
            }
            // A lease of this replica's previous life (it was killed and restarted): it is dead,
            // fetch without waiting for it to expire.
            Ok(Acquired::Held(_)) => {}
            Err(e) => {
                tracing::debug!(%digest, error = %e, "no fill lease: coalescing in this replica only");
                metrics::counter!(crate::metrics::LEASES, "kind" => "fill", "result" => "unavailable").increment(1);
            }
        }
        Flight::Start(fill, permit)
    }

    fn join(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.local.join(digest)
    }

    fn in_flight(&self) -> usize {
        self.local.in_flight()
    }
}

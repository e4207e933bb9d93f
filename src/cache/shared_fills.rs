//! The fill single-flight across replicas: one upstream download per blob in the whole fleet.
//!
//! In front sits the in-process table ([`LocalFills`]): requests of this replica for a blob
//! always share one fill. The fill that starts here then asks Redis for the blob's lease
//! (`coord::Coord::acquire`):
//! - taken: this replica downloads from the upstream, and holds the lease (renewed) until the
//!   fill ends; other replicas read the bytes from its spool through the internal fill endpoint;
//! - held by another replica: the fill reads from that replica ([`FillSource::Peer`]) instead of
//!   the upstream, verifies the digest itself, and commits to this replica's storage;
//! - taken, but another replica announced that it stored the blob: read it from there;
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

impl SharedFills {
    /// Another replica that stored `digest` (as it announced after its fill).
    async fn holder_of(&self, digest: &Digest) -> Option<String> {
        let raw = self.coord.get_record(&stored_record(digest)).await.ok()??;
        let url = String::from_utf8(raw).ok()?;
        (Some(&url) != self.coord.replica_url().as_ref()).then_some(url)
    }
}

/// The record naming the last replica that stored a blob.
pub(super) fn stored_record(digest: &Digest) -> String {
    format!("stored:{digest}")
}

/// How long a replica is named as holding a blob it stored (it may evict it sooner: then the
/// reader falls back to the upstream).
pub(super) const STORED_RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

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
            Ok(Acquired::Mine(lease)) => {
                // A replica that already stored this blob gives it faster than the upstream,
                // and without another upstream download.
                if let Some(holder) = self.holder_of(digest).await {
                    permit.set_source(FillSource::Peer {
                        owner: holder,
                        token: lease.token(),
                        upstream: upstream.to_string(),
                        repo: repo.to_string(),
                    });
                }
                permit.hold(Box::new(lease));
            }
            Ok(Acquired::Held(o))
                if !o.owner.is_empty() && Some(&o.owner) != self.coord.replica_url().as_ref() =>
            {
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

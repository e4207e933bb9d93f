//! Fills shared between replicas, both sides of the internal fill endpoint.
//!
//! Joining (`fetch_from_owner`): a fill whose lease another replica holds reads the bytes from that
//! replica as they arrive there, into this replica's own spool, where they are hashed like an
//! upstream's: a wrong byte fails the fill and cuts every client off, a verified blob is
//! committed to this replica's storage. When the owner cannot be reached before its first byte
//! (killed, partitioned), the fill takes the lease over if it expired, and else downloads from
//! the upstream itself: a second upstream fetch is better than a failed pull. An owner lost in
//! the middle fails the fill; the client retries and the next fill starts afresh.
//!
//! Serving (`for_peer`): the spool of a fill in flight here (all but its last byte until the
//! digest matched, then all of it), or the committed blob; only to a caller that shows the
//! fleet's secret.

use futures::StreamExt;

use super::blobs::{BlobBody, BlobCache};
use super::flight::{FillPermit, FillSource};
use super::links::Kind;
use super::{Error, Result};
use crate::coord::{Acquired, LeaseKind};
use crate::oci::Digest;
use crate::staging::ByteStream;
use crate::upstream::{self, BlobStream, Upstream};

/// What the internal fill endpoint answers.
pub(crate) struct PeerFill {
    /// The blob's total size, when known.
    pub(crate) size: Option<u64>,
    /// The bytes from the requested offset.
    pub(crate) body: ByteStream,
}

impl BlobCache {
    /// Start reading a fill from the replica holding its lease (see the module doc); true with
    /// the stream when it is relayed from the owner, false when this replica fetches it itself.
    pub(super) async fn fetch_from_owner(
        &self,
        up: &Upstream,
        repo: &str,
        digest: &Digest,
        permit: &FillPermit,
    ) -> Result<(BlobStream, bool)> {
        let FillSource::Peer {
            owner,
            token,
            upstream,
            repo: owner_repo,
        } = permit.source()
        else {
            return Ok((self.fetch_upstream(up, repo, digest).await?, false));
        };
        let coord = self.coord().ok_or(Error::Abandoned)?;
        // The owner fetched for its repository: this one must be known to hold the blob too.
        if (upstream.as_str(), owner_repo.as_str()) == (up.name(), repo) {
            self.links.note(Kind::Blob, up.name(), repo, digest);
        } else if !self.links.known(Kind::Blob, up.name(), repo, digest) {
            self.confirm_blob(up, repo, digest).await?;
        }
        let started = async {
            let secret = coord.peer_secret().await?;
            coord.peers().fetch(owner, digest, 0, *token, &secret).await
        };
        match started.await {
            Ok(peer) => {
                metrics::counter!(crate::metrics::PEER_FILLS, "role" => "joined", "outcome" => "started").increment(1);
                tracing::info!(%digest, owner = %owner, token, "joining the fill of another replica");
                let url = owner.clone();
                let body = peer
                    .body
                    .map(move |c| {
                        c.map_err(|e| {
                            upstream::Error::Unavailable(format!("fill relayed from {url}: {e}"))
                        })
                    })
                    .boxed();
                let stream = BlobStream {
                    size: peer.size,
                    body,
                };
                Ok((stream, true))
            }
            Err(e) => {
                tracing::warn!(%digest, owner = %owner, error = %e, "the replica owning this fill cannot be read; fetching it here");
                metrics::counter!(crate::metrics::PEER_FILLS, "role" => "joined", "outcome" => "owner_unreachable").increment(1);
                // Take the lease over if it expired (its owner died); fetch either way.
                if let Ok(Acquired::Mine(lease)) = coord
                    .acquire(LeaseKind::Fill, &digest.to_string(), up.name(), repo)
                    .await
                {
                    metrics::counter!(crate::metrics::LEASES, "kind" => "fill", "result" => "taken_over").increment(1);
                    permit.hold(Box::new(lease));
                }
                Ok((self.fetch_upstream(up, repo, digest).await?, false))
            }
        }
    }

    /// Tell the fleet this replica stored `digest` (best effort, in the background).
    pub(super) fn announce_stored(&self, digest: &Digest) {
        let Some(coord) = self.coord().cloned() else {
            return;
        };
        let Some(me) = coord.replica_url() else {
            return;
        };
        let name = super::shared_fills::stored_record(digest);
        tokio::spawn(async move {
            let ttl = super::shared_fills::STORED_RECORD_TTL;
            let _ = coord.put_record(&name, me.as_bytes(), ttl).await;
        });
    }

    /// The bytes of `digest` from `from` for another replica: its fill in flight here, or the
    /// committed blob. None: neither (or coordination is off, or the secret is wrong).
    pub(crate) async fn for_peer(
        &self,
        digest: &Digest,
        from: u64,
        secret: Option<&str>,
    ) -> Result<Option<PeerFill>> {
        let Some(coord) = self.coord() else {
            return Ok(None);
        };
        let known = match coord.known_secret() {
            Some(s) => s,
            None => match coord.peer_secret().await {
                Ok(s) => s,
                Err(_) => return Ok(None),
            },
        };
        if secret.is_none_or(|s| !constant_time_eq(s.as_bytes(), known.as_bytes())) {
            return Ok(None);
        }
        if let Some(fill) = self.fills_join(digest) {
            let state = fill.wait_started().await;
            if let Some(spool) = state.spool {
                metrics::counter!(crate::metrics::PEER_FILLS, "role" => "served", "outcome" => "spool").increment(1);
                return Ok(Some(PeerFill {
                    size: spool.size(),
                    body: spool.reader(from, None),
                }));
            }
            if let Some(Err(e)) = state.outcome {
                return Err(e);
            }
        }
        let Some(blob) = self.stored(digest, from).await? else {
            return Ok(None);
        };
        metrics::counter!(crate::metrics::PEER_FILLS, "role" => "served", "outcome" => "stored")
            .increment(1);
        let body = match blob.body {
            Some(BlobBody::File(r)) => r.into_stream(),
            Some(BlobBody::Stream(s)) => s,
            None => return Ok(None),
        };
        Ok(Some(PeerFill {
            size: blob.size,
            body,
        }))
    }
}

/// Compare secrets without leaking where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

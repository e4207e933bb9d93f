//! Manifests from the upstream: the one fetch of a flight (GET, or a HEAD revalidating a cached
//! tag), stale answers when the upstream is out, exact-Accept passthrough, and upstream errors as
//! cache errors. The cached side (memos, tag records, stored manifests) is in `manifests`.

use bytes::Bytes;

use super::links::Kind;
use super::manifests::{manifest, Manifest, ManifestCache};
use super::tags::TagRecord;
use super::{encode_manifest, keys, CacheStatus, Error, Result};
use crate::oci::{media, Digest, Reference};
use crate::upstream::{self, ManifestHead, Upstream};

impl ManifestCache {
    /// Fetch (or revalidate) from the upstream; the one call per flight.
    pub(super) async fn fetch_manifest(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        let Reference::Tag(tag) = reference else {
            return self
                .get_manifest_upstream(up, repo, reference, accept)
                .await;
        };
        let cached = self.cached_tag(up.name(), repo, tag).await?;
        let Some(cached) = cached else {
            return self
                .get_manifest_upstream(up, repo, reference, accept)
                .await;
        };
        // A caller that found no fresh record before it got here may arrive just after another
        // flight stored or confirmed the tag: that answer is the one to give, without a HEAD.
        if self
            .tag_ttl
            .is_fresh(self.policies.get(up.name()), up.name(), repo, tag)
        {
            return Ok(cached);
        }
        // One replica of the fleet revalidates; the others take the record it shares.
        let _lead = match self.lead_revalidation(up, repo, tag).await {
            Some(guard) => guard,
            None => {
                if self.confirmed_by_fleet(up, repo, tag, &cached).await {
                    return Ok(cached);
                }
                Box::new(())
            }
        };
        // Revalidate with a HEAD: Docker Hub does not count HEADs against the pull limit.
        match self
            .head_manifest_upstream(up, repo, reference, accept)
            .await
        {
            Ok(h) if h.digest == cached.digest => {
                let record = TagRecord::new(&cached.digest, &cached.media_type, cached.size);
                self.tag_confirmed(up, repo, tag, record);
                Ok(cached)
            }
            Ok(_) => match self
                .get_manifest_upstream(up, repo, reference, accept)
                .await
            {
                Err(Error::Upstream(e)) if e.is_outage() => {
                    Ok(self.stale(up, repo, tag, cached, &e))
                }
                other => other,
            },
            Err(Error::Upstream(e)) if e.is_outage() => Ok(self.stale(up, repo, tag, cached, &e)),
            Err(e) => Err(e),
        }
    }

    pub(super) fn stale(
        &self,
        up: &Upstream,
        repo: &str,
        tag: &str,
        mut cached: Manifest,
        e: &dyn std::fmt::Display,
    ) -> Manifest {
        tracing::warn!(upstream = %up.name(), %repo, %tag, error = %e, "upstream unavailable; serving cached manifest (may be stale)");
        cached.status = CacheStatus::Stale;
        metrics::counter!(crate::metrics::STALE_SERVED, "upstream" => up.name().to_string())
            .increment(1);
        cached
    }

    /// GET a manifest from the upstream, verify it and store it (and the tag record).
    async fn get_manifest_upstream(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        let (digest, media_type, body) = self
            .receive_manifest(up, repo, reference, &media::upstream_accept(accept))
            .await?;
        if let Reference::Tag(tag) = reference {
            let record = TagRecord::new(&digest, &media_type, body.len() as u64);
            self.store_tag_record(up.name(), repo, tag, &record).await?;
            self.tag_confirmed(up, repo, tag, record);
        }
        tracing::info!(upstream = %up.name(), %repo, %reference, %digest, "manifest cached");
        Ok(manifest(digest, media_type, body, CacheStatus::Miss))
    }

    /// The upstream just confirmed `tag` -> `record`: fresh here, and shared with the fleet.
    fn tag_confirmed(&self, up: &Upstream, repo: &str, tag: &str, record: TagRecord) {
        self.tag_ttl.confirm(up.name(), repo, tag);
        self.share_tag(up, repo, tag, record);
    }
    /// GET (or HEAD) a manifest with exactly the client's Accept list, for a client that cannot take
    /// the type cached for this tag. Stored by digest (content-addressed), never as the tag's record.
    pub(super) async fn get_manifest_exact(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &Reference,
        accept: &[String],
        head: bool,
    ) -> Result<Manifest> {
        if head {
            let h = up
                .head_manifest(repo, reference, accept)
                .await
                .map_err(manifest_error)?;
            return head_answer(h, reference).ok_or_else(|| {
                Error::Invalid("upstream HEAD without Docker-Content-Digest".into())
            });
        }
        let (digest, media_type, body) = self.receive_manifest(up, repo, reference, accept).await?;
        Ok(manifest(digest, media_type, body, CacheStatus::Passthrough))
    }

    /// GET a manifest, verify it against the requested digest (or the upstream's
    /// `Docker-Content-Digest`, or its own sha256 when neither is given) and store it by digest.
    async fn receive_manifest(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &Reference,
        accept: &[String],
    ) -> Result<(Digest, String, Bytes)> {
        let got = up
            .get_manifest(repo, reference, accept, self.max_manifest_bytes)
            .await
            .map_err(manifest_error)?;
        let body = got.body;
        if media::is_schema1(&body, got.content_type.as_deref()) {
            // Its Docker-Content-Digest covers the signed payload, not the bytes: never a "digest
            // mismatch", but a clear refusal.
            return Err(Error::Invalid(format!(
                "the upstream answered {reference} with a Docker schema 1 manifest, which regmirror \
                 does not mirror (its digest is not the digest of its bytes); registries send schema \
                 1 when the Accept header was lost, e.g. by a proxy in between"
            )));
        }
        let claimed = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => got.digest,
        };
        let digest = match claimed {
            Some(d) if d.matches(&body) => d,
            Some(d) => {
                return Err(Error::DigestMismatch {
                    expected: d.to_string(),
                    actual: Digest::sha256_of(&body).to_string(),
                })
            }
            // Nothing to check against: the bytes name themselves.
            None => Digest::sha256_of(&body),
        };
        let media_type = media::manifest_media_type(&body, got.content_type.as_deref())
            .ok_or_else(|| Error::Invalid("manifest has no media type".into()))?;
        self.storage
            .put(
                &keys::manifest(&digest),
                encode_manifest(&media_type, &body),
            )
            .await?;
        self.hot
            .put_manifest(digest.clone(), media_type.clone(), body.clone());
        self.links
            .link(Kind::Manifest, up.name(), repo, &digest)
            .await?;
        Ok((digest, media_type, body))
    }

    /// HEAD a manifest at the upstream; answers what it says without caching.
    pub(super) async fn head_manifest_upstream(
        &self,
        up: &Upstream,
        repo: &str,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        let h = up
            .head_manifest(repo, reference, &media::upstream_accept(accept))
            .await
            .map_err(manifest_error)?;
        match head_answer(h, reference) {
            Some(m) => Ok(m),
            // No digest in the answer: fall back to GET, which computes it.
            None => {
                self.get_manifest_upstream(up, repo, reference, accept)
                    .await
            }
        }
    }
}

/// What an upstream's HEAD answer says about a manifest; None when it names no digest and the
/// reference is a tag.
fn head_answer(h: ManifestHead, reference: &Reference) -> Option<Manifest> {
    let digest = match (h.digest, reference) {
        (Some(d), _) => d,
        (None, Reference::Digest(d)) => d.clone(),
        (None, Reference::Tag(_)) => return None,
    };
    Some(Manifest {
        digest,
        media_type: h
            .media_type
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string()),
        size: h.size.unwrap_or(0),
        body: Bytes::new(),
        status: CacheStatus::Passthrough,
    })
}

pub(super) fn manifest_error(e: upstream::Error) -> Error {
    match e {
        upstream::Error::NotFound => Error::ManifestUnknown,
        upstream::Error::TooLarge { limit } => Error::ManifestTooLarge { limit },
        e => Error::Upstream(e),
    }
}

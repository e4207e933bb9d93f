//! Manifest reads: by digest (immutable), by tag (fresh / revalidated / stale), tags lists.
//!
//! Manifests are small (bounded by `max_manifest_bytes`), so they are read whole, verified, stored
//! and then answered. Concurrent requests for the same (upstream, repository, reference) share one
//! upstream fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::access::Access;
use super::hot::Hot;
use super::tags::{TagPolicies, TagRecord, TagTtl};
use super::{decode_manifest, encode_manifest, keys, CacheStatus, Error, Result};
use crate::config::Config;
use crate::oci::{media, Digest, Reference};
use crate::storage::{self, Storage};
use crate::upstream::{self, ManifestHead, Upstream};

/// A manifest answer. `body` is empty for HEAD answers that came straight from the upstream.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub body: Bytes,
    pub status: CacheStatus,
}

type FlightKey = (String, String, String);

/// In-flight manifest fetches, one per (upstream, repository, reference).
type Flights = Mutex<HashMap<FlightKey, Arc<OnceCell<Result<Manifest>>>>>;

/// The manifest side of the cache: manifests by digest and by tag, tag freshness, tags lists.
pub(crate) struct ManifestCache {
    storage: Arc<dyn Storage>,
    access: Arc<Access>,
    flights: Flights,
    tag_ttl: TagTtl,
    policies: TagPolicies,
    hot: Hot,
    max_manifest_bytes: u64,
}

/// A tags list page from the upstream.
#[derive(Debug, Clone)]
pub(crate) struct TagsPage {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The upstream's `Link` header (next page), unmodified.
    pub link: Option<String>,
    /// `Passthrough` from the upstream, `Stale` from the copy kept for outages.
    pub status: CacheStatus,
}

impl ManifestCache {
    pub(crate) fn new(config: &Config, storage: Arc<dyn Storage>, access: Arc<Access>) -> Self {
        ManifestCache {
            storage,
            access,
            flights: Flights::default(),
            tag_ttl: TagTtl::default(),
            policies: TagPolicies::from_config(config),
            hot: Hot::new(
                usize::try_from(config.hot_manifest_bytes.0).unwrap_or(usize::MAX),
                config.hot_tag_entries,
            ),
            max_manifest_bytes: config.max_manifest_bytes,
        }
    }

    /// GET or HEAD a manifest by tag or digest.
    pub(crate) async fn manifest(
        &self,
        up: &Arc<Upstream>,
        repo: &str,
        reference: &Reference,
        accept: &[String],
        head: bool,
    ) -> Result<Manifest> {
        let upstream = up.name();
        match reference {
            Reference::Digest(d) => {
                // A digest names exact bytes: they are the answer whatever the client accepts.
                if let Some((media_type, body)) = self.stored_manifest(d).await? {
                    return Ok(manifest(d.clone(), media_type, body, CacheStatus::Hit));
                }
                if head {
                    return self
                        .head_manifest_upstream(up, repo, reference, accept)
                        .await;
                }
            }
            Reference::Tag(tag) => {
                if self
                    .tag_ttl
                    .is_fresh(self.policies.get(upstream), upstream, repo, tag)
                {
                    if let Some(m) = self.cached_tag(upstream, repo, tag).await? {
                        if media::client_accepts(accept, &m.media_type) {
                            return Ok(m);
                        }
                    }
                }
            }
        }
        let m = self.manifest_shared(up, repo, reference, accept).await?;
        if matches!(reference, Reference::Digest(_)) || media::client_accepts(accept, &m.media_type)
        {
            return Ok(m);
        }
        // The cached (or shared) answer is a type this client did not ask for, e.g. an OCI index
        // for a client that only takes Docker schema2: ask the upstream with exactly its Accept.
        match self
            .get_manifest_exact(up, repo, reference, accept, head)
            .await
        {
            Ok(exact) => Ok(exact),
            Err(e) => {
                tracing::debug!(upstream = %up.name(), %repo, %reference, error = %e, "no manifest of an accepted type; serving the cached one");
                Ok(m)
            }
        }
    }

    /// The coalesced fetch: one upstream request per (upstream, repository, reference).
    async fn manifest_shared(
        &self,
        up: &Arc<Upstream>,
        repo: &str,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        let key = (
            up.name().to_string(),
            repo.to_string(),
            reference.to_string(),
        );
        let cell = {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let leader = !cell.initialized();
        let result = cell
            .get_or_init(|| self.fetch_manifest(up, repo, reference, accept))
            .await
            .clone();
        {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&key);
            }
        }
        result.map(|mut m| {
            if !leader && m.status == CacheStatus::Miss {
                m.status = CacheStatus::Joined;
                metrics::counter!(crate::metrics::JOINED, "kind" => "manifest").increment(1);
            }
            m
        })
    }

    /// Fetch (or revalidate) from the upstream; the one call per flight.
    async fn fetch_manifest(
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
        // Revalidate with a HEAD: Docker Hub does not count HEADs against the pull limit.
        match self
            .head_manifest_upstream(up, repo, reference, accept)
            .await
        {
            Ok(h) if h.digest == cached.digest => {
                self.tag_ttl.confirm(up.name(), repo, tag);
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

    fn stale(
        &self,
        up: &Upstream,
        repo: &str,
        tag: &str,
        mut cached: Manifest,
        e: &upstream::Error,
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
            let record = TagRecord {
                digest: digest.to_string(),
                media_type: media_type.clone(),
                size: body.len() as u64,
            };
            let json = serde_json::to_vec(&record).map_err(|e| Error::Invalid(e.to_string()))?;
            self.storage
                .put(&keys::tag(up.name(), repo, tag), Bytes::from(json))
                .await?;
            self.hot.put_tag(up.name(), repo, tag, record);
            self.tag_ttl.confirm(up.name(), repo, tag);
        }
        tracing::info!(upstream = %up.name(), %repo, %reference, %digest, "manifest cached");
        Ok(manifest(digest, media_type, body, CacheStatus::Miss))
    }

    /// GET (or HEAD) a manifest with exactly the client's Accept list, for a client that cannot take
    /// the type cached for this tag. Stored by digest (content-addressed), never as the tag's record.
    async fn get_manifest_exact(
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
        Ok((digest, media_type, body))
    }

    /// HEAD a manifest at the upstream; answers what it says without caching.
    async fn head_manifest_upstream(
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

    async fn stored_manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>> {
        let key = keys::manifest(d);
        if let Some(hot) = self.hot.manifest(d) {
            self.access.note(&key, None).await;
            return Ok(Some(hot));
        }
        match self.storage.get(&key).await {
            Ok(stored) => {
                self.access.note(&key, None).await;
                let decoded = decode_manifest(stored);
                if let Some((mt, body)) = &decoded {
                    self.hot.put_manifest(d.clone(), mt.clone(), body.clone());
                }
                Ok(decoded)
            }
            Err(storage::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The manifest a cached tag record points to, when both are stored.
    async fn cached_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<Option<Manifest>> {
        let record = match self.hot.tag(upstream, repo, tag) {
            Some(r) => r,
            None => {
                let raw = match self.storage.get(&keys::tag(upstream, repo, tag)).await {
                    Ok(b) => b,
                    Err(storage::Error::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let Ok(record) = serde_json::from_slice::<TagRecord>(&raw) else {
                    return Ok(None);
                };
                self.hot.put_tag(upstream, repo, tag, record.clone());
                record
            }
        };
        let Ok(digest) = record.digest.parse::<Digest>() else {
            return Ok(None);
        };
        Ok(self
            .stored_manifest(&digest)
            .await?
            .map(|(mt, body)| manifest(digest, mt, body, CacheStatus::Hit)))
    }

    /// One page of an upstream's tags list. The unpaginated list is kept, and served (status
    /// `Stale`, paginated by the API) when the upstream is unreachable.
    pub(crate) async fn tags_list(
        &self,
        up: &Upstream,
        repo: &str,
        query: Option<String>,
    ) -> Result<TagsPage> {
        let upstream = up.name();
        let key = keys::tags_list(upstream, repo);
        let whole = query.as_deref().is_none_or(str::is_empty);
        let list = match up.tags(repo, query, self.max_manifest_bytes).await {
            Ok(l) => l,
            Err(e) if e.is_outage() => {
                return match self.storage.get(&key).await {
                    Ok(body) => {
                        tracing::warn!(%upstream, %repo, error = %e, "upstream unavailable; serving the cached tags list");
                        Ok(TagsPage {
                            body,
                            content_type: Some("application/json".into()),
                            link: None,
                            status: CacheStatus::Stale,
                        })
                    }
                    Err(_) => Err(Error::Upstream(e)),
                };
            }
            Err(e) => return Err(manifest_error(e)),
        };
        if whole && list.link.is_none() {
            if let Err(e) = self.storage.put(&key, list.body.clone()).await {
                tracing::debug!(%upstream, %repo, error = %e, "cannot keep the tags list");
            }
        }
        Ok(TagsPage {
            body: list.body,
            content_type: list.content_type,
            link: list.link,
            status: CacheStatus::Passthrough,
        })
    }
}

fn manifest(digest: Digest, media_type: String, body: Bytes, status: CacheStatus) -> Manifest {
    Manifest {
        digest,
        media_type,
        size: body.len() as u64,
        body,
        status,
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

fn manifest_error(e: upstream::Error) -> Error {
    match e {
        upstream::Error::NotFound => Error::ManifestUnknown,
        upstream::Error::TooLarge { limit } => Error::ManifestTooLarge { limit },
        e => Error::Upstream(e),
    }
}

//! Manifest reads: by digest (immutable), by tag (fresh / revalidated / stale), tags lists.
//!
//! Manifests are small (bounded by `max_manifest_bytes`), so they are read whole, verified, stored
//! and then answered. Concurrent requests for the same (upstream, repository, reference) share one
//! upstream fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, Method};
use tokio::sync::OnceCell;

use super::tags::TagRecord;
use super::{
    decode_manifest, encode_manifest, header_digest, keys, Cache, CacheStatus, Error, Result,
};
use crate::oci::{media, Digest, Reference};
use crate::storage;
use crate::upstream::{self, Request, Upstream};

/// A manifest answer. `body` is empty for HEAD answers that came straight from the upstream.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub body: Bytes,
    pub status: CacheStatus,
}

type FlightKey = (String, String, String);

/// In-flight manifest fetches, one per (upstream, repository, reference).
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<FlightKey, Arc<OnceCell<Result<Manifest>>>>>,
}

/// A tags list page from the upstream.
#[derive(Debug, Clone)]
pub struct TagsPage {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The upstream's `Link` header (next page), unmodified.
    pub link: Option<String>,
    /// `Passthrough` from the upstream, `Stale` from the copy kept for outages.
    pub status: CacheStatus,
}

impl Cache {
    /// GET or HEAD a manifest by tag or digest.
    pub async fn manifest(
        self: &Arc<Self>,
        upstream: &str,
        repo: &str,
        reference: &Reference,
        accept: &[String],
        head: bool,
    ) -> Result<Manifest> {
        let up = self.upstream(upstream)?;
        match reference {
            Reference::Digest(d) => {
                // A digest names exact bytes: they are the answer whatever the client accepts.
                if let Some((media_type, body)) = self.stored_manifest(d).await? {
                    return Ok(manifest(d.clone(), media_type, body, CacheStatus::Hit));
                }
                if head {
                    return self
                        .head_manifest_upstream(&up, repo, reference, accept)
                        .await;
                }
            }
            Reference::Tag(tag) => {
                if self
                    .tag_ttl
                    .is_fresh(self.policy(upstream), upstream, repo, tag)
                {
                    if let Some(m) = self.cached_tag(upstream, repo, tag).await? {
                        if media::client_accepts(accept, &m.media_type) {
                            return Ok(m);
                        }
                    }
                }
            }
        }
        let m = self.manifest_shared(&up, repo, reference, accept).await?;
        if matches!(reference, Reference::Digest(_)) || media::client_accepts(accept, &m.media_type)
        {
            return Ok(m);
        }
        // The cached (or shared) answer is a type this client did not ask for, e.g. an OCI index
        // for a client that only takes Docker schema2: ask the upstream with exactly its Accept.
        match self
            .get_manifest_exact(&up, repo, reference, accept, head)
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
        self: &Arc<Self>,
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
            let mut map = self
                .manifest_flights
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let leader = !cell.initialized();
        let result = cell
            .get_or_init(|| self.fetch_manifest(up, repo, reference, accept))
            .await
            .clone();
        {
            let mut map = self
                .manifest_flights
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner());
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
        let req = manifest_request(
            Method::GET,
            repo,
            reference,
            &media::upstream_accept(accept),
        )?;
        let resp = up.send(&req).await.map_err(manifest_error)?;
        let (digest, media_type, body) = self.receive_manifest(resp, reference).await?;
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
        let method = if head { Method::HEAD } else { Method::GET };
        let req = manifest_request(method, repo, reference, accept)?;
        let resp = up.send(&req).await.map_err(manifest_error)?;
        if head {
            return head_answer(resp.headers(), reference).ok_or_else(|| {
                Error::Invalid("upstream HEAD without Docker-Content-Digest".into())
            });
        }
        let (digest, media_type, body) = self.receive_manifest(resp, reference).await?;
        Ok(manifest(digest, media_type, body, CacheStatus::Passthrough))
    }

    /// Read a manifest answer, verify it against the requested digest (or the upstream's
    /// `Docker-Content-Digest`, or its own sha256 when neither is given) and store it by digest.
    async fn receive_manifest(
        &self,
        resp: reqwest::Response,
        reference: &Reference,
    ) -> Result<(Digest, String, Bytes)> {
        let declared_digest = header_digest(resp.headers());
        let declared_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(resp, self.max_manifest_bytes).await?;
        let claimed = match (reference, declared_digest) {
            (Reference::Digest(d), _) => Some(d.clone()),
            (Reference::Tag(_), d) => d,
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
        let media_type = media::manifest_media_type(&body, declared_type.as_deref())
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
        let req = manifest_request(
            Method::HEAD,
            repo,
            reference,
            &media::upstream_accept(accept),
        )?;
        let resp = up.send(&req).await.map_err(manifest_error)?;
        match head_answer(resp.headers(), reference) {
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
            self.note_access(&key, None).await;
            return Ok(Some(hot));
        }
        match self.storage.get(&key).await {
            Ok(stored) => {
                self.note_access(&key, None).await;
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
    pub async fn tags_list(
        self: &Arc<Self>,
        upstream: &str,
        repo: &str,
        query: Option<String>,
    ) -> Result<TagsPage> {
        let up = self.upstream(upstream)?;
        let key = keys::tags_list(upstream, repo);
        let whole = query.as_deref().is_none_or(str::is_empty);
        let mut req = Request::new(Method::GET, repo, "tags/list".into());
        req.query = query;
        let resp = match up.send(&req).await {
            Ok(r) => r,
            Err(upstream::Error::NotFound) => return Err(Error::ManifestUnknown),
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
            Err(e) => return Err(Error::Upstream(e)),
        };
        let get = |n: http::HeaderName| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (content_type, link) = (get(http::header::CONTENT_TYPE), get(http::header::LINK));
        let body = read_limited(resp, self.max_manifest_bytes).await?;
        if whole && link.is_none() {
            if let Err(e) = self.storage.put(&key, body.clone()).await {
                tracing::debug!(%upstream, %repo, error = %e, "cannot keep the tags list");
            }
        }
        Ok(TagsPage {
            body,
            content_type,
            link,
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

/// A manifest request with exactly these `Accept` values.
fn manifest_request(
    method: Method,
    repo: &str,
    reference: &Reference,
    accept: &[String],
) -> Result<Request> {
    let mut req = Request::new(method, repo, format!("manifests/{reference}"));
    for t in accept {
        let v =
            HeaderValue::from_str(t).map_err(|_| Error::Invalid(format!("Accept value {t:?}")))?;
        req.headers.append(http::header::ACCEPT, v);
    }
    Ok(req)
}

/// What an upstream's HEAD answer says about a manifest; None when it names no digest and the
/// reference is a tag.
fn head_answer(h: &http::HeaderMap, reference: &Reference) -> Option<Manifest> {
    let digest = match (header_digest(h), reference) {
        (Some(d), _) => d,
        (None, Reference::Digest(d)) => d.clone(),
        (None, Reference::Tag(_)) => return None,
    };
    let media_type = h
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
    Some(Manifest {
        digest,
        media_type,
        size: super::blobs::content_length(h).unwrap_or(0),
        body: Bytes::new(),
        status: CacheStatus::Passthrough,
    })
}

fn manifest_error(e: upstream::Error) -> Error {
    match e {
        upstream::Error::NotFound => Error::ManifestUnknown,
        e => Error::Upstream(e),
    }
}

/// Read a whole response body, refusing more than `limit` bytes.
async fn read_limited(resp: reqwest::Response, limit: u64) -> Result<Bytes> {
    if super::blobs::content_length(resp.headers()).is_some_and(|n| n > limit) {
        return Err(Error::ManifestTooLarge { limit });
    }
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Error::Upstream(upstream::Error::Unavailable(upstream::describe(&e))))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::ManifestTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

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
use super::links::{self, Kind, Links};
use super::negative::NotFound;
use super::tags::{Policies, TagRecord, TagRecords, TagTtl};
use super::{decode_manifest, keys, CacheStatus, Error, Result};
use crate::config::Config;
use crate::oci::{media, Digest, Reference};
use crate::storage::{self, Storage};
use crate::upstream::Upstream;

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
    pub(super) storage: Arc<dyn Storage>,
    access: Arc<Access>,
    flights: Flights,
    /// Background revalidations running, one per tag (see `revalidate.rs`).
    pub(super) revalidating: super::revalidate::Revalidations,
    pub(super) tag_ttl: TagTtl,
    pub(super) policies: Arc<Policies>,
    pub(super) hot: Hot,
    /// Names the upstream said it does not have, for a short time.
    not_found: Arc<NotFound>,
    /// Which repositories hold which manifests: by digest, nothing is served without one.
    pub(super) links: Arc<Links>,
    /// What the upstream answered a client whose Accept list excludes a tag's cached type:
    /// (upstream, repository, tag, Accept list) -> digest, with when it was asked.
    exact: Mutex<HashMap<(String, String, String, String), (Digest, tokio::time::Instant)>>,
    /// Whole tags lists, by (upstream, repository), with when they were fetched.
    pub(super) lists: Mutex<HashMap<(String, String), (Bytes, tokio::time::Instant)>>,
    pub(super) list_flights: Mutex<HashMap<(String, String), Arc<OnceCell<Result<TagsPage>>>>>,
    pub(super) max_manifest_bytes: u64,
    /// Tag records shared with the other replicas (`redis_url`), when on.
    pub(super) shared: Option<Arc<dyn TagRecords>>,
}

/// Most entries of the exact-Accept memo and the tags-list cache before they are cleared.
pub(super) const MAX_MEMO_ENTRIES: usize = 10_000;

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
    pub(crate) fn new(
        config: &Config,
        storage: Arc<dyn Storage>,
        access: Arc<Access>,
        policies: Arc<Policies>,
        not_found: Arc<NotFound>,
        links: Arc<Links>,
        shared: Option<Arc<dyn TagRecords>>,
    ) -> Self {
        ManifestCache {
            storage,
            access,
            flights: Flights::default(),
            revalidating: Default::default(),
            tag_ttl: TagTtl::default(),
            policies,
            hot: Hot::new(
                usize::try_from(config.hot_manifest_bytes.0).unwrap_or(usize::MAX),
                config.hot_tag_entries,
            ),
            not_found,
            links,
            exact: Mutex::default(),
            lists: Mutex::default(),
            list_flights: Mutex::default(),
            max_manifest_bytes: config.max_manifest_bytes,
            shared,
        }
    }

    /// GET or HEAD a manifest by tag or digest.
    pub(crate) async fn manifest(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &str,
        reference: &Reference,
        accept: &[String],
        head: bool,
    ) -> Result<Manifest> {
        let upstream = up.name();
        let missing = format!("manifest {upstream}/{repo}:{reference}");
        match reference {
            Reference::Digest(d) => {
                // A digest names exact bytes: they are the answer whatever the client accepts,
                // once this repository is known to hold them.
                if let Some((media_type, body)) = self.stored_manifest(d).await? {
                    if !self.links.holds(Kind::Manifest, upstream, repo, d).await? {
                        self.confirm(up, repo, d, accept, &missing).await?;
                    }
                    return Ok(manifest(d.clone(), media_type, body, CacheStatus::Hit));
                }
            }
            Reference::Tag(tag) => {
                let mut cached = self.cached_tag(upstream, repo, tag).await?;
                let policy = self.policies.get(upstream);
                let fresh_here =
                    cached.is_some() && self.tag_ttl.is_fresh(policy, upstream, repo, tag);
                if !fresh_here && self.shared.is_some() {
                    // Another replica may have confirmed it (or this one, before a restart).
                    match self
                        .answer_from_shared(up, repo, tag, cached.as_ref(), accept)
                        .await
                    {
                        Ok(Some(m)) => cached = Some(m),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(upstream, %repo, %tag, error = %e, "shared tag record not usable")
                        }
                    }
                }
                if let Some(m) = cached {
                    let fresh =
                        self.tag_ttl
                            .is_fresh(self.policies.get(upstream), upstream, repo, tag);
                    if media::client_accepts(accept, &m.media_type) {
                        return match fresh {
                            true => Ok(m),
                            false => self.expired(up, repo, tag, m, accept).await,
                        };
                    }
                    if fresh {
                        if let Some(m) = self.remembered_exact(upstream, repo, tag, accept).await? {
                            return Ok(m);
                        }
                    }
                }
            }
        }
        if self.not_found.contains(&missing) {
            metrics::counter!(crate::metrics::NEGATIVE_HITS, "kind" => "manifest").increment(1);
            return Err(Error::ManifestUnknown);
        }
        let fetched = match (reference, head) {
            (Reference::Digest(_), true) => {
                self.head_manifest_upstream(up, repo, reference, accept)
                    .await
            }
            _ => self.manifest_shared(up, repo, reference, accept).await,
        };
        let m = match fetched {
            Err(Error::ManifestUnknown) => {
                self.not_found
                    .insert(missing, self.policies.get(upstream).negative_ttl);
                return Err(Error::ManifestUnknown);
            }
            other => other?,
        };
        let Reference::Tag(tag) = reference else {
            return Ok(m);
        };
        if media::client_accepts(accept, &m.media_type) {
            return Ok(m);
        }
        // The cached (or shared) answer is a type this client did not ask for, e.g. an OCI index
        // for a client that only takes Docker schema2: ask the upstream with exactly its Accept,
        // and remember its answer for the tag's TTL.
        match self
            .get_manifest_exact(up, repo, reference, accept, head)
            .await
        {
            Ok(exact) => {
                self.remember_exact(upstream, repo, tag, accept, &exact.digest);
                Ok(exact)
            }
            Err(e) => {
                tracing::debug!(upstream = %up.name(), %repo, %reference, error = %e, "no manifest of an accepted type; serving the cached one");
                Ok(m)
            }
        }
    }

    /// Ask the upstream whether `repo` holds the stored manifest `d` (one HEAD shared by
    /// concurrent callers) and link it when it does; "no" is remembered as a negative answer.
    async fn confirm(
        &self,
        up: &Upstream,
        repo: &str,
        d: &Digest,
        accept: &[String],
        missing: &str,
    ) -> Result<()> {
        if self.not_found.contains(missing) {
            metrics::counter!(crate::metrics::NEGATIVE_HITS, "kind" => "manifest").increment(1);
            return Err(Error::ManifestUnknown);
        }
        let reference = Reference::Digest(d.clone());
        let ask = async {
            metrics::counter!(crate::metrics::LINK_CONFIRMS, "kind" => "manifest").increment(1);
            match up
                .head_manifest(repo, &reference, &media::upstream_accept(accept))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(links::refused(
                    up.name(),
                    repo,
                    d,
                    e,
                    Error::ManifestUnknown,
                )),
            }
        };
        let confirmed = self
            .links
            .confirm(Kind::Manifest, up.name(), repo, d, ask)
            .await;
        if matches!(confirmed, Err(Error::ManifestUnknown)) {
            let ttl = self.policies.get(up.name()).negative_ttl;
            self.not_found.insert(missing.to_string(), ttl);
        }
        confirmed
    }

    /// The upstream no longer has `tag`: drop its record, so that the next request asks (and
    /// gets "not found"). The manifest itself stays, content-addressed, for other references.
    pub(super) async fn forget_tag(&self, upstream: &str, repo: &str, tag: &str) {
        self.hot.remove_tag(upstream, repo, tag);
        if let Err(e) = self.storage.delete(&keys::tag(upstream, repo, tag)).await {
            tracing::warn!(%upstream, %repo, %tag, error = %e, "cannot remove the record of a tag the upstream deleted");
        }
        tracing::info!(%upstream, %repo, %tag, "the upstream no longer has this tag; its record is removed");
    }

    /// The manifest the upstream gave this Accept list for `tag` within the tag's TTL, if stored.
    async fn remembered_exact(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        accept: &[String],
    ) -> Result<Option<Manifest>> {
        let key = exact_key(upstream, repo, tag, accept);
        let ttl = self.policies.get(upstream).ttl;
        let digest = {
            let map = self.exact.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some((d, at)) if at.elapsed() < ttl => d.clone(),
                _ => return Ok(None),
            }
        };
        Ok(self
            .stored_manifest(&digest)
            .await?
            .map(|(mt, body)| manifest(digest, mt, body, CacheStatus::Hit)))
    }

    fn remember_exact(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        accept: &[String],
        digest: &Digest,
    ) {
        let mut map = self.exact.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_MEMO_ENTRIES {
            map.clear();
        }
        map.insert(
            exact_key(upstream, repo, tag, accept),
            (digest.clone(), tokio::time::Instant::now()),
        );
    }

    /// The coalesced fetch: one upstream request per (upstream, repository, reference).
    pub(super) async fn manifest_shared(
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

    /// Write a tag record to storage and the in-memory copies.
    pub(super) async fn store_tag_record(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        record: &TagRecord,
    ) -> Result<()> {
        let json = serde_json::to_vec(record).map_err(|e| Error::Invalid(e.to_string()))?;
        self.storage
            .put(&keys::tag(upstream, repo, tag), Bytes::from(json))
            .await?;
        self.hot.put_tag(upstream, repo, tag, record.clone());
        Ok(())
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
    pub(super) async fn cached_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<Manifest>> {
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
}

pub(super) fn manifest(
    digest: Digest,
    media_type: String,
    body: Bytes,
    status: CacheStatus,
) -> Manifest {
    Manifest {
        digest,
        media_type,
        size: body.len() as u64,
        body,
        status,
    }
}

/// The key of the exact-Accept memo.
fn exact_key(
    upstream: &str,
    repo: &str,
    tag: &str,
    accept: &[String],
) -> (String, String, String, String) {
    let mut types = accept.to_vec();
    types.sort();
    (
        upstream.to_string(),
        repo.to_string(),
        tag.to_string(),
        types.join(","),
    )
}

//! Tags lists: the whole list of a repository is kept for a short TTL (`tags_list_ttl_secs`) and
//! fetched once however many clients ask; pages are cut from it by the API. The last whole list
//! is also kept in storage and served, marked stale, while the upstream is unreachable.

use std::sync::Arc;

use tokio::time::Instant;

use super::manifest_fetch::manifest_error;
use super::manifests::{ManifestCache, TagsPage, MAX_MEMO_ENTRIES};
use super::{keys, CacheStatus, Error, Result};
use crate::upstream::Upstream;

impl ManifestCache {
    /// One page of an upstream's tags list (`query`: the client's pagination, without `ns`).
    pub(crate) async fn tags_list(
        &self,
        up: &Upstream,
        repo: &str,
        query: Option<String>,
    ) -> Result<TagsPage> {
        let key = (up.name().to_string(), repo.to_string());
        let ttl = self.policies.get(up.name()).tags_list_ttl;
        if let Some(body) = self.fresh_list(&key, ttl) {
            return Ok(TagsPage {
                body,
                content_type: Some("application/json".into()),
                link: None,
                status: CacheStatus::Hit,
            });
        }
        let whole = query.as_deref().is_none_or(str::is_empty);
        if !whole {
            return self.fetch_list(up, repo, query).await;
        }
        // One upstream request for the whole list, however many clients ask at once.
        let cell = {
            let mut map = self.list_flights.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| self.fetch_list(up, repo, None))
            .await
            .clone();
        {
            let mut map = self.list_flights.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&key);
            }
        }
        result
    }

    fn fresh_list(&self, key: &(String, String), ttl: std::time::Duration) -> Option<bytes::Bytes> {
        let lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        lists
            .get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(b, _)| b.clone())
    }

    /// Ask the upstream; keep a whole, unpaginated answer (in memory for the TTL, in storage for
    /// outages); serve the stored one when the upstream is unreachable.
    async fn fetch_list(
        &self,
        up: &Upstream,
        repo: &str,
        query: Option<String>,
    ) -> Result<TagsPage> {
        let upstream = up.name();
        let stored_key = keys::tags_list(upstream, repo);
        let whole = query.as_deref().is_none_or(str::is_empty);
        let list = match up.tags(repo, query, self.max_manifest_bytes).await {
            Ok(l) => l,
            Err(e) if e.is_outage() => {
                return match self.storage.get(&stored_key).await {
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
            if let Err(e) = self.storage.put(&stored_key, list.body.clone()).await {
                tracing::debug!(%upstream, %repo, error = %e, "cannot keep the tags list");
            }
            let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
            if lists.len() >= MAX_MEMO_ENTRIES {
                lists.clear();
            }
            lists.insert(
                (upstream.to_string(), repo.to_string()),
                (list.body.clone(), Instant::now()),
            );
        }
        Ok(TagsPage {
            body: list.body,
            content_type: list.content_type,
            link: list.link,
            status: CacheStatus::Passthrough,
        })
    }
}

//! UI: the status page (`/`, `/ui`) and its JSON (`/api/v1/status`).
//!
//! Owns: what an operator sees. The API records each registry request here once it is answered
//! ([`Ui::record`]: atomics, plus one short lock per pull or blob answer for the per-image
//! tallies); everything that needs storage (the image list, the cache size) is read by a
//! background task every `ui_refresh_secs` into a snapshot, so answering `/api/v1/status` does
//! no I/O. Reads the cache and the upstreams only through the cache's accessors
//! (`fill_progress`, `upstream_status`, `usage`, `measure`, `images`) and the prefetch schedules'
//! reports; never does HTTP to an upstream, never writes.
//!
//! # Layout
//! - here: [`Ui`], recording, the JSON document, the background refresh.
//! - `counters`: totals and per-minute buckets of the last hour (pure, unit-tested).
//! - `page.html`: the page (HTML, CSS and JS in one file, embedded; no external assets).

mod counters;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, CacheStatus};
use crate::prefetch::schedule::Schedules;
use counters::{Counters, Sample};

/// The page, served as it is.
pub(crate) const PAGE: &str = include_str!("page.html");

/// Most recent errors kept.
const RECENT_ERRORS: usize = 50;
/// Most images and repositories tallied (further new ones are not tallied).
const MAX_TALLIED: usize = 20_000;
/// Entries of each top list.
const TOP: usize = 10;
/// Default and largest `?limit=` of the image list.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// One answered registry request, as the API saw it.
pub(crate) struct Answered<'a> {
    /// `Endpoint::kind` ("manifest", "blob", "tags"; others are not counted).
    pub(crate) kind: &'static str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    /// The route, when the request was routed.
    pub(crate) upstream: Option<&'a str>,
    pub(crate) repository: Option<&'a str>,
    /// The tag, for a manifest asked for by tag (a pull).
    pub(crate) tag: Option<&'a str>,
    pub(crate) cache: Option<CacheStatus>,
    pub(crate) status: u16,
    /// Length of the blob body sent (GET of a blob), else 0.
    pub(crate) blob_bytes: u64,
    /// The error message, for a failed answer.
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Tally {
    pulls: u64,
    bytes: u64,
    last: u64,
}

#[derive(Debug, Clone, Serialize)]
struct RecentError {
    at: u64,
    method: String,
    path: String,
    upstream: Option<String>,
    status: u16,
    message: String,
}

/// One cached image (a manifest digest and the tags pointing at it), from the last scan.
#[derive(Debug, Clone, Serialize)]
struct ImageRow {
    upstream: String,
    repository: String,
    tags: Vec<String>,
    digest: String,
    media_type: String,
    platforms: Vec<String>,
    size_bytes: u64,
    /// Seconds since the epoch of the last access the storage recorded.
    last_access: u64,
    #[serde(skip)]
    haystack: String,
}

#[derive(Default)]
struct Snapshot {
    refreshed_at: Option<u64>,
    seconds: f64,
    rows: Vec<ImageRow>,
    error: Option<String>,
}

/// The status page's state: counters, tallies, recent errors, the last scan.
pub(crate) struct Ui {
    cache: Arc<Cache>,
    schedules: Arc<Schedules>,
    max_size: Option<u64>,
    started: SystemTime,
    counters: Counters,
    /// Pulls (manifest requests by tag) by `upstream/repository:tag`.
    pulls: Mutex<HashMap<String, Tally>>,
    /// Blob bytes served by `upstream/repository`.
    bytes: Mutex<HashMap<String, Tally>>,
    errors: Mutex<VecDeque<RecentError>>,
    snapshot: RwLock<Arc<Snapshot>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tally(map: &Mutex<HashMap<String, Tally>>, key: String, pulls: u64, bytes: u64, now: u64) {
    let mut m = lock(map);
    if m.len() >= MAX_TALLIED && !m.contains_key(&key) {
        return;
    }
    let t = m.entry(key).or_default();
    t.pulls += pulls;
    t.bytes += bytes;
    t.last = now;
}

impl Ui {
    pub(crate) fn new(cache: Arc<Cache>, schedules: Arc<Schedules>, max_size: Option<u64>) -> Ui {
        Ui {
            cache,
            schedules,
            max_size,
            started: SystemTime::now(),
            counters: Counters::default(),
            pulls: Mutex::default(),
            bytes: Mutex::default(),
            errors: Mutex::default(),
            snapshot: RwLock::default(),
        }
    }

    /// Count one answered request. Only registry requests (manifests, blobs, tags lists) count.
    pub(crate) fn record(&self, a: &Answered<'_>) {
        if !matches!(a.kind, "manifest" | "blob" | "tags") {
            return;
        }
        let now = now_secs();
        let ok = (200..300).contains(&a.status);
        let from_cache = matches!(
            a.cache,
            Some(CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidating)
        );
        let content = ok && a.kind != "tags" && a.cache.is_some();
        let error = a.status >= 500 || a.status == 429;
        let sample = Sample {
            hit: content && from_cache,
            miss: content && !from_cache,
            bytes_cache: if from_cache { a.blob_bytes } else { 0 },
            bytes_upstream: if from_cache { 0 } else { a.blob_bytes },
            error,
        };
        self.counters.record(now / 60, &sample);
        if let (Some(up), Some(repo)) = (a.upstream, a.repository) {
            if ok && a.kind == "manifest" {
                if let Some(tag) = a.tag {
                    tally(&self.pulls, format!("{up}/{repo}:{tag}"), 1, 0, now);
                }
            }
            if a.blob_bytes > 0 {
                tally(&self.bytes, format!("{up}/{repo}"), 0, a.blob_bytes, now);
            }
        }
        if error {
            let mut e = lock(&self.errors);
            if e.len() >= RECENT_ERRORS {
                e.pop_front();
            }
            e.push_back(RecentError {
                at: now,
                method: a.method.to_string(),
                path: a.path.chars().take(300).collect(),
                upstream: a.upstream.map(str::to_string),
                status: a.status,
                message: a.error.clone().unwrap_or_default(),
            });
        }
    }

    /// Scan the cache (size, images) every `every` until `stop`; the first scan starts now.
    pub(crate) fn spawn_refresher(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.refresh().await;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// One scan of the cache into the snapshot.
    pub(crate) async fn refresh(&self) {
        let started = std::time::Instant::now();
        if let Err(e) = self.cache.measure().await {
            tracing::warn!(error = %e, "status page: measuring the cache failed");
        }
        let mut snap = Snapshot::default();
        match self.cache.images().await {
            Ok(images) => {
                let mut rows: BTreeMap<(String, String, String), ImageRow> = BTreeMap::new();
                for (i, platforms) in images {
                    let key = (i.upstream.clone(), i.repository.clone(), i.digest.clone());
                    let row = rows.entry(key).or_insert_with(|| ImageRow {
                        upstream: i.upstream.clone(),
                        repository: i.repository.clone(),
                        tags: Vec::new(),
                        digest: i.digest.clone(),
                        media_type: i.media_type.clone(),
                        platforms,
                        size_bytes: i.cached_bytes,
                        last_access: 0,
                        haystack: String::new(),
                    });
                    row.tags.push(i.tag.clone());
                    row.last_access = row.last_access.max(i.last_access);
                }
                snap.rows = rows
                    .into_values()
                    .map(|mut r| {
                        r.tags.sort();
                        r.haystack = format!(
                            "{}/{}:{} {} {}",
                            r.upstream,
                            r.repository,
                            r.tags.join(" "),
                            r.digest,
                            r.platforms.join(" ")
                        )
                        .to_lowercase();
                        r
                    })
                    .collect();
            }
            Err(e) => snap.error = Some(e.to_string()),
        }
        snap.refreshed_at = Some(now_secs());
        snap.seconds = started.elapsed().as_secs_f64();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
    }

    /// The `/api/v1/status` document. `query`: the request's query (`q`, `limit`, `offset`).
    pub(crate) fn status(&self, query: Option<&str>) -> Value {
        let param = |k: &str| {
            query.and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.into_owned())
            })
        };
        let q = param("q").unwrap_or_default().trim().to_lowercase();
        let limit = param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(DEFAULT_LIMIT)
            .min(MAX_LIMIT);
        let offset = param("offset")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0);
        let now = now_secs();
        let totals = self.counters.totals();
        let minutes = self.counters.last_hour(now / 60);
        let hour = counters::sum(&minutes);
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "generated_at": now,
            "uptime_secs": now.saturating_sub(epoch(self.started)),
            "totals": sums(&totals),
            "last_hour": {
                "sums": sums(&hour),
                "minutes": minutes.iter().map(|m| json!({
                    "start": m.start,
                    "requests": m.sums.requests,
                    "hits": m.sums.hits,
                    "misses": m.sums.misses,
                    "bytes_from_cache": m.sums.bytes_from_cache,
                    "bytes_from_upstream": m.sums.bytes_from_upstream,
                    "errors": m.sums.errors,
                })).collect::<Vec<_>>(),
            },
            "cache": self.cache_json(),
            "fills": self.fills_json(now),
            "upstreams": self.upstreams_json(),
            "top_images_by_pulls": top(&self.pulls, |t| t.pulls),
            "top_repositories_by_bytes": top(&self.bytes, |t| t.bytes),
            "recent_errors": lock(&self.errors).iter().rev().cloned().collect::<Vec<_>>(),
            "prefetch": self.schedules.report(),
            "images": self.images_json(&q, limit, offset),
        })
    }

    fn cache_json(&self) -> Value {
        let usage = self.cache.usage();
        json!({
            "size_bytes": usage.as_ref().map(|(r, _)| r.bytes),
            "objects": usage.as_ref().map(|(r, _)| r.objects),
            "measured_at": usage.as_ref().map(|(_, t)| epoch(*t)),
            "max_size_bytes": self.max_size,
            "used_ratio": match (usage.as_ref(), self.max_size) {
                (Some((r, _)), Some(max)) => counters::ratio(r.bytes, max),
                _ => None,
            },
        })
    }

    fn fills_json(&self, now: u64) -> Vec<Value> {
        self.cache
            .fill_progress()
            .into_iter()
            .map(|f| {
                json!({
                    "digest": f.digest.to_string(),
                    "started_at": epoch(f.started),
                    "seconds": now.saturating_sub(epoch(f.started)),
                    "bytes_received": f.received,
                    "bytes_expected": f.expected,
                })
            })
            .collect()
    }

    fn upstreams_json(&self) -> Vec<Value> {
        self.cache
            .upstream_status()
            .into_iter()
            .map(|u| {
                let (down_since, down_error) = match &u.health.down {
                    Some((since, _, why)) => (Some(epoch(*since)), Some(why.clone())),
                    None => (None, None),
                };
                let remaining = u.rate_limit.remaining.as_deref().and_then(|r| {
                    r.split(';')
                        .next()
                        .and_then(|n| n.trim().parse::<u64>().ok())
                });
                json!({
                    "name": u.health.upstream,
                    "up": down_since.is_none(),
                    "down_since": down_since,
                    "down_reason": down_error,
                    "requests": u.stats.requests,
                    "errors": u.stats.errors,
                    "last_latency_ms": u.stats.last_latency_ms,
                    "mean_latency_ms": u.stats.mean_latency_ms,
                    "last_error": u.stats.last_error.as_ref().map(|(_, e)| e),
                    "last_error_at": u.stats.last_error.as_ref().map(|(t, _)| epoch(*t)),
                    "ratelimit_limit": u.rate_limit.limit,
                    "ratelimit_remaining": remaining,
                })
            })
            .collect()
    }

    fn images_json(&self, q: &str, limit: usize, offset: usize) -> Value {
        let snap = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let hit =
            |r: &&ImageRow| q.is_empty() || q.split_whitespace().all(|w| r.haystack.contains(w));
        let matched = if q.is_empty() {
            snap.rows.len()
        } else {
            snap.rows.iter().filter(hit).count()
        };
        let page: Vec<&ImageRow> = snap
            .rows
            .iter()
            .filter(hit)
            .skip(offset)
            .take(limit)
            .collect();
        // The tallies of the page's tags, read under the lock the request path also takes: the
        // lock is held for the lookups only, not while the JSON is built.
        let tallies: Vec<(u64, u64)> = {
            let pulls = lock(&self.pulls);
            page.iter()
                .map(|r| {
                    let (mut last, mut n) = (r.last_access, 0);
                    for t in &r.tags {
                        if let Some(p) = pulls.get(&format!("{}/{}:{t}", r.upstream, r.repository))
                        {
                            last = last.max(p.last);
                            n += p.pulls;
                        }
                    }
                    (last, n)
                })
                .collect()
        };
        let items: Vec<Value> = page
            .iter()
            .zip(tallies)
            .map(|(r, (last, n))| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                v["last_pulled"] = json!(last);
                v["pulls"] = json!(n);
                v
            })
            .collect();
        json!({
            "refreshed_at": snap.refreshed_at,
            "scan_seconds": snap.seconds,
            "scan_error": snap.error,
            "total": snap.rows.len(),
            "matched": matched,
            "offset": offset,
            "limit": limit,
            "items": items,
        })
    }
}

fn sums(s: &counters::Sums) -> Value {
    json!({
        "requests": s.requests,
        "hits": s.hits,
        "misses": s.misses,
        "hit_ratio": s.hit_ratio(),
        "bytes_from_cache": s.bytes_from_cache,
        "bytes_from_upstream": s.bytes_from_upstream,
        "bytes_saved": s.bytes_from_cache,
        "errors": s.errors,
    })
}

/// The `TOP` entries of `map` by `by`, largest first (ties by name).
fn top(map: &Mutex<HashMap<String, Tally>>, by: impl Fn(&Tally) -> u64) -> Vec<Value> {
    let m = lock(map);
    let mut v: Vec<(&String, &Tally)> = m.iter().filter(|(_, t)| by(t) > 0).collect();
    v.sort_by(|a, b| by(b.1).cmp(&by(a.1)).then_with(|| a.0.cmp(b.0)));
    v.into_iter()
        .take(TOP)
        .map(|(name, t)| json!({"name": name, "pulls": t.pulls, "bytes": t.bytes, "last": t.last}))
        .collect()
}

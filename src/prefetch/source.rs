//! Where prefetch gets images from: a running mirror over HTTP ([`MirrorSource`], so the server's
//! single-flight, policies and limits apply) or the cache opened in this process
//! ([`DirectSource`], as `serve` opens it).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::Error;
use crate::cache::{records, BlobBody, Cache, CacheStatus};
use crate::oci::{media, Digest, Hasher, ImageRef, Reference};
use crate::storage::Storage;

/// A manifest as a source answered it.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) body: Bytes,
    /// Answered from the cache (no upstream fetch).
    pub(crate) cached: bool,
}

/// The calls prefetch makes.
#[async_trait]
pub(crate) trait Source: Send + Sync {
    /// GET a manifest of `img`'s repository by tag or digest (every manifest type accepted).
    async fn manifest(&self, img: &ImageRef, r: &Reference) -> Result<Fetched, Error>;
    /// Whether the blob is cached already (cheap: no upstream fetch).
    async fn blob_cached(&self, img: &ImageRef, d: &Digest) -> Result<bool, Error>;
    /// Fetch the blob into the cache, verified; `progress` gets each chunk's length. Returns the
    /// bytes read.
    async fn fetch_blob(
        &self,
        img: &ImageRef,
        d: &Digest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error>;
}

/// The header the mirror names its cache status in (see `api`).
const CACHE_HEADER: &str = "x-regmirror-cache";

fn accept_all() -> String {
    media::ALL_MANIFESTS.join(", ")
}

/// A running regmirror, addressed with `?ns=<registry>` as containerd does.
pub(crate) struct MirrorSource {
    client: reqwest::Client,
    base: String,
}

impl MirrorSource {
    /// `base`: the mirror's URL, e.g. "http://127.0.0.1:5000".
    pub(crate) fn new(base: &str, insecure: bool) -> Result<MirrorSource, Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .danger_accept_invalid_certs(insecure)
            .build()
            .map_err(Error::Http)?;
        Ok(MirrorSource {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, img: &ImageRef, kind: &str, r: &str) -> String {
        let ns: String = url::form_urlencoded::byte_serialize(img.registry.as_bytes()).collect();
        format!("{}/v2/{}/{kind}/{r}?ns={ns}", self.base, img.repository)
    }

    async fn check(what: String, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound(what));
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        Err(Error::Status {
            what,
            status: status.as_u16(),
            message: message.chars().take(300).collect(),
        })
    }
}

fn from_cache(resp: &reqwest::Response) -> bool {
    matches!(
        resp.headers()
            .get(CACHE_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("hit" | "stale" | "revalidating")
    )
}

#[async_trait]
impl Source for MirrorSource {
    async fn manifest(&self, img: &ImageRef, r: &Reference) -> Result<Fetched, Error> {
        let what = format!("manifest {}:{r}", img.name());
        let resp = self
            .client
            .get(self.url(img, "manifests", &r.to_string()))
            .header(reqwest::header::ACCEPT, accept_all())
            .send()
            .await?;
        let resp = Self::check(what.clone(), resp).await?;
        let cached = from_cache(&resp);
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let declared = header("content-type");
        let sent_digest = header("docker-content-digest");
        let body = resp.bytes().await?;
        let digest = match r {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(_) => match sent_digest.and_then(|s| s.parse::<Digest>().ok()) {
                Some(d) => d,
                None => Digest::sha256_of(&body),
            },
        };
        if !digest.matches(&body) {
            return Err(Error::Digest {
                what,
                expected: digest.to_string(),
            });
        }
        let media_type = media::manifest_media_type(&body, declared.as_deref())
            .ok_or_else(|| Error::Invalid(format!("{what}: not an image manifest")))?;
        Ok(Fetched {
            digest,
            media_type,
            body,
            cached,
        })
    }

    async fn blob_cached(&self, img: &ImageRef, d: &Digest) -> Result<bool, Error> {
        let resp = self
            .client
            .head(self.url(img, "blobs", &d.to_string()))
            .send()
            .await?;
        Ok(resp.status().is_success() && from_cache(&resp))
    }

    async fn fetch_blob(
        &self,
        img: &ImageRef,
        d: &Digest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        let what = format!("blob {}@{d}", img.name());
        let resp = self
            .client
            .get(self.url(img, "blobs", &d.to_string()))
            .send()
            .await?;
        let resp = Self::check(what.clone(), resp).await?;
        let mut hasher = Hasher::new(d.algorithm());
        let mut n = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            progress(chunk.len() as u64);
        }
        if &hasher.finish() != d {
            return Err(Error::Digest {
                what,
                expected: d.to_string(),
            });
        }
        Ok(n)
    }
}

/// The cache of a data directory, opened in this process with the server's configuration.
pub(crate) struct DirectSource {
    pub(crate) cache: Arc<Cache>,
    pub(crate) storage: Arc<dyn Storage>,
    /// How long to wait for a drained fill to be committed.
    pub(crate) commit_timeout: Duration,
}

#[async_trait]
impl Source for DirectSource {
    async fn manifest(&self, img: &ImageRef, r: &Reference) -> Result<Fetched, Error> {
        let accept: Vec<String> = media::ALL_MANIFESTS.iter().map(|s| s.to_string()).collect();
        let m = self
            .cache
            .manifest(&img.registry, &img.repository, r, &accept, false)
            .await
            .map_err(|e| not_found(e, || format!("manifest {}:{r}", img.name())))?;
        Ok(Fetched {
            cached: matches!(
                m.status,
                CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidating
            ),
            digest: m.digest,
            media_type: m.media_type,
            body: m.body,
        })
    }

    async fn blob_cached(&self, img: &ImageRef, d: &Digest) -> Result<bool, Error> {
        // Stored for another repository is not enough: fetching it through the cache links it
        // here (one upstream HEAD), so a mirror on this directory serves it with no upstream.
        Ok(records::blob_held(self.storage.as_ref(), (&img.registry, &img.repository), d).await?)
    }

    async fn fetch_blob(
        &self,
        img: &ImageRef,
        d: &Digest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        let blob = self
            .cache
            .blob(&img.registry, &img.repository, d, None, false)
            .await
            .map_err(|e| not_found(e, || format!("blob {}@{d}", img.name())))?;
        let mut n = 0u64;
        if let Some(body) = blob.body {
            let mut stream = match body {
                BlobBody::Stream(s) => s,
                BlobBody::File(region) => region.into_stream(),
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Error::Invalid(format!("blob {d}: {e}")))?;
                n += chunk.len() as u64;
                progress(chunk.len() as u64);
            }
        }
        // The fill verifies and commits after the last byte; this process may exit next.
        let deadline = tokio::time::Instant::now() + self.commit_timeout;
        while records::blob_size(self.storage.as_ref(), d)
            .await?
            .is_none()
        {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "blob {d} was read but not committed"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(n)
    }
}

/// A cache error as prefetch reports it: an unknown manifest or blob is `NotFound(what())`.
fn not_found(e: crate::cache::Error, what: impl FnOnce() -> String) -> Error {
    match e {
        crate::cache::Error::ManifestUnknown | crate::cache::Error::BlobUnknown => {
            Error::NotFound(what())
        }
        e => Error::Cache(e),
    }
}

//! S3 storage (`storage = "s3"`): committed objects in a bucket through `object_store`, with an
//! optional bounded local tier of hot blobs in front of it.
//!
//! Owns: the bucket client and its credentials, multipart uploads of fills ([`upload`]), the
//! local tier ([`tier`]), verified reads of content-addressed blobs ([`verify`]) and presigned
//! blob URLs. Must not call the cache or upstreams.
//!
//! Guarantees:
//! - an object appears under its key only whole: small objects with one PUT, blobs by completing
//!   a multipart upload after the caller verified the digest (completion is the commit);
//! - multipart uploads of a process that died are aborted by any replica once their record
//!   (`_uploads/<id>`, refreshed while the upload runs) is stale, at start-up and periodically;
//! - blob bytes read from the bucket are hashed; an object whose bytes do not match its key is
//!   deleted and never handed out whole (see [`verify`]);
//! - with a local tier, blobs there are served (with `sendfile`) even while the bucket is
//!   unreachable.

mod creds;
mod tier;
mod upload;
mod verify;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::{check_key, ByteStream, Error, ObjectMeta, Opened, Result, Role, Storage, Upload};
use crate::config::S3Config;

/// Bytes per multipart part (S3 wants at least 5 MiB for every part but the last).
const PART_SIZE: usize = 8 << 20;

/// The S3 client and what sits around it.
pub(super) struct S3Storage {
    store: Arc<AmazonS3>,
    /// Object key prefix, "" or ending in '/'.
    prefix: String,
    /// `s3://<bucket>/<prefix>`: what replicas sharing this store call it.
    location: String,
    tier: Option<Arc<tier::Tier>>,
    redirect_over: Option<u64>,
    presign: Duration,
    /// Spool files and tier downloads in progress.
    tmp: PathBuf,
    /// One tier download per key at a time.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Open the bucket of `cfg`, with spool files and the local tier under `data_dir`.
pub(super) async fn open(cfg: &S3Config, data_dir: &Path, role: Role) -> Result<Opened> {
    let store = build(cfg, None)?;
    let s = S3Storage::new(store, cfg, data_dir).await?;
    let cleaned = match role {
        Role::Tool => 0,
        Role::Server => {
            let n = s.clean_local_tmp().await;
            upload::spawn_janitor(s.store.clone(), s.prefix.clone());
            n
        }
    };
    Ok(Opened {
        staging_dir: s.tmp.clone(),
        storage: Arc::new(s),
        cleaned,
    })
}

/// The `object_store` client for `cfg`: settings from the `AWS_*` environment as
/// `AmazonS3Builder::from_env` reads them, then the `[s3]` keys, then `keys` (tests).
pub(super) fn build(cfg: &S3Config, keys: Option<(&str, &str)>) -> Result<AmazonS3> {
    let unavailable = |e: object_store::Error| Error::Unavailable {
        key: format!("s3://{}", cfg.bucket),
        source: Box::new(e),
    };
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        // Blob bodies may take long; a stalled read is caught by the read timeout.
        .with_timeout_disabled()
        .with_read_timeout(Duration::from_secs(30))
        .with_pool_idle_timeout(Duration::from_secs(50));
    // AWS SDKs trust the certificates of AWS_CA_BUNDLE (a private CA for an S3-compatible
    // server); object_store ignores the variable, so it is honoured here.
    for cert in creds::ca_bundle()? {
        options = options.with_root_certificate(cert);
    }
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_client_options(options)
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        })
        .with_virtual_hosted_style_request(!cfg.path_style);
    if let Some(r) = &cfg.region {
        b = b.with_region(r);
    }
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(p) = &cfg.profile {
        let c = creds::profile(p)?;
        b = b
            .with_access_key_id(c.key_id)
            .with_secret_access_key(c.secret_key);
        if let Some(t) = c.token {
            b = b.with_token(t);
        }
    }
    if let Some((id, secret)) = keys {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    b.build().map_err(unavailable)
}

impl S3Storage {
    pub(super) async fn new(store: AmazonS3, cfg: &S3Config, data_dir: &Path) -> Result<Self> {
        let tmp = data_dir.join("tmp");
        super::create_dir(&tmp, &tmp.display().to_string()).await?;
        let tier = match cfg.local_cache_size {
            Some(size) => Some(Arc::new(
                tier::Tier::open(data_dir.join("tier"), size.0).await?,
            )),
            None => None,
        };
        let mut prefix = cfg.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Storage {
            store: Arc::new(store),
            location: format!("s3://{}/{prefix}", cfg.bucket),
            prefix,
            tier,
            redirect_over: cfg.redirect_blobs_over.map(|s| s.0),
            presign: Duration::from_secs(cfg.presign_secs()),
            tmp,
            fetching: Mutex::default(),
        })
    }

    async fn clean_local_tmp(&self) -> usize {
        let mut n = 0;
        if let Ok(mut entries) = tokio::fs::read_dir(&self.tmp).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                if tokio::fs::remove_file(e.path()).await.is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        check_key(key)?;
        ObjPath::parse(format!("{}{key}", self.prefix))
            .map_err(|_| Error::InvalidKey(key.to_string()))
    }

    /// Download a blob into the local tier, verifying it on the way; one download per key.
    async fn fetch_into_tier(&self, tier: &tier::Tier, key: &str) -> Result<(std::fs::File, u64)> {
        let lock = {
            let mut m = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.to_string()).or_default().clone()
        };
        let _held = lock.lock().await;
        let result = async {
            if let Some(hit) = tier.open_blob(key).await {
                return Ok(hit);
            }
            let path = self.path(key)?;
            let got = timed("get", key, self.store.get(&path)).await?;
            let stream = got.into_stream().map_err(std::io::Error::other).boxed();
            let hex = verify::blob_hex(key);
            let tmp = self.tmp.join(crate::staging::temp_name("tier"));
            let written = verify::to_file(stream, &tmp, hex).await;
            match written {
                Ok(_) => tier.adopt(key, &tmp).await?,
                Err(verify::Failure::Io(source)) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(stream_error(key, source));
                }
                Err(verify::Failure::Mismatch(actual)) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(self.corrupt(key, actual).await);
                }
            }
            tier.open_blob(key)
                .await
                .ok_or_else(|| Error::NotFound(key.to_string()))
        }
        .await;
        drop(_held);
        let mut m = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(key);
        }
        result
    }

    /// A blob whose bytes do not match its key: remove it so the next read misses.
    async fn corrupt(&self, key: &str, actual: String) -> Error {
        corrupt_found(&self.store, &self.path_or_raw(key), key, &actual).await;
        if let Some(t) = &self.tier {
            t.remove(key).await;
        }
        Error::Corrupt {
            key: key.to_string(),
            actual,
        }
    }

    fn path_or_raw(&self, key: &str) -> ObjPath {
        self.path(key)
            .unwrap_or_else(|_| ObjPath::from(format!("{}{key}", self.prefix)))
    }
}

/// Log, count and delete a corrupt object.
async fn corrupt_found(store: &AmazonS3, path: &ObjPath, key: &str, actual: &str) {
    tracing::error!(%key, content = %actual, "object in the bucket does not match its digest; deleting it");
    metrics::counter!(crate::metrics::S3_CORRUPT).increment(1);
    if let Err(e) = timed("delete", key, store.delete(path)).await {
        tracing::warn!(%key, error = %e, "cannot delete the corrupt object");
    }
}

/// Run one S3 request, recording its latency and failure, and map its error.
async fn timed<T>(
    op: &'static str,
    key: &str,
    fut: impl std::future::Future<Output = object_store::Result<T>>,
) -> Result<T> {
    let start = Instant::now();
    let r = fut.await;
    metrics::histogram!(crate::metrics::S3_REQUEST_SECONDS, "op" => op)
        .record(start.elapsed().as_secs_f64());
    r.map_err(|e| map_err(op, key, e))
}

fn map_err(op: &'static str, key: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound(key.to_string()),
        e => {
            metrics::counter!(crate::metrics::S3_ERRORS, "op" => op).increment(1);
            Error::Unavailable {
                key: key.to_string(),
                source: Box::new(e),
            }
        }
    }
}

/// A read of an object body failed part-way.
fn stream_error(key: &str, source: std::io::Error) -> Error {
    Error::Unavailable {
        key: key.to_string(),
        source: Box::new(source),
    }
}

fn meta(key: &str, m: &object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: m.size,
        modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
    }
}

/// Keys that belong to the backend itself, not to the cache's tree.
fn internal(key: &str) -> bool {
    key.starts_with(upload::RECORDS) || key.starts_with(TOUCH)
}

/// Where `touch` copies an object for a moment (S3 refuses to copy an object onto itself
/// unchanged, and has no other way to renew its modification time).
const TOUCH: &str = "_touch/";

#[async_trait]
impl Storage for S3Storage {
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        if let Some(m) = self.tier.as_ref().and_then(|t| t.meta(key)) {
            return Ok(m);
        }
        let path = self.path(key)?;
        let m = timed("head", key, self.store.head(&path)).await?;
        Ok(meta(key, &m))
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let got = timed("get", key, self.store.get(&path)).await?;
        timed("get", key, got.bytes()).await
    }

    async fn get_stream(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        if let Some(tier) = &self.tier {
            let local = match tier.open_blob(key).await {
                Some(hit) => Some(hit),
                None if verify::blob_hex(key).is_some() => {
                    Some(self.fetch_into_tier(tier, key).await?)
                }
                None => None,
            };
            if let Some((file, len)) = local {
                let r = range.unwrap_or(0..len);
                return Ok(crate::staging::positional_stream(
                    Arc::new(file),
                    r.start.min(len),
                    r.end.min(len),
                ));
            }
        }
        let path = self.path(key)?;
        let Some(hex) = verify::blob_hex(key) else {
            let opts = object_store::GetOptions::new().with_range(range.map(|r| r.start..r.end));
            let got = timed("get", key, self.store.get_opts(&path, opts)).await?;
            return Ok(got.into_stream().map_err(std::io::Error::other).boxed());
        };
        // A blob: the whole object is read and hashed, whatever range was asked for.
        let got = timed("get", key, self.store.get(&path)).await?;
        let size = got.meta.size;
        let body = got.into_stream().map_err(std::io::Error::other).boxed();
        let (store, key) = (self.store.clone(), key.to_string());
        let on_mismatch = move |actual: String| {
            tokio::spawn(async move { corrupt_found(&store, &path, &key, &actual).await });
        };
        Ok(verify::stream(
            body,
            hex,
            range.unwrap_or(0..size),
            on_mismatch,
        ))
    }

    async fn open_file(&self, key: &str) -> Result<Option<(std::fs::File, u64)>> {
        let Some(tier) = &self.tier else {
            return Ok(None);
        };
        if let Some(hit) = tier.open_blob(key).await {
            return Ok(Some(hit));
        }
        if verify::blob_hex(key).is_none() {
            return Ok(None);
        }
        match self.fetch_into_tier(tier, key).await {
            Ok(hit) => Ok(Some(hit)),
            // Deleted: the caller treats it as a miss and fetches it again.
            Err(Error::Corrupt { .. }) => Err(Error::NotFound(key.to_string())),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key)?;
        timed("put", key, self.store.put(&path, bytes.into())).await?;
        Ok(())
    }

    async fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        let path = self.path(key)?;
        upload::put_file(&self.store, &self.prefix, &path, key, file).await?;
        match &self.tier {
            Some(t) if verify::blob_hex(key).is_some() => t.adopt(key, file).await,
            _ => tokio::fs::remove_file(file)
                .await
                .map_err(|source| Error::Io {
                    key: key.to_string(),
                    source,
                }),
        }
    }

    async fn touch(&self, key: &str) -> Result<()> {
        if let Some(t) = &self.tier {
            t.touch(key);
        }
        let path = self.path(key)?;
        let tmp = ObjPath::parse(format!(
            "{}{TOUCH}{}",
            self.prefix,
            crate::staging::temp_name("t")
        ))
        .map_err(|_| Error::InvalidKey(key.to_string()))?;
        match timed("copy", key, self.store.copy(&path, &tmp)).await {
            Err(Error::NotFound(_)) => return Ok(()),
            r => r?,
        }
        let back = timed("copy", key, self.store.copy(&tmp, &path)).await;
        let _ = timed("delete", key, self.store.delete(&tmp)).await;
        back
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        if let Some(t) = &self.tier {
            t.remove(key).await;
        }
        match timed("delete", key, self.store.delete(&path)).await {
            Err(Error::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // object_store lists whole path segments: list the directory of `prefix`, then filter.
        let dir = match prefix.rfind('/') {
            Some(i) => format!("{}{}", self.prefix, &prefix[..i]),
            None => self.prefix.trim_end_matches('/').to_string(),
        };
        let dir = ObjPath::parse(&dir).map_err(|_| Error::InvalidKey(prefix.to_string()))?;
        let start = Instant::now();
        let listed: object_store::Result<Vec<object_store::ObjectMeta>> =
            self.store.list(Some(&dir)).try_collect().await;
        metrics::histogram!(crate::metrics::S3_REQUEST_SECONDS, "op" => "list")
            .record(start.elapsed().as_secs_f64());
        let listed = listed.map_err(|e| map_err("list", prefix, e))?;
        let mut out: Vec<ObjectMeta> = listed
            .iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(self.prefix.as_str())?;
                (key.starts_with(prefix) && !internal(key)).then(|| meta(key, m))
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn begin_upload(&self, key: &str, size: Option<u64>) -> Result<Option<Box<dyn Upload>>> {
        let path = self.path(key)?;
        let tier = self
            .tier
            .clone()
            .filter(|_| verify::blob_hex(key).is_some());
        let u = upload::S3Upload::start(self.store.clone(), &self.prefix, path, key, size, tier)
            .await?;
        Ok(Some(Box::new(u)))
    }

    fn shared_location(&self) -> Option<String> {
        Some(self.location.clone())
    }

    async fn redirect_url(&self, key: &str, size: u64) -> Result<Option<String>> {
        if self.redirect_over.is_none_or(|over| size <= over) {
            return Ok(None);
        }
        let path = self.path(key)?;
        let url = timed(
            "presign",
            key,
            self.store
                .signed_url(http::Method::GET, &path, self.presign),
        )
        .await?;
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests;

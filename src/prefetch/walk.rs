//! The walk: tag -> manifest (-> the chosen platforms' manifests) -> configs and layers, each
//! fetched once per run however many images share it, at most `concurrency` at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::{OnceCell, Semaphore};

use super::progress::Progress;
use super::source::Source;
use super::{platform_name, Error, ImageReport, Platforms, Status};
use crate::oci::{media, Digest, ImageRef, Reference};

/// What to do.
pub(crate) struct Options {
    pub(crate) platforms: Platforms,
    /// Most blob fetches (and image resolutions) at once.
    pub(crate) concurrency: usize,
    pub(crate) dry_run: bool,
}

/// An image resolved to its blobs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) digest: Digest,
    pub(crate) platforms: Vec<String>,
    /// (digest, size) of every config and layer, each once.
    pub(crate) blobs: Vec<(Digest, u64)>,
}

/// How a blob ended for the image that asked: fetched by it, or there already.
#[derive(Debug, Clone, Copy)]
enum Got {
    Fetched(u64),
    Cached,
}

/// One outcome per blob digest for the whole run (the first image to need it fetches it).
type Shared = Mutex<HashMap<Digest, Arc<OnceCell<Result<u64, String>>>>>;

struct Run {
    source: Arc<dyn Source>,
    opts: Options,
    progress: Arc<Progress>,
    fetches: Semaphore,
    shared: Shared,
}

/// Prefetch `images`, in order of the reports.
pub(crate) async fn run(
    source: Arc<dyn Source>,
    images: Vec<ImageRef>,
    opts: Options,
    progress: Arc<Progress>,
) -> Vec<ImageReport> {
    let n = opts.concurrency.max(1);
    let run = Arc::new(Run {
        source,
        fetches: Semaphore::new(n),
        opts,
        progress,
        shared: Mutex::default(),
    });
    // Collected first: a lazy iterator's closure in the stream makes the future not `Send` for
    // every lifetime, and `serve` spawns this future.
    let jobs: Vec<_> = images
        .into_iter()
        .enumerate()
        .map(|(i, img)| {
            let run = run.clone();
            async move { run.image(i, img).await }
        })
        .collect();
    futures::stream::iter(jobs).buffered(n).collect().await
}

impl Run {
    async fn image(&self, i: usize, img: ImageRef) -> ImageReport {
        let start = Instant::now();
        let mut report = ImageReport {
            image: img.to_string(),
            status: Status::Failed,
            digest: None,
            platforms: Vec::new(),
            blobs: 0,
            blobs_fetched: 0,
            size: 0,
            bytes_fetched: 0,
            bytes_cached: 0,
            seconds: 0.0,
            error: None,
        };
        let result = self.image_inner(i, &img, &mut report).await;
        report.seconds = start.elapsed().as_secs_f64();
        match result {
            Ok(status) => report.status = status,
            Err(e) => report.error = Some(e.to_string()),
        }
        self.progress.done(i, &report);
        report
    }

    async fn image_inner(
        &self,
        i: usize,
        img: &ImageRef,
        report: &mut ImageReport,
    ) -> Result<Status, Error> {
        let (plan, manifests_fetched) = self.resolve(img).await?;
        report.digest = Some(plan.digest.to_string());
        report.platforms = plan.platforms.clone();
        report.blobs = plan.blobs.len();
        report.size = plan.blobs.iter().map(|(_, s)| s).sum();
        self.progress.resolved(i, report);
        let mut cached_blobs = Vec::new();
        let mut missing = Vec::new();
        for (d, size) in &plan.blobs {
            if self.source.blob_cached(img, d).await? {
                cached_blobs.push(*size);
            } else {
                missing.push((d.clone(), *size));
            }
        }
        report.bytes_cached = cached_blobs.iter().sum();
        self.progress.advance(i, report.bytes_cached);
        if self.opts.dry_run {
            report.blobs_fetched = missing.len();
            report.bytes_fetched = missing.iter().map(|(_, s)| s).sum();
            return Ok(if missing.is_empty() {
                Status::Cached
            } else {
                Status::WouldFetch
            });
        }
        let jobs: Vec<_> = missing
            .iter()
            .map(|(d, size)| async move { (self.blob(i, img, d).await, *size) })
            .collect();
        let outcomes = futures::stream::iter(jobs)
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for (outcome, size) in outcomes {
            match outcome? {
                Got::Fetched(n) => {
                    report.blobs_fetched += 1;
                    report.bytes_fetched += n;
                }
                Got::Cached => {
                    report.bytes_cached += size;
                    self.progress.advance(i, size);
                }
            }
        }
        Ok(if report.blobs_fetched > 0 || manifests_fetched {
            Status::Fetched
        } else {
            Status::Cached
        })
    }

    /// Fetch one blob, or wait for the image of this run that is fetching it.
    async fn blob(&self, i: usize, img: &ImageRef, d: &Digest) -> Result<Got, Error> {
        let cell = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.entry(d.clone()).or_default().clone()
        };
        let mut mine = false;
        let outcome = cell
            .get_or_init(|| async {
                mine = true;
                let _permit = self.fetches.acquire().await;
                let progress = |n: u64| self.progress.advance(i, n);
                self.source
                    .fetch_blob(img, d, &progress)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .clone();
        match outcome {
            Ok(n) if mine => Ok(Got::Fetched(n)),
            Ok(_) => Ok(Got::Cached),
            Err(e) => Err(Error::Invalid(e)),
        }
    }

    /// The image's digest and blobs for the chosen platforms; whether a manifest was fetched.
    async fn resolve(&self, img: &ImageRef) -> Result<(Plan, bool), Error> {
        let top = self.source.manifest(img, &img.reference()).await?;
        let mut fetched = !top.cached;
        let mut plan = Plan {
            digest: top.digest.clone(),
            platforms: Vec::new(),
            blobs: Vec::new(),
        };
        let v: serde_json::Value = serde_json::from_slice(&top.body)
            .map_err(|e| Error::Invalid(format!("{img}: manifest is not JSON: {e}")))?;
        if top.media_type == media::OCI_INDEX || top.media_type == media::DOCKER_LIST {
            let entries = v["manifests"].as_array().cloned().unwrap_or_default();
            let chosen: Vec<&serde_json::Value> = entries
                .iter()
                .filter(|e| match &self.opts.platforms {
                    Platforms::All => true,
                    Platforms::These(ps) => ps.iter().any(|p| p.matches(&e["platform"])),
                })
                .collect();
            if chosen.is_empty() {
                let has: Vec<String> = entries
                    .iter()
                    .map(|e| platform_name(&e["platform"]))
                    .collect();
                return Err(Error::Invalid(format!(
                    "{img} has no manifest for the platform(s) asked for; it has {}",
                    has.join(", ")
                )));
            }
            for e in chosen {
                let d: Digest = e["digest"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!("{img}: index entry without a digest"))
                    })?;
                let child = self.source.manifest(img, &Reference::Digest(d)).await?;
                fetched |= !child.cached;
                plan.platforms.push(platform_name(&e["platform"]));
                add_blobs(&mut plan.blobs, &child.body);
            }
        } else {
            add_blobs(&mut plan.blobs, &top.body);
        }
        Ok((plan, fetched))
    }
}

/// Append the config and layers of a single-platform manifest, skipping ones already listed.
fn add_blobs(out: &mut Vec<(Digest, u64)>, body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let descs = std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten());
    for desc in descs {
        if let Some(d) = desc["digest"]
            .as_str()
            .and_then(|s| s.parse::<Digest>().ok())
        {
            if !out.iter().any(|(x, _)| x == &d) {
                out.push((d, desc["size"].as_u64().unwrap_or(0)));
            }
        }
    }
}

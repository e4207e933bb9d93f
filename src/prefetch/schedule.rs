//! `[[prefetch]]` schedules of `regmirror serve`: each list runs through the cache facade of the
//! server itself ([`DirectSource`]), first at start and then every `interval_secs`, so that tags
//! like `:latest` stay warm. The outcome of each run is kept for the status page and recorded on
//! `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::progress::{Mode, Progress};
use super::source::{DirectSource, Source};
use super::{inputs, walk, Platform, Platforms, Status};
use crate::cache::Cache;
use crate::config::{Config, PrefetchSchedule};
use crate::oci::ImageRef;
use crate::storage::Storage;

/// How long a run waits for a drained blob to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the last run of a schedule did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LastRun {
    /// Seconds since the epoch when it started / ended.
    pub(crate) started: u64,
    pub(crate) finished: u64,
    pub(crate) seconds: f64,
    /// Images fetched or found cached.
    pub(crate) images_ok: u64,
    pub(crate) images_failed: u64,
    /// Bytes this run fetched from upstreams.
    pub(crate) bytes_fetched: u64,
    /// `image: reason` of each failure (at most 20).
    pub(crate) failures: Vec<String>,
}

/// One schedule as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScheduleReport {
    pub(crate) name: String,
    pub(crate) interval_secs: u64,
    /// Images named in the config (a list `file` is counted at each run).
    pub(crate) images: Vec<String>,
    pub(crate) file: Option<String>,
    pub(crate) platforms: Vec<String>,
    pub(crate) runs: u64,
    pub(crate) running: bool,
    /// Seconds since the epoch of the next start.
    pub(crate) next_run: Option<u64>,
    pub(crate) last: Option<LastRun>,
}

struct Entry {
    name: String,
    cfg: PrefetchSchedule,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runs: u64,
    running: bool,
    next_run: Option<u64>,
    last: Option<LastRun>,
}

/// Every `[[prefetch]]` schedule of a server and the outcome of its runs.
#[derive(Default)]
pub(crate) struct Schedules {
    entries: Vec<Entry>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Schedules {
    pub(crate) fn from_config(config: &Config) -> Schedules {
        let entries = config
            .prefetch
            .iter()
            .enumerate()
            .map(|(i, p)| Entry {
                name: p.display_name(i),
                cfg: p.clone(),
                state: Mutex::default(),
            })
            .collect();
        Schedules { entries }
    }

    /// The schedules and their last runs (no I/O).
    pub(crate) fn report(&self) -> Vec<ScheduleReport> {
        self.entries
            .iter()
            .map(|e| {
                let s = e.state.lock().unwrap_or_else(|p| p.into_inner());
                ScheduleReport {
                    name: e.name.clone(),
                    interval_secs: e.cfg.interval_secs,
                    images: e.cfg.images.clone(),
                    file: e.cfg.file.as_ref().map(|f| f.display().to_string()),
                    platforms: e.cfg.platforms.clone(),
                    runs: s.runs,
                    running: s.running,
                    next_run: s.next_run,
                    last: s.last.clone(),
                }
            })
            .collect()
    }

    /// Run every schedule in the background until `stop`, through `cache`.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        cache: Arc<Cache>,
        storage: Arc<dyn Storage>,
        stop: CancellationToken,
    ) {
        let source: Arc<dyn Source> = Arc::new(DirectSource {
            cache,
            storage,
            commit_timeout: COMMIT_TIMEOUT,
        });
        for i in 0..self.entries.len() {
            let (this, source, stop) = (self.clone(), source.clone(), stop.clone());
            tokio::spawn(async move {
                let every = Duration::from_secs(this.entries[i].cfg.interval_secs);
                loop {
                    let started = Instant::now();
                    this.run_once(i, source.clone()).await;
                    let wait = every.saturating_sub(started.elapsed());
                    this.set(i, |s| s.next_run = Some(now_secs() + wait.as_secs()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
    }

    fn set(&self, i: usize, f: impl FnOnce(&mut State)) {
        f(&mut self.entries[i]
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner()));
    }

    /// One run of schedule `i`: the list (the file read now), the walk, the record.
    async fn run_once(&self, i: usize, source: Arc<dyn Source>) {
        let e = &self.entries[i];
        self.set(i, |s| {
            s.running = true;
            s.next_run = None;
        });
        let started = now_secs();
        let clock = Instant::now();
        let mut last = LastRun {
            started,
            ..LastRun::default()
        };
        match images(&e.cfg) {
            Ok(list) => {
                let names: Vec<String> = list.iter().map(|i| i.to_string()).collect();
                let opts = walk::Options {
                    platforms: platforms(&e.cfg.platforms),
                    concurrency: e.cfg.concurrency.max(1),
                    dry_run: false,
                };
                let progress = Arc::new(Progress::new(Mode::Json, &names));
                for r in walk::run(source, list, opts, progress).await {
                    last.bytes_fetched += r.bytes_fetched;
                    if r.status == Status::Failed {
                        last.images_failed += 1;
                        if last.failures.len() < 20 {
                            let why = r.error.as_deref().unwrap_or("failed");
                            last.failures.push(format!("{}: {why}", r.image));
                        }
                    } else {
                        last.images_ok += 1;
                    }
                }
            }
            Err(why) => {
                last.images_failed = 1;
                last.failures.push(why);
            }
        }
        last.finished = now_secs();
        last.seconds = clock.elapsed().as_secs_f64();
        for f in &last.failures {
            tracing::warn!(schedule = %e.name, failure = %f, "scheduled prefetch: image failed");
        }
        tracing::info!(
            schedule = %e.name,
            ok = last.images_ok,
            failed = last.images_failed,
            bytes = last.bytes_fetched,
            seconds = last.seconds,
            "scheduled prefetch run finished"
        );
        crate::metrics::prefetch_run(
            &e.name,
            last.finished,
            last.images_ok,
            last.images_failed,
            last.bytes_fetched,
        );
        self.set(i, |s| {
            s.running = false;
            s.runs += 1;
            s.last = Some(last);
        });
    }
}

/// The references of a schedule, each once: `images`, then the lines of `file` (read now).
fn images(cfg: &PrefetchSchedule) -> Result<Vec<ImageRef>, String> {
    let mut raw = cfg.images.clone();
    if let Some(f) = &cfg.file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read image list {}: {e}", f.display()))?;
        raw.extend(inputs::parse_list(&text));
    }
    let mut out: Vec<ImageRef> = Vec::new();
    for r in raw {
        let img = ImageRef::parse(&r).map_err(|e| format!("image reference {r:?}: {e}"))?;
        if !out.contains(&img) {
            out.push(img);
        }
    }
    Ok(out)
}

/// `platforms` of a schedule (validated by the config): empty is the host's, "all" is all.
fn platforms(list: &[String]) -> Platforms {
    if list.iter().any(|p| p == "all") {
        return Platforms::All;
    }
    let these: Vec<Platform> = list
        .iter()
        .filter_map(|p| Platform::parse(p).ok())
        .collect();
    if these.is_empty() {
        Platforms::These(vec![Platform::host()])
    } else {
        Platforms::These(these)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_platforms() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("list.txt");
        std::fs::write(&f, "# warm\nbusybox:1\nghcr.io/o/app:v1\n").unwrap();
        let cfg = PrefetchSchedule {
            images: vec!["docker.io/library/busybox:1".into()],
            file: Some(f),
            ..PrefetchSchedule::default()
        };
        let got: Vec<String> = images(&cfg)
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(got.len(), 2, "busybox:1 named twice counts once: {got:?}");
        assert!(got[1].starts_with("ghcr.io/o/app"));
        assert_eq!(platforms(&["all".into()]), Platforms::All);
        assert_eq!(platforms(&[]), Platforms::These(vec![Platform::host()]));
        let missing = PrefetchSchedule {
            file: Some("/nonexistent/x".into()),
            ..PrefetchSchedule::default()
        };
        assert!(images(&missing).unwrap_err().contains("/nonexistent/x"));
    }
}

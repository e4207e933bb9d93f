//! What prefetch shows: on a terminal, one bar per image (bytes, rate, ETA) under an overall bar;
//! otherwise (or with `--quiet`) one plain line per event; with `--json` nothing until the one
//! JSON document at the end. The summary table follows bars and plain lines.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ImageReport, Status};
use crate::config::human_size as human;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// indicatif bars on stdout (a terminal).
    Bars,
    /// One line per image event (not a terminal).
    Plain,
    /// Plain lines for outcomes only.
    Quiet,
    /// Nothing while running; the JSON report at the end.
    Json,
}

/// Progress of a run, shared by its tasks.
pub(crate) struct Progress {
    mode: Mode,
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: Mutex<Vec<ProgressBar>>,
    images: usize,
    done: Mutex<usize>,
}

const IMAGE_TEMPLATE: &str =
    "{prefix:<48!} {bar:24.cyan/blue} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta:>4} {msg}";
const OVERALL_TEMPLATE: &str =
    "{prefix:<48!} {bar:24.green/white} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta:>4} {msg}";

impl Progress {
    /// Progress for `names` (in report order).
    pub(crate) fn new(mode: Mode, names: &[String]) -> Progress {
        let mut p = Progress {
            mode,
            multi: None,
            overall: None,
            bars: Mutex::new(Vec::new()),
            images: names.len(),
            done: Mutex::new(0),
        };
        if mode == Mode::Bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10));
            let style = ProgressStyle::with_template(IMAGE_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bars = names
                .iter()
                .map(|n| {
                    let b = multi.add(ProgressBar::new(0).with_style(style.clone()));
                    b.set_prefix(n.clone());
                    b.set_message("resolving");
                    b
                })
                .collect();
            let overall = multi.add(
                ProgressBar::new(0).with_style(
                    ProgressStyle::with_template(OVERALL_TEMPLATE)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                ),
            );
            overall.set_prefix("overall");
            overall.set_message(format!("0/{} images", names.len()));
            overall.enable_steady_tick(Duration::from_millis(200));
            p.bars = Mutex::new(bars);
            p.overall = Some(overall);
            p.multi = Some(multi);
        }
        p
    }

    fn bar(&self, i: usize) -> Option<ProgressBar> {
        self.bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(i)
            .cloned()
    }

    /// Image `i` resolved to its blobs (`r.size` bytes).
    pub(crate) fn resolved(&self, i: usize, r: &ImageReport) {
        match self.mode {
            Mode::Bars => {
                if let Some(b) = self.bar(i) {
                    b.set_length(r.size);
                    b.set_message("");
                }
                if let Some(o) = &self.overall {
                    o.inc_length(r.size);
                }
            }
            Mode::Plain => println!(
                "resolved {} {} platforms={} blobs={} size={}",
                r.image,
                r.digest.as_deref().unwrap_or("-"),
                platforms(r),
                r.blobs,
                human(r.size)
            ),
            Mode::Quiet | Mode::Json => {}
        }
    }

    /// `n` more bytes of image `i` are in the cache.
    pub(crate) fn advance(&self, i: usize, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(b) = self.bar(i) {
            b.inc(n);
        }
        if let Some(o) = &self.overall {
            o.inc(n);
        }
    }

    /// Image `i` finished.
    pub(crate) fn done(&self, i: usize, r: &ImageReport) {
        let finished = {
            let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
            *d += 1;
            *d
        };
        match self.mode {
            Mode::Bars => {
                if let Some(b) = self.bar(i) {
                    b.finish_with_message(match &r.error {
                        Some(e) => format!("failed: {e}"),
                        None => r.status.as_str().to_string(),
                    });
                }
                if let Some(o) = &self.overall {
                    o.set_message(format!("{finished}/{} images", self.images));
                }
            }
            Mode::Plain | Mode::Quiet => println!("{}", outcome_line(r)),
            Mode::Json => {}
        }
    }

    /// Stop the bars, then print the summary (or the JSON report).
    pub(crate) fn finish(&self, reports: &[ImageReport], elapsed: Duration) {
        if let Some(o) = &self.overall {
            o.finish();
        }
        if self.mode == Mode::Json {
            let doc = serde_json::json!({
                "images": reports,
                "totals": totals(reports, elapsed),
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            return;
        }
        print!("{}", summary(reports, elapsed));
    }
}

fn platforms(r: &ImageReport) -> String {
    if r.platforms.is_empty() {
        "-".into()
    } else {
        r.platforms.join(",")
    }
}

/// The plain line for an image's outcome.
pub(crate) fn outcome_line(r: &ImageReport) -> String {
    match (&r.error, r.status) {
        (Some(e), _) => format!("failed {}: {e}", r.image),
        (None, Status::WouldFetch) => format!(
            "would fetch {} blobs={}/{} bytes={} (cached {})",
            r.image,
            r.blobs_fetched,
            r.blobs,
            human(r.bytes_fetched),
            human(r.bytes_cached)
        ),
        (None, status) => format!(
            "{} {} blobs={}/{} bytes={} cached={} in {:.1}s",
            status.as_str(),
            r.image,
            r.blobs_fetched,
            r.blobs,
            human(r.bytes_fetched),
            human(r.bytes_cached),
            r.seconds
        ),
    }
}

fn count(reports: &[ImageReport], s: Status) -> usize {
    reports.iter().filter(|r| r.status == s).count()
}

fn totals(reports: &[ImageReport], elapsed: Duration) -> serde_json::Value {
    serde_json::json!({
        "images": reports.len(),
        "fetched": count(reports, Status::Fetched),
        "cached": count(reports, Status::Cached),
        "would_fetch": count(reports, Status::WouldFetch),
        "failed": count(reports, Status::Failed),
        "bytes_fetched": reports.iter().map(|r| r.bytes_fetched).sum::<u64>(),
        "bytes_cached": reports.iter().map(|r| r.bytes_cached).sum::<u64>(),
        "seconds": elapsed.as_secs_f64(),
    })
}

/// The summary table and its totals line.
pub(crate) fn summary(reports: &[ImageReport], elapsed: Duration) -> String {
    let w = reports
        .iter()
        .map(|r| r.image.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = format!(
        "\n{:<w$}  {:<11}  {:>7}  {:>10}  {:>10}\n",
        "IMAGE", "STATUS", "BLOBS", "FETCHED", "CACHED"
    );
    for r in reports {
        s.push_str(&format!(
            "{:<w$}  {:<11}  {:>7}  {:>10}  {:>10}\n",
            r.image,
            r.status.as_str(),
            format!("{}/{}", r.blobs_fetched, r.blobs),
            human(r.bytes_fetched),
            human(r.bytes_cached)
        ));
    }
    for r in reports {
        if let Some(e) = &r.error {
            s.push_str(&format!("error: {}: {e}\n", r.image));
        }
    }
    let fetched: u64 = reports.iter().map(|r| r.bytes_fetched).sum();
    let cached: u64 = reports.iter().map(|r| r.bytes_cached).sum();
    let would = count(reports, Status::WouldFetch);
    s.push_str(&format!(
        "{} image(s): {} fetched, {} already cached, {}{} failed; {} {}, {} already cached, in {:.1}s\n",
        reports.len(),
        count(reports, Status::Fetched),
        count(reports, Status::Cached),
        if would > 0 { format!("{would} would fetch, ") } else { String::new() },
        count(reports, Status::Failed),
        human(fetched),
        if would > 0 { "to fetch" } else { "fetched" },
        human(cached),
        elapsed.as_secs_f64()
    ));
    s
}

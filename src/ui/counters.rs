//! Request counters for the status page: totals since start and one bucket per minute for the
//! last hour, all atomics, so that recording a request takes no lock.
//!
//! A bucket is reused an hour later: the first request of a new minute claims it (compare and
//! swap of its minute) and zeroes it. A request of the same new minute racing that claim may be
//! lost from the per-minute chart (never from the totals, which are separate counters).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Minutes the chart covers.
pub(crate) const MINUTES: usize = 60;

/// What one registry request adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Answered from the cache (hit, stale or revalidating).
    pub(crate) hit: bool,
    /// Answered with content from an upstream (miss, joined, passthrough).
    pub(crate) miss: bool,
    /// Blob bytes answered from the cache.
    pub(crate) bytes_cache: u64,
    /// Blob bytes answered from an upstream.
    pub(crate) bytes_upstream: u64,
    /// Answered with a server error or 429.
    pub(crate) error: bool,
}

/// Sums over some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Sums {
    pub(crate) requests: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) bytes_from_cache: u64,
    pub(crate) bytes_from_upstream: u64,
    pub(crate) errors: u64,
}

impl Sums {
    /// Hits among the requests answered with content (hits + misses); None when there were none.
    pub(crate) fn hit_ratio(&self) -> Option<f64> {
        ratio(self.hits, self.hits + self.misses)
    }

    fn add(&mut self, o: &Sums) {
        self.requests += o.requests;
        self.hits += o.hits;
        self.misses += o.misses;
        self.bytes_from_cache += o.bytes_from_cache;
        self.bytes_from_upstream += o.bytes_from_upstream;
        self.errors += o.errors;
    }
}

/// `part / whole`, None when `whole` is 0.
pub(crate) fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[derive(Default)]
struct Cells {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_cache: AtomicU64,
    bytes_upstream: AtomicU64,
    errors: AtomicU64,
}

impl Cells {
    fn add(&self, s: &Sample) {
        self.requests.fetch_add(1, Relaxed);
        if s.hit {
            self.hits.fetch_add(1, Relaxed);
        }
        if s.miss {
            self.misses.fetch_add(1, Relaxed);
        }
        if s.bytes_cache > 0 {
            self.bytes_cache.fetch_add(s.bytes_cache, Relaxed);
        }
        if s.bytes_upstream > 0 {
            self.bytes_upstream.fetch_add(s.bytes_upstream, Relaxed);
        }
        if s.error {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    fn read(&self) -> Sums {
        Sums {
            requests: self.requests.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bytes_from_cache: self.bytes_cache.load(Relaxed),
            bytes_from_upstream: self.bytes_upstream.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }

    fn zero(&self) {
        for c in [
            &self.requests,
            &self.hits,
            &self.misses,
            &self.bytes_cache,
            &self.bytes_upstream,
            &self.errors,
        ] {
            c.store(0, Relaxed);
        }
    }
}

struct Bucket {
    /// The minute (seconds since the epoch / 60) this bucket holds; u64::MAX: none yet.
    minute: AtomicU64,
    cells: Cells,
}

/// Totals and the per-minute buckets of the last hour.
pub(crate) struct Counters {
    total: Cells,
    buckets: [Bucket; MINUTES],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            total: Cells::default(),
            buckets: std::array::from_fn(|_| Bucket {
                minute: AtomicU64::new(u64::MAX),
                cells: Cells::default(),
            }),
        }
    }
}

/// One minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Minute {
    /// Start of the minute, seconds since the epoch.
    pub(crate) start: u64,
    #[serde(flatten)]
    pub(crate) sums: Sums,
}

impl Counters {
    /// Count one request made in `minute` (seconds since the epoch / 60).
    pub(crate) fn record(&self, minute: u64, s: &Sample) {
        self.total.add(s);
        let b = &self.buckets[(minute % MINUTES as u64) as usize];
        let held = b.minute.load(Relaxed);
        if held != minute {
            // Only a newer minute takes the bucket over; a late request of an older one is
            // left out of the chart.
            if (held != u64::MAX && held > minute)
                || b.minute
                    .compare_exchange(held, minute, Relaxed, Relaxed)
                    .is_err()
            {
                if b.minute.load(Relaxed) != minute {
                    return;
                }
            } else {
                b.cells.zero();
            }
        }
        b.cells.add(s);
    }

    /// Totals since start.
    pub(crate) fn totals(&self) -> Sums {
        self.total.read()
    }

    /// The `MINUTES` minutes ending with `now_minute`, oldest first (empty minutes as zeros).
    pub(crate) fn last_hour(&self, now_minute: u64) -> Vec<Minute> {
        let first = now_minute.saturating_sub(MINUTES as u64 - 1);
        (first..=now_minute)
            .map(|m| {
                let b = &self.buckets[(m % MINUTES as u64) as usize];
                let sums = if b.minute.load(Relaxed) == m {
                    b.cells.read()
                } else {
                    Sums::default()
                };
                Minute {
                    start: m * 60,
                    sums,
                }
            })
            .collect()
    }
}

/// The sums of `minutes`.
pub(crate) fn sum(minutes: &[Minute]) -> Sums {
    let mut s = Sums::default();
    for m in minutes {
        s.add(&m.sums);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(bytes: u64) -> Sample {
        Sample {
            hit: true,
            bytes_cache: bytes,
            ..Sample::default()
        }
    }

    fn miss(bytes: u64) -> Sample {
        Sample {
            miss: true,
            bytes_upstream: bytes,
            ..Sample::default()
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(0, 0), None);
        assert_eq!(ratio(1, 4), Some(0.25));
        let s = Sums {
            requests: 10,
            hits: 3,
            misses: 1,
            ..Sums::default()
        };
        assert_eq!(
            s.hit_ratio(),
            Some(0.75),
            "requests without content do not count"
        );
        assert_eq!(Sums::default().hit_ratio(), None);
    }

    #[test]
    fn buckets_per_minute_over_the_last_hour() {
        let c = Counters::default();
        let t0 = 29_000_000; // a minute number
        c.record(t0, &miss(100));
        c.record(t0, &hit(100));
        c.record(t0 + 1, &hit(50));
        c.record(t0 + 1, &Sample::default()); // a tags list: a request, neither hit nor miss
        let hour = c.last_hour(t0 + 1);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour[MINUTES - 1].start, (t0 + 1) * 60);
        assert_eq!(hour[MINUTES - 1].sums.requests, 2);
        assert_eq!(hour[MINUTES - 2].sums.hits, 1);
        assert_eq!(hour[MINUTES - 2].sums.misses, 1);
        let s = sum(&hour);
        assert_eq!((s.requests, s.hits, s.misses), (4, 2, 1));
        assert_eq!((s.bytes_from_cache, s.bytes_from_upstream), (150, 100));
        assert_eq!(s.hit_ratio(), Some(2.0 / 3.0));
        assert_eq!(c.totals(), s);

        // An hour later the bucket of t0 is reused: the chart forgets t0, the totals do not.
        c.record(t0 + 60, &hit(1));
        let hour = c.last_hour(t0 + 60);
        assert_eq!(
            hour[0].start,
            (t0 + 1) * 60,
            "the window starts 59 minutes back"
        );
        let s = sum(&hour);
        assert_eq!((s.requests, s.hits, s.misses), (3, 2, 0));
        assert_eq!(c.totals().requests, 5);

        // A late request of a minute whose bucket was taken over is left out of the chart.
        c.record(t0, &hit(1));
        assert_eq!(sum(&c.last_hour(t0 + 60)).requests, 3);
        assert_eq!(c.totals().requests, 6);

        // Far in the future everything in the chart has aged out.
        assert_eq!(sum(&c.last_hour(t0 + 500)), Sums::default());
    }
}

//! What the status page shows of one upstream besides its health: how long its answers take and
//! the last failure, whether or not it is down now.
//!
//! Recorded once per request sent (atomics; a lock only when a request failed), read by
//! [`super::Upstream::stats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Counters of one upstream client.
#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Time to the response head of the last request, in microseconds.
    last_micros: AtomicU64,
    /// Sum of those times, for the mean.
    total_micros: AtomicU64,
    last_error: Mutex<Option<(SystemTime, String)>>,
}

/// A reading of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Reading {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Milliseconds to the response head of the last request (None before the first).
    pub(crate) last_latency_ms: Option<f64>,
    /// Mean of those times over every request (None before the first).
    pub(crate) mean_latency_ms: Option<f64>,
    /// The last failure (a connection error, a 5xx or a 429) and when it happened.
    pub(crate) last_error: Option<(SystemTime, String)>,
}

impl Stats {
    /// One request got an answer head (or failed) after `micros`.
    pub(crate) fn answered(&self, micros: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_micros.store(micros, Ordering::Relaxed);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// That request failed: `why` is kept as the last error.
    pub(crate) fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((SystemTime::now(), why));
    }

    pub(crate) fn read(&self) -> Reading {
        let requests = self.requests.load(Ordering::Relaxed);
        let ms = |us: u64| us as f64 / 1000.0;
        Reading {
            requests,
            errors: self.errors.load(Ordering::Relaxed),
            last_latency_ms: (requests > 0).then(|| ms(self.last_micros.load(Ordering::Relaxed))),
            mean_latency_ms: (requests > 0)
                .then(|| ms(self.total_micros.load(Ordering::Relaxed)) / requests as f64),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_last_error() {
        let s = Stats::default();
        assert_eq!(s.read(), Reading::default());
        s.answered(2000);
        s.answered(4000);
        s.failed("connect: refused".into());
        let r = s.read();
        assert_eq!((r.requests, r.errors), (2, 1));
        assert_eq!(r.last_latency_ms, Some(4.0));
        assert_eq!(r.mean_latency_ms, Some(3.0));
        assert_eq!(r.last_error.unwrap().1, "connect: refused");
    }
}

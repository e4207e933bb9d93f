//! Upstream health: a circuit breaker in front of every request to one registry.
//!
//! A request on a client's path that could not reach the upstream (no connection or a timeout
//! after its retries, or its whole deadline spent) marks the upstream down; an answer, even a
//! 5xx, or a connection closed mid-answer does not (the upstream is there, and the cache serves
//! stale content for such outages anyway). While it is down, requests
//! fail at once with the time and reason of the last failure (cached content is still served by the
//! cache, which asks [`Health::is_down`] before it waits on the upstream), and one background
//! probe (`GET /v2/`; any whole answer, head and body, counts: a 401 or even a 503 means the
//! registry can be reached) decides when it is back: after 1 s, then twice as long each time up
//! to the configured maximum, each pause with ±20 % jitter so that many replicas do not probe in
//! step. Each transition is logged once and shown on `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{describe, describe_send, Error};

/// The health of one upstream, shared by its client and its probe.
pub(crate) struct Health {
    name: String,
    state: Mutex<State>,
    probe_max: Duration,
}

#[derive(Debug, Clone)]
enum State {
    Up,
    Down {
        since: SystemTime,
        last_error: String,
        at: SystemTime,
    },
}

/// What `/readyz` and the status page show of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// Name of the upstream.
    pub(crate) upstream: String,
    /// None while up; else when it went down and the last failure (time, reason).
    pub(crate) down: Option<(SystemTime, SystemTime, String)>,
}

impl Health {
    pub(crate) fn new(name: &str, probe_max: Duration) -> Health {
        metrics::gauge!(crate::metrics::UPSTREAM_UP, "upstream" => name.to_string()).set(1.0);
        Health {
            name: name.to_string(),
            state: Mutex::new(State::Up),
            probe_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the upstream is known to be unreachable now.
    pub(crate) fn is_down(&self) -> bool {
        matches!(*self.lock(), State::Down { .. })
    }

    /// Fail fast while the upstream is down: the error names it and its last failure.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &*self.lock() {
            State::Up => Ok(()),
            State::Down {
                since,
                last_error,
                at,
            } => Err(Error::Unavailable(format!(
                "{} is unreachable since {} (last failure at {}: {last_error}); regmirror retries in the background",
                self.name,
                httpdate::fmt_http_date(*since),
                httpdate::fmt_http_date(*at),
            ))),
        }
    }

    /// The state for operators.
    pub(crate) fn report(&self) -> Report {
        let down = match &*self.lock() {
            State::Up => None,
            State::Down {
                since,
                last_error,
                at,
            } => Some((*since, *at, last_error.clone())),
        };
        Report {
            upstream: self.name.clone(),
            down,
        }
    }

    /// The upstream answered: it is up.
    pub(crate) fn succeeded(&self) {
        let was_down = {
            let mut s = self.lock();
            let was = matches!(*s, State::Down { .. });
            *s = State::Up;
            was
        };
        if was_down {
            tracing::info!(upstream = %self.name, "upstream is reachable again");
            metrics::gauge!(crate::metrics::UPSTREAM_UP, "upstream" => self.name.clone()).set(1.0);
        }
    }

    /// A request could not reach the upstream. Returns true when this marked it down (the caller
    /// then starts the probe).
    pub(crate) fn failed(&self, reason: &str) -> bool {
        let now = SystemTime::now();
        let mut s = self.lock();
        match &mut *s {
            State::Down { last_error, at, .. } => {
                *last_error = reason.to_string();
                *at = now;
                false
            }
            State::Up => {
                *s = State::Down {
                    since: now,
                    last_error: reason.to_string(),
                    at: now,
                };
                drop(s);
                tracing::warn!(upstream = %self.name, error = %reason, "upstream is unreachable; failing fast and serving the cache until a probe succeeds");
                metrics::gauge!(crate::metrics::UPSTREAM_UP, "upstream" => self.name.clone())
                    .set(0.0);
                true
            }
        }
    }

    /// Probe `base/v2/` (through `proxy`, which `client` is set up with) until the upstream
    /// answers, then mark it up. Runs in its own task.
    pub(crate) async fn probe(
        self: Arc<Self>,
        client: reqwest::Client,
        base: String,
        proxy: Option<String>,
    ) {
        let url = format!("{base}/v2/");
        let mut pause = Duration::from_secs(1);
        loop {
            tokio::time::sleep(jittered(pause)).await;
            if !self.is_down() {
                return; // a client request got through in the meantime
            }
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let reason = match answer {
                // Any whole answer (a 401, even a 503) means the registry can be reached again;
                // a head whose body never comes is a registry that cannot serve yet.
                Ok(r) => match r.bytes().await {
                    Ok(_) => {
                        self.succeeded();
                        return;
                    }
                    Err(e) => format!("probe answer broke off: {}", describe(&e)),
                },
                Err(e) => describe_send(&e, proxy.as_deref()),
            };
            tracing::debug!(upstream = %self.name, error = %reason, "probe failed");
            self.failed(&reason);
            pause = (pause * 2).min(self.probe_max);
        }
    }
}

/// `d` plus or minus up to 20 %.
fn jittered(d: Duration) -> Duration {
    let f = 0.8 + 0.4 * rand::random::<f64>();
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_a_failure_up_after_a_success_with_the_reason_named() {
        let h = Health::new("up.example", Duration::from_secs(30));
        assert!(h.check().is_ok());
        assert!(
            h.failed("connection refused"),
            "the first failure marks it down"
        );
        assert!(!h.failed("timed out"), "already down: no second transition");
        let e = h.check().unwrap_err().to_string();
        assert!(e.contains("up.example") && e.contains("timed out"), "{e}");
        assert!(h.report().down.is_some());
        h.succeeded();
        assert!(h.check().is_ok() && !h.is_down() && h.report().down.is_none());
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let j = jittered(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
        }
    }
}

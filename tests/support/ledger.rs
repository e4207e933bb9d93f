//! What a test sent through regmirror, checked against what regmirror says about it: its JSON
//! request log must hold exactly those answers, in order, with their status, cache outcome and
//! byte count, and `regmirror_bytes_served_total{source="cache"}` must grow by exactly the
//! blob-hit bytes sent.
//!
//! The log is read from the regmirror's stderr file; the counter with a raw `GET /metrics`
//! (whose own records are left out of the comparison).

use std::time::Duration;

use super::faults::{metric, wait_for};
use super::mirror::{Regmirror, RequestRecord};
use super::raw_http::{request, Conn};

/// Request records so far, without the `GET /metrics` the harness makes itself.
pub fn records(mirror: &Regmirror) -> Vec<RequestRecord> {
    let mut r = mirror.requests();
    r.retain(|r| r.path != "/metrics");
    r
}

/// `regmirror_bytes_served_total{source}` now (`cache` or `upstream`), 0 before the first byte.
pub fn bytes_served(mirror: &Regmirror, source: &str) -> u64 {
    let addr = mirror.addr();
    let mut c = Conn::connect(&addr);
    let head = request(
        "GET",
        "/metrics",
        "HTTP/1.1",
        &addr,
        &[("Connection", "close")],
    );
    let r = c.exchange("GET", &head);
    assert_eq!(r.status, 200, "GET /metrics:\n{}", r.head_text());
    let text = String::from_utf8_lossy(&r.body).into_owned();
    metric(&text, "regmirror_bytes_served_total", &[("source", source)]).unwrap_or(0.0) as u64
}

/// One answer as the request log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub cache: String,
    /// The logged `bytes`; None where it is not checked (see [`Ledger::log`]).
    pub bytes: Option<u64>,
}

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Logged {
            method,
            path,
            status,
            cache,
            bytes,
        } = self;
        write!(
            f,
            "  {method} {path} {status} cache={cache} bytes={bytes:?}"
        )
    }
}

/// The answers a test expects regmirror to account for, from [`Ledger::start`] on.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Records already in the log when the ledger started.
    seen: usize,
    cache_before: u64,
    want: Vec<Logged>,
    /// Body bytes of blob hits sent in full: what `bytes_served{source="cache"}` must grow by.
    pub hit_bytes: u64,
}

impl Ledger {
    /// Start counting now: earlier records and bytes are not the test's.
    pub fn start(mirror: &Regmirror) -> Ledger {
        Ledger {
            seen: records(mirror).len(),
            cache_before: bytes_served(mirror, "cache"),
            ..Default::default()
        }
    }

    /// The counter's value when the ledger started.
    pub fn cache_before(&self) -> u64 {
        self.cache_before
    }

    /// Expect a record. `bytes` is checked only where a whole body was sent (`Some`): the log
    /// has the length the answer announced (0 for HEAD), so an answer the client hung up on
    /// logs its full length, and `/v2/` and error answers (JSON, whose length
    /// hyper adds later) log 0.
    pub fn log(&mut self, method: &str, path: &str, status: u16, cache: &str, bytes: Option<u64>) {
        let (method, path, cache) = (method.into(), path.into(), cache.into());
        self.want.push(Logged {
            method,
            path,
            status,
            cache,
            bytes,
        });
    }

    /// Expect a blob-hit GET whose whole body of `n` bytes was sent (status 200 or 206).
    pub fn hit(&mut self, path: &str, status: u16, n: usize) {
        self.log("GET", path, status, "hit", Some(n as u64));
        self.hit_bytes += n as u64;
    }

    /// The log holds exactly the expected records, in order, after the ledger started.
    pub async fn check_log(&self, mirror: &Regmirror) {
        let n = self.seen + self.want.len();
        let all = wait_for("the request records", Duration::from_secs(10), || {
            Some(records(mirror)).filter(|r| r.len() >= n)
        })
        .await;
        let got: Vec<Logged> = all[self.seen..]
            .iter()
            .enumerate()
            .map(|(i, r)| Logged {
                method: r.method.clone(),
                path: r.path.clone(),
                status: r.status,
                cache: r.cache.clone(),
                bytes: r.raw["fields"]["bytes"]
                    .as_u64()
                    .filter(|_| self.want.get(i).is_none_or(|w| w.bytes.is_some())),
            })
            .collect();
        let lines = |l: &[Logged]| l.iter().map(|r| format!("{r}\n")).collect::<String>();
        assert!(
            got == self.want,
            "request log after the ledger started:\n{}expected:\n{}",
            lines(&got),
            lines(&self.want)
        );
    }

    /// `bytes_served{source="cache"}` grew by exactly the blob-hit bytes sent.
    pub fn check_cache_bytes(&self, mirror: &Regmirror) {
        let grew = bytes_served(mirror, "cache") - self.cache_before;
        assert_eq!(
            grew, self.hit_bytes,
            "bytes_served{{source=\"cache\"}} growth"
        );
    }

    /// Both checks.
    pub async fn check(&self, mirror: &Regmirror) {
        self.check_log(mirror).await;
        self.check_cache_bytes(mirror);
    }
}

//! Per-client limits: registry requests per second (by address, or by user when authenticated),
//! blob bytes per second per client and for everyone together, and which address a request is
//! from when it came through a trusted reverse proxy.
//!
//! Owns the rate limiters (governor's GCRA, keyed by client). Must not know what is requested:
//! it sees a [`ClientKey`] and byte counts, never a repository or a digest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use http::HeaderMap;
use ipnet::IpNet;

use crate::config::{Config, LimitsConfig};

/// Byte limits count in cells of this many bytes (so rates up to terabytes per second fit a u32).
const CELL: usize = 1024;
/// Keyed limiters forget clients idle long enough to be full again once they track this many.
const FORGET_ABOVE: usize = 10_000;

/// Who a limit applies to: the authenticated user, else the client's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    Addr(IpAddr),
    User(String),
}

/// The limits of one server, built from `[limits]` and `trusted_proxies`.
#[derive(Debug)]
pub(crate) struct Limits {
    trusted: Vec<IpNet>,
    requests: Option<DefaultKeyedRateLimiter<ClientKey>>,
    client_bytes: Option<Arc<ByteLimiter>>,
    all_bytes: Option<Arc<DefaultDirectRateLimiter>>,
    downloads: Option<Downloads>,
    checks: AtomicU64,
}

/// Upstream downloads each client is causing now, at most `per_client`.
#[derive(Debug)]
struct Downloads {
    per_client: usize,
    running: Mutex<HashMap<ClientKey, Arc<tokio::sync::Semaphore>>>,
}

/// One upstream download a client caused; released when dropped (its answer ended).
#[derive(Debug)]
pub(crate) struct DownloadPermit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

#[derive(Debug)]
struct ByteLimiter {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
    burst_bytes: usize,
}

impl Limits {
    /// The limits `config` sets (validated: `trusted_proxies` parse, rates are positive).
    pub(crate) fn from_config(config: &Config) -> Limits {
        let trusted =
            crate::config::parse_trusted_proxies(&config.trusted_proxies).unwrap_or_default();
        Limits::new(&config.limits, trusted)
    }

    fn new(c: &LimitsConfig, trusted: Vec<IpNet>) -> Limits {
        let requests = c.requests_per_second.map(|rps| {
            let burst = c.request_burst.unwrap_or((rps.ceil() as u32).max(1));
            let per = Duration::from_secs_f64(1.0 / rps);
            let quota = Quota::with_period(per)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            DefaultKeyedRateLimiter::keyed(quota)
        });
        let client_bytes = c.client_bytes_per_second.map(|b| {
            let (quota, burst_bytes) = byte_quota(b.0);
            Arc::new(ByteLimiter {
                limiter: DefaultKeyedRateLimiter::keyed(quota),
                burst_bytes,
            })
        });
        let all_bytes = c
            .bytes_per_second
            .map(|b| Arc::new(DefaultDirectRateLimiter::direct(byte_quota(b.0).0)));
        let downloads = c.client_upstream_downloads.map(|per_client| Downloads {
            per_client,
            running: Mutex::default(),
        });
        Limits {
            trusted,
            requests,
            client_bytes,
            all_bytes,
            downloads,
            checks: AtomicU64::new(0),
        }
    }

    /// The address a request is from: the TCP peer, or, when the peer is a trusted proxy, the
    /// first address not of a trusted proxy in its `Forwarded` (else `X-Forwarded-For`) chain,
    /// read from the right. Forged entries to the left of an untrusted hop are never believed.
    pub(crate) fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_chain(headers).iter().rev() {
            let Some(addr) = hop else {
                break; // "unknown" or an obfuscated name: the last proxy is as far as we can see
            };
            client = *addr;
            if !self.is_trusted(*addr) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.trusted.iter().any(|n| n.contains(&addr))
    }

    /// Count one registry request of `key`; Err(wait) when it is over its rate.
    pub(crate) fn admit(&self, key: &ClientKey) -> Result<(), Duration> {
        let Some(limiter) = &self.requests else {
            return Ok(());
        };
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            self.forget_idle();
        }
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn forget_idle(&self) {
        if let Some(l) = &self.requests {
            if l.len() > FORGET_ABOVE {
                l.retain_recent();
            }
        }
        if let Some(b) = &self.client_bytes {
            if b.limiter.len() > FORGET_ABOVE {
                b.limiter.retain_recent();
            }
        }
    }

    /// Whether the downloads a client causes are limited (else nobody needs to ask).
    pub(crate) fn limits_downloads(&self) -> bool {
        self.downloads.is_some()
    }

    /// Count one upstream download caused by `key`; Err when it already causes its limit.
    pub(crate) fn download(&self, key: &ClientKey) -> Result<Option<DownloadPermit>, ()> {
        let Some(d) = &self.downloads else {
            return Ok(None);
        };
        let sem = {
            let mut running = d.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.len() > FORGET_ABOVE {
                // Clients with nothing running hold no permit: forget them.
                running.retain(|_, s| s.available_permits() < d.per_client);
            }
            running
                .entry(key.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(d.per_client)))
                .clone()
        };
        sem.try_acquire_owned()
            .map(|p| Some(DownloadPermit(p)))
            .map_err(|_| ())
    }

    /// The byte throttle for answers to `key`, when any byte limit is set.
    pub(crate) fn throttle(&self, key: &ClientKey) -> Option<Throttle> {
        if self.client_bytes.is_none() && self.all_bytes.is_none() {
            return None;
        }
        Some(Throttle {
            client: self.client_bytes.clone().map(|l| (l, key.clone())),
            all: self.all_bytes.clone(),
        })
    }
}

/// A quota of `bytes_per_sec` in [`CELL`]s, with a burst of a quarter second (at least 64 KiB),
/// and that burst in bytes (the most one wait may grant).
fn byte_quota(bytes_per_sec: u64) -> (Quota, usize) {
    let cells = (bytes_per_sec / CELL as u64).clamp(1, u32::MAX as u64) as u32;
    let burst = (cells / 4).max(64).min(cells.max(64));
    let quota = Quota::per_second(NonZeroU32::new(cells).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    (quota, burst as usize * CELL)
}

/// Paces the bytes of one answer against its client's and the global byte rate.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    client: Option<(Arc<ByteLimiter>, ClientKey)>,
    all: Option<Arc<DefaultDirectRateLimiter>>,
}

impl Throttle {
    /// Wait until up to `n` more bytes may be sent; returns how many (at least 1, at most `n`
    /// and at most one burst).
    pub(crate) async fn wait(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mut allowed = n;
        if let Some((l, _)) = &self.client {
            allowed = allowed.min(l.burst_bytes);
        }
        if self.all.is_some() {
            allowed = allowed.min(64 * CELL);
        }
        let cells = NonZeroU32::new(allowed.div_ceil(CELL) as u32).unwrap_or(NonZeroU32::MIN);
        if let Some((l, key)) = &self.client {
            // Cannot fail: `cells` is at most the burst.
            let _ = l.limiter.until_key_n_ready(key, cells).await;
        }
        if let Some(all) = &self.all {
            // The global burst is at least 64 cells, and `cells` at most 64.
            let _ = all.until_n_ready(cells).await;
        }
        allowed
    }
}

/// The `for=` addresses of `Forwarded` (RFC 7239), or else of `X-Forwarded-For`, left to right
/// over every header line; None for an entry that is not an address ("unknown", "_hidden").
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v))
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// `192.0.2.1`, `"192.0.2.1:4711"`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(canonical(a));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as a dual-stack socket reports IPv4 peers)
/// as the IPv4 address they are.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;

//! `[limits]` and `trusted_proxies`: what one client may ask of the mirror, and whose forwarded
//! addresses are believed. Checked here; enforced by `edge::limits`.

use serde::{Deserialize, Serialize};

use super::{invalid, ByteSize, ConfigError};

/// Per-client and global limits. Every limit is off when unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Registry requests per second one client may send (sustained): by address, or by user
    /// when authenticated. Over it: `429 TOOMANYREQUESTS` with `Retry-After`.
    pub requests_per_second: Option<f64>,
    /// Requests a client may send at once above `requests_per_second` before it is limited
    /// (default: one second's worth, at least 1).
    pub request_burst: Option<u32>,
    /// Blob bytes per second served to one client, over all its connections ("50MiB").
    pub client_bytes_per_second: Option<ByteSize>,
    /// Blob bytes per second served to all clients together ("1GiB").
    pub bytes_per_second: Option<ByteSize>,
    /// Blob downloads from upstreams one client may cause at once: a GET of a blob that is
    /// neither cached nor being downloaded counts until its answer ends; one more is answered
    /// `429`. Joining a download already running, and cached blobs, do not count.
    pub client_upstream_downloads: Option<usize>,
}

impl LimitsConfig {
    /// Check every key; errors name it.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = self.requests_per_second {
            if !(r.is_finite() && r > 0.0) {
                return Err(invalid(
                    "limits.requests_per_second",
                    "must be a number greater than 0 (leave it out for no limit)",
                ));
            }
        }
        if self.client_upstream_downloads == Some(0) {
            return Err(invalid(
                "limits.client_upstream_downloads",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.request_burst == Some(0) {
            return Err(invalid("limits.request_burst", "must be at least 1"));
        }
        if self.request_burst.is_some() && self.requests_per_second.is_none() {
            return Err(invalid(
                "limits.request_burst",
                "has no effect without limits.requests_per_second",
            ));
        }
        for (key, v) in [
            (
                "limits.client_bytes_per_second",
                self.client_bytes_per_second,
            ),
            ("limits.bytes_per_second", self.bytes_per_second),
        ] {
            if let Some(b) = v {
                if b.0 < 1024 {
                    return Err(invalid(key, "must be at least 1KiB per second"));
                }
            }
        }
        Ok(())
    }
}

/// Parse `trusted_proxies` (addresses or CIDR blocks), naming the entry that is wrong.
pub(crate) fn parse_trusted_proxies(list: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("trusted_proxies[{i}]"),
                        format!("{s:?} is not an address or CIDR block such as \"10.0.0.0/8\""),
                    )
                })
        })
        .collect()
}

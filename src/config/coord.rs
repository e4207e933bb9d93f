//! `redis_url`, `lease_secs`, `replica_url`: coordination of several replicas through Redis.
//! Checked here; used by `coord` (the client, leases, shared tag records) and the cache.
//!
//! Accepted `redis_url` forms (those the `redis` crate connects to):
//! - one server: `redis://[user:password@]host:port[/db]`, `rediss://...` (TLS), or a Unix
//!   socket `redis+unix:///path/redis.sock` (also `unix:///path`);
//! - a Redis Cluster: several node URLs separated by commas,
//!   `redis://node-a:6379,redis://node-b:6379,redis://node-c:6379` (the other nodes are found
//!   from these).
//!
//! Sentinel addresses are not accepted: point `redis_url` at the master's service address, or at
//! a Sentinel-aware proxy.

use super::{invalid, ConfigError};

/// Default lease of a fill or a tag revalidation, in seconds.
pub(crate) const DEFAULT_LEASE_SECS: u64 = 30;

/// The coordination keys as the rest of the crate reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CoordSettings {
    /// The Redis node URLs: one for a single server, several for a Cluster.
    pub(crate) nodes: Vec<String>,
    /// The lease of a fill or a revalidation; renewed while it runs.
    pub(crate) lease_secs: u64,
    /// How other replicas reach this one; None: derived from the bound `listen` address.
    pub(crate) replica_url: Option<String>,
}

/// Split and check `redis_url`; errors name the key.
pub(crate) fn redis_nodes(url: &str) -> Result<Vec<String>, ConfigError> {
    let nodes: Vec<String> = url
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if nodes.is_empty() {
        return Err(invalid(
            "redis_url",
            "is empty: leave it out to run without coordination, or give redis://host:6379",
        ));
    }
    for n in &nodes {
        let parsed = url::Url::parse(n).map_err(|e| invalid("redis_url", format!("{n}: {e}")))?;
        match parsed.scheme() {
            "redis" | "rediss" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("redis_url", format!("{n}: no host")));
                }
            }
            "redis+unix" | "unix" if nodes.len() == 1 => {}
            "redis+unix" | "unix" => {
                return Err(invalid(
                    "redis_url",
                    format!("{n}: a Unix socket cannot be a Cluster node"),
                ))
            }
            "redis+sentinel" | "sentinel" => {
                return Err(invalid(
                    "redis_url",
                    format!("{n}: Sentinel addresses are not supported; give the master's address (redis://host:port)"),
                ))
            }
            other => {
                return Err(invalid(
                    "redis_url",
                    format!("{n}: scheme {other:?}; expected redis://, rediss:// or redis+unix://"),
                ))
            }
        }
        // Opening a client checks what the redis crate itself would refuse, without I/O.
        redis::Client::open(n.as_str()).map_err(|e| invalid("redis_url", format!("{n}: {e}")))?;
    }
    Ok(nodes)
}

/// Check the three keys together; Ok(None) when coordination is off.
pub(crate) fn validate(
    redis_url: Option<&str>,
    lease_secs: u64,
    replica_url: Option<&str>,
) -> Result<Option<CoordSettings>, ConfigError> {
    if !(2..=3600).contains(&lease_secs) {
        return Err(invalid(
            "lease_secs",
            "must be between 2 and 3600 seconds (a lease is renewed every third of it)",
        ));
    }
    if let Some(r) = replica_url {
        let parsed = url::Url::parse(r).map_err(|e| invalid("replica_url", format!("{r}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none()
            || parsed.path() != "/"
            || parsed.query().is_some()
        {
            return Err(invalid(
                "replica_url",
                format!("{r}: expected http://host:port or https://host:port, with no path"),
            ));
        }
    }
    let Some(url) = redis_url else {
        if replica_url.is_some() {
            return Err(invalid(
                "replica_url",
                "has no effect without redis_url (replicas find each other through Redis)",
            ));
        }
        return Ok(None);
    };
    Ok(Some(CoordSettings {
        nodes: redis_nodes(url)?,
        lease_secs,
        replica_url: replica_url.map(|r| r.trim_end_matches('/').to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_and_refused_forms_name_the_key() {
        let ok = validate(
            Some("redis://127.0.0.1:6379"),
            30,
            Some("http://10.0.0.5:5000"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.nodes, ["redis://127.0.0.1:6379"]);
        assert_eq!(ok.replica_url.as_deref(), Some("http://10.0.0.5:5000"));
        let cluster = validate(Some("redis://a:1, redis://b:2"), 30, None)
            .unwrap()
            .unwrap();
        assert_eq!(cluster.nodes.len(), 2);
        assert!(validate(Some("rediss://user:pw@h:6380/2"), 30, None).is_ok());
        assert!(validate(Some("redis+unix:///run/redis.sock"), 30, None).is_ok());
        assert_eq!(validate(None, 30, None).unwrap(), None);
        for (redis, lease, replica, key) in [
            (Some("http://h:6379"), 30, None, "redis_url"),
            (Some(""), 30, None, "redis_url"),
            (Some("redis+sentinel://h:26379"), 30, None, "redis_url"),
            (Some("redis://a:1,unix:///s"), 30, None, "redis_url"),
            (Some("redis://h:6379"), 1, None, "lease_secs"),
            (
                Some("redis://h:6379"),
                30,
                Some("10.0.0.5:5000"),
                "replica_url",
            ),
            (
                Some("redis://h:6379"),
                30,
                Some("http://h:5000/v2/"),
                "replica_url",
            ),
            (None, 30, Some("http://h:5000"), "replica_url"),
        ] {
            let e = validate(redis, lease, replica).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")),
                "{redis:?} {lease} {replica:?}: {e}"
            );
        }
    }
}

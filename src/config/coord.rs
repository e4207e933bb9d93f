//! `redis_url`, `redis_ca_file`, `lease_secs`, `replica_url`: coordination of several replicas
//! through Redis. Checked here; used by `coord` (the client, leases, shared tag records) and the
//! cache.
//!
//! Accepted `redis_url` forms:
//! - one server: `redis://[user:password@]host:port[/db]`, `rediss://...` (TLS), or a Unix
//!   socket `redis+unix:///path/redis.sock` (also `unix:///path`);
//! - a Redis Cluster: several node URLs separated by commas,
//!   `redis://node-a:6379,redis://node-b:6379,redis://node-c:6379` (the other nodes are found
//!   from these);
//! - Redis Sentinel: `redis+sentinel://[user:password@]sentinel-a:26379,sentinel-b:26379/MASTER[/db]`
//!   (`rediss+sentinel://` for TLS to the sentinels and the master). The `redis` crate has no URL
//!   of its own for Sentinel, so this one is regmirror's: the sentinels to ask (port 26379 when
//!   left out), then the master's name as the sentinels know it (`sentinel monitor MASTER ...`).
//!   The user and password are the master's; the sentinels are asked without a password. After a
//!   failover the client asks the sentinels again and follows the new master within seconds.
//!
//! `redis_ca_file`: a PEM file of the CA certificates that sign the Redis servers' certificates,
//! trusted instead of the system's roots for `rediss://` and `rediss+sentinel://`.

use std::path::{Path, PathBuf};

use super::{invalid, ConfigError};

/// Default lease of a fill or a tag revalidation, in seconds.
pub(crate) const DEFAULT_LEASE_SECS: u64 = 30;

/// The port of a sentinel when `redis+sentinel://` leaves it out.
const SENTINEL_PORT: u16 = 26379;

/// The coordination keys as the rest of the crate reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CoordSettings {
    /// The Redis node URLs: one for a single server, several for a Cluster; with `sentinel`, the
    /// sentinels' URLs (`redis://host:port`).
    pub(crate) nodes: Vec<String>,
    /// Set: `nodes` are sentinels, and this is the master they name.
    pub(crate) sentinel: Option<SentinelMaster>,
    /// PEM CA certificates trusted for TLS to Redis instead of the system's roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// The lease of a fill or a revalidation; renewed while it runs.
    pub(crate) lease_secs: u64,
    /// How other replicas reach this one; None: derived from the bound `listen` address.
    pub(crate) replica_url: Option<String>,
}

/// The master that `redis+sentinel://` names, and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelMaster {
    /// The master's name in the sentinels' configuration.
    pub(crate) name: String,
    /// The database number on the master.
    pub(crate) db: i64,
    /// The master's credentials.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// TLS to the sentinels and the master (`rediss+sentinel://`).
    pub(crate) tls: bool,
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
            "redis+sentinel" | "rediss+sentinel" => {
                return Err(invalid(
                    "redis_url",
                    format!("{n}: list the sentinels in one URL, redis+sentinel://host-a:26379,host-b:26379/MASTER"),
                ))
            }
            other => {
                return Err(invalid(
                    "redis_url",
                    format!("{n}: scheme {other:?}; expected redis://, rediss://, redis+unix:// or redis+sentinel://"),
                ))
            }
        }
        // Opening a client checks what the redis crate itself would refuse, without I/O.
        redis::Client::open(n.as_str()).map_err(|e| invalid("redis_url", format!("{n}: {e}")))?;
    }
    Ok(nodes)
}

/// Parse `redis+sentinel://[user:password@]host[:port],.../MASTER[/db]` into the sentinels'
/// URLs and the master; errors name the key.
pub(crate) fn sentinel(url: &str) -> Result<(Vec<String>, SentinelMaster), ConfigError> {
    let bad = |why: &str| {
        invalid(
            "redis_url",
            format!("{url}: {why}; expected redis+sentinel://[user:password@]sentinel-a:26379,sentinel-b:26379/MASTER[/db]"),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let tls = match scheme {
        "redis+sentinel" => false,
        "rediss+sentinel" => true,
        _ => return Err(bad("not a Sentinel URL")),
    };
    if rest.contains(['?', '#']) {
        return Err(bad("no query or fragment is read"));
    }
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        None => (None, None),
        Some((u, p)) => (
            Some(decode(u)).filter(|u| !u.is_empty()),
            Some(decode(p)).filter(|p| !p.is_empty()),
        ),
    };
    let mut nodes = Vec::new();
    for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let parsed = url::Url::parse(&format!("redis://{h}"))
            .map_err(|e| bad(&format!("sentinel {h:?}: {e}")))?;
        let host = parsed
            .host_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(&format!("sentinel {h:?}: not host:port")))?;
        let port = parsed.port().unwrap_or(SENTINEL_PORT);
        nodes.push(format!(
            "{}://{host}:{port}",
            if tls { "rediss" } else { "redis" }
        ));
    }
    if nodes.is_empty() {
        return Err(bad("no sentinel address"));
    }
    let (name, db) = match path.trim_end_matches('/').split_once('/') {
        None => (path.trim_end_matches('/'), 0),
        Some((name, db)) => (
            name,
            db.parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| bad(&format!("database {db:?} is not a number")))?,
        ),
    };
    if name.is_empty() {
        return Err(bad("no master name"));
    }
    let master = SentinelMaster {
        name: decode(name),
        db,
        username,
        password,
        tls,
    };
    Ok((nodes, master))
}

/// The certificates of `redis_ca_file`, checked; errors name the key.
pub(crate) fn ca_pem(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path)
        .map_err(|e| invalid("redis_ca_file", format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("redis_ca_file", format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            "redis_ca_file",
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(pem)
}

/// The coordination keys as written in the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoordKeys<'a> {
    pub(crate) redis_url: Option<&'a str>,
    pub(crate) redis_ca_file: Option<&'a Path>,
    pub(crate) lease_secs: u64,
    pub(crate) replica_url: Option<&'a str>,
}

/// Check the keys together; Ok(None) when coordination is off.
pub(crate) fn validate(keys: CoordKeys<'_>) -> Result<Option<CoordSettings>, ConfigError> {
    let CoordKeys {
        redis_url,
        redis_ca_file,
        lease_secs,
        replica_url,
    } = keys;
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
        for (key, set) in [
            ("replica_url", replica_url.is_some()),
            ("redis_ca_file", redis_ca_file.is_some()),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "has no effect without redis_url (replicas find each other through Redis)",
                ));
            }
        }
        return Ok(None);
    };
    let (nodes, sentinel) = if url.trim_start().contains("+sentinel://") {
        let (nodes, master) = sentinel(url.trim())?;
        (nodes, Some(master))
    } else {
        (redis_nodes(url)?, None)
    };
    if let Some(ca) = redis_ca_file {
        let tls = sentinel.as_ref().map_or_else(
            || nodes.iter().all(|n| n.starts_with("rediss://")),
            |m| m.tls,
        );
        if !tls {
            return Err(invalid(
                "redis_ca_file",
                "is only read for TLS: give redis_url as rediss://... (or rediss+sentinel://...)",
            ));
        }
        ca_pem(ca)?;
    }
    Ok(Some(CoordSettings {
        nodes,
        sentinel,
        ca_file: redis_ca_file.map(Path::to_path_buf),
        lease_secs,
        replica_url: replica_url.map(|r| r.trim_end_matches('/').to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(
        redis_url: Option<&str>,
        lease_secs: u64,
        replica_url: Option<&str>,
    ) -> Result<Option<CoordSettings>, ConfigError> {
        super::validate(CoordKeys {
            redis_url,
            redis_ca_file: None,
            lease_secs,
            replica_url,
        })
    }

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
            (Some("redis+sentinel://h:26379/"), 30, None, "redis_url"),
            (Some("redis+sentinel:///mymaster"), 30, None, "redis_url"),
            (Some("redis+sentinel://h:x/mymaster"), 30, None, "redis_url"),
            (Some("redis+sentinel://h/m/zero"), 30, None, "redis_url"),
            (Some("redis+sentinel://h/m?db=1"), 30, None, "redis_url"),
            (
                Some("redis://a:1,redis+sentinel://h/m"),
                30,
                None,
                "redis_url",
            ),
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

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_master() {
        let s = validate(
            Some("redis+sentinel://app:p%40ss@10.0.0.1,sentinel-b:26380/mymaster/2"),
            30,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.nodes,
            ["redis://10.0.0.1:26379", "redis://sentinel-b:26380"]
        );
        assert_eq!(
            s.sentinel,
            Some(SentinelMaster {
                name: "mymaster".into(),
                db: 2,
                username: Some("app".into()),
                password: Some("p@ss".into()),
                tls: false,
            })
        );
        let s = validate(Some("rediss+sentinel://[::1]:5000/m"), 30, None)
            .unwrap()
            .unwrap();
        assert_eq!(s.nodes, ["rediss://[::1]:5000"]);
        let m = s.sentinel.unwrap();
        assert!(m.tls && m.db == 0 && m.username.is_none() && m.password.is_none());
    }

    #[test]
    fn redis_ca_file_is_checked_and_only_for_tls() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&good, cert.cert.pem()).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let keys = |url, ca| CoordKeys {
            redis_url: Some(url),
            redis_ca_file: Some(ca),
            lease_secs: 30,
            replica_url: None,
        };
        let ok = super::validate(keys("rediss://h:6380", &good))
            .unwrap()
            .unwrap();
        assert_eq!(ok.ca_file.as_deref(), Some(good.as_path()));
        assert!(super::validate(keys("rediss+sentinel://h/m", &good)).is_ok());
        assert!(super::validate(keys("rediss://a:1,rediss://b:2", &good)).is_ok());
        let missing = dir.path().join("missing.pem");
        for (url, ca) in [
            ("redis://h:6379", good.as_path()),
            ("redis+sentinel://h/m", good.as_path()),
            ("rediss://a:1,redis://b:2", good.as_path()),
            ("rediss://h:6380", empty.as_path()),
            ("rediss://h:6380", missing.as_path()),
        ] {
            let e = super::validate(keys(url, ca)).unwrap_err().to_string();
            assert!(e.contains("`redis_ca_file`"), "{url} {ca:?}: {e}");
        }
        let e = super::validate(CoordKeys {
            redis_url: None,
            ..keys("", &good)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`redis_ca_file`"), "{e}");
    }
}

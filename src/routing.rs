//! Routing: which upstream, and which repository there, a request is for.
//!
//! Owns: the precedence of the routing styles. Pure; must not do I/O.
//!
//! Precedence, first match wins:
//! 1. the request arrived on an upstream's dedicated listener;
//! 2. the `Host` header (with or without port) is one of an upstream's `hosts`;
//! 3. containerd's `?ns=<registry>` query parameter names an upstream;
//! 4. the first path segment of the name is an upstream's name or alias;
//! 5. the `default_upstream`.
//!
//! Docker Hub single-segment names get `library/` after routing.

use std::collections::HashMap;

use crate::config::Config;
use crate::oci::{validate_name, NameError};

/// How a request was routed (reported in logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteStyle {
    /// The upstream's dedicated listener.
    Listener,
    /// The `Host` header names one of the upstream's `hosts`.
    Host,
    /// containerd's `?ns=` query parameter.
    Namespace,
    /// The first path segment names the upstream or an alias.
    Prefix,
    /// No rule matched: the `default_upstream`.
    Default,
}

impl RouteStyle {
    /// The name logged for this style.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteStyle::Listener => "listener",
            RouteStyle::Host => "host",
            RouteStyle::Namespace => "ns",
            RouteStyle::Prefix => "prefix",
            RouteStyle::Default => "default",
        }
    }
}

/// The result of routing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Name of the upstream (a configured one, or any registry host when `allow_any_upstream` is on).
    pub upstream: String,
    /// Repository at the upstream, normalised (`library/` added for Docker Hub).
    pub repository: String,
    /// Which rule matched.
    pub style: RouteStyle,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The repository name is malformed.
    #[error("{0}")]
    Name(#[from] NameError),
    /// Nothing configured serves this request.
    #[error("no upstream registry is configured for {what}; configured upstreams: {known}")]
    UnknownUpstream {
        /// What named the missing upstream (a host, a `ns`, a path prefix).
        what: String,
        /// The configured upstreams, for the message.
        known: String,
    },
}

/// What routing needs to know about a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Upstream name when the request came in on that upstream's dedicated listener.
    pub listener_upstream: Option<&'a str>,
    /// The `Host` header (or the absolute-form authority).
    pub host: Option<&'a str>,
    /// containerd's `?ns=` parameter, decoded.
    pub ns: Option<&'a str>,
    /// The repository name as written in the path (between `/v2/` and `/manifests|blobs|tags`).
    pub name: &'a str,
}

/// Lookup tables built once from the configuration.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    by_prefix: HashMap<String, String>,
    by_host: HashMap<String, String>,
    default_upstream: Option<String>,
    allow_any: bool,
    known: String,
}

impl RoutingTable {
    /// The table for a validated configuration.
    pub fn new(config: &Config) -> RoutingTable {
        let mut by_prefix = HashMap::new();
        let mut by_host = HashMap::new();
        for u in &config.upstreams {
            by_prefix.insert(u.name.to_ascii_lowercase(), u.name.clone());
            for a in &u.aliases {
                by_prefix.insert(a.to_ascii_lowercase(), u.name.clone());
            }
            for h in &u.hosts {
                by_host.insert(h.to_ascii_lowercase(), u.name.clone());
            }
        }
        RoutingTable {
            by_prefix,
            by_host,
            default_upstream: Some(config.default_upstream.clone()).filter(|d| !d.is_empty()),
            allow_any: config.allow_any_upstream,
            known: config.upstream_names(),
        }
    }

    /// Route one request. The returned repository is validated.
    pub fn route(&self, req: &RequestFacts<'_>) -> Result<Route, RouteError> {
        let (upstream, rest, style) = self.pick(req)?;
        let repository = normalise(&upstream, rest);
        validate_name(&repository)?;
        Ok(Route {
            upstream,
            repository,
            style,
        })
    }

    fn pick<'n>(
        &self,
        req: &RequestFacts<'n>,
    ) -> Result<(String, &'n str, RouteStyle), RouteError> {
        let name = req.name;
        if let Some(u) = req.listener_upstream {
            return Ok((u.to_string(), name, RouteStyle::Listener));
        }
        if let Some(host) = req.host.map(|h| h.to_ascii_lowercase()) {
            let bare = strip_port(&host);
            if let Some(u) = self.by_host.get(&host).or_else(|| self.by_host.get(bare)) {
                return Ok((u.clone(), name, RouteStyle::Host));
            }
        }
        if let Some(ns) = req.ns.filter(|ns| !ns.is_empty()) {
            let Some(u) = self.lookup_registry(ns) else {
                return Err(self.unknown(format!("namespace {ns:?} (?ns=)")));
            };
            // containerd sends `ns` also with `override_path` (prefix-style) mirrors: when the
            // path already names the same registry, the prefix is not part of the repository.
            if let Some((first, rest)) = name.split_once('/') {
                if self.lookup_registry(first).as_deref() == Some(u.as_str()) {
                    return Ok((u, rest, RouteStyle::Prefix));
                }
            }
            return Ok((u, name, RouteStyle::Namespace));
        }
        if let Some((first, rest)) = name.split_once('/') {
            if let Some(u) = self.lookup_registry(first) {
                return Ok((u, rest, RouteStyle::Prefix));
            }
            // A registry host we do not mirror: say so rather than asking the default upstream
            // for a repository that cannot exist there (Docker Hub namespaces have no dots).
            if looks_like_host(&first.to_ascii_lowercase()) {
                return Err(self.unknown(format!("registry {first:?}")));
            }
        }
        match &self.default_upstream {
            Some(d) => Ok((d.clone(), name, RouteStyle::Default)),
            None => Err(self.unknown(format!("{name:?} (no default_upstream is set)"))),
        }
    }

    /// A configured upstream named `registry` (name or alias), or with `allow_any_upstream`
    /// any host-looking name.
    fn lookup_registry(&self, registry: &str) -> Option<String> {
        let key = registry.to_ascii_lowercase();
        if let Some(u) = self.by_prefix.get(&key) {
            return Some(u.clone());
        }
        if self.allow_any && looks_like_host(&key) {
            return Some(key);
        }
        None
    }

    fn unknown(&self, what: String) -> RouteError {
        RouteError::UnknownUpstream {
            what,
            known: self.known.clone(),
        }
    }
}

/// Docker Hub's official images live under `library/`.
fn normalise(upstream: &str, repository: &str) -> String {
    if upstream == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A registry host: has a dot or a port, or is `localhost`; only safe characters.
fn looks_like_host(s: &str) -> bool {
    (s.contains('.') || s.contains(':') || s == "localhost")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && !s.starts_with(['.', '-', ':'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(allow_any: bool) -> RoutingTable {
        let mut c = Config::from_toml(
            r#"
            [[upstream]]
            name = "registry.k8s.io"
            hosts = ["k8s.mirror.example.com"]
            [[upstream]]
            name = "127.0.0.1:5101"
            aliases = ["local"]
            hosts = ["127.0.0.2"]
            "#,
        )
        .unwrap();
        c.allow_any_upstream = allow_any;
        c.merge_builtins();
        c.validate().unwrap();
        RoutingTable::new(&c)
    }

    fn r(up: &str, repo: &str, style: RouteStyle) -> Result<Route, RouteError> {
        Ok(Route {
            upstream: up.into(),
            repository: repo.into(),
            style,
        })
    }

    #[test]
    fn precedence_table() {
        use RouteStyle::*;
        let t = table(false);
        let f = |l, h, ns, name| RequestFacts {
            listener_upstream: l,
            host: h,
            ns,
            name,
        };
        let cases = vec![
            (
                f(
                    Some("quay.io"),
                    Some("k8s.mirror.example.com"),
                    Some("ghcr.io"),
                    "ghcr/x",
                ),
                r("quay.io", "ghcr/x", Listener),
            ),
            (
                f(
                    None,
                    Some("k8s.mirror.example.com"),
                    Some("ghcr.io"),
                    "coredns/coredns",
                ),
                r("registry.k8s.io", "coredns/coredns", Host),
            ),
            (
                f(None, Some("k8s.mirror.example.com:5000"), None, "pause"),
                r("registry.k8s.io", "pause", Host),
            ),
            (
                f(None, Some("127.0.0.2:5000"), None, "a/b"),
                r("127.0.0.1:5101", "a/b", Host),
            ),
            (
                f(None, Some("mirror.local"), Some("ghcr.io"), "o/i"),
                r("ghcr.io", "o/i", Namespace),
            ),
            (
                f(None, None, Some("docker.io"), "alpine"),
                r("docker.io", "library/alpine", Namespace),
            ),
            (
                f(None, None, Some("127.0.0.1:5101"), "a/b"),
                r("127.0.0.1:5101", "a/b", Namespace),
            ),
            (
                f(None, None, Some("docker.io"), "docker.io/library/busybox"),
                r("docker.io", "library/busybox", Prefix),
            ),
            (
                f(None, None, Some("127.0.0.1:5101"), "local/a/b"),
                r("127.0.0.1:5101", "a/b", Prefix),
            ),
            (
                f(None, None, Some("docker.io"), "ghcr/x/y"),
                r("docker.io", "ghcr/x/y", Namespace),
            ),
            (
                f(None, None, None, "registry.k8s.io/coredns/coredns"),
                r("registry.k8s.io", "coredns/coredns", Prefix),
            ),
            (f(None, None, None, "ghcr/o/i"), r("ghcr.io", "o/i", Prefix)),
            (
                f(None, None, None, "local/a/b"),
                r("127.0.0.1:5101", "a/b", Prefix),
            ),
            (
                f(None, None, None, "127.0.0.1:5101/a"),
                r("127.0.0.1:5101", "a", Prefix),
            ),
            (
                f(None, None, None, "docker.io/alpine"),
                r("docker.io", "library/alpine", Prefix),
            ),
            (
                f(None, None, None, "dockerhub/library/alpine"),
                r("docker.io", "library/alpine", Prefix),
            ),
            (
                f(None, None, None, "alpine"),
                r("docker.io", "library/alpine", Default),
            ),
            (
                f(None, None, None, "bitnami/redis"),
                r("docker.io", "bitnami/redis", Default),
            ),
        ];
        for (facts, want) in cases {
            assert_eq!(t.route(&facts), want, "{facts:?}");
        }
    }

    #[test]
    fn unknown_and_invalid() {
        let t = table(false);
        let err = t
            .route(&RequestFacts {
                ns: Some("evil.example.com"),
                name: "x/y",
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("registry.k8s.io"),
            "message lists upstreams: {err}"
        );
        let err = t
            .route(&RequestFacts {
                name: "evil.example.com/x",
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, RouteError::UnknownUpstream { .. }), "{err:?}");
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "%2e%2e/x",
            "A",
            &"a".repeat(300),
        ] {
            assert!(
                t.route(&RequestFacts {
                    name: bad,
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn open_proxy_only_when_enabled() {
        let t = table(true);
        assert_eq!(
            t.route(&RequestFacts {
                name: "evil.example.com/x",
                ..Default::default()
            }),
            r("evil.example.com", "x", RouteStyle::Prefix)
        );
        assert_eq!(
            t.route(&RequestFacts {
                ns: Some("other.io"),
                name: "x",
                ..Default::default()
            }),
            r("other.io", "x", RouteStyle::Namespace)
        );
    }

    #[test]
    fn no_default_upstream() {
        let mut c = Config::default();
        c.default_upstream = String::new();
        c.merge_builtins();
        let t = RoutingTable::new(&c);
        assert!(matches!(
            t.route(&RequestFacts {
                name: "alpine",
                ..Default::default()
            }),
            Err(RouteError::UnknownUpstream { .. })
        ));
    }
}

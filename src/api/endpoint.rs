//! Parse a request line once into a typed [`Endpoint`].
//!
//! Repository names contain slashes, so the path is split at its last `/manifests/`, `/blobs/` or
//! `/tags/list`. The raw (still percent-encoded) path is used: `%2e%2e` stays literal and fails name
//! validation later, so no escape can smuggle in a `..`.

use http::Method;

use crate::oci::Digest;

/// What a request asks for, before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v2/`: API version check.
    Base,
    /// `GET|HEAD /v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository name as the client wrote it.
        name: String,
        /// A tag or a digest, unparsed.
        reference: String,
    },
    /// `GET|HEAD /v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository name as the client wrote it.
        name: String,
        /// The blob's digest.
        digest: Digest,
    },
    /// `GET /v2/<name>/tags/list`.
    TagsList {
        /// The repository name as the client wrote it.
        name: String,
    },
    /// Push, delete, uploads, catalog: a read-only mirror does not do these.
    Unsupported {
        /// What was asked, for the error message ("push", "delete", ...).
        what: &'static str,
    },
    /// `GET /healthz`: the process is alive.
    Health,
    /// `GET /readyz`: storage writable and configuration loaded.
    Ready,
    /// `GET /metrics`: Prometheus text format.
    Metrics,
    /// `GET /api/v1/status`: the status page's JSON (when `ui` is on).
    Status,
    /// `GET /` or `/ui`: the status page (when `ui` is on).
    Page,
    /// `GET /_regmirror/fills/<digest>?from=N`: another replica reads a fill this one owns
    /// (internal; answered only with coordination on and the fleet's secret).
    PeerFill {
        /// The blob's digest.
        digest: Digest,
    },
    /// `GET /token` (Docker's token flow) or `POST /token` (OAuth2, containerd): the mirror's
    /// own token endpoint, when authentication is on.
    Token,
}

impl Endpoint {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::TagsList { .. } => "tags",
            Endpoint::Unsupported { .. } => "unsupported",
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => "ops",
            Endpoint::Token => "token",
            Endpoint::Status | Endpoint::Page => "ui",
            Endpoint::PeerFill { .. } => "peer_fill",
        }
    }
}

/// Why a path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not an API path at all.
    NotFound,
    /// A blob path whose digest is malformed.
    DigestInvalid(String),
    /// The method is not allowed on this path.
    MethodNotAllowed,
}

impl Endpoint {
    /// Parse a request's method and path (without the query).
    pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ParseError> {
        let read = method == Method::GET || method == Method::HEAD;
        match path {
            "/healthz" if read => return Ok(Endpoint::Health),
            "/readyz" if read => return Ok(Endpoint::Ready),
            "/metrics" if read => return Ok(Endpoint::Metrics),
            "/api/v1/status" if read => return Ok(Endpoint::Status),
            "/" | "/ui" | "/ui/" if read => return Ok(Endpoint::Page),
            crate::edge::TOKEN_PATH if read || method == Method::POST => {
                return Ok(Endpoint::Token)
            }
            _ => {}
        }
        if let Some(d) = path.strip_prefix("/_regmirror/fills/") {
            if method != Method::GET {
                return Err(ParseError::MethodNotAllowed);
            }
            let digest = d
                .parse()
                .map_err(|_| ParseError::DigestInvalid(d.to_string()))?;
            return Ok(Endpoint::PeerFill { digest });
        }
        if path == "/v2" || path == "/v2/" {
            return if read {
                Ok(Endpoint::Base)
            } else {
                Err(ParseError::MethodNotAllowed)
            };
        }
        let rest = path.strip_prefix("/v2/").ok_or(ParseError::NotFound)?;
        if rest == "_catalog" {
            return Ok(Endpoint::Unsupported { what: "catalog" });
        }
        // A tags list needs a name: `/v2//tags/list` is no endpoint (found by tests/fuzz_parsers.rs).
        if let Some(name) = rest.strip_suffix("/tags/list").filter(|n| !n.is_empty()) {
            return if method == Method::GET || method == Method::HEAD {
                Ok(Endpoint::TagsList {
                    name: name.to_string(),
                })
            } else {
                Err(ParseError::MethodNotAllowed)
            };
        }
        if let Some(i) = rest.rfind("/blobs/uploads") {
            let tail = &rest[i + "/blobs/uploads".len()..];
            if tail.is_empty() || tail.starts_with('/') {
                return Ok(Endpoint::Unsupported {
                    what: "blob upload",
                });
            }
        }
        if let Some((name, reference)) = split_last(rest, "/manifests/") {
            if !read {
                let what = if method == Method::DELETE {
                    "manifest delete"
                } else {
                    "manifest push"
                };
                return Ok(Endpoint::Unsupported { what });
            }
            return Ok(Endpoint::Manifest {
                name: name.to_string(),
                reference: reference.to_string(),
            });
        }
        if let Some((name, digest)) = split_last(rest, "/blobs/") {
            if !read {
                return Ok(Endpoint::Unsupported {
                    what: "blob delete",
                });
            }
            let digest = digest
                .parse()
                .map_err(|_| ParseError::DigestInvalid(digest.chars().take(200).collect()))?;
            return Ok(Endpoint::Blob {
                name: name.to_string(),
                digest,
            });
        }
        Err(ParseError::NotFound)
    }
}

/// Split at the last occurrence of `sep`; the part after it must be one non-empty segment.
fn split_last<'a>(s: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let i = s.rfind(sep)?;
    let (name, tail) = (&s[..i], &s[i + sep.len()..]);
    (!name.is_empty() && !tail.is_empty() && !tail.contains('/')).then_some((name, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let d = format!("sha256:{}", "a".repeat(64));
        let get = Method::GET;
        let cases: Vec<(Method, String, Result<Endpoint, ParseError>)> = vec![
            (get.clone(), "/v2/".into(), Ok(Endpoint::Base)),
            (get.clone(), "/v2".into(), Ok(Endpoint::Base)),
            (Method::HEAD, "/v2/".into(), Ok(Endpoint::Base)),
            (
                Method::POST,
                "/v2/".into(),
                Err(ParseError::MethodNotAllowed),
            ),
            (
                get.clone(),
                "/v2/a/b/manifests/latest".into(),
                Ok(Endpoint::Manifest {
                    name: "a/b".into(),
                    reference: "latest".into(),
                }),
            ),
            (
                get.clone(),
                "/v2/registry.k8s.io/coredns/coredns/manifests/v1.11".into(),
                Ok(Endpoint::Manifest {
                    name: "registry.k8s.io/coredns/coredns".into(),
                    reference: "v1.11".into(),
                }),
            ),
            (
                get.clone(),
                "/v2/x/manifests/y/manifests/z".into(),
                Ok(Endpoint::Manifest {
                    name: "x/manifests/y".into(),
                    reference: "z".into(),
                }),
            ),
            (
                Method::HEAD,
                format!("/v2/a/blobs/{d}"),
                Ok(Endpoint::Blob {
                    name: "a".into(),
                    digest: d.parse().unwrap(),
                }),
            ),
            (
                get.clone(),
                "/v2/a/blobs/sha256:xyz".into(),
                Err(ParseError::DigestInvalid("sha256:xyz".into())),
            ),
            (
                get.clone(),
                "/v2/a/b/tags/list".into(),
                Ok(Endpoint::TagsList { name: "a/b".into() }),
            ),
            (
                get.clone(),
                "/v2//tags/list".into(),
                Err(ParseError::NotFound),
            ),
            (
                get.clone(),
                "/v2/_catalog".into(),
                Ok(Endpoint::Unsupported { what: "catalog" }),
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/".into(),
                Ok(Endpoint::Unsupported {
                    what: "blob upload",
                }),
            ),
            (
                Method::PATCH,
                "/v2/a/blobs/uploads/123".into(),
                Ok(Endpoint::Unsupported {
                    what: "blob upload",
                }),
            ),
            (
                Method::PUT,
                "/v2/a/manifests/latest".into(),
                Ok(Endpoint::Unsupported {
                    what: "manifest push",
                }),
            ),
            (
                Method::DELETE,
                "/v2/a/manifests/latest".into(),
                Ok(Endpoint::Unsupported {
                    what: "manifest delete",
                }),
            ),
            (
                Method::DELETE,
                format!("/v2/a/blobs/{d}"),
                Ok(Endpoint::Unsupported {
                    what: "blob delete",
                }),
            ),
            (
                get.clone(),
                "/v2/a/manifests/".into(),
                Err(ParseError::NotFound),
            ),
            (
                get.clone(),
                "/v2/manifests/x".into(),
                Err(ParseError::NotFound),
            ),
            (
                get.clone(),
                "/v1/a/manifests/x".into(),
                Err(ParseError::NotFound),
            ),
            (get.clone(), "/healthz".into(), Ok(Endpoint::Health)),
            (get.clone(), "/readyz".into(), Ok(Endpoint::Ready)),
            (get.clone(), "/metrics".into(), Ok(Endpoint::Metrics)),
            (Method::POST, "/metrics".into(), Err(ParseError::NotFound)),
            (get.clone(), "/token".into(), Ok(Endpoint::Token)),
            (Method::POST, "/token".into(), Ok(Endpoint::Token)),
            (Method::PUT, "/token".into(), Err(ParseError::NotFound)),
            (
                get.clone(),
                "/v2/%2e%2e/manifests/x".into(),
                Ok(Endpoint::Manifest {
                    name: "%2e%2e".into(),
                    reference: "x".into(),
                }),
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(Endpoint::parse(&m, &p), want, "{m} {p}");
        }
    }
}

//! Edge: who is asking, over what, and whether they may.
//!
//! Owns what stands between a client and the mirror: TLS termination for the listeners, client
//! authentication, the access policy and per-client limits. Two callers, one way each:
//! - `server` hands it sockets (TLS) and attaches the connection's [`Peer`] to every request;
//! - `api` asks it once per request, with the route already decided, through [`Edge::admit`],
//!   and maps its [`Error`] to the OCI JSON in `api/error.rs`.
//!
//! Must not call `cache`, `upstream` or `storage`: it decides about a [`Scope`] (upstream,
//! repository, action), never about content. A mirror with no `[auth]`, `[[access]]` or
//! `[limits]` in its configuration admits everyone, as before.

// The scope's fields and some error variants are read by the auth and policy that follow this
// interface.
#![allow(dead_code)]

mod limits;

use limits::{ClientKey, Limits};
pub(crate) use limits::{DownloadPermit, Throttle};
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;

/// The TCP peer of the connection a request arrived on, attached by the server as a request
/// extension (both the HTTP/1.1 fast path and hyper's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer(pub SocketAddr);

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read a manifest or a blob.
    Pull,
    /// List a repository's tags.
    List,
}

/// What a request is about, once routed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub upstream: &'a str,
    pub repository: &'a str,
    pub action: Action,
}

/// Who was admitted, for the request log and for the limits that follow the request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grant {
    /// The authenticated user; None for an anonymous client.
    pub user: Option<String>,
    /// The client's address (after trusted proxies); None when the request has no [`Peer`].
    pub client: Option<std::net::IpAddr>,
    /// Paces blob bytes sent to this client, when a byte limit is configured.
    pub throttle: Option<Throttle>,
    /// Whom the limits count this request against.
    key: Option<ClientKey>,
}

/// Why a request was not admitted. `api/error.rs` maps each variant once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// No credentials, or wrong ones: `401 UNAUTHORIZED` with `challenge` as `WWW-Authenticate`.
    #[error("{message}")]
    Unauthenticated { message: String, challenge: String },
    /// Known (or anonymous) client, scope not allowed: `403 DENIED` with the operator's message.
    #[error("{message}")]
    Denied { message: String },
    /// Over a per-client or global limit: `429 TOOMANYREQUESTS` with `Retry-After`.
    #[error("too many requests from this client; retry in {} s", (retry_after.as_secs_f64().ceil() as u64).max(1))]
    TooManyRequests { retry_after: Duration },
}

/// The edge's decisions for one server, built once from the configuration.
#[derive(Debug)]
pub(crate) struct Edge {
    limits: Limits,
}

impl Edge {
    /// The edge `config` describes.
    pub(crate) fn from_config(config: &Config) -> Edge {
        Edge {
            limits: Limits::from_config(config),
        }
    }

    /// The address `req` is from (its [`Peer`], or what a trusted proxy forwarded).
    pub(crate) fn client_addr(&self, req: &http::request::Parts) -> Option<std::net::IpAddr> {
        let peer = req.extensions.get::<Peer>()?;
        Some(self.limits.client_addr(peer.0.ip(), &req.headers))
    }

    /// Admit (or refuse) a routed request. `req` carries the headers (credentials, forwarded
    /// addresses) and the [`Peer`] extension.
    pub(crate) fn admit(
        &self,
        req: &http::request::Parts,
        _scope: &Scope<'_>,
    ) -> Result<Grant, Error> {
        let client = self.client_addr(req);
        let user: Option<String> = None;
        let key = match (&user, client) {
            (Some(u), _) => Some(ClientKey::User(u.clone())),
            (None, Some(a)) => Some(ClientKey::Addr(a)),
            // Called without a connection (the router in unit tests): nothing to limit by.
            (None, None) => None,
        };
        let throttle = match &key {
            Some(key) => {
                self.limits
                    .admit(key)
                    .map_err(|retry_after| Error::TooManyRequests { retry_after })?;
                self.limits.throttle(key)
            }
            None => None,
        };
        Ok(Grant {
            user,
            client,
            throttle,
            key,
        })
    }

    /// Whether [`Edge::download`] must be asked before a request starts an upstream download.
    pub(crate) fn limits_downloads(&self) -> bool {
        self.limits.limits_downloads()
    }

    /// Count an upstream download the admitted request is about to cause; the permit is held
    /// until its answer ends. `429` when the client already causes its limit.
    pub(crate) fn download(&self, grant: &Grant) -> Result<Option<DownloadPermit>, Error> {
        let Some(key) = &grant.key else {
            return Ok(None);
        };
        self.limits
            .download(key)
            .map_err(|()| Error::TooManyRequests {
                retry_after: Duration::from_secs(1),
            })
    }
}

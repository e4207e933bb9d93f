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

// The scope, grant and error variants are read by the auth, policy and limits that follow this
// interface; until then the edge admits everyone.
#![allow(dead_code)]

pub(crate) mod tls;

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
    #[error("too many requests from this client; retry in {} s", retry_after.as_secs().max(1))]
    TooManyRequests { retry_after: Duration },
}

/// The edge's decisions for one server, built once from the configuration.
#[derive(Debug, Default)]
pub(crate) struct Edge {}

impl Edge {
    /// The edge `config` describes.
    pub(crate) fn from_config(_config: &Config) -> Edge {
        Edge {}
    }

    /// Admit (or refuse) a routed request. `req` carries the headers (credentials, forwarded
    /// addresses) and the [`Peer`] extension.
    pub(crate) fn admit(
        &self,
        _req: &http::request::Parts,
        _scope: &Scope<'_>,
    ) -> Result<Grant, Error> {
        Ok(Grant::default())
    }
}

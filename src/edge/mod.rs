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

mod auth;
mod limits;
mod policy;
mod token;

pub(crate) mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;

pub(crate) use auth::TOKEN_PATH;
use auth::{Auth, Identity, TokenRequest};
use limits::{ClientKey, Limits};
pub(crate) use limits::{DownloadPermit, Throttle};
use policy::{Decision, Policy, Who};

/// The TCP peer of the connection a request arrived on, attached by the server as a request
/// extension (both the HTTP/1.1 fast path and hyper's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer(pub SocketAddr);

/// Marks a request that arrived over TLS (attached by the server beside [`Peer`]), so that the
/// URLs the edge gives the client (the token realm) say `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverTls;

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
    // The policy treats pulls and tag lists alike, and so do the limits.
    #[allow(dead_code)]
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

/// The edge's decisions for one server, built once from the configuration: a composition of its
/// parts, each asked in turn by [`Edge::admit`].
#[derive(Debug)]
pub(crate) struct Edge {
    /// Client authentication; None without `[auth]`.
    auth: Option<Auth>,
    policy: Policy,
    limits: Limits,
    /// `[auth] protect_metrics`.
    protect_metrics: bool,
}

/// Why the edge cannot start, naming the key or file to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StartError(#[from] auth::StartError);

/// The token endpoint's answer (`{"token","access_token","expires_in","issued_at"}`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TokenAnswer {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
}

impl Edge {
    /// The edge `config` describes (the token key is read from, or made in, its `data_dir`).
    pub(crate) fn from_config(config: &Config) -> Result<Edge, StartError> {
        let auth = match &config.auth {
            Some(a) => Some(Auth::from_config(a, &config.data_dir)?),
            None => None,
        };
        Ok(Edge {
            auth,
            policy: Policy::from_config(config),
            limits: Limits::from_config(config),
            protect_metrics: config.auth.as_ref().is_some_and(|a| a.protect_metrics),
        })
    }

    /// The address `req` is from (its [`Peer`], or what a trusted proxy forwarded).
    pub(crate) fn client_addr(&self, req: &http::request::Parts) -> Option<std::net::IpAddr> {
        let peer = req.extensions.get::<Peer>()?;
        Some(self.limits.client_addr(peer.0.ip(), &req.headers))
    }

    /// Check the files the edge reads at start (for `regmirror config check`), changing nothing.
    pub(crate) fn check(config: &Config) -> Result<(), StartError> {
        match &config.auth {
            Some(a) => Ok(Auth::check(a)?),
            None => Ok(()),
        }
    }

    /// Admit (or refuse) a routed request. `req` carries the headers (credentials, forwarded
    /// addresses) and the [`Peer`] extension.
    pub(crate) async fn admit(
        &self,
        req: &http::request::Parts,
        scope: &Scope<'_>,
    ) -> Result<Grant, Error> {
        let client = self.client_addr(req);
        let identity = match self.identify(req).await {
            Ok(i) => i,
            Err(e) => {
                // Wrong credentials count against the address's request rate too: guessing
                // passwords meets 429 after the burst.
                if let Some(a) = client {
                    self.limit(&ClientKey::Addr(a))?;
                }
                return Err(e);
            }
        };
        let who = match &identity {
            Identity::User(u) => Who::User(u),
            Identity::Nobody | Identity::Anonymous => Who::Anonymous,
        };
        match self.policy.decide(who, scope) {
            Decision::Allow => {}
            Decision::Deny(message) => return Err(Error::Denied { message }),
            Decision::Authenticate => {
                return Err(self.unauthenticated(req, "authentication required"))
            }
        }
        let mut grant = grant(identity);
        grant.client = client;
        grant.key = match (&grant.user, client) {
            (Some(u), _) => Some(ClientKey::User(u.clone())),
            (None, Some(a)) => Some(ClientKey::Addr(a)),
            // Called without a connection (the router in unit tests): nothing to limit by.
            (None, None) => None,
        };
        if let Some(key) = &grant.key {
            self.limit(key)?;
            grant.throttle = self.limits.throttle(key);
        }
        Ok(grant)
    }

    /// Count one request of `key` against its rate.
    fn limit(&self, key: &ClientKey) -> Result<(), Error> {
        self.limits
            .admit(key)
            .map_err(|retry_after| Error::TooManyRequests { retry_after })
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

    /// Admit (or refuse) a request for the API base `/v2/`: with authentication on, a client
    /// must present credentials (or an anonymous token), as against Docker Hub; that is how
    /// `docker login` checks a password.
    pub(crate) async fn admit_base(&self, req: &http::request::Parts) -> Result<Grant, Error> {
        match self.identify(req).await? {
            Identity::Nobody if self.auth.is_some() => {
                Err(self.unauthenticated(req, "authentication required"))
            }
            identity => Ok(grant(identity)),
        }
    }

    /// Admit a request for `/metrics`: everyone, unless `[auth] protect_metrics` asks for an
    /// authenticated user.
    pub(crate) async fn admit_metrics(&self, req: &http::request::Parts) -> Result<Grant, Error> {
        if self.protect_metrics {
            return self.admit_base(req).await;
        }
        Ok(grant(Identity::Nobody))
    }

    /// Admit (or refuse) a request for the status page or its JSON. Without `[auth]` everyone
    /// may; with it, any user of the htpasswd file (Basic credentials or a token naming them),
    /// and clients without credentials only when `[auth] anonymous_pull = true` (anonymous
    /// clients may pull anything not denied). The challenge is Basic, so that a browser asks for
    /// the user and password.
    pub(crate) async fn admit_status(&self, req: &http::request::Parts) -> Result<Grant, Error> {
        let Some(auth) = &self.auth else {
            return Ok(grant(Identity::Nobody));
        };
        let refuse = |message: &str| Error::Unauthenticated {
            message: message.to_string(),
            challenge: auth.basic_challenge(),
        };
        match auth
            .identify(&req.headers)
            .await
            .map_err(|bad| refuse(bad.0))?
        {
            Identity::User(u) => Ok(grant(Identity::User(u))),
            _ if self.policy.anonymous_by_default() => Ok(grant(Identity::Nobody)),
            _ => Err(refuse(
                "authentication required: the status page needs a user of the mirror",
            )),
        }
    }

    /// Answer the token endpoint (`GET` with the query, `POST` with its form `body`); None when
    /// authentication is off (there is no token endpoint then).
    pub(crate) async fn token(
        &self,
        req: &http::request::Parts,
        body: Option<&[u8]>,
    ) -> Option<Result<TokenAnswer, Error>> {
        let auth = self.auth.as_ref()?;
        let request = match body {
            Some(b) => TokenRequest::from_form(b, &req.headers),
            None => TokenRequest::from_query(req.uri.query(), &req.headers),
        };
        let answer = match auth.issue(&request, self.policy.anonymous_possible()).await {
            Ok(t) => Ok(TokenAnswer {
                access_token: t.token.clone(),
                token: t.token,
                expires_in: t.expires_in,
                issued_at: token::rfc3339(t.issued_at),
            }),
            Err(bad) => Err(Error::Unauthenticated {
                message: bad.0.to_string(),
                challenge: auth.basic_challenge(),
            }),
        };
        Some(answer)
    }

    /// Who the request's credentials name; bad credentials are refused with the challenge.
    async fn identify(&self, req: &http::request::Parts) -> Result<Identity, Error> {
        let Some(auth) = &self.auth else {
            return Ok(Identity::Nobody);
        };
        auth.identify(&req.headers)
            .await
            .map_err(|bad| self.unauthenticated(req, bad.0))
    }

    fn unauthenticated(&self, req: &http::request::Parts, message: &str) -> Error {
        let challenge = match &self.auth {
            Some(a) => a.challenge(req),
            None => String::new(),
        };
        Error::Unauthenticated {
            message: message.to_string(),
            challenge,
        }
    }
}

fn grant(identity: Identity) -> Grant {
    Grant {
        user: match identity {
            Identity::User(u) => Some(u),
            Identity::Nobody | Identity::Anonymous => None,
        },
        ..Grant::default()
    }
}

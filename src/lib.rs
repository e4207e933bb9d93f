//! regmirror: one pull-through cache for many container registries.
//!
//! # Layout
//!
//! - [`cli`]: command line (`serve`, `config check`, `client-config`); process set-up only.
//! - [`config`]: the TOML configuration, embedded defaults, environment overrides, validation.
//! - [`oci`]: pure OCI types: digests, names, references, media types. No I/O.
//! - [`routing`]: (listener, Host, `?ns=`, path) -> (upstream, repository). Pure, table-tested.
//! - [`upstream`]: HTTP client to one registry: auth challenges, token cache, redirects, retries.
//! - [`storage`]: the one storage trait for committed objects, and its backends (local disk).
//! - [`cache`]: the pull-through logic: hit / miss / in-flight, one fill per digest, tag freshness.
//!   A blob body is a stream or a file region (a committed blob or a fill's spool file).
//! - [`api`]: OCI distribution routes: path -> [`api::Endpoint`], dispatch to the cache, errors -> OCI JSON.
//! - [`metrics`]: names of every Prometheus series and the exporter.
//! - [`server`]: listeners (shared and per-upstream), graceful shutdown, and the HTTP/1.1 front that
//!   sends blob bodies with `sendfile(2)` (hyper serves everything it does not take).
//! - [`client_config`]: generates docker / containerd / podman / kubeadm / kubespray configuration.
//!
//! Calls go one way: `api` -> `cache` -> (`upstream`, `storage`). Only `api` knows HTTP statuses
//! and OCI error codes. `server` calls `api`'s router for every request, whichever side parsed it.

#![warn(unreachable_pub, missing_docs)]

pub mod api;
mod cache;
pub mod cli;
mod client_config;
pub mod config;
mod metrics;
pub mod oci;
pub mod routing;
mod server;
mod staging;
mod storage;
mod sys;
pub mod upstream;

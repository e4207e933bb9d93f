//! regmirror: one pull-through cache for many container registries.
//!
//! # Layout
//!
//! - [`cli`]: command line (`serve`, `config check`, `cache`, `client-config`, `prefetch`,
//!   `export`, `import`, `webhook`); process set-up only.
//! - [`config`]: the TOML configuration, embedded defaults, environment overrides, validation.
//! - [`oci`]: pure OCI types: digests, names, references, media types, byte ranges. No I/O.
//! - [`routing`]: (listener, Host, `?ns=`, path) -> (upstream, repository). Pure, table-tested.
//! - [`upstream`]: HTTP client to one registry: typed calls (`get_blob`, `head_manifest`, `tags`,
//!   ...), auth challenges, token cache, redirects, the one retry helper.
//! - `storage`: the one storage trait for committed objects, `storage::open` (the only place
//!   a backend is named) and its backends (local disk; `storage::s3`: an S3 bucket through
//!   `object_store` with multipart fills, verified reads, a local tier, presigned URLs), with one
//!   conformance suite run against both.
//! - `staging`: local files a fill streams through (spool writer and tailing readers, file
//!   regions, page-cache-aware reads), usable in front of any backend.
//! - `cache`: the pull-through logic, a facade over `BlobCache` (hits, fills through the
//!   `FillTable` single-flight, ranges) and `ManifestCache` (digests, tags and their freshness,
//!   stale serving, tags lists), with access tracking and eviction.
//! - `coord`: coordination of replicas through Redis (`redis_url`): leases with fencing tokens,
//!   shared records, sorted sets (a shared bucket's last accesses and reads), the peer secret,
//!   and the HTTP client that reads a fill from the replica that owns it. Below `cache`; never
//!   calls it.
//! - `edge`: who is asking and whether they may: TLS for the listeners (`edge::tls`: PEM
//!   certificates chosen by SNI, reloaded on change and SIGHUP, the handshake and its timeout;
//!   `edge::tls::acme`: certificates from an ACME CA, stored in `data_dir/acme`, renewed),
//!   client authentication, access policy, per-client limits. The server hands it sockets, the
//!   api asks it once per routed request ([`edge::Edge::admit`]); it never calls the cache.
//! - [`api`]: OCI distribution routes: path -> [`api::Endpoint`], one function per endpoint,
//!   errors -> OCI JSON in one place.
//! - `metrics`: names of every Prometheus series and the exporter.
//! - `server`: listeners (shared and per-upstream, plain or HTTPS through `edge::tls`), graceful
//!   shutdown, the HTTP/1.1 front that sends blob bodies with `sendfile(2)` on plain listeners
//!   (hyper serves everything it does not take, and every HTTPS connection), and the plain-HTTP
//!   redirect listener (`http_redirect_listen`).
//! - `prefetch`: pull image lists into the cache ahead of use, through a running mirror (HTTP)
//!   or the `cache` facade opened in-process; per-image progress bars, plain lines, JSON.
//! - `transfer`: air-gapped export (cached images -> OCI image layout tarball) and import (every
//!   digest verified, then blobs, manifests and tag records through `cache::records`).
//! - `ui`: the status page (`/`, `/ui`) and `/api/v1/status`: request counters the api feeds,
//!   a background snapshot of the cache (image list, size), fills, upstream health, schedules.
//! - `webhook`: the mutating admission webhook (`regmirror webhook`): its own TOML file, the pure
//!   image rewrite rule and AdmissionReview -> JSONPatch answer, an HTTPS listener through
//!   `edge::tls`. A separate process: never calls `cache`, `upstream` or `storage`.
//! - `client_config`: generates docker / containerd / podman / kubeadm / kubespray configuration.
//! - `sys`: every `libc` call (`preadv2`, `sendfile`, `TCP_CORK`, `fallocate`, `mallopt`),
//!   Linux-gated, each with its SAFETY argument.
//!
//! Calls go one way: `server` -> `edge` (sockets) and `api`; `api` -> `edge` (admission) and
//! `cache`; `cache` -> (`upstream`, `storage`, `staging`, `coord`); `prefetch` -> `cache` (or a
//! mirror over HTTP); `api` -> `ui` -> (`cache` accessors, `prefetch` schedule reports);
//! `transfer` -> `cache::records` and `storage`; `storage` and
//! `staging` -> `sys`. Only `api` knows HTTP statuses and OCI error codes; below it, HTTP
//! requests go out only from `upstream` (registries), `coord` (another replica's fill),
//! `storage::s3` (the bucket, through `object_store`) and `edge::tls::acme` (the CA, through
//! `instant-acme`), and only `storage` names a backend. `server` calls `api`'s router for
//! every request, whichever side parsed it.
//!
//! The public items are what the binary (`cli::main`) and the black-box tests (the parsers they
//! fuzz) use; everything else is `pub(crate)`.

#![warn(unreachable_pub, missing_docs)]

pub mod api;
mod cache;
pub mod cli;
mod client_config;
pub mod config;
mod coord;
mod edge;
mod metrics;
pub mod oci;
mod prefetch;
pub mod routing;
mod server;
mod staging;
mod storage;
mod sys;
mod transfer;
mod ui;
pub mod upstream;
mod webhook;

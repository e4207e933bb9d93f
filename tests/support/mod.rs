//! End-to-end test harness: real upstream registries (Debian's `docker-registry`, i.e. distribution
//! 2.8), an in-process token server, offline image seeding, the real `regmirror` binary, skopeo.
//!
//! # Layout
//! - [`env`]: required tools, `REGMIRROR_E2E`, free ports, child processes killed on drop.
//! - [`background`]: run an axum router on its own thread and runtime (token server, fake upstreams).
//! - [`fake_upstream`]: an in-process upstream serving a blob with wrong bytes and paginated tags.
//! - [`token`]: RS256 token server that distribution's `auth.token` accepts.
//! - [`registry`]: spawn `docker-registry serve` (plain, htpasswd Basic, token auth, or an https
//!   twin on the same storage), count its access log.
//! - [`tls`]: a private CA and a server certificate for 127.0.0.1, and the `openssl` runner.
//! - [`pebble`]: Debian's `pebble` ACME test CA with `pebble-challtestsrv` as its DNS, on loopback.
//! - [`proxies`]: outbound proxies on loopback (tinyproxy, squid, microsocks), each with its own
//!   config and log, and the requests their logs show.
//! - [`pycheck`]: independent checkers in Python: PyPI `jsonpatch` applies a JSONPatch,
//!   `kubernetes-validate` checks objects against several Kubernetes versions' schemas.
//! - [`image`]: build layers, configs, manifests, OCI indexes and Docker manifest lists in memory.
//! - [`client`]: a small registry HTTP client (Basic/Bearer challenge handling, push, pull) and a raw
//!   HTTP/1.1 request for paths no URL library would leave alone.
//! - [`raw_http`]: HTTP/1.x by hand over one TCP connection (keep-alive, pipelining, HTTP/1.0),
//!   responses parsed without an HTTP library.
//! - [`replicas`]: regmirror replicas on one Redis in front of a counting, slow-streaming upstream.
//! - [`seed`]: push the standard set of images to an upstream and return their digests.
//! - [`ledger`]: the answers a test sent, checked against regmirror's request log and its
//!   bytes-served counter.
//! - [`mirror`]: the real `regmirror` binary: `regmirror serve` on a generated config (listeners,
//!   request log, SIGKILL and restart on the same data directory) and one-shot `regmirror <args>`.
//! - [`faults`]: a misbehaving in-process upstream, paths into the data directory, a tmpfs for
//!   disk-full tests, raw sockets, `/metrics` and `/proc` readings.
//! - [`netfaults`]: a TCP relay in front of a real upstream whose mode a test switches: forward
//!   (optionally through a slow link), refuse, black-hole, silent, a stalled body, a fixed status.
//! - [`clients`]: dockerd (in a loopback-only network namespace), containerd and podman, configured
//!   with `regmirror client-config`.
//! - [`s3`]: a real S3 server (`s3s-fs`, SigV4 checked) with one bucket, and the `[s3]` config.
//! - [`redis`]: Debian's `redis-server`, stoppable and restartable on its port; a Sentinel set
//!   (master, replica, sentinel) whose master a test kills; a three-node Cluster.
//! - [`skopeo`]: `skopeo copy` into a `dir:` layout, read it back and compare it with what was
//!   pushed.
//! - [`world`]: two seeded upstreams (Basic auth as a docker.io override, token auth with alias, host
//!   and dedicated listener) behind one regmirror; a socat forwarder for Host-header routing.
//!
//! Every test builds its own world (ports, temp dirs, processes), so tests run in parallel.
//! Processes are killed by PID when their guard drops; on a failing test the mirror's and the
//! registries' logs are printed with the failure.
//!
//! A test reads like this:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn pulls_through_the_alias() {
//!     require_tools!(); // skips, or fails under REGMIRROR_E2E=1, when a tool is missing
//!     let w = World::start().await;
//!     let copy = skopeo::copy(&format!("{}/tok/team/multi:v1", w.mirror.addr()), w.work.path(),
//!                             &CopyOptions { all: true, ..Default::default() }).await.unwrap();
//!     assert_eq!(copy.manifest_digest(), w.tok_seed.index.manifest.digest);
//! }
//! ```
#![allow(dead_code)]

pub mod background;
pub mod client;
pub mod clients;
pub mod env;
pub mod fake_upstream;
pub mod faults;
pub mod image;
pub mod ledger;
pub mod mirror;
pub mod netfaults;
pub mod pebble;
pub mod proxies;
pub mod pycheck;
pub mod raw_http;
pub mod redis;
pub mod registry;
pub mod replicas;
pub mod s3;
pub mod seed;
pub mod skopeo;
pub mod tls;
pub mod token;
pub mod world;

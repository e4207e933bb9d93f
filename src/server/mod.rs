//! Server: opens the cache, binds the listeners (shared and per-upstream) and runs them until the
//! shutdown signal.
//!
//! Owns: sockets and process lifetime. Must not contain request logic: HTTP/1.1 connections start
//! in [`http1`] (which answers through the same router), everything else goes to hyper.

mod http1;
mod redirect;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, App, Listener};
use crate::cache::Cache;
use crate::config::{parse_addr, Config};
use crate::edge::tls::{self, Acceptor};
use crate::routing::RoutingTable;

/// A start-up failure, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: crate::storage::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: String,
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Cache(#[from] crate::cache::Error),
    #[error("{0}")]
    Edge(#[from] crate::edge::StartError),
    #[error("{0}")]
    Tls(#[from] crate::edge::tls::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// A bound listener, the upstream it is dedicated to (None: all upstreams) and its TLS (None:
/// plain HTTP).
pub(crate) struct Bound {
    pub listener: TcpListener,
    pub upstream: Option<String>,
    pub tls: Option<Arc<Acceptor>>,
    /// Blob GETs may be redirected to presigned storage URLs (`redirect_blobs`).
    pub redirect_blobs: bool,
}

/// Bind every listener of `config`: the shared one first, then one per upstream with `listen`.
/// Certificates are loaded before anything is bound, so a bad file stops the start.
pub(crate) async fn bind(
    config: &Config,
    acme: Option<Arc<tls::acme::Certs>>,
) -> Result<Vec<Bound>, Error> {
    let mut out = Vec::new();
    let tls = |s: Option<tls::Settings>| -> Result<Option<Arc<Acceptor>>, Error> {
        Ok(s.map(Acceptor::new).transpose()?.map(Arc::new))
    };
    let mut wanted: Vec<(String, Option<String>, Option<Arc<Acceptor>>)> = vec![(
        config.listen.clone(),
        None,
        tls(tls::Settings::shared(config, acme))?,
    )];
    for u in &config.upstreams {
        if let Some(l) = &u.listen {
            let t = tls(tls::Settings::dedicated(config, u))?;
            wanted.push((l.clone(), Some(u.name.clone()), t));
        }
    }
    for (addr, upstream, tls) in wanted {
        let what = upstream
            .as_ref()
            .map(|u| format!("upstream {u}"))
            .unwrap_or_else(|| "all upstreams".into());
        let sock: SocketAddr = parse_addr("listen", &addr).map_err(|e| Error::Bind {
            addr: addr.clone(),
            what: what.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let listener = TcpListener::bind(sock)
            .await
            .map_err(|source| Error::Bind {
                addr: addr.clone(),
                what,
                source,
            })?;
        let redirect_blobs = match &upstream {
            Some(u) => config
                .upstream(u)
                .and_then(|u| u.redirect_blobs)
                .unwrap_or(config.redirect_blobs),
            None => config.redirect_blobs,
        };
        out.push(Bound {
            listener,
            upstream,
            tls,
            redirect_blobs,
        });
    }
    Ok(out)
}

/// Bind `http_redirect_listen`, if set.
async fn bind_redirect(config: &Config) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = &config.http_redirect_listen else {
        return Ok(None);
    };
    let what = "redirect to https".to_string();
    let sock = parse_addr("http_redirect_listen", addr).map_err(|e| Error::Bind {
        addr: addr.clone(),
        what: what.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    TcpListener::bind(sock)
        .await
        .map(Some)
        .map_err(|source| Error::Bind {
            addr: addr.clone(),
            what,
            source,
        })
}

/// Open storage and the cache, bind, announce and serve until `shutdown` completes.
pub(crate) async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    if crate::metrics::install().is_none() {
        tracing::warn!("another metrics recorder is installed; /metrics will be empty");
    }
    let opened = crate::storage::open(
        &config.data_dir,
        config.s3_backend(),
        crate::storage::Role::Server,
    )
    .await
    .map_err(|source| Error::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    if opened.cleaned > 0 {
        tracing::info!(
            removed = opened.cleaned,
            "removed temporary files left by a previous run"
        );
    }
    let storage = opened.storage.clone();
    let cache = Arc::new(Cache::new(&config, opened.storage, opened.staging_dir)?);
    let policy = cache.evict_policy();
    {
        // Measure the cache once in the background (sets the size gauges; start-up does not wait).
        let cache = cache.clone();
        tokio::spawn(async move { cache.evict(policy).await });
    }
    if policy.max_size.is_some() || policy.max_age.is_some() {
        let (cache, every) = (cache.clone(), Duration::from_secs(config.gc_interval_secs));
        tokio::spawn(async move {
            loop {
                if let Err(e) = cache.evict(policy).await {
                    tracing::warn!(error = %e, "eviction failed");
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    let edge = crate::edge::Edge::from_config(&config)?;
    let acme = config
        .acme
        .as_ref()
        .map(|a| tls::acme::Certs::new(a, &config.data_dir));
    let bound = bind(&config, acme.clone()).await?;
    if let Some(first) = bound.first() {
        let addr = first.listener.local_addr().map_err(Error::Serve)?;
        cache.start_coordination(replica_url(addr, first.tls.is_some()));
    }
    let redirect = bind_redirect(&config).await?;
    let limits = Limits::from_config(&config);
    let reload = Duration::from_secs(config.tls_reload_interval_secs);
    let stop = CancellationToken::new();
    let schedules = Arc::new(crate::prefetch::schedule::Schedules::from_config(&config));
    schedules.spawn(cache.clone(), storage, stop.clone());
    let ui = config.ui.then(|| {
        let ui = Arc::new(crate::ui::Ui::new(
            cache.clone(),
            schedules,
            policy.max_size,
        ));
        ui.spawn_refresher(Duration::from_secs(config.ui_refresh_secs), stop.clone());
        ui
    });
    let app = Arc::new(App {
        cache,
        routing: RoutingTable::new(&config),
        edge,
        ui,
    });
    let tls: Vec<Arc<Acceptor>> = bound.iter().filter_map(|b| b.tls.clone()).collect();
    tls::spawn_reloader(tls, reload, stop.clone());
    if let Some(certs) = &acme {
        tls::acme::spawn(certs.clone(), stop.clone());
    }
    if let Some(listener) = redirect {
        // Redirect to the port the shared listener really has (it may be port 0 in tests).
        let https_port = bound[0].listener.local_addr().map_err(Error::Serve)?.port();
        let addr = listener.local_addr().map_err(Error::Serve)?;
        println!("regmirror: listening on http://{addr} (redirect to https port {https_port})");
        tracing::info!(%addr, https_port, "listening (HTTP to HTTPS redirect and /healthz)");
        tokio::spawn(redirect::serve(
            listener,
            https_port,
            limits,
            acme.clone(),
            stop.clone(),
        ));
    }
    let served = serve(app, bound, limits, shutdown).await;
    stop.cancel();
    served
}

/// How other replicas reach this one, from the shared listener's bound address: its IP, or the
/// host name when it listens on every address (what a pod's or a VM's peers resolve).
fn replica_url(addr: std::net::SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    let host = if addr.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    } else {
        match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Per-connection limits against slow and abusive clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Limits {
    pub(crate) fn from_config(c: &Config) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            max_header_bytes: c.max_header_bytes,
            max_headers: c.max_headers,
        }
    }
}

/// Serve already-bound listeners. Prints one `regmirror: listening on ...` line per listener on
/// stdout (tests and scripts read the ports from it).
pub(crate) async fn serve(
    app: Arc<App>,
    bound: Vec<Bound>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let token = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        let addr = b.listener.local_addr().map_err(Error::Serve)?;
        let what = b
            .upstream
            .as_ref()
            .map(|u| format!("upstream {u}"))
            .unwrap_or_else(|| "all upstreams".into());
        match &b.tls {
            Some(t) => println!(
                "regmirror: listening on https://{addr} ({what}; {})",
                t.describe()
            ),
            None => println!("regmirror: listening on http://{addr} ({what})"),
        }
        tracing::info!(%addr, serves = %what, tls = b.tls.is_some(), "listening");
        let router = api::router(Listener {
            app: app.clone(),
            upstream: b.upstream,
            redirect_blobs: b.redirect_blobs,
        });
        tasks.spawn(accept_loop(
            b.listener,
            b.tls,
            router,
            limits,
            token.clone(),
        ));
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    shutdown.await;
    tracing::info!(
        "shutting down: no new connections; waiting up to 10 s for requests in progress"
    );
    token.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The next connection (with `TCP_NODELAY` set), or None once `stop` is cancelled. A failed
/// accept (out of file descriptors and the like) is logged and retried after 100 ms instead of
/// spinning; `which` names the listener in that log line.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    which: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, listener = which, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.cancelled() => return None,
        }
    }
}

/// Accept connections until `stop`, then let open connections finish (bounded).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Acceptor>>,
    router: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    loop {
        let Some((stream, peer)) = accept(&listener, &stop, "").await else {
            break;
        };
        let peer = crate::edge::Peer(peer);
        let over_tls = tls.is_some();
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            router.clone(),
            move |mut r: http::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(peer);
                if over_tls {
                    r.extensions_mut().insert(crate::edge::OverTls);
                }
                r
            },
        ));
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let (router, stop) = (router.clone(), stop.clone());
        if let Some(tls) = tls.clone() {
            // HTTPS: the handshake (bounded by its own timeout), then hyper for the connection's
            // life, h2 or HTTP/1.1 as ALPN agreed.
            tokio::spawn(async move {
                let Some(stream) = tls.accept(stream).await else {
                    return;
                };
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "TLS connection ended with an error");
                }
            });
            continue;
        }
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte: a client that connects and sends
            // nothing would hold its socket forever. Give it the same time to start.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                tracing::debug!(
                    "closing a connection that sent nothing (or closed) within the header timeout"
                );
                return;
            }
            let Some(rest) = http1::serve(stream, peer, router, limits, stop).await else {
                return;
            };
            let conn = builder.serve_connection(rest.into_io(), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

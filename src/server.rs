//! Server: opens the cache, binds the listeners (shared and per-upstream) and runs them until the
//! shutdown signal.
//!
//! Owns: sockets and process lifetime. Must not contain request logic.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, App, Listener};
use crate::cache::Cache;
use crate::config::{parse_addr, Config};
use crate::routing::RoutingTable;
use crate::storage::fs::FsStorage;

/// A start-up failure, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the data directory {path}: {source}")]
    DataDir { path: String, source: crate::storage::Error },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: String, what: String, source: std::io::Error },
    #[error("{0}")]
    Cache(#[from] crate::cache::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// A bound listener and the upstream it is dedicated to (None: all upstreams).
pub struct Bound {
    pub listener: TcpListener,
    pub upstream: Option<String>,
}

/// Bind every listener of `config`: the shared one first, then one per upstream with `listen`.
pub async fn bind(config: &Config) -> Result<Vec<Bound>, Error> {
    let mut out = Vec::new();
    let mut wanted: Vec<(String, Option<String>)> = vec![(config.listen.clone(), None)];
    for u in &config.upstreams {
        if let Some(l) = &u.listen {
            wanted.push((l.clone(), Some(u.name.clone())));
        }
    }
    for (addr, upstream) in wanted {
        let what = upstream.as_ref().map(|u| format!("upstream {u}")).unwrap_or_else(|| "all upstreams".into());
        let sock: SocketAddr = parse_addr("listen", &addr).map_err(|e| Error::Bind {
            addr: addr.clone(),
            what: what.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let listener = TcpListener::bind(sock).await.map_err(|source| Error::Bind { addr: addr.clone(), what, source })?;
        out.push(Bound { listener, upstream });
    }
    Ok(out)
}

/// Open storage and the cache, bind, announce and serve until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let storage = FsStorage::open(&config.data_dir)
        .await
        .map_err(|source| Error::DataDir { path: config.data_dir.display().to_string(), source })?;
    match storage.clean_tmp().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed temporary files left by a previous run"),
        Err(e) => tracing::warn!(error = %e, "cannot clean temporary files"),
    }
    let spool = storage.tmp_dir();
    let cache = Arc::new(Cache::new(&config, Arc::new(storage), spool)?);
    let app = Arc::new(App { cache, routing: RoutingTable::new(&config) });
    let bound = bind(&config).await?;
    serve(app, bound, shutdown).await
}

/// Serve already-bound listeners. Prints one `regmirror: listening on ...` line per listener on
/// stdout (tests and scripts read the ports from it).
pub async fn serve(app: Arc<App>, bound: Vec<Bound>, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let token = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        let addr = b.listener.local_addr().map_err(Error::Serve)?;
        let what = b.upstream.as_ref().map(|u| format!("upstream {u}")).unwrap_or_else(|| "all upstreams".into());
        println!("regmirror: listening on http://{addr} ({what})");
        tracing::info!(%addr, serves = %what, "listening");
        let router = api::router(Listener { app: app.clone(), upstream: b.upstream });
        let stop = token.clone();
        tasks.spawn(async move {
            axum::serve(b.listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
        });
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Some(r) = tasks.join_next() => {
            token.cancel();
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Serve(e)),
                Err(e) => Err(Error::Serve(std::io::Error::other(e))),
            };
        }
    }
    token.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

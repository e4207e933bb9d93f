//! The webhook's HTTPS listener: `POST /mutate` (AdmissionReview), `GET /healthz`, `GET /readyz`
//! and `GET /metrics`. TLS and the certificate reload are `edge::tls`'s.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use super::config::WebhookConfig;
use super::review::{review, Scope};
use super::rewrite::Rewriter;
use crate::edge::tls::{self, Acceptor};

/// The largest review read: the API server's object limit (3 MiB) with old and new object.
const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

struct Webhook {
    rewriter: Rewriter,
    scope: Scope,
}

/// `regmirror webhook --config FILE [--check]`.
pub(crate) fn main(path: &Path, check_only: bool) -> ExitCode {
    let config = match WebhookConfig::load(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if check_only {
        println!(
            "{}: ok ({} registries rewritten to {})",
            path.display(),
            config.registries.len(),
            config.mirror
        );
        return ExitCode::SUCCESS;
    }
    crate::cli::init_tracing(&config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(config, crate::server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("regmirror webhook: {e}");
    ExitCode::from(2)
}

async fn run(
    config: WebhookConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    crate::metrics::install();
    let settings = tls::Settings::single(
        "the webhook",
        &config.tls_cert,
        &config.tls_key,
        Duration::from_secs(config.tls_handshake_timeout_secs),
    );
    let acceptor = Arc::new(Acceptor::new(settings).map_err(|e| e.to_string())?);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (`listen`): {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    tls::spawn_reloader(
        vec![acceptor.clone()],
        Duration::from_secs(config.tls_reload_interval_secs),
        stop.clone(),
    );
    let state = Arc::new(Webhook {
        rewriter: Rewriter::new(&config),
        scope: Scope {
            exclude_namespaces: config.exclude_namespaces.clone(),
            include_namespaces: config.include_namespaces.clone(),
            workloads: config.workloads,
        },
    });
    let router = axum::Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state);
    tracing::info!(listen = %local, mirror = %config.mirror, registries = config.registries.len(), "webhook listening (HTTPS)");
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    accept_loop(listener, acceptor, router, stop).await;
    Ok(())
}

async fn mutate(State(w): State<Arc<Webhook>>, body: Bytes) -> impl IntoResponse {
    let answer = review(&body, &w.rewriter, &w.scope);
    crate::metrics::webhook_review(answer.outcome.as_str());
    // One counter update per registry and per reason, not per image.
    let mut rewrites: Vec<&str> = answer.rewrites.iter().map(String::as_str).collect();
    rewrites.sort_unstable();
    for group in rewrites.chunk_by(|a, b| a == b) {
        crate::metrics::webhook_rewrite(group[0], group.len() as u64);
    }
    let mut skips: Vec<&'static str> = answer.skips.iter().map(|s| s.as_str()).collect();
    skips.sort_unstable();
    for group in skips.chunk_by(|a, b| a == b) {
        crate::metrics::webhook_skip(group[0], group.len() as u64);
    }
    if let Some(problem) = &answer.problem {
        tracing::warn!(%problem, "admission review not understood; allowed unchanged");
    }
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<Acceptor>,
    router: axum::Router,
    stop: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let Some((stream, _)) = crate::server::accept(&listener, &stop, "webhook").await else {
            break;
        };
        let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Some(stream) = tls.accept(stream).await else {
                return;
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "webhook connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

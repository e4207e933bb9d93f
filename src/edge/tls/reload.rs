//! Certificate reload: the files are checked every `tls_reload_interval_secs` and re-read on
//! SIGHUP. A reload swaps the resolver's set; open connections are not touched.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Acceptor;

/// Watch the files of `acceptors` (every `interval`; `Duration::ZERO`: only on SIGHUP) until
/// `stop`.
pub(crate) fn spawn_reloader(
    acceptors: Vec<Arc<Acceptor>>,
    interval: Duration,
    stop: CancellationToken,
) {
    if acceptors.is_empty() {
        return;
    }
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates reload on file changes only");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = async {
                    match tick.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => false,
                _ = async {
                    #[cfg(unix)]
                    if let Some(h) = hup.as_mut() {
                        h.recv().await;
                        return;
                    }
                    std::future::pending::<()>().await
                } => true,
            };
            if force {
                tracing::info!("SIGHUP: reloading TLS certificates");
            }
            for a in &acceptors {
                reload_one(a, force).await;
            }
        }
    });
}

/// One listener's reload, off the runtime threads (it reads files and parses keys).
async fn reload_one(a: &Arc<Acceptor>, force: bool) {
    let acceptor = a.clone();
    match tokio::task::spawn_blocking(move || acceptor.reload(force)).await {
        Ok(Ok(true)) => {
            crate::metrics::tls_reload("ok");
            tracing::info!(listener = %a.what(), "TLS certificates reloaded");
        }
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            crate::metrics::tls_reload("failed");
            tracing::warn!(listener = %a.what(), error = %e, "TLS certificates not reloaded; serving the previous ones");
        }
        Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
    }
}

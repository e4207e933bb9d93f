//! How the coordination client reaches Redis in each of the three shapes `redis_url` gives:
//! one server (a `ConnectionManager`, which reconnects by itself), a Cluster (the crate's
//! cluster connection, which follows slots and failovers by itself), and Sentinel (the master the
//! sentinels name, asked again whenever a command on it fails, so a promoted replica is followed).
//!
//! `redis_ca_file` becomes the root of trust of every TLS connection here (instead of the
//! system's roots).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};

use super::{unavailable, Error, Result, COMMAND_TIMEOUT};
use crate::config::coord::{CoordSettings, SentinelMaster};

/// The CA of `redis_ca_file` as the redis crate takes it.
pub(super) fn certificates(settings: &CoordSettings) -> Result<Option<TlsCertificates>> {
    let Some(path) = &settings.ca_file else {
        return Ok(None);
    };
    let pem =
        crate::config::coord::ca_pem(path).map_err(|e| Error::Unavailable(e.to_string().into()))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// One server: a lazy manager (no I/O until the first command).
pub(super) fn single(url: &str, certs: Option<TlsCertificates>) -> Result<ConnectionManager> {
    let client = match certs {
        Some(c) => redis::Client::build_with_tls(url, c),
        None => redis::Client::open(url),
    }
    .map_err(unavailable)?;
    ConnectionManager::new_lazy_with_config(client, manager_config()).map_err(unavailable)
}

/// A Cluster, found from its seed nodes.
pub(super) async fn cluster(
    nodes: &[String],
    certs: Option<TlsCertificates>,
) -> Result<redis::cluster_async::ClusterConnection> {
    let mut builder = redis::cluster::ClusterClient::builder(nodes.to_vec())
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        .retries(1);
    if let Some(c) = certs {
        builder = builder.certs(c);
    }
    let client = builder.build().map_err(unavailable)?;
    tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_connection())
        .await
        .map_err(|_| Error::Unavailable("cluster connect timed out".into()))?
        .map_err(unavailable)
}

/// The client that asks the sentinels for `master` (no I/O yet).
pub(super) fn sentinels(
    nodes: &[String],
    master: &SentinelMaster,
    certs: Option<TlsCertificates>,
) -> Result<SentinelClient> {
    let addrs = nodes
        .iter()
        .map(|n| {
            n.as_str()
                .into_connection_info()
                .map(|i| i.addr().clone())
                .map_err(unavailable)
        })
        .collect::<Result<Vec<ConnectionAddr>>>()?;
    let mut b = SentinelClientBuilder::new(addrs, &master.name, SentinelServerType::Master)
        .map_err(unavailable)?
        .set_client_to_redis_db(master.db);
    if let Some(u) = &master.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &master.password {
        b = b.set_client_to_redis_password(p);
    }
    if master.tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(c) = certs {
            b = b
                .set_client_to_redis_certificates(c.clone())
                .set_client_to_sentinel_certificates(c);
        }
    }
    b.build().map_err(unavailable)
}

/// The master the sentinels name now (they check it answers as a master), and a manager on it.
pub(super) async fn sentinel_master(
    sentinels: &tokio::sync::Mutex<SentinelClient>,
) -> Result<(ConnectionManager, ConnectionAddr)> {
    let found = tokio::time::timeout(COMMAND_TIMEOUT, async {
        sentinels.lock().await.async_get_client().await
    })
    .await
    .map_err(|_| Error::Unavailable("no sentinel named the master in time".into()))?
    .map_err(unavailable)?;
    let addr = found.get_connection_info().addr().clone();
    tracing::debug!(master = %addr, "sentinel: master found");
    let m =
        ConnectionManager::new_lazy_with_config(found, manager_config()).map_err(unavailable)?;
    Ok((m, addr))
}

//! stub
use crate::config::Config;
pub async fn run(_c: Config, _s: impl std::future::Future<Output = ()>) -> Result<(), String> { Err("todo".into()) }
pub async fn shutdown_signal() { let _ = tokio::signal::ctrl_c().await; }

//! Debian's `redis-server` on a loopback port, which a test may stop and start again, and the
//! readiness check of a replica coordinated through it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::env::{e2e_required, free_port, have_tool};
use super::mirror::Regmirror;

/// A `redis-server` on a fixed loopback port (kept across [`RedisServer::stop`] and
/// [`RedisServer::spawn`]); killed by PID on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// Start on a free port; None (after saying why) when `redis-server` is missing and the e2e
    /// run is optional.
    pub fn start() -> Option<RedisServer> {
        if !have_tool("redis-server") {
            assert!(
                !e2e_required(),
                "REGMIRROR_E2E=1 but redis-server is missing"
            );
            eprintln!("SKIPPED: redis-server not installed (scripts/test.sh installs it)");
            return None;
        }
        let mut r = RedisServer {
            child: None,
            port: free_port(),
        };
        r.spawn();
        Some(r)
    }

    /// Start the server (again) on its port; returns once it listens.
    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    /// Kill the server (by its PID), reap it and wait until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT`: the `redis_url` of the replicas.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until `m`'s `/readyz` says Redis is up and fills and tags are coordinated (it has learnt
/// the fleet's secret and announced itself).
pub async fn wait_coordinated(m: &Regmirror) {
    let url = format!("{}/readyz", m.url);
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await {
            if r.text()
                .await
                .unwrap_or_default()
                .contains("up: fills and tags coordinated")
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never reported redis up", m.url);
}

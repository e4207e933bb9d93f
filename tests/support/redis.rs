//! Debian's `redis-server` for coordination tests, on loopback ports and stopped by PID: one
//! server a test may stop and start again, and the readiness check of a replica coordinated
//! through it; a Sentinel set (a master, its replica and one sentinel with
//! `down-after-milliseconds` 1000, so a killed master is replaced within seconds); a three-node
//! Cluster made with `redis-cli --cluster create`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// One `redis-server` (or sentinel) this test started; killed by PID on drop.
pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
}

impl RedisProc {
    /// `redis-server ARGS`, returned once `port` accepts connections.
    pub fn start(port: u16, args: &[&str]) -> RedisProc {
        let mut child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return RedisProc {
                    child: Some(child),
                    port,
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server {args:?} did not listen on {port}");
    }

    /// A server on a new port, its files in `dir`, with `extra` arguments.
    pub fn server(dir: &Path, extra: &[&str]) -> RedisProc {
        std::fs::create_dir_all(dir).expect("redis dir");
        let port = free_port();
        let p = port.to_string();
        let mut args = vec![
            "--bind",
            "127.0.0.1",
            "--port",
            &p,
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(&["--dir", dir.to_str().expect("utf-8 path")]);
        args.extend_from_slice(extra);
        RedisProc::start(port, &args)
    }

    /// Kill it (by PID) and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What `redis-cli -p PORT ARGS` prints.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when `redis-server` is installed; false (skip) when not, unless REGMIRROR_E2E=1.
pub fn have_redis() -> bool {
    if have_tool("redis-server") && have_tool("redis-cli") {
        return true;
    }
    assert!(
        !e2e_required(),
        "REGMIRROR_E2E=1 but redis-server is missing"
    );
    eprintln!("SKIPPED: redis-server not installed (scripts/test.sh installs it)");
    false
}

/// A master, its replica in sync, and a sentinel that knows both (master name `mymaster`).
pub struct SentinelSet {
    pub master: RedisProc,
    pub replica: RedisProc,
    pub sentinel: RedisProc,
}

impl SentinelSet {
    pub fn start(dir: &Path) -> SentinelSet {
        let master = RedisProc::server(&dir.join("master"), &[]);
        let mp = master.port.to_string();
        let replica = RedisProc::server(&dir.join("replica"), &["--replicaof", "127.0.0.1", &mp]);
        poll("the replica in sync", || {
            replica
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
        });
        let sp = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {sp}\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {mp} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 3000\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let sentinel = RedisProc::start(sp, &[conf.to_str().expect("utf-8 path"), "--sentinel"]);
        poll("the sentinel knows the replica", || {
            sentinel
                .cli(&["sentinel", "replicas", "mymaster"])
                .contains(&replica.port.to_string())
        });
        SentinelSet {
            master,
            replica,
            sentinel,
        }
    }

    /// The `redis_url` of this set.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.sentinel.port)
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let out = self
            .sentinel
            .cli(&["sentinel", "get-master-addr-by-name", "mymaster"]);
        out.lines().nth(1)?.trim().parse().ok()
    }
}

fn poll(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three Cluster nodes made one Cluster by `redis-cli --cluster create` (no replicas).
pub struct ClusterSet {
    pub nodes: Vec<RedisProc>,
}

impl ClusterSet {
    pub fn start(dir: &Path) -> ClusterSet {
        // Bus ports given: the default (data port + 10000) passes 65535 for ephemeral ports.
        let nodes: Vec<RedisProc> = (0..3)
            .map(|i| {
                let d = dir.join(format!("node-{i}"));
                let (bus, conf) = (free_port().to_string(), d.join("nodes.conf"));
                std::fs::create_dir_all(&d).expect("node dir");
                RedisProc::server(
                    &d,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        conf.to_str().expect("utf-8 path"),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for n in &nodes {
            poll("cluster_state:ok", || {
                n.cli(&["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        ClusterSet { nodes }
    }

    /// The `redis_url` of this Cluster: every node, comma-separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.cli(&["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

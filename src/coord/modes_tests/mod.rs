//! The coordination client against the other shapes of `redis_url`, each made of real Debian
//! `redis-server` processes started here on loopback ports and stopped by PID: Sentinel (a
//! master, a replica and a sentinel; the master killed and the replica promoted), TLS with a CA of
//! the test's own (`redis_ca_file`), and a three-node Cluster made with `redis-cli --cluster
//! create`. Skipped when `redis-server` is missing, unless REGMIRROR_E2E=1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::coord::{validate, CoordKeys};

/// A `redis-server` (or sentinel) this test started; killed by PID on drop.
struct Proc {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `n` distinct free loopback ports (held together while chosen, so none repeats).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("REGMIRROR_E2E").as_deref() != Ok("1"),
            "REGMIRROR_E2E=1 but redis-server is missing"
        );
        eprintln!("skipping: redis-server not installed (scripts/test.sh installs it)");
    }
    found
}

impl Proc {
    /// `redis-server ARGS`, ready when `port` accepts connections.
    fn start(port: u16, args: &[&str]) -> Proc {
        let mut child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Proc {
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

    /// A plain server on a new port, with `extra` arguments.
    fn server(extra: &[&str]) -> Proc {
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
        args.extend_from_slice(extra);
        Proc::start(port, &args)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One command on one server, outside the client under test (to look at what it did).
async fn direct<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    direct_tls(&format!("redis://127.0.0.1:{port}"), None, cmd).await
}

/// The same through `url`, trusting the CA in `ca` (PEM) for rediss://.
async fn direct_tls<T: redis::FromRedisValue>(
    url: &str,
    ca: Option<&Path>,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let client = match ca {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca).expect("CA file")),
            },
        )?,
        None => redis::Client::open(url)?,
    };
    let mut c = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut c).await
}

/// Poll `check` every 50 ms until true, for at most `limit`.
async fn wait_until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client_for(url: &str, ca: Option<&Path>, me: &str) -> Arc<Coord> {
    let settings = validate(CoordKeys {
        redis_url: Some(url),
        redis_ca_file: ca,
        lease_secs: 10,
        replica_url: Some(me),
    })
    .expect("valid redis_url")
    .expect("coordination on");
    Coord::new(settings).expect("client")
}

/// Leases, fencing, records and the shared secret, as two replicas see them.
async fn leases_and_records_work(a: &Arc<Coord>, b: &Arc<Coord>, name: &str) -> u64 {
    let Acquired::Mine(lease) = a
        .acquire(LeaseKind::Fill, name, "up", "repo")
        .await
        .unwrap()
    else {
        panic!("{name}: the first caller takes the lease");
    };
    match b
        .acquire(LeaseKind::Fill, name, "up", "repo")
        .await
        .unwrap()
    {
        Acquired::Held(o) => assert_eq!((o.owner.as_str(), o.token), ("http://a", lease.token())),
        Acquired::Mine(_) => panic!("{name}: two holders of one lease"),
    }
    a.put_record(
        &format!("tag:{name}"),
        b"{\"d\":1}",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        b.get_record(&format!("tag:{name}"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"{\"d\":1}"[..])
    );
    assert_eq!(
        a.peer_secret().await.unwrap(),
        b.peer_secret().await.unwrap()
    );
    let token = lease.token();
    assert!(lease.release().await, "{name}: the holder releases");
    let Acquired::Mine(next) = b
        .acquire(LeaseKind::Fill, name, "up", "repo")
        .await
        .unwrap()
    else {
        panic!("{name}: released, the next caller takes it");
    };
    assert!(next.token() > token, "fencing tokens grow");
    next.token()
}

/// The master and replica ports, and the sentinel, once it knows the replica.
async fn sentinel_setup(dir: &Path) -> (Proc, Proc, Proc) {
    // Replication writes RDB files: into the test's directory, not the working one.
    let (md, rd) = (dir.join("master"), dir.join("replica"));
    std::fs::create_dir_all(&md).unwrap();
    std::fs::create_dir_all(&rd).unwrap();
    let master = Proc::server(&["--dir", md.to_str().unwrap()]);
    let mp = master.port.to_string();
    let replica = Proc::server(&[
        "--replicaof",
        "127.0.0.1",
        &mp,
        "--dir",
        rd.to_str().unwrap(),
    ]);
    wait_until(Duration::from_secs(10), "replica in sync", async || {
        direct::<String>(replica.port, redis::cmd("INFO").arg("replication"))
            .await
            .is_ok_and(|i| i.contains("master_link_status:up"))
    })
    .await;
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
    .unwrap();
    let sentinel = Proc::start(sp, &[conf.to_str().unwrap(), "--sentinel"]);
    wait_until(
        Duration::from_secs(15),
        "sentinel sees the replica",
        async || {
            direct::<Vec<redis::Value>>(sp, redis::cmd("SENTINEL").arg("replicas").arg("mymaster"))
                .await
                .is_ok_and(|r| !r.is_empty())
        },
    )
    .await;
    (master, replica, sentinel)
}

/// A CA, and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`.
fn make_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "regmirror redis test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

mod sentinel;
mod tls;

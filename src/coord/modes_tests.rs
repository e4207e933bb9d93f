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
        let child = Command::new("redis-server")
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
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
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
    let replica = Proc::server(&["--replicaof", "127.0.0.1", &mp, "--dir", rd.to_str().unwrap()]);
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

#[tokio::test]
async fn sentinel_names_the_master_and_a_failover_is_followed_within_seconds() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut master, replica, sentinel) = sentinel_setup(dir.path()).await;
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let (a, b) = (
        client_for(&url, None, "http://a"),
        client_for(&url, None, "http://b"),
    );
    leases_and_records_work(&a, &b, "before").await;
    let status = a.status();
    assert!(status.down.is_none(), "{status:?}");
    assert!(status.target.contains("mymaster"), "{}", status.target);
    // The writes went to the master the sentinel named.
    let on_master: Option<String> =
        direct(master.port, redis::cmd("GET").arg("regmirror:tag:before"))
            .await
            .unwrap();
    assert!(on_master.is_some(), "the record is on the master");
    // Wait for the replica to have it, then kill the master.
    let _: i64 = a
        .query("wait", redis::cmd("WAIT").arg(1).arg(2000))
        .await
        .unwrap();
    master.kill();
    let killed = Instant::now();
    // The client fails over to the replica the sentinel promotes.
    let _held = loop {
        if let Ok(Acquired::Mine(l)) = a.acquire(LeaseKind::Fill, "after", "up", "repo").await {
            break l;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no lease 30 s after the master died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "sentinel failover followed {:?} after the master was killed",
        killed.elapsed()
    );
    let role: Vec<redis::Value> = direct(replica.port, &redis::cmd("ROLE")).await.unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );
    // The other replica follows too, and sees what was replicated before the failover.
    wait_until(
        Duration::from_secs(10),
        "the second client after the failover",
        async || {
            b.ping().await.is_ok()
                && matches!(
                    b.acquire(LeaseKind::Fill, "after", "up", "repo").await,
                    Ok(Acquired::Held(_))
                )
        },
    )
    .await;
    assert_eq!(
        b.get_record("tag:before").await.unwrap().as_deref(),
        Some(&b"{\"d\":1}"[..])
    );
    leases_and_records_work(&a, &b, "promoted").await;
    let on_new: Option<String> = direct(
        replica.port,
        redis::cmd("GET").arg("regmirror:tag:promoted"),
    )
    .await
    .unwrap();
    assert!(on_new.is_some(), "writes go to the promoted master");
    assert!(a.status().down.is_none() && b.status().down.is_none());
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

#[tokio::test]
async fn rediss_with_redis_ca_file_takes_leases_and_the_system_roots_alone_do_not() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca(dir.path());
    let port = free_port();
    let p = port.to_string();
    let _server = Proc::start(
        port,
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &p,
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{port}");
    let (a, b) = (
        client_for(&url, Some(&ca), "http://a"),
        client_for(&url, Some(&ca), "http://b"),
    );
    leases_and_records_work(&a, &b, "tls").await;
    assert!(a.status().down.is_none());
    // Without the CA the server's certificate is not trusted: nothing is coordinated.
    let untrusted = client_for(&url, None, "http://c");
    let e = untrusted.ping().await.unwrap_err().to_string();
    assert!(untrusted.status().down.is_some(), "{e}");
    assert!(
        untrusted
            .acquire(LeaseKind::Fill, "tls2", "up", "r")
            .await
            .is_err(),
        "no lease over an untrusted connection"
    );
}

#[tokio::test]
async fn a_three_node_cluster_spreads_leases_and_records_over_its_nodes() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            Proc::server(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().unwrap(),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                dir.path().to_str().unwrap(),
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .arg("--cluster-yes")
        .output()
        .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in &nodes {
        wait_until(Duration::from_secs(15), "cluster_state:ok", async || {
            direct::<String>(n.port, redis::cmd("CLUSTER").arg("INFO"))
                .await
                .is_ok_and(|i| i.contains("cluster_state:ok"))
        })
        .await;
    }
    let url = addrs
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let (a, b) = (
        client_for(&url, None, "http://a"),
        client_for(&url, None, "http://b"),
    );
    for i in 0..12 {
        leases_and_records_work(&a, &b, &format!("c{i}")).await;
    }
    assert!(a.status().down.is_none(), "{:?}", a.status());
    // The keys really are spread: every node holds some of them.
    for n in &nodes {
        let keys: i64 = direct(n.port, &redis::cmd("DBSIZE")).await.unwrap();
        assert!(keys > 0, "node {} holds none of the keys", n.port);
    }
}

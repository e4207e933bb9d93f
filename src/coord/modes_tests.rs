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

#[tokio::test]
async fn a_manual_sentinel_failover_with_the_old_master_alive_is_followed() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (master, replica, sentinel) = sentinel_setup(dir.path()).await;
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let a = client_for(&url, None, "http://a");
    a.ping().await.unwrap();
    // The operator's failover: the old master stays up and becomes a replica later. The sentinel
    // refuses it (NOGOODSLAVE) until it has read the replica's own INFO.
    wait_until(
        Duration::from_secs(20),
        "SENTINEL FAILOVER accepted",
        async || {
            direct::<String>(
                sentinel.port,
                redis::cmd("SENTINEL").arg("FAILOVER").arg("mymaster"),
            )
            .await
            .is_ok()
        },
    )
    .await;
    let started = Instant::now();
    // A ping (as the readiness loop sends every 5 s) asks the sentinel who the master is: the
    // client moves to the promoted replica without waiting for the old master's demotion.
    let lease_key = redis::cmd("GET").arg("regmirror:lease:fill:manual").clone();
    let mut on_old = 0;
    let _held = loop {
        let _ = a.ping().await;
        if let Ok(Acquired::Mine(l)) = a.acquire(LeaseKind::Fill, "manual", "up", "r").await {
            // On the promoted replica and not on the old master: written to the new one (once
            // promoted, the replica no longer receives the old master's writes).
            let new: Option<String> = direct(replica.port, &lease_key).await.unwrap_or(None);
            let old: Option<String> = direct(master.port, &lease_key).await.unwrap_or(None);
            if new.is_some() && old.is_none() {
                break l;
            }
            on_old += 1;
            assert!(l.release().await);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lease on the new master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved = started.elapsed();
    let demoted = direct::<Vec<redis::Value>>(master.port, &redis::cmd("ROLE"))
        .await
        .is_ok_and(|r| r.first() == Some(&redis::Value::BulkString(b"slave".to_vec())));
    eprintln!(
        "manual failover: the client's lease on the promoted master {moved:?} after SENTINEL FAILOVER (old master demoted by then: {demoted}; {on_old} lease(s) taken on the old master before)"
    );
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
    cluster_works(false).await;
}

#[tokio::test]
async fn a_tls_cluster_with_redis_ca_file_spreads_leases_and_records_over_its_nodes() {
    cluster_works(true).await;
}

/// Three Cluster nodes (TLS only with the test's CA when `tls`), made one Cluster with
/// `redis-cli --cluster create`; leases and records through the comma-separated `redis_url`.
async fn cluster_works(tls: bool) {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca(dir.path());
    // Data and bus ports (the bus is the data port + 10000 unless given: past 65535 here).
    let ports = free_ports(6);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            let port = ports[i];
            let (p, bus) = (port.to_string(), ports[3 + i].to_string());
            let mut args = vec![
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                conf.to_str().unwrap(),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                dir.path().to_str().unwrap(),
            ];
            if tls {
                args.extend([
                    "--port",
                    "0",
                    "--tls-port",
                    &p,
                    "--tls-cluster",
                    "yes",
                    "--tls-cert-file",
                    cert.to_str().unwrap(),
                    "--tls-key-file",
                    key.to_str().unwrap(),
                    "--tls-ca-cert-file",
                    ca.to_str().unwrap(),
                    "--tls-auth-clients",
                    "no",
                ]);
            } else {
                args.extend(["--port", &p]);
            }
            Proc::start(port, &args)
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = Command::new("redis-cli");
    if tls {
        create.arg("--tls").arg("--cacert").arg(&ca);
    }
    let out = create
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .arg("--cluster-yes")
        .output()
        .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
    assert!(
        out.status.success(),
        "cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let scheme = if tls { "rediss" } else { "redis" };
    let ca_file = tls.then_some(ca.as_path());
    let node_urls: Vec<String> = addrs.iter().map(|a| format!("{scheme}://{a}")).collect();
    for n in &node_urls {
        wait_until(Duration::from_secs(15), "cluster_state:ok", async || {
            direct_tls::<String>(n, ca_file, redis::cmd("CLUSTER").arg("INFO"))
                .await
                .is_ok_and(|i| i.contains("cluster_state:ok"))
        })
        .await;
    }
    let url = node_urls.join(",");
    let (a, b) = (
        client_for(&url, ca_file, "http://a"),
        client_for(&url, ca_file, "http://b"),
    );
    for i in 0..12 {
        leases_and_records_work(&a, &b, &format!("c{i}")).await;
    }
    assert!(a.status().down.is_none(), "{:?}", a.status());
    // The keys really are spread: every node holds some of them.
    for n in &node_urls {
        let keys: i64 = direct_tls(n, ca_file, &redis::cmd("DBSIZE")).await.unwrap();
        assert!(keys > 0, "node {n} holds none of the keys");
    }
}

#[tokio::test]
async fn rediss_sentinel_with_a_password_on_the_master_takes_leases_over_tls() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca(dir.path());
    let (ca_s, cert_s, key_s) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let tls_server = |port: &str, sub: &str, extra: &[&str]| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let mut args = vec![
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            port,
            "--tls-cert-file",
            cert_s,
            "--tls-key-file",
            key_s,
            "--tls-ca-cert-file",
            ca_s,
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
            "--requirepass",
            "s3cret",
            "--masterauth",
            "s3cret",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            d.to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start(port.parse().unwrap(), &args)
    };
    let mp = free_port().to_string();
    let master = tls_server(&mp, "master", &[]);
    let rp = free_port().to_string();
    let replica = tls_server(&rp, "replica", &["--replicaof", "127.0.0.1", &mp]);
    let replica_url = format!("rediss://:s3cret@127.0.0.1:{rp}");
    wait_until(
        Duration::from_secs(10),
        "replica in sync over TLS",
        async || {
            direct_tls::<String>(
                &replica_url,
                Some(&ca),
                redis::cmd("INFO").arg("replication"),
            )
            .await
            .is_ok_and(|i| i.contains("master_link_status:up"))
        },
    )
    .await;
    let sp = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "bind 127.0.0.1\nport 0\ntls-port {sp}\ndir {}\n\
             tls-cert-file {cert_s}\ntls-key-file {key_s}\ntls-ca-cert-file {ca_s}\n\
             tls-auth-clients no\ntls-replication yes\n\
             sentinel monitor mymaster 127.0.0.1 {mp} 1\n\
             sentinel auth-pass mymaster s3cret\n\
             sentinel down-after-milliseconds mymaster 1000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let sentinel = Proc::start(sp, &[conf.to_str().unwrap(), "--sentinel"]);
    let sentinel_url = format!("rediss://127.0.0.1:{sp}");
    wait_until(
        Duration::from_secs(15),
        "the TLS sentinel names the master",
        async || {
            direct_tls::<Vec<String>>(
                &sentinel_url,
                Some(&ca),
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("mymaster"),
            )
            .await
            .is_ok_and(|a| a.get(1) == Some(&mp))
        },
    )
    .await;
    let url = format!(
        "rediss+sentinel://:s3cret@127.0.0.1:{}/mymaster",
        sentinel.port
    );
    let (a, b) = (
        client_for(&url, Some(&ca), "http://a"),
        client_for(&url, Some(&ca), "http://b"),
    );
    leases_and_records_work(&a, &b, "tls-sentinel").await;
    let on_master: Option<String> = direct_tls(
        &format!("rediss://:s3cret@127.0.0.1:{mp}"),
        Some(&ca),
        redis::cmd("GET").arg("regmirror:tag:tls-sentinel"),
    )
    .await
    .unwrap();
    assert!(on_master.is_some(), "written to the master over TLS");
    // The wrong password on the master: the sentinel names it, the master refuses.
    let wrong = client_for(
        &format!(
            "rediss+sentinel://:nope@127.0.0.1:{}/mymaster",
            sentinel.port
        ),
        Some(&ca),
        "http://c",
    );
    assert!(wrong.ping().await.is_err());
    drop((master, replica));
}

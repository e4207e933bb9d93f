//! TLS with the test's own CA (`redis_ca_file`), and three-node Clusters, plain and TLS.

use super::*;

#[tokio::test]
async fn rediss_with_redis_ca_file_takes_leases_and_the_system_roots_alone_do_not() {
    if !have_redis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca(dir.path());
    let port = free_port();
    let p = port.to_string();
    let mut args = vec!["--bind", "127.0.0.1", "--port", "0", "--tls-port", &p];
    args.extend(tls_files(&ca, &cert, &key));
    args.extend(["--save", "", "--appendonly", "no"]);
    let _server = Proc::start(port, &args);
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
                args.extend(["--port", "0", "--tls-port", &p, "--tls-cluster", "yes"]);
                args.extend(tls_files(&ca, &cert, &key));
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

/// redis-server's TLS arguments: its certificate and key, the CA, no client certificates.
fn tls_files<'a>(ca: &'a Path, cert: &'a Path, key: &'a Path) -> [&'a str; 8] {
    [
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]
}

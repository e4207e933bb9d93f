//! Sentinel: a master, a replica and a sentinel; the master killed, or failed over by hand;
//! TLS to the sentinels and a password on the master.

use super::*;

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

//! Leases against a real `redis-server` (Debian's), started here on a loopback port. Skipped
//! when the binary is missing, unless REGMIRROR_E2E=1.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A `redis-server` this test started (killed by PID on drop).
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) port: u16,
}

impl RedisServer {
    /// Start one, or None when `redis-server` is not installed (and REGMIRROR_E2E is not set).
    pub(crate) fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        RedisServer::start_on(port)
    }

    pub(crate) fn start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(_) if std::env::var("REGMIRROR_E2E").as_deref() != Ok("1") => {
                eprintln!("skipping: redis-server not installed");
                return None;
            }
            Err(e) => panic!("redis-server: {e}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(RedisServer { child, port });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {port}");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coord(url: &str, lease_secs: u64, me: &str) -> Arc<Coord> {
    Coord::new(CoordSettings {
        nodes: vec![url.to_string()],
        sentinel: None,
        ca_file: None,
        lease_secs,
        replica_url: Some(me.to_string()),
    })
    .unwrap()
}

#[tokio::test]
async fn one_holder_fencing_tokens_grow_and_only_the_holder_releases() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (
        coord(&redis.url(), 30, "http://a"),
        coord(&redis.url(), 30, "http://b"),
    );
    let Acquired::Mine(lease) = a
        .acquire(LeaseKind::Fill, "d1", "up", "repo")
        .await
        .unwrap()
    else {
        panic!("the first caller takes the lease");
    };
    let first = lease.token();
    match b
        .acquire(LeaseKind::Fill, "d1", "up", "other")
        .await
        .unwrap()
    {
        Acquired::Held(o) => {
            assert_eq!(o.owner, "http://a");
            assert_eq!(o.token, first);
            assert_eq!((o.upstream.as_str(), o.repo.as_str()), ("up", "repo"));
        }
        Acquired::Mine(_) => panic!("two holders of one lease"),
    }
    // Another name is another lease.
    assert!(matches!(
        b.acquire(LeaseKind::Tag, "d1", "up", "repo").await.unwrap(),
        Acquired::Mine(_)
    ));
    assert!(
        lease.release().await,
        "the holder's release deletes the key"
    );
    let Acquired::Mine(second) = b.acquire(LeaseKind::Fill, "d1", "up", "r").await.unwrap() else {
        panic!("released: the next caller takes it");
    };
    assert!(second.token() > first, "fencing tokens only grow");
    assert_eq!(
        a.holder(LeaseKind::Fill, "d1")
            .await
            .unwrap()
            .map(|o| o.owner),
        Some("http://b".to_string())
    );
}

#[tokio::test]
async fn a_dead_holder_loses_the_lease_within_lease_secs_and_cannot_release_the_next_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (
        coord(&redis.url(), 2, "http://a"),
        coord(&redis.url(), 2, "http://b"),
    );
    let Acquired::Mine(dead) = a.acquire(LeaseKind::Fill, "d2", "up", "r").await.unwrap() else {
        panic!("owner");
    };
    // A live holder keeps it past its length: renewal works.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(matches!(
        b.acquire(LeaseKind::Fill, "d2", "up", "r").await.unwrap(),
        Acquired::Held(_)
    ));
    // The holder "dies": its renewal stops, but it never released.
    dead.stop_renewing();
    let started = std::time::Instant::now();
    let taken = loop {
        match b.acquire(LeaseKind::Fill, "d2", "up", "r").await.unwrap() {
            Acquired::Mine(l) => break l,
            Acquired::Held(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "expired within lease_secs: {:?}",
        started.elapsed()
    );
    assert!(taken.token() > dead.token());
    // The old holder comes back and releases: compare-and-delete leaves the new lease alone.
    assert!(!dead.release().await);
    match a.acquire(LeaseKind::Fill, "d2", "up", "r").await.unwrap() {
        Acquired::Held(o) => assert_eq!(o.token, taken.token()),
        Acquired::Mine(_) => panic!("a stale release deleted the new holder's lease"),
    }
    // Nor can it renew: its renewal would find another value.
    drop(taken);
}

#[tokio::test]
async fn redis_down_fails_fast_and_comes_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port;
    let c = coord(&redis.url(), 30, "http://a");
    c.ping().await.unwrap();
    assert!(c.is_up());
    drop(redis);
    let started = std::time::Instant::now();
    assert!(c.acquire(LeaseKind::Fill, "d3", "u", "r").await.is_err());
    assert!(
        started.elapsed() < COMMAND_TIMEOUT * 3,
        "{:?}",
        started.elapsed()
    );
    assert!(!c.is_up());
    assert!(c.status().down.is_some());
    let _again = RedisServer::start_on(port).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if c.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "reconnects once Redis is back");
    assert!(c.status().down.is_none());
    assert!(matches!(
        c.acquire(LeaseKind::Fill, "d3", "u", "r").await.unwrap(),
        Acquired::Mine(_)
    ));
}

#[tokio::test]
async fn records_and_the_peer_secret_are_shared() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (
        coord(&redis.url(), 30, "http://a"),
        coord(&redis.url(), 30, "http://b"),
    );
    assert_eq!(
        a.peer_secret().await.unwrap(),
        b.peer_secret().await.unwrap()
    );
    assert_eq!(a.get_record("x").await.unwrap(), None);
    a.put_record("x", b"{}", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        b.get_record("x").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.get_record("x").await.unwrap(), None, "records expire");
}

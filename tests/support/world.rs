//! The standard end-to-end world: two seeded upstreams and a regmirror in front of both.
//!
//! - `hub`: distribution behind htpasswd Basic auth, configured in regmirror as a `docker.io`
//!   override (so the default upstream and `library/` normalisation are real), seeded with
//!   `library/busybox` (index `v1`.., list `list`) and `library/hello` (`oci`, `docker`).
//! - `tok`: distribution behind token auth, configured under its `127.0.0.1:PORT` name with alias
//!   `tok`, host `127.0.0.2` and a dedicated listener, seeded with `team/multi` and `team/single`.
//!
//! Both upstreams require credentials, which only regmirror's config carries.

use super::env::{free_port, ChildGuard};
use super::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use super::registry::Registry;
use super::seed::{seed, Seeded};

pub const HUB_USER: (&str, &str) = ("hub-user", "hub-pass-1");
pub const TOK_USER: (&str, &str) = ("tok-user", "tok-pass-2");
pub const TOK_ALIAS: &str = "tok";
pub const TOK_HOST: &str = "127.0.0.2";

pub struct World {
    pub hub: Registry,
    pub hub_seed: Seeded,
    pub tok: Registry,
    pub tok_seed: Seeded,
    pub mirror: Regmirror,
    /// Scratch space for client output.
    pub work: tempfile::TempDir,
}

impl World {
    pub async fn start() -> World {
        World::start_with(|_| {}).await
    }

    /// Start, letting the caller adjust the mirror config before regmirror starts.
    pub async fn start_with(adjust: impl FnOnce(&mut MirrorConfig)) -> World {
        let (hub, tok) = tokio::join!(
            Registry::basic(HUB_USER.0, HUB_USER.1),
            Registry::token(TOK_USER.0, TOK_USER.1)
        );
        let (hub_seed, tok_seed) = tokio::join!(
            seed(&hub, "library/busybox", "library/hello", "hub-upstream"),
            seed(&tok, "team/multi", "team/single", "tok-upstream"),
        );
        let mut config = MirrorConfig::new(vec![
            UpstreamEntry::new("docker.io", &hub.url()).credentials(hub.credentials.clone()),
            UpstreamEntry::new(&tok.host(), &tok.url())
                .credentials(tok.credentials.clone())
                .alias(TOK_ALIAS)
                .host(TOK_HOST)
                .dedicated_listener(),
        ]);
        adjust(&mut config);
        let mirror = Regmirror::start(config).await;
        World {
            hub,
            hub_seed,
            tok,
            tok_seed,
            mirror,
            work: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The token upstream's name in regmirror (`127.0.0.1:PORT`).
    pub fn tok_name(&self) -> String {
        self.tok.host()
    }

    /// A client for the mirror's shared listener (no credentials: the mirror has none).
    pub fn mirror_client(&self) -> super::client::RegistryClient {
        super::client::RegistryClient::new(&self.mirror.url, None)
    }
}

/// `socat` forwarding `bind_ip:PORT` to `target` (`127.0.0.1:PORT`): reaches a loopback-only
/// listener through another loopback address, so the client's `Host` header names that address.
pub struct Forwarder {
    _guard: ChildGuard,
    pub addr: String,
}

impl Forwarder {
    pub async fn start(bind_ip: &str, target: &str) -> Forwarder {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let child = std::process::Command::new("socat")
                .arg(format!("TCP-LISTEN:{port},bind={bind_ip},reuseaddr,fork"))
                .arg(format!("TCP:{target}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn socat");
            let mut guard = ChildGuard::new(child, format!("socat {bind_ip}:{port} -> {target}"));
            let addr = format!("{bind_ip}:{port}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Some(status) = guard.exited() {
                    last = format!("socat exited with {status}");
                    break;
                }
                if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                    return Forwarder {
                        _guard: guard,
                        addr,
                    };
                }
                if std::time::Instant::now() > deadline {
                    last = format!("socat not accepting on {addr}");
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        panic!("cannot start socat forwarder: {last}");
    }
}

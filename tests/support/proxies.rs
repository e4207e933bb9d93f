//! The outbound proxies users run in front of their upstreams: Debian's tinyproxy 1.11 and squid 5
//! (HTTP forward proxies; an https upstream is reached through `CONNECT`) and microsocks (SOCKS5).
//! Each runs in the foreground on 127.0.0.1 with its config and log in its own temp dir, and is
//! killed by its PID on drop.
//!
//! What passed through a proxy is read from the proxy's own log ([`Proxy::passed`]):
//! - tinyproxy (`LogLevel Info`): `CONNECT ... Request (file descriptor 5): GET http://H:P/v2/...
//!   HTTP/1.1`, written when the request arrives;
//! - squid (`access_log`, native format): `TIME ELAPSED CLIENT TCP_MISS/200 BYTES GET URL ...`,
//!   written when the transaction ends, for a `CONNECT` tunnel when the tunnel closes;
//! - microsocks (stderr): `client[4] 127.0.0.1: connected to H:P`, when it opens the connection.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::env::{free_port, ChildGuard};

/// Which proxy program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tinyproxy,
    Squid,
    Microsocks,
}

/// One request or connection a proxy logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// The HTTP method; `CONNECT` for a tunnel and for a SOCKS connection.
    pub method: String,
    /// The absolute URL of a forwarded request, or `HOST:PORT` of a tunnel or SOCKS connection.
    pub target: String,
}

/// A running proxy.
pub struct Proxy {
    /// Declared first: killed before `dir` is removed.
    guard: ChildGuard,
    pub kind: Kind,
    pub port: u16,
    /// Holds the config and the logs.
    pub dir: tempfile::TempDir,
    /// The log [`Proxy::passed`] reads.
    pub log: PathBuf,
}

/// How long a proxy may take to listen (squid needs a few seconds on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Proxy {
    /// tinyproxy allowing 127.0.0.1, `CONNECT` only to `connect_ports`.
    pub async fn tinyproxy(connect_ports: &[u16]) -> Proxy {
        Proxy::start(Kind::Tinyproxy, |dir, port| {
            let log = dir.join("tinyproxy.log");
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nMaxClients 100\n\
                 LogFile \"{}\"\nLogLevel Info\n",
                log.display()
            );
            for p in connect_ports {
                conf.push_str(&format!("ConnectPort {p}\n"));
            }
            let path = dir.join("tinyproxy.conf");
            std::fs::write(&path, conf).expect("write tinyproxy.conf");
            let mut cmd = Command::new("tinyproxy");
            cmd.arg("-d").arg("-c").arg(&path);
            (cmd, log)
        })
        .await
    }

    /// squid allowing 127.0.0.1, `CONNECT` only to `connect_ports`, caching nothing.
    pub async fn squid(connect_ports: &[u16]) -> Proxy {
        Proxy::start(Kind::Squid, |dir, port| {
            let log = dir.join("access.log");
            let d = dir.display();
            let connect = if connect_ports.is_empty() {
                "http_access deny CONNECT\n".to_string()
            } else {
                let ports: Vec<String> = connect_ports.iter().map(u16::to_string).collect();
                format!(
                    "acl test_ports port {}\nhttp_access deny CONNECT !test_ports\n",
                    ports.join(" ")
                )
            };
            // `localhost` is one of squid's predefined ACLs: name ours differently.
            let conf = format!(
                "http_port 127.0.0.1:{port}\nacl loopback src 127.0.0.1/32\nacl CONNECT method CONNECT\n\
                 {connect}http_access allow loopback\nhttp_access deny all\ncache deny all\n\
                 cache_mem 8 MB\npinger_enable off\nshutdown_lifetime 0 seconds\n\
                 pid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{}\n\
                 coredump_dir {d}\n",
                log.display()
            );
            let path = dir.join("squid.conf");
            std::fs::write(&path, conf).expect("write squid.conf");
            let mut cmd = Command::new("squid");
            cmd.arg("-N").arg("-f").arg(&path);
            (cmd, log)
        })
        .await
    }

    /// microsocks, no authentication.
    pub async fn microsocks() -> Proxy {
        Proxy::start(Kind::Microsocks, |dir, port| {
            let mut cmd = Command::new("microsocks");
            cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
            // microsocks logs each connection to stderr, which start() captures here.
            (cmd, dir.join("stderr.log"))
        })
        .await
    }

    /// Write the config for a free port with `prepare`, spawn, and wait until the port accepts
    /// connections; another port if the proxy exits first (the one picked was taken meanwhile).
    async fn start(kind: Kind, prepare: impl Fn(&Path, u16) -> (Command, PathBuf)) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        if kind == Kind::Squid {
            // squid started as root runs as the `proxy` user, which must write its logs here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod squid dir");
        }
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let (mut cmd, log) = prepare(dir.path(), port);
            let child = cmd
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log"))
                .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {kind:?}: {e}"));
            let mut guard = ChildGuard::new(child, format!("{kind:?} on port {port}"));
            match wait_listening(port, &mut guard).await {
                Ok(()) => {
                    return Proxy {
                        guard,
                        kind,
                        port,
                        dir,
                        log,
                    }
                }
                Err(e) => last_err = format!("{e}\n{}", read_logs(dir.path())),
            }
        }
        panic!("{kind:?} did not start: {last_err}");
    }

    /// `http://127.0.0.1:PORT` (tinyproxy, squid) or `socks5://127.0.0.1:PORT` (microsocks).
    pub fn url(&self) -> String {
        let scheme = match self.kind {
            Kind::Tinyproxy | Kind::Squid => "http",
            Kind::Microsocks => "socks5",
        };
        format!("{scheme}://{}", self.addr())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Every request and connection the proxy's log shows so far.
    pub fn passed(&self) -> Vec<Passed> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| parse_line(self.kind, l))
            .collect()
    }

    /// Whether the log shows `method target`.
    pub fn has_passed(&self, method: &str, target: &str) -> bool {
        self.passed()
            .iter()
            .any(|p| p.method == method && p.target == target)
    }
}

impl Drop for Proxy {
    /// On a failing test, show the end of the proxy's logs.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {:?} on port {} ---\n{}",
                self.kind,
                self.port,
                read_logs(self.dir.path())
            );
        }
    }
}

/// The last lines of every log in `dir`.
fn read_logs(dir: &Path) -> String {
    let mut out = String::new();
    for name in [
        "tinyproxy.log",
        "access.log",
        "cache.log",
        "stdout.log",
        "stderr.log",
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            out.push_str(&format!("[{name}]\n{}\n", super::mirror::tail(&text, 25)));
        }
    }
    out
}

/// One log line as a [`Passed`], if it records a request or connection.
fn parse_line(kind: Kind, line: &str) -> Option<Passed> {
    let (method, target) = match kind {
        Kind::Tinyproxy => {
            let rest = line.split_once("]: Request (file descriptor ")?.1;
            let mut words = rest.split_once("): ")?.1.split_whitespace();
            (words.next()?, words.next()?)
        }
        Kind::Squid => {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (*fields.get(5)?, *fields.get(6)?)
        }
        Kind::Microsocks => ("CONNECT", line.split_once(": connected to ")?.1.trim()),
    };
    Some(Passed {
        method: method.to_string(),
        target: target.to_string(),
    })
}

/// Poll until 127.0.0.1:`port` accepts a connection, or the process exits, or [`START_TIMEOUT`].
async fn wait_listening(port: u16, guard: &mut ChildGuard) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = guard.exited() {
            return Err(format!("{} exited early with {status}", guard.what));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not listening after {START_TIMEOUT:?}",
                guard.what
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

//! An upstream registry: Debian's `docker-registry` (distribution 2.8.2) on 127.0.0.1, with its own
//! storage dir, optionally behind htpasswd Basic auth or token auth.
//!
//! distribution writes its access log (one combined-log line per request) to stdout and its
//! application log to stderr; both are captured to files in the registry's temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::env::{free_port, probe_client, wait_http_ready_with, ChildGuard};
use super::tls::Certs;
use super::token::TokenServer;

/// How the registry authenticates clients.
pub enum RegistryAuth {
    None,
    /// htpasswd Basic auth (bcrypt) with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Token auth backed by an in-process [`TokenServer`] accepting one user.
    Token {
        user: String,
        password: String,
    },
}

/// A running registry; killed on drop.
pub struct Registry {
    guard: ChildGuard,
    pub port: u16,
    /// `http`, or `https` for a [`Registry::tls_twin`].
    pub scheme: &'static str,
    pub dir: tempfile::TempDir,
    pub access_log: PathBuf,
    pub app_log: PathBuf,
    pub token_server: Option<TokenServer>,
    pub credentials: Option<(String, String)>,
}

impl Registry {
    pub async fn plain() -> Registry {
        Registry::start(RegistryAuth::None).await
    }

    pub async fn basic(user: &str, password: &str) -> Registry {
        Registry::start(RegistryAuth::Basic {
            user: user.into(),
            password: password.into(),
        })
        .await
    }

    pub async fn token(user: &str, password: &str) -> Registry {
        Registry::start(RegistryAuth::Token {
            user: user.into(),
            password: password.into(),
        })
        .await
    }

    /// Start with a free port.
    pub async fn start(auth: RegistryAuth) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth_yaml, token_server, credentials) = match &auth {
            RegistryAuth::None => (String::new(), None, None),
            RegistryAuth::Basic { user, password } => {
                let file = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .arg("-Bbc")
                    .arg(&file)
                    .args([user, password])
                    .output()
                    .expect("run htpasswd");
                assert!(
                    out.status.success(),
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let yaml = format!(
                    "auth:\n  htpasswd:\n    realm: regmirror-test\n    path: {}\n",
                    file.display()
                );
                (yaml, None, Some((user.clone(), password.clone())))
            }
            RegistryAuth::Token { user, password } => {
                let ts = TokenServer::start(user, password);
                let yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    ts.realm(),
                    ts.service,
                    ts.issuer,
                    ts.write_cert(dir.path()).display()
                );
                (yaml, Some(ts), Some((user.clone(), password.clone())))
            }
        };
        let storage = dir.path().join("storage");
        let (guard, port, access_log, app_log) =
            launch(dir.path(), &storage, &auth_yaml, None).await;
        Registry {
            guard,
            port,
            scheme: "http",
            dir,
            access_log,
            app_log,
            token_server,
            credentials,
        }
    }

    /// A second registry serving this one's storage over https with `certs` (no auth), with its
    /// own config and logs. Serving a stopped registry's storage works too.
    pub async fn tls_twin(&self, certs: &Certs) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = self.dir.path().join("storage");
        let (guard, port, access_log, app_log) =
            launch(dir.path(), &storage, "", Some(certs)).await;
        Registry {
            guard,
            port,
            scheme: "https",
            dir,
            access_log,
            app_log,
            token_server: None,
            credentials: None,
        }
    }

    /// Kill the registry now (by PID) and wait until its port refuses connections, so later
    /// requests provably cannot reach it.
    pub async fn stop(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "registry port {} still open after kill",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `127.0.0.1:PORT`: the registry's name as clients and regmirror's config write it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://...` for a [`Registry::tls_twin`].
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The access log lines so far.
    pub fn access_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many `METHOD PATH` requests the registry has logged (any status; query strings must be
    /// part of `path` to match, e.g. count `GET /v2/team/app/blobs/sha256:...`).
    pub fn count_requests(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP/");
        self.access_lines()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// How many blob GETs of `digest` in `repo` reached the registry.
    pub fn count_blob_gets(&self, repo: &str, digest: &str) -> usize {
        self.count_requests("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }

    /// How many blob GETs of `digest` reached the registry, in any repository.
    pub fn count_blob_gets_any(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} HTTP/");
        self.access_lines()
            .iter()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&needle))
            .count()
    }

    /// Requests (any method) whose path starts with `prefix`, e.g. "/v2/team/multi/manifests/".
    pub fn count_prefix(&self, method: &str, prefix: &str) -> usize {
        let needle = format!("\"{method} {prefix}");
        self.access_lines()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

/// Spawn `docker-registry serve` with its config and logs in `dir`, `storage` as its root,
/// `auth_yaml` (a top-level `auth:` block, or empty) and, with `tls`, https. Retries with another
/// port if the one picked was taken meanwhile; returns the process, its port and its logs.
async fn launch(
    dir: &Path,
    storage: &Path,
    auth_yaml: &str,
    tls: Option<&Certs>,
) -> (ChildGuard, u16, PathBuf, PathBuf) {
    let tls_yaml = tls.map_or(String::new(), |c| {
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            c.cert.display(),
            c.key.display()
        )
    });
    let (scheme, probe) = match tls {
        Some(c) => ("https", c.client()),
        None => ("http", probe_client()),
    };
    let mut last_err = String::new();
    for _attempt in 0..5 {
        let port = free_port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: regmirror-e2e-fixed-secret\n{tls_yaml}{auth_yaml}",
                storage.display()
            ),
        )
        .expect("write registry config");
        let access_log = dir.join("access.log");
        let app_log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&access_log).expect("access log"))
            .stderr(std::fs::File::create(&app_log).expect("app log"))
            .spawn()
            .expect("spawn docker-registry");
        let mut guard = ChildGuard::new(child, format!("docker-registry on port {port}"));
        let url = format!("{scheme}://127.0.0.1:{port}/v2/");
        let ready = Duration::from_secs(20);
        match wait_http_ready_with(&probe, &url, &[200, 401], &mut guard, ready).await {
            Ok(()) => return (guard, port, access_log, app_log),
            Err(e) => {
                last_err = format!(
                    "{e}\n{}",
                    std::fs::read_to_string(&app_log).unwrap_or_default()
                );
            }
        }
    }
    panic!("docker-registry did not start: {last_err}");
}

impl Drop for Registry {
    /// On a failing test, show the end of the registry's logs.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
            eprintln!(
                "--- docker-registry 127.0.0.1:{} access log (last 20) ---\n{}\n--- app log (last 10) ---\n{}",
                self.port,
                super::mirror::tail(&read(&self.access_log), 20),
                super::mirror::tail(&read(&self.app_log), 10)
            );
        }
    }
}

//! The test environment: which tools must exist, free ports, child processes that die with the test.
//!
//! Under `scripts/test.sh` (`REGMIRROR_E2E=1`) a missing tool fails the test; otherwise the test
//! prints why it is skipped and returns.

use std::net::TcpListener;
use std::path::Path;
use std::process::Child;

/// Tools every end-to-end test of this harness needs.
pub const CORE_TOOLS: &[&str] = &["docker-registry", "skopeo", "htpasswd", "openssl", "socat"];

/// True when the end-to-end tests must run (set by scripts/test.sh).
pub fn e2e_required() -> bool {
    matches!(
        std::env::var("REGMIRROR_E2E").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Whether `tool` is an executable on PATH.
pub fn have_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Returns false (after printing why) when a tool is missing and the e2e run is optional;
/// panics when it is missing and `REGMIRROR_E2E=1`.
pub fn tools_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have_tool(t)).collect();
    let busybox_missing = !Path::new(super::image::BUSYBOX).exists();
    if missing.is_empty() && !busybox_missing {
        return true;
    }
    let mut what = missing.join(", ");
    if busybox_missing {
        what.push_str(if what.is_empty() { "" } else { ", " });
        what.push_str(super::image::BUSYBOX);
    }
    if e2e_required() {
        panic!("REGMIRROR_E2E=1 but required tools are missing: {what} (run scripts/test.sh as root to install them)");
    }
    eprintln!("SKIPPED: missing {what}; run scripts/test.sh (sets REGMIRROR_E2E=1) to install and run end-to-end tests");
    false
}

/// Skip (or fail under REGMIRROR_E2E=1) the calling test unless the core tools are installed.
#[macro_export]
macro_rules! require_tools {
    () => {
        $crate::require_tools!($crate::support::env::CORE_TOOLS)
    };
    ($tools:expr) => {
        if !$crate::support::env::tools_available($tools) {
            return;
        }
    };
}

/// A port that was free a moment ago on 127.0.0.1 (for servers that cannot be handed a listener).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A child process killed (by its own PID) and reaped when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> ChildGuard {
        ChildGuard {
            child,
            what: what.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the process has already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Poll `url` until it answers with one of `ok_statuses`, the process dies, or `timeout` passes.
/// Returns the last problem seen on failure.
pub async fn wait_http_ready(
    url: &str,
    ok_statuses: &[u16],
    guard: &mut ChildGuard,
    timeout: std::time::Duration,
) -> Result<(), String> {
    wait_http_ready_with(&probe_client(), url, ok_statuses, guard, timeout).await
}

/// A client for readiness probes: no proxy, each attempt given 500 ms.
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .expect("probe client")
}

/// [`wait_http_ready`] with `client` (e.g. one trusting a test CA).
pub async fn wait_http_ready_with(
    client: &reqwest::Client,
    url: &str,
    ok_statuses: &[u16],
    guard: &mut ChildGuard,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last;
    loop {
        if let Some(status) = guard.exited() {
            return Err(format!("{} exited early with {status}", guard.what));
        }
        match client.get(url).send().await {
            Ok(r) if ok_statuses.contains(&r.status().as_u16()) => return Ok(()),
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{} not ready at {url} after {timeout:?}: {last}",
                guard.what
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Every relative path under `root` except those starting with one of `skip` (for "nothing was
/// written outside the data dir" checks).
pub fn snapshot_tree(
    root: &Path,
    skip: &[&Path],
) -> std::collections::BTreeSet<std::path::PathBuf> {
    fn walk(
        dir: &Path,
        root: &Path,
        skip: &[&Path],
        out: &mut std::collections::BTreeSet<std::path::PathBuf>,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            out.insert(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, root, skip, out);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(root, root, skip, &mut out);
    out
}

/// Every regular file under `root` (recursively).
pub fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// sha256 of `bytes` as `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

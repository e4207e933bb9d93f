//! The real `regmirror` binary: `regmirror serve` on a generated config, killed on drop and
//! restartable on the same data directory, and one-shot `regmirror <args>` commands
//! (`client-config`, `cache`).
//!
//! The binary prints one stdout line per listener (`regmirror: listening on http://ADDR (all
//! upstreams)` / `(upstream NAME)`), copied to `stdout.log`; logs go to stderr, captured to
//! `regmirror.log` (both appended to across restarts). With `log_format = "json"` each HTTP
//! request is one JSON line with `fields.message == "request"`. Every run clears the environment
//! variables regmirror reads configuration from, so the config file alone decides.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::env::{wait_http_ready_with, ChildGuard};

/// The environment variables regmirror takes configuration from (`src/cli`, `src/config.rs`).
const CONFIG_ENV: &[&str] = &[
    "REGMIRROR_CONFIG",
    "REGMIRROR_LISTEN",
    "REGMIRROR_DATA_DIR",
    "REGMIRROR_DEFAULT_UPSTREAM",
    "REGMIRROR_LOG_FORMAT",
    "REGMIRROR_ALLOW_ANY_UPSTREAM",
];

/// How long a start may take to print its listener lines, and then to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `regmirror ARGS...` with stdin closed and the configuration environment cleared.
fn command<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regmirror"));
    cmd.args(args).stdin(Stdio::null());
    for var in CONFIG_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Run the one-shot command `regmirror ARGS...` to completion, stdout and stderr captured.
pub fn run<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let mut cmd = command(args);
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// `path` opened for appending, created if missing.
fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// One `[[upstream]]` table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Dedicated listener address (use "127.0.0.1:0").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_ttl_secs: Option<u64>,
    /// PEM CA bundle to trust for an https upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Outbound proxy: `http://`, `https://`, `socks5://` or `socks5h://` `HOST:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// With `[auth]`: clients without credentials may pull from this upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_pull: Option<bool>,
    /// Repositories no client may pull from this upstream, and what they read instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_message: Option<String>,
}

impl UpstreamEntry {
    /// An upstream named `name` fetched from `url`.
    pub fn new(name: &str, url: &str) -> UpstreamEntry {
        UpstreamEntry {
            name: name.into(),
            url: Some(url.into()),
            ..Default::default()
        }
    }

    pub fn credentials(mut self, creds: Option<(String, String)>) -> Self {
        if let Some((u, p)) = creds {
            self.username = Some(u);
            self.password = Some(p);
        }
        self
    }

    pub fn alias(mut self, a: &str) -> Self {
        self.aliases.push(a.into());
        self
    }

    pub fn host(mut self, h: &str) -> Self {
        self.hosts.push(h.into());
        self
    }

    /// Reach the upstream through the outbound proxy `url`.
    pub fn proxy(mut self, url: &str) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Give the upstream a dedicated listener on a free loopback port.
    pub fn dedicated_listener(mut self) -> Self {
        self.listen = Some("127.0.0.1:0".into());
        self
    }
}

/// Configuration keys [`MirrorConfig`] does not model, merged into the file it writes.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Top-level keys, e.g. `max_size`, `gc_interval_secs`, `header_timeout_secs`.
    pub top: toml::Table,
    /// Keys added to every `[[upstream]]`, e.g. `tag_ttl_secs`, `read_timeout_secs`.
    pub upstream: toml::Table,
}

impl Extra {
    pub fn top(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.top.insert(key.into(), value.into());
        self
    }

    pub fn upstream(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.upstream.insert(key.into(), value.into());
        self
    }
}

/// The config file regmirror is started with.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub default_upstream: String,
    pub no_builtin_upstreams: bool,
    pub log_format: String,
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamEntry>,
    /// Keys this struct does not know, merged into the file.
    #[serde(skip)]
    pub extra: Extra,
}

impl MirrorConfig {
    /// Listen on 127.0.0.1:0, json logs, only the given upstreams; `data_dir` is set by
    /// [`Regmirror::start`] or [`Regmirror::start_in`].
    pub fn new(upstreams: Vec<UpstreamEntry>) -> MirrorConfig {
        MirrorConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: PathBuf::new(),
            default_upstream: "docker.io".into(),
            no_builtin_upstreams: false,
            log_format: "json".into(),
            upstreams,
            extra: Extra::default(),
        }
    }

    /// The file's TOML, and how many listeners it opens (the shared one and each dedicated one).
    fn render(&self) -> (String, usize) {
        let mut table = toml::Table::try_from(self).expect("config to toml");
        table.extend(self.extra.top.clone());
        let mut listeners = 1;
        if let Some(toml::Value::Array(ups)) = table.get_mut("upstream") {
            for u in ups.iter_mut().filter_map(toml::Value::as_table_mut) {
                u.extend(self.extra.upstream.clone());
                listeners += usize::from(u.contains_key("listen"));
            }
        }
        (
            toml::to_string(&table).expect("serialise config"),
            listeners,
        )
    }
}

/// One request record of the JSON log.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub upstream: String,
    pub repository: String,
    pub route: String,
    pub cache: String,
    pub raw: serde_json::Value,
}

/// A `regmirror serve` process and the files it runs on. The config, the logs and the data
/// directory outlive the process: [`Regmirror::kill9`] then [`Regmirror::spawn`] restarts it on
/// the same data. The process is killed (by its PID) when this drops.
pub struct Regmirror {
    /// Declared first: dropped (killed) before `tmp` is removed.
    process: Option<ChildGuard>,
    /// The temp dir `root` is, when [`Regmirror::start`] made it.
    tmp: Option<tempfile::TempDir>,
    /// Holds `regmirror.toml`, `regmirror.log` and `stdout.log` (and `data/` after
    /// [`Regmirror::start`]).
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// `http://ADDR` of the shared listener of the current process.
    pub url: String,
    /// Dedicated listeners of the current process: upstream label as printed -> `http://ADDR`.
    pub dedicated: BTreeMap<String, String>,
    config_text: String,
    /// Listener lines a start waits for.
    listeners: usize,
}

impl Regmirror {
    /// Start on `config` in a new temp dir, with `data_dir` = `<root>/data`.
    pub async fn start(config: MirrorConfig) -> Regmirror {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let mut m = Regmirror::start_in(&root, &root.join("data"), config).await;
        m.tmp = Some(tmp);
        m
    }

    /// Write `config` (data in `data_dir`, which may be a mount point) to `root/regmirror.toml`
    /// and start. `root` must outlive the returned value.
    pub async fn start_in(root: &Path, data_dir: &Path, mut config: MirrorConfig) -> Regmirror {
        config.data_dir = data_dir.to_path_buf();
        let (config_text, listeners) = config.render();
        let config_path = root.join("regmirror.toml");
        std::fs::write(&config_path, &config_text).expect("write config");
        let mut m = Regmirror {
            process: None,
            tmp: None,
            root: root.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            config_path,
            log_path: root.join("regmirror.log"),
            url: String::new(),
            dedicated: BTreeMap::new(),
            config_text,
            listeners,
        };
        m.spawn().await;
        m
    }

    /// Start the process (again) on the same config and data directory: wait for every listener
    /// line, then for `GET /v2/` to answer on each listener (200, or 401 with `[auth]`).
    pub async fn spawn(&mut self) {
        assert!(self.process.is_none(), "regmirror is already running");
        let (mut guard, lines) = self.spawn_serve();
        let (url, dedicated) = match self.read_listeners(&mut guard, &lines) {
            Ok(listeners) => listeners,
            Err(why) => self.fail(why),
        };
        for u in std::iter::once(&url).chain(dedicated.values()) {
            let ready = format!("{u}/v2/");
            // Readiness only: an HTTPS listener's certificate is what the test itself checks.
            let probe = reqwest::Client::builder()
                .no_proxy()
                .danger_accept_invalid_certs(true)
                .timeout(Duration::from_millis(500))
                .build()
                .expect("probe client");
            if let Err(e) =
                wait_http_ready_with(&probe, &ready, &[200, 401], &mut guard, START_TIMEOUT).await
            {
                self.fail(e);
            }
        }
        self.url = url;
        self.dedicated = dedicated;
        self.process = Some(guard);
    }

    /// `regmirror serve --config <config>`: stderr appended to the log, each stdout line
    /// appended to `stdout.log` and sent to the returned channel.
    fn spawn_serve(&self) -> (ChildGuard, Receiver<String>) {
        let child = command(["serve", "--config"])
            .arg(&self.config_path)
            .env("REGMIRROR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(append(&self.log_path))
            .spawn()
            .expect("spawn regmirror serve");
        let mut guard = ChildGuard::new(child, "regmirror");
        let stdout = guard.child.stdout.take().expect("stdout is piped");
        let mut copy = append(&self.root.join("stdout.log"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = writeln!(copy, "{line}");
                let _ = tx.send(line);
            }
        });
        (guard, rx)
    }

    /// The shared and the dedicated listeners, once every line the config promises is printed.
    fn read_listeners(
        &self,
        guard: &mut ChildGuard,
        lines: &Receiver<String>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let mut url: Option<String> = None;
        let mut dedicated = BTreeMap::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match &url {
                Some(url) if dedicated.len() + 1 >= self.listeners => {
                    return Ok((url.clone(), dedicated))
                }
                _ => {}
            }
            if let Some(status) = guard.exited() {
                return Err(format!("exited with {status}"));
            }
            if Instant::now() > deadline {
                let wanted = self.listeners;
                return Err(format!(
                    "no listener lines after {START_TIMEOUT:?} (wanted {wanted})"
                ));
            }
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => match parse_listening(&line) {
                    Some((addr, None)) => url = Some(addr),
                    Some((addr, Some(upstream))) => {
                        dedicated.insert(upstream, addr);
                    }
                    None => {}
                },
                Err(RecvTimeoutError::Timeout) => {}
                // stdout closed: the exit check above reports it on the next turn.
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
            }
        }
    }

    fn fail(&self, why: String) -> ! {
        panic!(
            "regmirror did not start: {why}\n--- config ---\n{}\n--- stderr ---\n{}",
            self.config_text,
            self.log()
        )
    }

    /// SIGKILL the process (by its PID) and reap it; the files stay for [`Regmirror::spawn`].
    /// The body of `GET /metrics`, asked with `client`.
    pub async fn metrics_text(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body")
    }

    pub fn kill9(&mut self) {
        let mut g = self.process.take().expect("regmirror running");
        g.child.kill().expect("SIGKILL regmirror");
        let _ = g.child.wait();
    }

    /// Run `regmirror cache ARGS... --config <this config>`; returns (success, stdout, stderr).
    pub fn cache_cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut argv = vec![OsStr::new("cache")];
        argv.extend(args.iter().map(OsStr::new));
        argv.extend([OsStr::new("--config"), self.config_path.as_os_str()]);
        let out = run(argv);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `127.0.0.1:PORT` of the shared listener (for skopeo references and raw requests).
    pub fn addr(&self) -> String {
        let url = self.url.trim_start_matches("https://");
        url.trim_start_matches("http://").to_string()
    }

    /// `http://ADDR` of the dedicated listener of `upstream` (matched against the printed label).
    pub fn dedicated_url(&self, upstream: &str) -> &str {
        self.dedicated
            .iter()
            .find(|(label, _)| label.as_str() == upstream || label.contains(upstream))
            .map(|(_, u)| u.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no dedicated listener for {upstream}; have {:?}",
                    self.dedicated
                )
            })
    }

    fn guard(&self) -> &ChildGuard {
        self.process.as_ref().expect("regmirror running")
    }

    pub fn pid(&self) -> u32 {
        self.guard().pid()
    }

    /// The exit status once the process has ended (None also after [`Regmirror::kill9`]).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut()?.exited()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|g| g.exited().is_none())
    }

    /// Whether the process is still running (read from `/proc`, no reaping).
    pub fn is_running_ref(&self) -> bool {
        let Some(g) = self.process.as_ref() else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{}/stat", g.pid()))
            .map(|s| s.split(' ').nth(2) != Some("Z"))
            .unwrap_or(false)
    }

    /// The captured stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every request record logged so far (JSON lines with `fields.message == "request"`).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log()
            .lines()
            .filter_map(parse_request_record)
            .collect()
    }
}

impl Drop for Regmirror {
    /// On a failing test, show the end of regmirror's log (the test harness prints it with the failure).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- regmirror log (last 40 lines of {}) ---\n{}",
                self.log_path.display(),
                tail(&self.log(), 40)
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `regmirror: listening on http://127.0.0.1:41234 (all upstreams)` -> (url, None);
/// `... (upstream 127.0.0.1:5101)` -> (url, Some("127.0.0.1:5101")); an HTTPS listener prints
/// `https://` and `(all upstreams; TLS)`, whose `; ...` is left out. The plain-HTTP redirect
/// listener's line (`(redirect to https port N)`) is not a mirror listener: None.
pub fn parse_listening(line: &str) -> Option<(String, Option<String>)> {
    let rest = line.trim().strip_prefix("regmirror: listening on ")?;
    let (url, label) = rest.split_once(' ').unwrap_or((rest, ""));
    let label = label.trim().trim_start_matches('(').trim_end_matches(')');
    let label = label.split(';').next().unwrap_or("").trim();
    if label.starts_with("redirect") {
        return None;
    }
    let upstream = label
        .strip_prefix("upstream ")
        .map(|u| u.trim().to_string());
    Some((url.to_string(), upstream))
}

fn field_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A request record from one JSON log line, if it is one.
pub fn parse_request_record(line: &str) -> Option<RequestRecord> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = v.get("fields")?;
    if f.get("message")?.as_str()? != "request" {
        return None;
    }
    let get = |k: &str| field_string(f.get(k).or_else(|| v.get(k)));
    Some(RequestRecord {
        method: get("method"),
        path: get("path"),
        status: get("status").parse().unwrap_or(0),
        upstream: get("upstream"),
        repository: get("repository"),
        route: get("route"),
        cache: get("cache"),
        raw: v,
    })
}

//! The real `regmirror` binary with a generated config in a temp dir; killed on drop.
//!
//! The binary prints one stdout line per listener (`regmirror: listening on http://ADDR (all
//! upstreams)` / `(upstream NAME)`); logs go to stderr, captured to `regmirror.log`. With
//! `log_format = "json"` each HTTP request is one JSON line with `fields.message == "request"`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::env::{wait_http_ready, ChildGuard};

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

    /// Give the upstream a dedicated listener on a free loopback port.
    pub fn dedicated_listener(mut self) -> Self {
        self.listen = Some("127.0.0.1:0".into());
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
    /// Raw TOML appended to the file (for keys this struct does not know yet).
    #[serde(skip)]
    pub extra_toml: String,
}

impl MirrorConfig {
    /// Listen on 127.0.0.1:0, json logs, only the given upstreams; `data_dir` is set by
    /// [`Regmirror::start`].
    pub fn new(upstreams: Vec<UpstreamEntry>) -> MirrorConfig {
        MirrorConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: PathBuf::new(),
            default_upstream: "docker.io".into(),
            no_builtin_upstreams: false,
            log_format: "json".into(),
            upstreams,
            extra_toml: String::new(),
        }
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

/// A running regmirror.
pub struct Regmirror {
    guard: ChildGuard,
    /// Temp dir holding `regmirror.toml`, the logs and `data/` (the data_dir).
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// `http://ADDR` of the shared listener.
    pub url: String,
    /// Dedicated listeners: upstream label as printed -> `http://ADDR`.
    pub dedicated: BTreeMap<String, String>,
}

impl Regmirror {
    /// Write the config (with `data_dir` = `<root>/data`), start `regmirror serve`, wait for every
    /// listener line and for `GET /v2/` to answer 200 on each.
    pub async fn start(mut config: MirrorConfig) -> Regmirror {
        let root = tempfile::tempdir().expect("tempdir");
        let data_dir = root.path().join("data");
        config.data_dir = data_dir.clone();
        let expected = 1 + config
            .upstreams
            .iter()
            .filter(|u| u.listen.is_some())
            .count();
        let mut text = toml::to_string(&config).expect("serialise config");
        text.push_str(&config.extra_toml);
        let config_path = root.path().join("regmirror.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let log_path = root.path().join("regmirror.log");
        let child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_remove("REGMIRROR_CONFIG")
            .env("REGMIRROR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("spawn regmirror");
        let mut guard = ChildGuard::new(child, "regmirror");
        let stdout = guard.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout_copy = root.path().join("stdout.log");
        std::thread::spawn(move || {
            let mut copy = std::fs::File::create(stdout_copy).ok();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(f) = copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        let fail = |why: String, log_path: &Path, text: &str| -> ! {
            panic!(
                "regmirror did not start: {why}\n--- config ---\n{text}\n--- stderr ---\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            )
        };
        let mut url = None;
        let mut dedicated = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while url.is_none() || dedicated.len() + 1 < expected {
            if let Some(status) = guard.exited() {
                fail(format!("exited with {status}"), &log_path, &text);
            }
            if std::time::Instant::now() > deadline {
                fail(
                    format!("no listener lines after 20 s (wanted {expected})"),
                    &log_path,
                    &text,
                );
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => match parse_listening(&line) {
                    Some((addr, None)) => url = Some(addr),
                    Some((addr, Some(upstream))) => {
                        dedicated.insert(upstream, addr);
                    }
                    None => {}
                },
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the exit check above reports it on the next turn.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let url = url.expect("shared listener");
        for u in std::iter::once(&url).chain(dedicated.values()) {
            if let Err(e) = wait_http_ready(
                &format!("{u}/v2/"),
                &[200],
                &mut guard,
                Duration::from_secs(20),
            )
            .await
            {
                fail(e, &log_path, &text);
            }
        }
        Regmirror {
            guard,
            root,
            data_dir,
            config_path,
            log_path,
            url,
            dedicated,
        }
    }

    /// `127.0.0.1:PORT` of the shared listener (for skopeo references and raw requests).
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
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

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The exit status once the process has ended.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.exited()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.guard.exited().is_none()
    }

    /// Whether the process is still running (probing with signal 0, no reaping).
    pub fn is_running_ref(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.guard.pid())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.guard.pid()))
                .map(|s| s.split(' ').nth(2) == Some("Z"))
                .unwrap_or(true)
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
/// `... (upstream 127.0.0.1:5101)` -> (url, Some("127.0.0.1:5101")).
pub fn parse_listening(line: &str) -> Option<(String, Option<String>)> {
    let rest = line.trim().strip_prefix("regmirror: listening on ")?;
    let (url, label) = rest.split_once(' ').unwrap_or((rest, ""));
    let label = label.trim().trim_start_matches('(').trim_end_matches(')');
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

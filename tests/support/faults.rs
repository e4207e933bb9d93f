//! Fault injection for the end-to-end tests: an in-process upstream whose blobs misbehave on
//! purpose (stall, get cut off, carry wrong bytes; oversized manifests; an outage switch), paths
//! into regmirror's data directory, a small tmpfs to put that directory on (disk full), raw
//! sockets for limit tests, `/metrics` parsing and `/proc` readings. The regmirror that is killed
//! with SIGKILL and restarted on the same data directory is [`super::mirror::Regmirror`].
//!
//! Everything started here is stopped (or unmounted) when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};

use super::background::BackgroundServer;
use super::env::sha256_digest;
use super::image::{
    layer, Blob, Entry, Format, Image, Platform, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST,
};

// ---------------------------------------------------------------------------------------------
// Images with incompressible layers

/// `n` deterministic pseudo-random bytes (xorshift; `seed` picks the sequence).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A single-platform OCI image with one real tar.gz layer holding `size` random bytes (gzip does
/// not shrink them, so the layer is about `size` bytes: useful to fill a disk on purpose).
pub fn sized_image(label: &str, size: usize) -> Image {
    let seed = label
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let data = random_bytes(size, seed);
    let l = layer(&[
        Entry::Dir("data"),
        Entry::File {
            path: "data/payload",
            mode: 0o644,
            data: &data,
        },
    ]);
    let layer_blob = Blob::new(OCI_LAYER_GZIP, l.gz);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": {"org.regmirror.test": label}},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id]},
    });
    let config = Blob::new(OCI_CONFIG, serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.descriptor(), "layers": [layer_blob.descriptor()],
    });
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).expect("json"));
    Image {
        format: Format::Oci,
        platform: Platform::amd64(),
        manifest,
        config,
        layers: vec![layer_blob],
    }
}

/// Path of a committed blob in regmirror's data directory.
pub fn blob_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Path of a committed manifest in regmirror's data directory.
pub fn manifest_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data_dir.join("manifests/sha256").join(&hex[..2]).join(hex)
}

/// Files in `data_dir/tmp` (spool files of fills in progress or left by a crash).
pub fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    super::env::files_under(&data_dir.join("tmp"))
}

// ---------------------------------------------------------------------------------------------
// A misbehaving upstream

/// How the fake upstream sends one blob's body on GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Send the first half, then wait until [`FaultyUpstream::release`] before sending the rest.
    StallAtHalf,
    /// Announce the full Content-Length, send half, then drop the connection.
    CloseHalfway,
    /// Announce the right digest and length, send bytes whose last byte differs.
    WrongBytes,
}

struct Served {
    manifests: HashMap<String, Blob>,
    blobs: HashMap<String, (Blob, Behaviour)>,
}

/// An in-process registry for one repository (`repo`), counting every request by `METHOD PATH`.
pub struct FaultyUpstream {
    pub server: BackgroundServer,
    pub repo: String,
    served: Arc<Mutex<Served>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    held: Arc<AtomicBool>,
    /// GETs that reached the middle of a [`Behaviour::StallAtHalf`] blob and are waiting.
    pub stalled: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl FaultyUpstream {
    pub fn start(repo: &str) -> FaultyUpstream {
        let served = Arc::new(Mutex::new(Served {
            manifests: HashMap::new(),
            blobs: HashMap::new(),
        }));
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let held = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (s, c, h, st, d, r) = (
            served.clone(),
            counts.clone(),
            held.clone(),
            stalled.clone(),
            down.clone(),
            repo.to_string(),
        );
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let (s, c, h, st, d, r) = (
                s.clone(),
                c.clone(),
                h.clone(),
                st.clone(),
                d.clone(),
                r.clone(),
            );
            async move { answer(req, &s, &c, h, st, &d, &r) }
        });
        FaultyUpstream {
            server: BackgroundServer::start(router),
            repo: repo.into(),
            served,
            counts,
            held,
            stalled,
            down,
        }
    }

    /// Serve `img` under `tag` (and by digest) with `behaviour` for its largest layer.
    pub fn add_image(&self, tag: &str, img: &Image, behaviour: Behaviour) {
        let mut s = self.served.lock().expect("served");
        s.manifests.insert(tag.into(), img.manifest.clone());
        s.manifests
            .insert(img.manifest.digest.clone(), img.manifest.clone());
        let biggest = img
            .layers
            .iter()
            .max_by_key(|l| l.size())
            .map(|l| l.digest.clone());
        for b in img.blobs() {
            let beh = if Some(&b.digest) == biggest.as_ref() {
                behaviour
            } else {
                Behaviour::Normal
            };
            s.blobs.insert(b.digest.clone(), (b.clone(), beh));
        }
    }

    /// Serve raw manifest bytes under `tag` (e.g. an oversized one).
    pub fn add_manifest(&self, tag: &str, manifest: &Blob) {
        self.served
            .lock()
            .expect("served")
            .manifests
            .insert(tag.into(), manifest.clone());
    }

    /// Change the behaviour of one blob from now on.
    pub fn set_behaviour(&self, digest: &str, behaviour: Behaviour) {
        if let Some(e) = self.served.lock().expect("served").blobs.get_mut(digest) {
            e.1 = behaviour;
        }
    }

    /// Let stalled transfers (and later ones) send their second half.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// Answer every request with 503 (true) or normally again (false).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many `method` requests for `path` arrived.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.counts
            .lock()
            .expect("counts")
            .get(&format!("{method} {path}"))
            .copied()
            .unwrap_or(0)
    }

    /// How many blob GETs of `digest` arrived.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.count("GET", &format!("/v2/{}/blobs/{digest}", self.repo))
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `127.0.0.1:PORT`: the upstream's name in regmirror's config.
    pub fn host(&self) -> String {
        self.server.addr.to_string()
    }
}

fn answer(
    req: Request<Body>,
    served: &Mutex<Served>,
    counts: &Mutex<HashMap<String, usize>>,
    held: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    down: &AtomicBool,
    repo: &str,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let head = req.method() == Method::HEAD;
    *counts
        .lock()
        .expect("counts")
        .entry(format!("{} {path}", req.method()))
        .or_default() += 1;
    let base = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("docker-distribution-api-version", "registry/2.0")
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", "97;w=21600")
    };
    let error = |status: StatusCode, code: &str| {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"fake upstream"}}]}}"#);
        base(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("response")
    };
    if down.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    }
    if path == "/v2/" {
        return base(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .expect("response");
    }
    let prefix = format!("/v2/{repo}/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    };
    let s = served.lock().expect("served");
    if let Some(reference) = rest.strip_prefix("manifests/") {
        let Some(m) = s.manifests.get(reference) else {
            return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        };
        let r = base(StatusCode::OK)
            .header("content-type", m.media_type.as_str())
            .header("docker-content-digest", m.digest.as_str())
            .header("content-length", m.size());
        return r
            .body(if head {
                Body::empty()
            } else {
                Body::from(m.bytes.clone())
            })
            .expect("response");
    }
    if let Some(digest) = rest.strip_prefix("blobs/") {
        let Some((b, behaviour)) = s.blobs.get(digest).cloned() else {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        };
        let r = base(StatusCode::OK)
            .header("content-type", "application/octet-stream")
            .header("docker-content-digest", b.digest.as_str())
            .header("content-length", b.size());
        if head {
            return r.body(Body::empty()).expect("response");
        }
        return r
            .body(blob_body(b.bytes, behaviour, held, stalled))
            .expect("response");
    }
    error(StatusCode::NOT_FOUND, "NOT_FOUND")
}

/// The body of one blob GET, in 16 KiB chunks, misbehaving as asked.
fn blob_body(
    bytes: Vec<u8>,
    behaviour: Behaviour,
    held: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
) -> Body {
    let mut bytes = bytes;
    if behaviour == Behaviour::WrongBytes {
        if let Some(last) = bytes.last_mut() {
            *last ^= 0xff;
        }
    }
    let half = bytes.len() / 2;
    let chunks: Vec<(usize, bytes::Bytes)> = bytes
        .chunks(16 * 1024)
        .scan(0usize, |pos, c| {
            let start = *pos;
            *pos += c.len();
            Some((start, bytes::Bytes::copy_from_slice(c)))
        })
        .collect();
    let stream =
        futures::stream::unfold((chunks.into_iter(), false), move |(mut it, mut waited)| {
            let (held, stalled) = (held.clone(), stalled.clone());
            async move {
                let (start, chunk) = it.next()?;
                if start >= half && !waited {
                    match behaviour {
                        Behaviour::CloseHalfway => {
                            return Some((
                                Err(std::io::Error::other("fake upstream hangs up halfway")),
                                (it, true),
                            ));
                        }
                        Behaviour::StallAtHalf => {
                            waited = true;
                            stalled.fetch_add(1, Ordering::SeqCst);
                            while held.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            stalled.fetch_sub(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
                Some((Ok::<_, std::io::Error>(chunk), (it, waited)))
            }
        });
    // After an error the stream must end: stop once the error was sent.
    let mut failed = false;
    let stream = futures::StreamExt::take_while(stream, move |item| {
        let go = !failed;
        failed |= item.is_err();
        futures::future::ready(go)
    });
    Body::from_stream(stream)
}

// ---------------------------------------------------------------------------------------------
// tmpfs

/// Whether this process runs as root (mounting a tmpfs needs it). Without root the calling test
/// is skipped, or fails under `REGMIRROR_E2E=1`.
pub fn root_available() -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() == Some("0") {
        return true;
    }
    if super::env::e2e_required() {
        panic!("REGMIRROR_E2E=1 but the tmpfs tests must run as root (they mount a small tmpfs)");
    }
    eprintln!("SKIPPED: not root; the disk-full tests mount a tmpfs");
    false
}

/// A tmpfs mounted for the test (root only); unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. "8m") on `path` (created if needed).
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {} (the test must run as root)",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Bytes free on the mount.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

/// What a raw HTTP exchange ended with.
#[derive(Debug)]
pub enum RawOutcome {
    /// A status line arrived (status, whole response text).
    Status(u16, String),
    /// The server closed the connection without a response.
    Closed,
    /// Reading failed (reset, timeout): the text of the error.
    Failed(String),
}

/// Send `head` (request line and headers, ending in CRLF CRLF) and read the status line.
pub fn raw_exchange(addr: &str, head: &[u8]) -> RawOutcome {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    if let Err(e) = s.write_all(head) {
        return RawOutcome::Failed(format!("write: {e}"));
    }
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) | Err(_) if !raw.is_empty() => {
            let text = String::from_utf8_lossy(&raw).into_owned();
            match text.split(' ').nth(1).and_then(|c| c.parse().ok()) {
                Some(code) => RawOutcome::Status(code, text),
                None => RawOutcome::Failed(format!("not HTTP: {text:?}")),
            }
        }
        Ok(_) => RawOutcome::Closed,
        Err(e) => RawOutcome::Failed(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and /proc

/// Sum of the samples of `name` whose labels include every `(key, value)` of `labels`; None
/// when no sample of that name exists.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, label_text) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// TCP sockets of process `pid` connected to `peer` (`127.0.0.1:PORT`), from `ss -tanp`.
pub fn sockets_to(pid: u32, peer: &str) -> usize {
    let out = Command::new("ss")
        .args(["-tanp"])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let owner = format!("pid={pid},");
    text.lines()
        .filter(|l| l.contains(&owner) && l.split_whitespace().nth(4) == Some(peer))
        .count()
}

/// Resident memory of process `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// A KiB value of `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM` (the peak).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Poll `check` every 50 ms until it returns Some, or panic after `timeout` with `what` and the
/// last value of `describe`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// sha256 of a file's contents, or None if it cannot be read.
pub fn file_digest(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|b| sha256_digest(&b))
}

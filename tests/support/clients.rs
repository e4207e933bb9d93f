//! The real clients: dockerd in a loopback-only network namespace, containerd with its own root,
//! podman with env-pointed configuration; and `regmirror client-config` to configure them.
//!
//! Every process started here is stopped by its own PID when its owner is dropped (SIGTERM first
//! so dockerd and containerd unmount what they mounted, SIGKILL after a grace period).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::env::{free_port, ChildGuard};
use super::mirror::run;

/// Tools the client tests need besides the core harness tools.
pub const DOCKER_TOOLS: &[&str] = &[
    "dockerd",
    "docker",
    "containerd",
    "runc",
    "socat",
    "nsenter",
    "ip",
];
pub const CONTAINERD_TOOLS: &[&str] = &["containerd", "ctr"];
pub const PODMAN_TOOLS: &[&str] = &["podman", "runc"];

/// Run `regmirror client-config ARGS`; panics (showing its stderr) on failure.
fn client_config(args: &[&OsStr]) -> Output {
    let out = run(std::iter::once(OsStr::new("client-config")).chain(args.iter().copied()));
    assert!(
        out.status.success(),
        "client-config {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `regmirror client-config ARGS --write DIR`; returns stderr (the notes). Panics on failure.
pub fn client_config_write(args: &[&str], dir: &Path) -> String {
    let mut argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    argv.extend([OsStr::new("--write"), dir.as_os_str()]);
    String::from_utf8_lossy(&client_config(&argv).stderr).into_owned()
}

/// Run `regmirror client-config ARGS` and return what it printed on stdout.
pub fn client_config_print(args: &[&str]) -> String {
    let argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    String::from_utf8_lossy(&client_config(&argv).stdout).into_owned()
}

/// Run a command to completion with a time limit; the child is killed (by PID) when it overruns.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = child.unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // Timed out (or the sender vanished): stop this one process.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {what}: {e}"));
    let _ = tx.send(());
    out
}

/// stdout of a successful command, or a panic showing both streams.
pub fn expect_success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send SIGTERM to `guard`'s process, wait up to `grace` for it to exit; the guard's drop then
/// SIGKILLs it if it is still running.
fn terminate(guard: &mut ChildGuard, grace: Duration) {
    if guard.exited().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(guard.pid().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while guard.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll `ready` every 50 ms until it holds, `guard`'s process exits, or `limit` passes.
fn wait_until(
    guard: &mut ChildGuard,
    limit: Duration,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return;
        }
        if let Some(status) = guard.exited() {
            panic!(
                "{} exited with {status}:\n{}",
                guard.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{} not ready after {limit:?}:\n{}",
                guard.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A containerd with its own root, state, socket and plugin dir (CRI disabled). Content is not
/// shared between namespaces, so a pull in a fresh namespace fetches every blob.
pub struct Containerd {
    guard: ChildGuard,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
                 [grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\n\
                 [plugins.\"io.containerd.metadata.v1.bolt\"]\n  content_sharing_policy = \"isolated\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = socket.display(),
                opt = d.join("opt").display(),
            ),
        )
        .expect("write containerd config");
        let log = d.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(d.join("containerd.err")).expect("log"))
            .spawn()
            .expect("spawn containerd");
        let mut guard = ChildGuard::new(child, "containerd");
        let err_log = d.join("containerd.err");
        let sock = socket.clone();
        wait_until(&mut guard, Duration::from_secs(20), &err_log, || {
            sock.exists()
                && Command::new("ctr")
                    .arg("--address")
                    .arg(&sock)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
        });
        Containerd {
            guard,
            dir,
            socket,
            log: err_log,
        }
    }

    /// `ctr --address SOCK -n NAMESPACE ARGS...`
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .arg("-n")
                .arg(namespace)
                .args(args),
            Duration::from_secs(120),
        )
    }

    /// `ctr image pull --plain-http --hosts-dir DIR --snapshotter native NAME` (amd64 only, ctr's default).
    pub fn pull(&self, namespace: &str, hosts_dir: &Path, name: &str) -> Output {
        let hosts = hosts_dir.to_str().expect("utf-8 path");
        self.ctr(
            namespace,
            &[
                "image",
                "pull",
                "--plain-http",
                "--hosts-dir",
                hosts,
                "--snapshotter",
                "native",
                name,
            ],
        )
    }

    /// The digest `name` points at in `namespace` (from `ctr image ls`).
    pub fn image_digest(&self, namespace: &str, name: &str) -> Option<String> {
        let out = self.ctr(namespace, &["image", "ls"]);
        let text = expect_success(&out, "ctr image ls");
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&name))
            .and_then(|cols| {
                cols.iter()
                    .find(|c| c.starts_with("sha256:"))
                    .map(|c| c.to_string())
            })
    }

    /// Every content digest containerd holds in `namespace`.
    pub fn content_digests(&self, namespace: &str) -> Vec<String> {
        let out = self.ctr(namespace, &["content", "ls", "-q"]);
        expect_success(&out, "ctr content ls")
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        terminate(&mut self.guard, Duration::from_secs(10));
    }
}

/// podman as root with vfs storage and its three configuration files in a temp dir.
pub struct Podman {
    pub dir: tempfile::TempDir,
    pub registries_conf: PathBuf,
    storage_conf: PathBuf,
    containers_conf: PathBuf,
}

impl Podman {
    /// `registries_conf` is used as it is.
    pub fn new(registries_conf: PathBuf) -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let storage_conf = d.join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("graph").display(),
                d.join("run").display()
            ),
        )
        .expect("write storage.conf");
        let containers_conf = d.join("containers.conf");
        std::fs::write(
            &containers_conf,
            format!(
                "[engine]\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\ncgroup_manager = \"cgroupfs\"\n\
                 tmp_dir = \"{}\"\n",
                d.join("events.log").display(),
                d.join("tmp").display()
            ),
        )
        .expect("write containers.conf");
        Podman {
            dir,
            registries_conf,
            storage_conf,
            containers_conf,
        }
    }

    /// `podman ARGS...` with this instance's configuration (and its own XDG dirs).
    pub fn run(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        run_with_timeout(
            Command::new("podman")
                .args(args)
                .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
                .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
                .env("CONTAINERS_CONF", &self.containers_conf)
                .env("XDG_RUNTIME_DIR", d.join("xdg-run"))
                .env("XDG_CONFIG_HOME", d.join("xdg-config"))
                .env("XDG_DATA_HOME", d.join("xdg-data"))
                .env("TMPDIR", d.join("tmp")),
            Duration::from_secs(180),
        )
    }
}

/// A network namespace with only loopback, deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create() -> NetNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "regmirror-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        expect_success(&out, "ip netns add");
        let ns = NetNs { name };
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])
            .output();
        expect_success(&out.expect("run ip netns exec"), "ip link set lo up");
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// dockerd in a network namespace that has only loopback, so a pull that skipped the mirror could
/// never reach Docker Hub. The mirror on the host is reachable inside at `127.0.0.1:<port>` through
/// two socats and a unix socket. Fields drop in order: dockerd first, the namespace last.
pub struct Dockerd {
    dockerd: ChildGuard,
    inner_socat: ChildGuard,
    outer_socat: ChildGuard,
    netns: NetNs,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The port the mirror answers on inside the namespace (127.0.0.1).
    pub inner_port: u16,
}

impl Dockerd {
    /// Start the socat bridge to `mirror_addr` (host `127.0.0.1:PORT`); the caller then writes
    /// `daemon.json` into [`Dockerd::config_dir`] for `http://127.0.0.1:<inner_port>` and calls
    /// [`Dockerd::start`].
    pub fn bridge(mirror_addr: &str) -> DockerBridge {
        let dir = tempfile::tempdir().expect("tempdir");
        let netns = NetNs::create();
        let unix = dir.path().join("mirror.sock");
        let outer = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", unix.display()))
            .arg(format!("TCP:{mirror_addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("socat-outer.log")).expect("log"))
            .spawn()
            .expect("spawn socat");
        let mut outer = ChildGuard::new(outer, "socat (host side)");
        let u = unix.clone();
        wait_until(
            &mut outer,
            Duration::from_secs(10),
            &dir.path().join("socat-outer.log"),
            || u.exists(),
        );
        // The namespace has its own ports: any number works; a free host port is as good as any.
        let inner_port = free_port();
        let inner = Command::new("nsenter")
            .arg(format!("--net={}", netns.path()))
            .arg("socat")
            .arg(format!(
                "TCP-LISTEN:{inner_port},bind=127.0.0.1,fork,reuseaddr"
            ))
            .arg(format!("UNIX-CONNECT:{}", unix.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("socat-inner.log")).expect("log"))
            .spawn()
            .expect("spawn nsenter socat");
        let inner = ChildGuard::new(inner, "socat (namespace side)");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        DockerBridge {
            dir,
            netns,
            outer,
            inner,
            inner_port,
        }
    }

    /// The network namespace dockerd runs in (for `nsenter --net=`): containers on
    /// `--network host` share it.
    pub fn netns_path(&self) -> String {
        self.netns.path()
    }

    /// `docker -H unix://SOCK ARGS...`
    pub fn docker(&self, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args)
                .env("DOCKER_CONFIG", self.dir.path().join("client")),
            Duration::from_secs(180),
        )
    }
}

/// The first half of a [`Dockerd`]: namespace and socat bridge, before dockerd runs.
pub struct DockerBridge {
    dir: tempfile::TempDir,
    netns: NetNs,
    outer: ChildGuard,
    inner: ChildGuard,
    pub inner_port: u16,
}

impl DockerBridge {
    /// Where `daemon.json` must be written.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Start dockerd with `<config_dir>/daemon.json`, wait for its API.
    pub fn start(self) -> Dockerd {
        let DockerBridge {
            dir,
            netns,
            outer,
            mut inner,
            inner_port,
        } = self;
        let d = dir.path();
        // The namespace-side socat must be listening before dockerd needs it.
        let inner_log = d.join("socat-inner.log");
        wait_until(&mut inner, Duration::from_secs(10), &inner_log, || {
            Command::new("nsenter")
                .arg(format!("--net={}", netns.path()))
                .args(["socat", "-u", "OPEN:/dev/null"])
                .arg(format!("TCP:127.0.0.1:{inner_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        // Unix socket paths are limited to 108 bytes; the temp dir is short enough.
        let socket = d.join("docker.sock");
        let log = d.join("dockerd.log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path()))
            .arg("dockerd")
            .arg("--config-file")
            .arg(d.join("etc/daemon.json"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("dockerd.out")).expect("log"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn dockerd");
        let mut dockerd = ChildGuard::new(child, "dockerd");
        let sock = socket.clone();
        let client_dir = d.join("client");
        wait_until(&mut dockerd, Duration::from_secs(60), &log, || {
            sock.exists()
                && Command::new("docker")
                    .arg("-H")
                    .arg(format!("unix://{}", sock.display()))
                    .arg("version")
                    .env("DOCKER_CONFIG", &client_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
        });
        Dockerd {
            dockerd,
            inner_socat: inner,
            outer_socat: outer,
            netns,
            dir,
            socket,
            log,
            inner_port,
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd stops its own containerd and unmounts on SIGTERM; the socats and the namespace
        // go when their fields drop.
        terminate(&mut self.dockerd, Duration::from_secs(20));
        let _ = &self.netns;
    }
}

/// `skopeo copy [--all] docker://REFERENCE dir:DEST` with `registries_conf` as the only
/// registries configuration (no TLS override: the conf's `insecure` must allow plain HTTP).
pub fn skopeo_copy(registries_conf: &Path, reference: &str, dest: &Path, all: bool) -> Output {
    let mut cmd = Command::new("skopeo");
    // skopeo 1.9 does not read CONTAINERS_REGISTRIES_CONF; it takes --registries-conf.
    cmd.env("REGISTRY_AUTH_FILE", dest.with_extension("auth.json"))
        .arg("--registries-conf")
        .arg(registries_conf)
        .args([
            "--insecure-policy",
            "copy",
            "--retry-times=0",
            "--src-no-creds",
        ]);
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()));
    run_with_timeout(&mut cmd, Duration::from_secs(120))
}

/// The files of a `dir:` layout, for [`super::skopeo::DirImage`]'s checks.
pub fn read_dir_layout(dest: &Path) -> super::skopeo::DirImage {
    let mut files = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dest)
        .unwrap_or_else(|e| panic!("read {}: {e}", dest.display()))
        .flatten()
    {
        files.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).expect("read layout file"),
        );
    }
    super::skopeo::DirImage {
        path: dest.to_path_buf(),
        files,
    }
}

/// The value of `key: "value"` in a YAML file written by client-config (`indent` spaces before it).
pub fn yaml_value(text: &str, indent: usize, key: &str) -> Option<String> {
    let prefix = format!("{}{key}: ", " ".repeat(indent));
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"').to_string())
}

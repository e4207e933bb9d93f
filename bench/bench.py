#!/usr/bin/env python3
"""regmirror side-by-side benchmark (Python 3 standard library only).

Started by bench/run.sh. On loopback, in one temporary directory, it runs:

  upstream   distribution (Debian docker-registry), plain, seeded over the raw HTTP API with a
             256 MB random layer (1 GB too with BENCH_BIG=1) and a small multi-arch image
  proxy      distribution in proxy mode in front of the upstream (the official pull-through cache)
  nginx      nginx serving the upstream's own blob file with sendfile (the machine's limit)
  regmirror  the release binary in front of the same upstream

and measures every row of issue 6 in the same run, each repeated (median reported), interleaving
servers within a repetition so that machine noise hits them alike. Every process it starts is
stopped by PID at the end, also on Ctrl-C.
"""

import argparse
import atexit
import datetime
import hashlib
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

MB = 1 << 20
GB = 1e9  # throughput and CPU-per-GB use decimal gigabytes
CLK_TCK = os.sysconf("SC_CLK_TCK")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes: every server is a Proc; all are stopped by PID at exit.

class Proc:
    live = []

    def __init__(self, name, argv, logfile, **kw):
        self.name = name
        self.logfile = logfile
        out = open(logfile, "ab")
        self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        out.close()
        self.pid = self.popen.pid
        self.started = time.perf_counter()
        Proc.live.append(self)

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self in Proc.live:
            Proc.live.remove(self)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def pids(self):
        """This process and its direct children (nginx workers)."""
        out = [self.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.pid:
                    out.append(int(entry))
        return out

    def cpu_seconds(self):
        """utime + stime of the server (and its children that are running), in seconds."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
        return total / CLK_TCK

    def status_kb(self, key):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def reset_peak_rss(self):
        """Reset VmHWM to the current RSS (clear_refs 5, Linux >= 4.0)."""
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass


def stop_all():
    for p in list(reversed(Proc.live)):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {p.name} ({p.pid}): {e}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(port, method, path, headers=None, body=None, timeout=30):
    """One request; returns (status, headers dict lower-cased, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, blocksize=4 * MB)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def first_200(port, proc, path="/v2/", timeout=20.0):
    """Poll until `path` answers 200; returns seconds since the process was spawned, or None."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not proc.alive():
            return None
        try:
            status, _, _ = http_request(port, "GET", path, timeout=2)
            if status == 200:
                return time.perf_counter() - proc.started
        except OSError:
            pass
        time.sleep(0.002)
    return None


def wait_port_closed(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Servers

def start_distribution(work, name, remote=None):
    """distribution 2.8 (Debian docker-registry); proxy mode when `remote` is a URL."""
    port = free_port()
    root = os.path.join(work, name)
    os.makedirs(root, exist_ok=True)
    conf = os.path.join(work, f"{name}.yml")
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "  cache:",
        "    blobdescriptor: inmemory",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: regmirror-bench-secret",
    ]
    if remote:
        lines += ["proxy:", f"  remoteurl: {remote}"]
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    proc = Proc(name, ["docker-registry", "serve", conf], os.path.join(work, f"{name}.log"))
    proc.port, proc.root, proc.conf = port, root, conf
    return proc


def start_nginx(work, blob_file):
    port = free_port()
    prefix = os.path.join(work, "nginx")
    os.makedirs(prefix, exist_ok=True)
    temps = "\n".join(f"  {t}_temp_path {prefix}/{t}_temp;" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
{temps}
  access_log {prefix}/access.log;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location = /blob {{
      default_type application/octet-stream;
      alias {blob_file};
    }}
  }}
}}
""")
    proc = Proc("nginx", ["nginx", "-e", f"{prefix}/error.log", "-p", prefix, "-c", conf],
                os.path.join(work, "nginx.log"))
    proc.port = port
    return proc


def start_regmirror(binary, work, data_dir, upstream_port, name="regmirror"):
    port = free_port()
    conf = os.path.join(work, f"{name}-{port}.toml")
    up = f"127.0.0.1:{upstream_port}"
    with open(conf, "w") as f:
        f.write(f"""listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
no_builtin_upstreams = true
default_upstream = "{up}"
log_format = "json"

[[upstream]]
name = "{up}"
url = "http://{up}"
tag_ttl_secs = 300
""")
    proc = Proc(name, [binary, "serve", "--config", conf], os.path.join(work, "regmirror.log"))
    proc.port, proc.data_dir = port, data_dir
    return proc


def ready(proc, what):
    t = first_200(proc.port, proc)
    if t is None:
        raise SystemExit(f"bench: {what} did not come up; see {proc.logfile}")
    return t


# ---------------------------------------------------------------------------------------------
# Seeding the upstream over the raw registry API

def random_layer(path, payload_bytes):
    """An uncompressed tar holding one file of random bytes; returns (digest, size)."""
    h = hashlib.sha256()
    with open(path, "wb") as out:
        def emit(b):
            h.update(b)
            out.write(b)
        info = tarfile.TarInfo("random.bin")
        info.size, info.mode, info.mtime = payload_bytes, 0o644, 0
        emit(info.tobuf(format=tarfile.USTAR_FORMAT))
        left = payload_bytes
        while left:
            n = min(left, 8 * MB)
            emit(os.urandom(n))
            left -= n
        emit(b"\0" * ((-payload_bytes) % 512) + b"\0" * 1024)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)


def small_layer(text):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(data), 0
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(port, repo, digest, body, length):
    status, headers, _ = http_request(port, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    if status != 202:
        raise SystemExit(f"bench: upload start for {repo} answered {status}")
    loc = headers["location"]
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    sep = "&" if "?" in loc else "?"
    status, _, text = http_request(port, "PUT", f"{loc}{sep}digest={digest}", body=body, timeout=600,
                                   headers={"Content-Length": str(length), "Content-Type": "application/octet-stream"})
    if status != 201:
        raise SystemExit(f"bench: blob upload {digest} answered {status}: {text[:200]!r}")


def push_manifest(port, repo, ref, body, media_type):
    status, _, text = http_request(port, "PUT", f"/v2/{repo}/manifests/{ref}", body=body,
                                   headers={"Content-Type": media_type})
    if status != 201:
        raise SystemExit(f"bench: manifest {repo}:{ref} answered {status}: {text[:200]!r}")


def image_manifest(port, repo, arch, layer_digest, layer_size):
    config = json.dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    push_blob(port, repo, digest_of(config), config, len(config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size}],
    }).encode()
    return manifest


def seed(port, work, big):
    """Push the big layer image(s) and the multi-arch image; returns what the rows need."""
    blobs = []
    sizes = [("256MB", 256 * MB)] + ([("1GB", 1024 * MB)] if big else [])
    for label, payload in sizes:
        path = os.path.join(work, f"layer-{label}.tar")
        t = time.perf_counter()
        digest, size = random_layer(path, payload)
        repo = f"bench/big{label.lower()}"
        with open(path, "rb") as f:
            push_blob(port, repo, digest, f, size)
        m = image_manifest(port, repo, "amd64", digest, size)
        push_manifest(port, repo, "latest", m, OCI_MANIFEST)
        os.remove(path)  # the upstream holds it now; nginx serves the upstream's own file
        log(f"seeded {repo} ({size} bytes, {digest[:19]}...) in {time.perf_counter() - t:.1f}s")
        blobs.append({"label": label, "repo": repo, "digest": digest, "size": size})
    repo = "bench/multi"
    entries = []
    for arch in ("amd64", "arm64"):
        layer = small_layer(f"hello from {arch} {os.urandom(8).hex()}\n")
        push_blob(port, repo, digest_of(layer), layer, len(layer))
        m = image_manifest(port, repo, arch, digest_of(layer), len(layer))
        push_manifest(port, repo, digest_of(m), m, OCI_MANIFEST)
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest_of(m), "size": len(m),
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    push_manifest(port, repo, "latest", index, OCI_INDEX)
    return blobs, {"repo": repo, "tag": "latest", "digest": digest_of(index), "media_type": OCI_INDEX}


def distribution_blob_file(root, digest):
    hexd = digest.split(":", 1)[1]
    return os.path.join(root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


def regmirror_blob_file(data_dir, digest):
    hexd = digest.split(":", 1)[1]
    return os.path.join(data_dir, "blobs/sha256", hexd[:2], hexd)


def wait_proxy_commit(proxy, repo, blob, timeout=60):
    """distribution's proxy stores a blob in the background ~1 s after serving it: wait for the
    data file and the repository link, so that the next GET is served locally."""
    hexd = blob["digest"].split(":", 1)[1]
    link = os.path.join(proxy.root, "docker/registry/v2/repositories", repo, "_layers/sha256", hexd, "link")
    data = distribution_blob_file(proxy.root, blob["digest"])
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(link) and os.path.exists(data) and os.path.getsize(data) == blob["size"]:
            time.sleep(0.2)
            return True
        time.sleep(0.05)
    return False

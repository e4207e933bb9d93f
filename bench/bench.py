#!/usr/bin/env python3
"""regmirror side-by-side benchmark (Python 3 standard library only).

Started by bench/run.sh. On loopback, in one temporary directory, it runs:

  upstream   distribution (Debian docker-registry), plain, seeded over the raw HTTP API with a
             256 MB random layer (1 GB too with BENCH_BIG=1) and a small multi-arch image
  proxy      distribution in proxy mode in front of the upstream (the official pull-through cache)
  nginx      nginx serving the upstream's own blob file with sendfile (the machine's limit)
  regmirror  the release binary in front of the same upstream
  baseline   with --baseline BINARY: a second regmirror binary (say, the code before a refactor),
             in front of the same upstream with its own data dir

and measures every row of issue 6 in the same run, each repeated (median reported), interleaving
servers within a repetition so that machine noise hits them alike. Every process it starts is
stopped by PID at the end, also on Ctrl-C.

With --baseline, every regmirror row is also measured for the baseline binary, next to the
current one in each repetition, the order switching every repetition (A B, B A, A B...: load that
rises or falls through a row, and any advantage of going first, falls on both alike), and the
table gains the baseline's value, the
after/before ratio (current / baseline) and its spread: the min-max over the repetitions of the
per-repetition ratio, which is what run-to-run noise looks like for that row. Before each cold
measurement of either binary the page cache is synced (os.sync) so that the other one's cache
writes are not still being flushed. The peer rows are unchanged.
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
import resource
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
# User-Agent prefixes in the upstream's access log: who fetched a blob.
REGMIRROR_AGENT = "regmirror/"
DISTRIBUTION_AGENT = "Go-http-client/"
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


def stop_all():
    for p in list(reversed(Proc.live)):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {p.name} ({p.pid}): {e}")


def workdir(prefix):
    """A fresh temporary directory for one bench script, removed when it exits (the servers it
    started are stopped first), unless BENCH_KEEP=1: blobs of hundreds of MB must not pile up."""
    work = tempfile.mkdtemp(prefix=prefix)

    def remove():
        stop_all()
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"bench: kept {work} (BENCH_KEEP=1)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(remove)
    return work


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
            status, _, _ = http_request(port, "HEAD" if path.startswith("/blob") else "GET", path, timeout=2)
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


def start_nginx(work, blob_files):
    """nginx with sendfile, serving each file of `blob_files` (label -> path) at /blob-<label>."""
    port = free_port()
    prefix = os.path.join(work, "nginx")
    os.makedirs(prefix, exist_ok=True)
    temps = "\n".join(f"  {t}_temp_path {prefix}/{t}_temp;" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    locations = "\n".join(f"    location = /blob-{label} {{ default_type application/octet-stream; alias {path}; }}"
                          for label, path in blob_files.items())
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
{locations}
  }}
}}
""")
    proc = Proc("nginx", ["nginx", "-e", f"{prefix}/error.log", "-p", prefix, "-c", conf],
                os.path.join(work, "nginx.log"))
    proc.port = port
    return proc


def regmirror_toml(port, data_dir, upstream, tag_ttl_secs=300):
    """The config every benchmark gives regmirror: one upstream `host:port`, fetched over plain HTTP."""
    return f"""listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
no_builtin_upstreams = true
default_upstream = "{upstream}"
log_format = "json"

[[upstream]]
name = "{upstream}"
url = "http://{upstream}"
tag_ttl_secs = {tag_ttl_secs}
"""


def start_regmirror(binary, work, data_dir, upstream_port, name="regmirror", tag_ttl_secs=300):
    port = free_port()
    conf = os.path.join(work, f"{name}-{port}.toml")
    with open(conf, "w") as f:
        f.write(regmirror_toml(port, data_dir, f"127.0.0.1:{upstream_port}", tag_ttl_secs))
    proc = Proc(name, [binary, "serve", "--config", conf], os.path.join(work, f"{name}.log"))
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


# ---------------------------------------------------------------------------------------------
# Clients

WRK_REPORT = r'''done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"bytes\":%d,\"duration_us\":%d,\"requests\":%d,\"socket_errors\":%d,\"timeouts\":%d,\"non2xx\":%d}\n",
    summary.bytes, summary.duration, summary.requests, e.connect + e.read + e.write, e.timeout, e.status))
end
'''


def wrk(work, port, path, conns, seconds, headers=()):
    """wrk -t2 -cN; returns its summary (bytes, duration_us, requests, errors) as a dict."""
    script = os.path.join(work, "wrk-report.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(WRK_REPORT)
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s", "-s", script]
    for h in headers:
        argv += ["-H", h]
    return wrk_json(argv + [f"http://127.0.0.1:{port}{path}"])


def wrk_json(argv):
    """Run wrk with a script that prints one `WRKJSON {...}` line; that line's object."""
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON "):])


def fetch_clients(n, port, path, headers=()):
    """Start n curl clients at once, each GETting `path` to /dev/null; wait for all.
    Returns (wall seconds from first spawn to last exit, [(http_code, bytes)])."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"http://127.0.0.1:{port}{path}")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(n)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        code, size = (out.decode().split() + ["0", "0"])[:2]
        results.append((int(code), int(size)))
    return time.perf_counter() - t0, results


def children_cpu_seconds():
    """CPU time of this script's finished children (the curl clients)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sha256_rates(size, reps):
    """GB/s of SHA-256 over `size` bytes in memory, one stream, `reps` times (Python's hashlib is
    OpenSSL, the fastest SHA-256 on this machine: it bounds any verifying cold GET)."""
    data = os.urandom(min(size, 256 * MB))
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        hashlib.sha256(data).digest()
        rates.append(len(data) / GB / (time.perf_counter() - t0))
    return rates


def check_all(results, size, what):
    bad = [r for r in results if r != (200, size)]
    if bad:
        raise SystemExit(f"bench: {what}: {len(bad)} of {len(results)} clients got {bad[:3]} instead of (200, {size})")


def sha256_of_url(port, path):
    """Digest of what a client receives (streamed through curl, hashed here)."""
    p = subprocess.Popen(["curl", "-sSf", f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE)
    h = hashlib.sha256()
    while True:
        chunk = p.stdout.read(4 * MB)
        if not chunk:
            break
        h.update(chunk)
    p.wait()
    return "sha256:" + h.hexdigest()


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# The benchmark

class Bench:
    def __init__(self, args, work):
        self.args, self.work, self.reps = args, work, args.reps
        self.raw = {}    # every repetition's numbers, by row
        self.rows = []   # the table
        self.rm = None
        self.base = None  # the --baseline regmirror, when given
        self.rm_generation = 0
        # The regmirror binaries measured: "regmirror" (the current one) and, with --baseline, "baseline".
        self.sides = ["regmirror"] + (["baseline"] if args.baseline else [])

    # -- set-up --------------------------------------------------------------------------------

    def start(self):
        self.upstream = start_distribution(self.work, "upstream")
        ready(self.upstream, "upstream registry")
        self.blobs, self.index = seed(self.upstream.port, self.work, self.args.big)
        self.proxy = start_distribution(self.work, "proxy", f"http://127.0.0.1:{self.upstream.port}")
        ready(self.proxy, "distribution proxy")
        self.nginx = start_nginx(self.work, {b["label"]: distribution_blob_file(self.upstream.root, b["digest"])
                                             for b in self.blobs})
        self.restart_regmirror(fresh=True)
        if self.args.baseline:
            self.restart_baseline(fresh=True)
        if first_200(self.nginx.port, self.nginx, "/blob-256MB", timeout=10) is None:
            raise SystemExit(f"bench: nginx does not serve the blob; see {self.work}/nginx/error.log")

    def restart_regmirror(self, fresh, data_dir=None, upstream_port=None):
        """Stop regmirror (if running) and start a new one; `fresh` empties its data dir."""
        if self.rm:
            self.rm.stop()
        data_dir = data_dir or os.path.join(self.work, "regmirror-data")
        if fresh and os.path.exists(data_dir):
            shutil.rmtree(data_dir)
        self.rm = start_regmirror(self.args.binary, self.work, data_dir, upstream_port or self.upstream.port)
        return ready(self.rm, "regmirror")

    def restart_baseline(self, fresh):
        """The same for the --baseline binary (its own data dir, same upstream)."""
        if self.base:
            self.base.stop()
        data_dir = os.path.join(self.work, "baseline-data")
        if fresh and os.path.exists(data_dir):
            shutil.rmtree(data_dir)
        self.base = start_regmirror(self.args.baseline, self.work, data_dir, self.upstream.port, name="baseline")
        return ready(self.base, "baseline regmirror")

    def restart_side(self, side, fresh):
        """Restart regmirror ("regmirror") or the baseline ("baseline"); returns (start-up s, process)."""
        if side == "regmirror":
            t = self.restart_regmirror(fresh)
            return t, self.rm
        t = self.restart_baseline(fresh)
        return t, self.base

    def order(self, rep):
        """The regmirror binaries in repetition `rep`: current first in even repetitions, the baseline
        first in odd ones (just ["regmirror"] without a baseline)."""
        return self.sides if rep % 2 == 0 else self.sides[::-1]

    def side_proc(self, side):
        return self.rm if side == "regmirror" else self.base

    def quiesce(self):
        """With a baseline: write back dirty pages (the other binary's cache fill) before a cold run."""
        if self.args.baseline:
            os.sync()

    def restart_proxy(self):
        """A distribution proxy with empty storage (it cannot be emptied while running)."""
        self.proxy.stop()
        shutil.rmtree(self.proxy.root, ignore_errors=True)
        self.proxy = start_distribution(self.work, "proxy", f"http://127.0.0.1:{self.upstream.port}")
        ready(self.proxy, "distribution proxy")

    def blob_path(self, blob):
        return f"/v2/{blob['repo']}/blobs/{blob['digest']}"

    def upstream_fetches(self, offset, blob, agent):
        """GETs of `blob` in the upstream's access log after byte `offset` whose User-Agent starts with
        `agent`. The agent matters: a distribution proxy's background store of an earlier row can
        finish (and be logged) while a later row is counting regmirror's fetches."""
        needle = f'"GET {self.blob_path(blob)} '.encode()
        ua = f'"{agent}'.encode()
        with open(self.upstream.logfile, "rb") as f:
            f.seek(offset)
            return sum(1 for line in f if needle in line and ua in line)

    def note_load(self, row):
        """The 1-minute load average as a row starts: the machine is shared, so the JSON says how busy."""
        self.raw.setdefault("loadavg_1min_at_start", {})[row] = os.getloadavg()[0]

    def add(self, measure, rm, peer, peer_name, ratio, target, met, unit="", base=None):
        row = {"measure": measure, "regmirror": rm, "peer": peer, "peer_name": peer_name,
               "ratio": ratio, "target": target, "met": met, "unit": unit}
        if base is not None:
            row.update(base)
        self.rows.append(row)

    def vs_base(self, cur, base, value):
        """The baseline columns of a row. `cur` and `base` are the per-repetition numbers of the current
        binary and of the baseline (same order, interleaved in the same repetitions); `value` turns a
        list of them into the number the row shows (median, max, GB/s of the median...). Returns
        None without a baseline."""
        if not self.args.baseline:
            return None
        def ratio(a, b):
            return None if a is None or b is None or b == 0 else a / b
        reps = [ratio(value([c]), value([b])) for c, b in zip(cur, base)]
        known = [r for r in reps if r is not None]
        return {"baseline": value(base), "after_before": ratio(value(cur), value(base)), "rep_ratios": reps,
                "spread": [min(known), max(known)] if known else None}

    # -- rows ----------------------------------------------------------------------------------

    def warm_up(self, blob):
        """One GET through regmirror (and the baseline; checked against the digest) and the proxy, so
        all hold the blob."""
        for side in self.sides:
            p = self.side_proc(side)
            got = sha256_of_url(p.port, self.blob_path(blob))
            if got != blob["digest"]:
                raise SystemExit(f"bench: {side} served {got} for {blob['digest']}")
            if not os.path.exists(regmirror_blob_file(p.data_dir, blob["digest"])):
                raise SystemExit(f"bench: {side} did not cache the blob")
        _, res = fetch_clients(1, self.proxy.port, self.blob_path(blob))
        check_all(res, blob["size"], "distribution proxy warm-up")
        if not wait_proxy_commit(self.proxy, blob["repo"], blob):
            raise SystemExit("bench: distribution proxy did not commit the blob")
        fetch_clients(1, self.nginx.port, f"/blob-{blob['label']}")

    def warm_blob(self, blob):
        """Row 1: 4 parallel clients (wrk -c4), aggregate GB/s and server CPU-seconds per GB."""
        self.note_load(f"warm_blob_{blob['label']}")
        label = blob["label"]
        def servers(rep):
            return ([(side, lambda side=side: self.side_proc(side), self.blob_path(blob)) for side in self.order(rep)]
                    + [("nginx", lambda: self.nginx, f"/blob-{label}"),
                       ("distribution", lambda: self.proxy, self.blob_path(blob))])
        seconds = 3 if blob["size"] < 512 * MB else 6
        raw = {name: {"gbps": [], "cpu_s_per_gb": []} for name, _, _ in servers(0)}
        for rep in range(self.reps):
            for name, proc, path in servers(rep):
                p = proc()
                cpu0 = p.cpu_seconds()
                r = wrk(self.work, p.port, path, 4, seconds)
                cpu = p.cpu_seconds() - cpu0
                if r["non2xx"] or r["socket_errors"]:
                    raise SystemExit(f"bench: wrk against {name}: {r}")
                gb = r["bytes"] / GB
                raw[name]["gbps"].append(gb / (r["duration_us"] / 1e6))
                raw[name]["cpu_s_per_gb"].append(cpu / gb)
            log(f"warm {label} rep {rep + 1}: " + ", ".join(f"{n} {raw[n]['gbps'][-1]:.2f} GB/s" for n, _, _ in servers(0)))
        self.raw[f"warm_blob_{label}_4_clients"] = raw
        med = {n: {k: median(v) for k, v in raw[n].items()} for n in raw}
        rm, ng, di = med["regmirror"], med["nginx"], med["distribution"]
        ab = {k: self.vs_base(raw["regmirror"][k], raw.get("baseline", {}).get(k), median) for k in ("gbps", "cpu_s_per_gb")}
        self.add(f"warm blob GET {label}, 4 clients, GB/s", rm["gbps"], ng["gbps"], "nginx",
                 rm["gbps"] / ng["gbps"], ">= 1.0 x nginx", rm["gbps"] / ng["gbps"] >= 1.0, "GB/s", ab["gbps"])
        self.add(f"  same, vs distribution proxy", rm["gbps"], di["gbps"], "distribution",
                 rm["gbps"] / di["gbps"], "", None, "GB/s")
        self.add(f"server CPU-s per GB served (warm {label})", rm["cpu_s_per_gb"], ng["cpu_s_per_gb"], "nginx",
                 rm["cpu_s_per_gb"] / ng["cpu_s_per_gb"], "<= 3 x nginx", rm["cpu_s_per_gb"] <= 3 * ng["cpu_s_per_gb"], "s/GB",
                 ab["cpu_s_per_gb"])
        self.add(f"  same, vs distribution proxy", rm["cpu_s_per_gb"], di["cpu_s_per_gb"], "distribution",
                 rm["cpu_s_per_gb"] / di["cpu_s_per_gb"], "", None, "s/GB")

    def single_client(self, blob):
        """Single-client GB/s with hyperfine (bounded by curl here: reported, not targeted)."""
        self.note_load(f"single_client_{blob['label']}")
        out = os.path.join(self.work, f"hyperfine-{blob['label']}.json")
        def commands(rep):
            return ([(side, self.side_proc(side).port, self.blob_path(blob)) for side in self.order(rep)]
                    + [("nginx", self.nginx.port, f"/blob-{blob['label']}"),
                       ("distribution", self.proxy.port, self.blob_path(blob))])
        cmds = commands(0)

        def hyperfine(runs, rep=0):
            argv = ["hyperfine", "-N", "--style", "none", "--warmup", "1", "--runs", str(runs), "--export-json", out]
            for name, port, path in commands(rep):
                argv += ["-n", name, f"curl -sSf -o /dev/null http://127.0.0.1:{port}{path}"]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                return {r["command"]: r["times"] for r in json.load(f)["results"]}

        if self.args.baseline:
            # hyperfine runs all of one command's runs before the next: one run of each per
            # invocation, so that regmirror and the baseline alternate (A B, B A, ...).
            times = {n: [] for n, _, _ in cmds}
            for rep in range(self.reps):
                for n, t in hyperfine(1, rep).items():
                    times[n] += t
        else:
            times = hyperfine(self.reps)
        gbps = {n: blob["size"] / GB / median(times[n]) for n, _, _ in cmds}
        self.raw[f"single_client_{blob['label']}"] = {n: {"seconds": times[n]} for n, _, _ in cmds}
        ab = self.vs_base(times["regmirror"], times.get("baseline"), lambda xs: blob["size"] / GB / median(xs))
        self.add(f"single-client GB/s {blob['label']} (curl-bound)", gbps["regmirror"], gbps["nginx"], "nginx",
                 gbps["regmirror"] / gbps["nginx"], "report only", None, "GB/s", ab)

    def cold_blob(self, blob):
        """Row 2: one cold GET through regmirror (empty data dir, new process) vs straight from the upstream."""
        self.note_load(f"cold_blob_{blob['label']}")
        raw = {"regmirror_s": [], "direct_s": []}
        raw["regmirror_cpu_s"], raw["machine_busy"], raw["direct_cpu_s"] = [], [], []
        if self.args.baseline:
            raw["baseline_s"], raw["baseline_cpu_s"], raw["baseline_machine_busy"] = [], [], []
        for rep in range(self.reps):
            for side in self.order(rep):
                _, p = self.restart_side(side, fresh=True)
                self.quiesce()
                cpu0 = (p.cpu_seconds(), self.upstream.cpu_seconds(), children_cpu_seconds())
                t, res = fetch_clients(1, p.port, self.blob_path(blob))
                cpu = [b - a for a, b in zip(cpu0, (p.cpu_seconds(), self.upstream.cpu_seconds(),
                                                     children_cpu_seconds()))]
                check_all(res, blob["size"], f"cold GET through {side}")
                raw[f"{side}_s"].append(t)
                raw[f"{side}_cpu_s"].append(cpu[0])
                # regmirror + upstream + curl, as a share of every core for the transfer's duration
                raw["machine_busy" if side == "regmirror" else "baseline_machine_busy"].append(
                    sum(cpu) / (t * (os.cpu_count() or 1)))
            cpu0 = (self.upstream.cpu_seconds(), children_cpu_seconds())
            t, res = fetch_clients(1, self.upstream.port, self.blob_path(blob))
            check_all(res, blob["size"], "GET from the upstream")
            raw["direct_s"].append(t)
            # what the direct GET costs the machine: the upstream sending, curl receiving
            raw["direct_cpu_s"].append(self.upstream.cpu_seconds() - cpu0[0] + children_cpu_seconds() - cpu0[1])
        # distribution's proxy, cold, for comparison (a fresh proxy per repetition)
        raw["distribution_s"] = []
        for rep in range(self.reps):
            self.restart_proxy()
            t, res = fetch_clients(1, self.proxy.port, self.blob_path(blob))
            check_all(res, blob["size"], "cold GET through the distribution proxy")
            raw["distribution_s"].append(t)
        raw["sha256_gbps"] = sha256_rates(blob["size"], self.reps)
        self.raw[f"cold_blob_{blob['label']}"] = raw
        rm, direct = median(raw["regmirror_s"]), median(raw["direct_s"])
        di, sha = median(raw["distribution_s"]), max(raw["sha256_gbps"])
        gb = blob["size"] / GB
        self.add(f"cold blob GET {blob['label']}, GB/s vs direct", gb / rm, gb / direct, "upstream direct",
                 direct / rm, ">= 0.85 x direct", direct / rm >= 0.85, "GB/s",
                 self.vs_base(raw["regmirror_s"], raw.get("baseline_s"), lambda xs: gb / median(xs)))
        self.add("  same, vs distribution proxy (cold)", gb / rm, gb / di, "distribution", di / rm, "", None, "GB/s")
        # A verified cold GET cannot end before the whole blob is hashed, and one stream's SHA-256
        # runs on one core: the fastest implementation here bounds the row.
        self.add("  bound: one SHA-256 stream on this CPU (OpenSSL), GB/s vs direct", sha, gb / direct,
                 "upstream direct", sha * direct / gb, "", None, "GB/s")
        # The machine bound: a verifying mirror on this machine does at least what the direct GET
        # does (the upstream sends, curl receives) plus one SHA-256 pass over the blob, and all of
        # it shares the cores. Its own receive, store and send are left out, so this is generous.
        cores = os.cpu_count() or 1
        hash_s = gb / sha
        bound_s = median([max(d, hash_s, (c + hash_s) / cores)
                          for d, c in zip(raw["direct_s"], raw["direct_cpu_s"])])
        self.add("  bound: direct GET's CPU + one SHA-256 pass, on all cores, GB/s vs direct", gb / bound_s,
                 gb / direct, "upstream direct", direct / bound_s, "", None, "GB/s")
        self.add("  regmirror vs that bound", gb / rm, gb / bound_s, "bound", bound_s / rm, "", None, "GB/s")
        self.add("  CPU busy during the cold GET (regmirror + upstream + curl, all cores)",
                 100 * median(raw["machine_busy"]), None, "", None, "", None, "%",
                 self.vs_base(raw["machine_busy"], raw.get("baseline_machine_busy"), lambda xs: 100 * median(xs)))
        self.add("  regmirror CPU-s per GB, cold", median(raw["regmirror_cpu_s"]) / gb, None, "", None, "", None,
                 "s/GB", self.vs_base(raw["regmirror_cpu_s"], raw.get("baseline_cpu_s"), lambda xs: median(xs) / gb))
        return rm

    def fifty_cold(self, blob, one_cold_s):
        """Row 3: 50 concurrent cold GETs of one blob: upstream fetches and wall time."""
        self.note_load(f"fifty_cold_{blob['label']}")
        raw = {"fetches": [], "wall_s": [], "peak_rss_kb": [], "nginx_warm_wall_s": []}
        if self.args.baseline:
            raw.update({"baseline_fetches": [], "baseline_wall_s": [], "baseline_peak_rss_kb": []})
        for rep in range(self.reps):
            for side in self.order(rep):
                # one after the other, so the upstream's log lines of each are told apart by offset
                key = "" if side == "regmirror" else "baseline_"
                _, p = self.restart_side(side, fresh=True)
                self.quiesce()
                offset = os.path.getsize(self.upstream.logfile)
                wall, res = fetch_clients(50, p.port, self.blob_path(blob))
                check_all(res, blob["size"], f"50 cold GETs through {side}")
                time.sleep(0.3)  # the access log line is written when the upstream response ends
                raw[key + "fetches"].append(self.upstream_fetches(offset, blob, REGMIRROR_AGENT))
                raw[key + "wall_s"].append(wall)
                raw[key + "peak_rss_kb"].append(p.status_kb("VmHWM"))
                if side == "baseline":
                    log(f"50 cold rep {rep + 1}, baseline: {raw['baseline_fetches'][-1]} upstream fetch(es), "
                        f"{raw['baseline_wall_s'][-1]:.2f}s")
            wall, res = fetch_clients(50, self.nginx.port, f"/blob-{blob['label']}")
            check_all(res, blob["size"], "50 GETs from nginx")
            raw["nginx_warm_wall_s"].append(wall)
            log(f"50 cold rep {rep + 1}: {raw['fetches'][-1]} upstream fetch(es), {raw['wall_s'][-1]:.2f}s "
                f"(nginx warm {wall:.2f}s)")
        # distribution's proxy, once (its count does not vary: every client streams from upstream)
        self.restart_proxy()
        offset = os.path.getsize(self.upstream.logfile)
        wall, res = fetch_clients(50, self.proxy.port, self.blob_path(blob))
        check_all(res, blob["size"], "50 cold GETs through the distribution proxy")
        wait_proxy_commit(self.proxy, blob["repo"], blob)
        raw["distribution_fetches_1_run"] = self.upstream_fetches(offset, blob, DISTRIBUTION_AGENT)
        raw["distribution_wall_s_1_run"] = wall
        self.raw[f"fifty_cold_{blob['label']}"] = raw
        fetches = max(raw["fetches"])
        wall = median(raw["wall_s"])
        self.add(f"50 concurrent cold GETs {blob['label']}: upstream fetches (max of runs)", fetches,
                 raw["distribution_fetches_1_run"], "distribution (1 run)", None, "1", fetches == 1, "",
                 self.vs_base(raw["fetches"], raw.get("baseline_fetches"), max))
        self.add(f"50 concurrent cold GETs {blob['label']}: wall s vs one cold GET", wall, one_cold_s,
                 "1 cold GET", wall / one_cold_s, "<= 1.5 x", wall / one_cold_s <= 1.5, "s",
                 self.vs_base(raw["wall_s"], raw.get("baseline_wall_s"), median))
        nginx_wall = median(raw["nginx_warm_wall_s"])
        self.add(f"  floor: nginx serving the same 50 GETs warm, s", wall, nginx_wall, "nginx warm",
                 wall / nginx_wall, "", None, "s")
        self.add(f"  peak RSS during 50 cold GETs {blob['label']}, MB", median(raw["peak_rss_kb"]) / 1024, None, "", None,
                 "<= 32 MB", median(raw["peak_rss_kb"]) / 1024 <= 32, "MB",
                 self.vs_base(raw["peak_rss_kb"], raw.get("baseline_peak_rss_kb"), lambda xs: median(xs) / 1024))

    def peak_rss(self, blob):
        """Row 5: VmHWM while 1 and 50 clients stream the (warm) blob, regmirror and distribution."""
        self.note_load(f"peak_rss_{blob['label']}")
        raw = {f"{s}_{n}": [] for s in self.sides + ["distribution"] for n in (1, 50)}
        for rep in range(self.reps):
            for name in self.order(rep) + ["distribution"]:
                for n in (1, 50):
                    # A fresh process each time (warm storage kept): VmHWM is then this run's peak,
                    # not memory an allocator or a garbage collector kept from an earlier run.
                    if name in self.sides:
                        _, p = self.restart_side(name, fresh=False)
                    else:
                        self.proxy.stop()
                        self.proxy = start_distribution(self.work, "proxy", f"http://127.0.0.1:{self.upstream.port}")
                        ready(self.proxy, "distribution proxy")
                        p = self.proxy
                    _, res = fetch_clients(n, p.port, self.blob_path(blob))
                    check_all(res, blob["size"], f"{n} warm GETs from {name}")
                    raw[f"{name}_{n}"].append(p.status_kb("VmHWM"))
            log(f"peak RSS {blob['label']} rep {rep + 1}: " + ", ".join(f"{k} {v[-1] / 1024:.1f} MB" for k, v in raw.items()))
        self.raw[f"peak_rss_{blob['label']}_kb"] = raw
        mb = {k: median(v) / 1024 for k, v in raw.items()}
        ab = {n: self.vs_base(raw[f"regmirror_{n}"], raw.get(f"baseline_{n}"), lambda xs: median(xs) / 1024)
              for n in (1, 50)}
        self.add(f"peak RSS, 50 clients streaming {blob['label']} (warm), MB", mb["regmirror_50"], mb["distribution_50"],
                 "distribution", mb["regmirror_50"] / mb["distribution_50"], "<= 32 MB", mb["regmirror_50"] <= 32, "MB",
                 ab[50])
        self.add(f"  same, 1 client, MB", mb["regmirror_1"], mb["distribution_1"], "distribution",
                 mb["regmirror_1"] / mb["distribution_1"], "", None, "MB", ab[1])

    def manifests(self):
        """Row 4: warm manifest GETs, wrk -c64, by tag and by digest."""
        self.note_load("manifests")
        m = self.index
        accept = f"Accept: {m['media_type']}"
        paths = {"tag": f"/v2/{m['repo']}/manifests/{m['tag']}", "digest": f"/v2/{m['repo']}/manifests/{m['digest']}"}
        servers = [(side, self.side_proc(side)) for side in self.sides] + [("distribution", self.proxy)]
        for _, p in servers:
            for path in paths.values():
                status, headers, _ = http_request(p.port, "GET", path, headers={"Accept": m["media_type"]})
                if status != 200 or headers.get("docker-content-digest") != m["digest"]:
                    raise SystemExit(f"bench: manifest warm-up on {p.name}: {status} {headers}")
        raw = {f"{s}_{k}": [] for s, _ in servers for k in paths}
        for rep in range(self.reps):
            for kind, path in paths.items():
                for name, p in [(side, self.side_proc(side)) for side in self.order(rep)] + [("distribution", self.proxy)]:
                    r = wrk(self.work, p.port, path, 64, 3, [accept])
                    if r["non2xx"] or r["socket_errors"]:
                        raise SystemExit(f"bench: wrk manifests against {name}: {r}")
                    raw[f"{name}_{kind}"].append(r["requests"] / (r["duration_us"] / 1e6))
            log(f"manifests rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in raw.items()))
        self.raw["manifest_req_per_s"] = raw
        med = {k: median(v) for k, v in raw.items()}
        for kind, target in (("tag", 20), ("digest", 10)):
            rm, di = med[f"regmirror_{kind}"], med[f"distribution_{kind}"]
            self.add(f"warm manifest-by-{kind} GET req/s (wrk -c64)", rm, di, "distribution", rm / di,
                     f">= {target} x distribution", rm / di >= target, "req/s",
                     self.vs_base(raw[f"regmirror_{kind}"], raw.get(f"baseline_{kind}"), median))

    def startup(self, fake_blobs):
        """Row 6: start-up to the first 200 on /v2/ with many cached blobs; then with the upstream down."""
        self.note_load("startup")
        raw = {"regmirror_s": [], "distribution_s": [], "fake_blobs": fake_blobs}
        for side in self.sides:
            p = self.side_proc(side)
            p.stop()
            t = time.perf_counter()
            make_fake_blobs(p.data_dir, fake_blobs)
            log(f"created {fake_blobs} fake cached blobs for {side} in {time.perf_counter() - t:.1f}s")
            raw[f"{side}_s"] = []
        for rep in range(self.reps):
            for side in self.order(rep):
                raw[f"{side}_s"].append(self.restart_side(side, fresh=False)[0])
            self.proxy.stop()
            self.proxy = start_distribution(self.work, "proxy", f"http://127.0.0.1:{self.upstream.port}")
            raw["distribution_s"].append(ready(self.proxy, "distribution proxy"))
        rm, di = median(raw["regmirror_s"]), median(raw["distribution_s"])
        self.add(f"start-up to first 200 on /v2/, {fake_blobs // 1000}k cached blobs, s", rm, di, "distribution",
                 rm / di, "< 1 s", rm < 1.0, "s", self.vs_base(raw["regmirror_s"], raw.get("baseline_s"), median))

        # Every upstream down: the upstream registry stops for good.
        blob = self.blobs[0]
        self.upstream.stop()
        wait_port_closed(self.upstream.port)
        down = {}
        m = self.index
        for side in self.sides:
            # the keys of the current binary keep their names; the baseline's are prefixed
            key = "regmirror_" if side == "regmirror" else "baseline_"
            t, p = self.restart_side(side, fresh=False)
            down[key + "start_s"] = t
            down[key + "blob_ok"] = sha256_of_url(p.port, self.blob_path(blob)) == blob["digest"]
            status, headers, _ = http_request(p.port, "GET", f"/v2/{m['repo']}/manifests/{m['tag']}",
                                              headers={"Accept": m["media_type"]})
            down[key + "manifest_by_tag_status"] = status
            down[key + "manifest_ok"] = status == 200 and headers.get("docker-content-digest") == m["digest"]
        self.proxy.stop()
        self.proxy = start_distribution(self.work, "proxy", f"http://127.0.0.1:{self.upstream.port}")
        down["distribution_start_s"] = first_200(self.proxy.port, self.proxy, timeout=10)
        down["distribution_exit_code"] = self.proxy.popen.poll()
        with open(self.proxy.logfile, errors="replace") as f:
            down["distribution_panicked"] = "panic" in f.read()
        raw["upstream_down"] = down
        self.raw["startup"] = raw
        def side_txt(key):
            ok = down[key + "start_s"] is not None and down[key + "blob_ok"] and down[key + "manifest_ok"]
            txt = (f"starts in {down[key + 'start_s']:.2f}s, serves blob {'ok' if down[key + 'blob_ok'] else 'FAIL'},"
                   f" manifest {'ok' if down[key + 'manifest_ok'] else down[key + 'manifest_by_tag_status']}")
            return ok, txt
        rm_ok, rm_txt = side_txt("regmirror_")
        di_txt = (f"starts in {down['distribution_start_s']:.2f}s" if down["distribution_start_s"] is not None
                  else "does not start" + (" (panic)" if down["distribution_panicked"] else ""))
        base = None
        if self.args.baseline:
            base_ok, base_txt = side_txt("baseline_")
            base = {"baseline": base_txt, "baseline_met": base_ok, "after_before": None, "rep_ratios": [], "spread": None}
        self.add("start-up with the upstream down", rm_txt, di_txt, "distribution", None,
                 "starts, serves cache", rm_ok, "", base)


def make_fake_blobs(data_dir, n):
    """n small files in the cached-blob layout (blobs/sha256/<2 hex>/<64 hex>)."""
    root = os.path.join(data_dir, "blobs", "sha256")
    for i in range(256):
        os.makedirs(os.path.join(root, f"{i:02x}"), exist_ok=True)
    for i in range(n):
        hexd = hashlib.sha256(b"regmirror-bench-fake-%d" % i).hexdigest()
        with open(os.path.join(root, hexd[:2], hexd), "wb") as f:
            f.write(b"fake blob %d\n" % i)


# ---------------------------------------------------------------------------------------------
# Report

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) and unit == "":
        return str(v)
    if unit == "req/s":
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(rows, baseline=False):
    """The printed table. With a baseline: the baseline's value, after/before (current / baseline)
    and the min-max of that ratio over the repetitions, next to the current binary's column."""
    header = ["measure", "regmirror"]
    if baseline:
        header += ["baseline", "after/before", "per-rep spread"]
    header += ["peer", "ratio", "target", "met?"]
    body = []
    for r in rows:
        unit = r["unit"]
        peer = fmt(r["peer"], unit)
        if r["peer_name"] and peer != "-":
            peer = f"{peer} ({r['peer_name']})"

        def with_unit(v):
            out = fmt(v, unit)
            return f"{out} {unit}" if unit and v is not None and not isinstance(v, str) else out
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        line = [r["measure"], with_unit(r["regmirror"])]
        if baseline:
            if "baseline" in r:
                spread = r.get("spread")
                line += [with_unit(r["baseline"]),
                         "-" if r.get("after_before") is None else f"{r['after_before']:.3f}",
                         "-" if not spread else f"{spread[0]:.3f}-{spread[1]:.3f}"]
            else:
                line += ["", "", ""]
        line += [peer, "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"], met]
        body.append(line)
    widths = [max(len(str(x[i])) for x in [header] + body) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in body]
    return "\n".join(lines)


def machine():
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "os": first_line(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "distribution": first_line(["docker-registry", "--version"]), "nginx": first_line(["nginx", "-v"]),
            "wrk": first_line(["wrk", "-v"]), "curl": first_line(["curl", "--version"]),
            "hyperfine": first_line(["hyperfine", "--version"])}


def binary_info(path, label=None):
    """What the JSON says about a measured binary: its path, SHA-256 and a label (the git revision of
    the checkout it was built in when that can be found, else the label given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MB), b""):
            h.update(chunk)
    if label is None:
        d = os.path.dirname(os.path.realpath(path))
        while d != os.path.dirname(d) and not os.path.exists(os.path.join(d, ".git")):
            d = os.path.dirname(d)
        label = git_rev(d) if os.path.exists(os.path.join(d, ".git")) else None
    return {"path": os.path.abspath(path), "sha256": h.hexdigest(), "label": label or os.path.basename(path)}


def git_rev(repo_root):
    try:
        rev = subprocess.run(["git", "-C", repo_root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo_root, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True, help="the regmirror release binary")
    ap.add_argument("--baseline", metavar="BINARY",
                    help="a second regmirror binary (say, before a refactor) measured beside --binary in every "
                         "regmirror row, interleaved per repetition")
    ap.add_argument("--baseline-label", help="what to call the baseline in the output (default: the git revision "
                                             "of the checkout holding the binary)")
    ap.add_argument("--results", required=True, help="directory for <timestamp>.json")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--big", action="store_true", default=os.environ.get("BENCH_BIG", "") not in ("", "0"),
                    help="also measure a 1 GB blob (or BENCH_BIG=1)")
    ap.add_argument("--fake-blobs", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    for opt, path in (("--binary", args.binary), ("--baseline", args.baseline)):
        if path is not None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            ap.error(f"{opt} {path}: not an executable file")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binaries = {"regmirror": binary_info(args.binary)}
    if args.baseline:
        binaries["baseline"] = binary_info(args.baseline, args.baseline_label)
        log(f"baseline {binaries['baseline']['label']} ({args.baseline}) beside {binaries['regmirror']['label']}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(stop_all)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = tempfile.mkdtemp(prefix="regmirror-bench-")
    os.chmod(work, 0o755)  # nginx workers (www-data) read the upstream's blob file
    log(f"working in {work}")
    b = Bench(args, work)
    ok = False
    try:
        b.start()
        for blob in b.blobs:
            b.warm_up(blob)
            b.warm_blob(blob)
            b.single_client(blob)
        for blob in b.blobs:
            b.fifty_cold(blob, b.cold_blob(blob))
        b.restart_regmirror(fresh=False)
        if args.baseline:
            b.restart_baseline(fresh=False)
        for blob in b.blobs:
            b.warm_up(blob)
            b.peak_rss(blob)
        b.manifests()
        b.startup(args.fake_blobs)
        ok = True
    finally:
        stop_all()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            log(f"failed; logs and data kept in {work}")

    finished = datetime.datetime.now(datetime.timezone.utc)
    out = {"started": started.isoformat(timespec="seconds"), "seconds": round((finished - started).total_seconds()),
           "git": git_rev(repo_root), "reps": args.reps, "binaries": binaries,
           "machine": machine(), "rows": b.rows, "raw": b.raw}
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, started.strftime("%Y%m%dT%H%M%SZ") + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    m = out["machine"]
    loads = out["raw"].get("loadavg_1min_at_start", {}).values()
    load_txt = f" | load avg {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    what = f"regmirror {out['git']}"
    if args.baseline:
        bi = binaries["baseline"]
        same = " (the same binary)" if bi["sha256"] == binaries["regmirror"]["sha256"] else ""
        what = f"regmirror {binaries['regmirror']['label']} vs baseline {bi['label']}{same}"
    print(f"\n{what} | {started:%Y-%m-%d %H:%M} UTC | {m['cpus']} CPUs ({m['cpu_model']}), "
          f"{m['mem_gib']} GiB, {m['os']} | median of {args.reps} | {out['seconds']} s{load_txt}\n")
    print(table(b.rows, baseline=bool(args.baseline)))
    if args.baseline:
        print("\nafter/before: regmirror / baseline of the row's value; per-rep spread: min-max of that ratio "
              f"over the {args.reps} repetitions, each measuring both binaries back to back, in alternating order "
              "(run-to-run noise)")
    print(f"\nraw results: {path}")
    missed = [r["measure"].strip() for r in b.rows if r["met"] is False]
    print("targets missed: " + ("; ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The admission webhook's throughput (issue 15's performance row), one run, one machine.

Started by bench/run.sh with BENCH_WEBHOOK=1 (after the loopback benchmark) or BENCH_WEBHOOK=only.
On loopback, in one temporary directory, both servers with the same ECDSA P-256 certificate:

  regmirror  `regmirror webhook` (the release binary), 4 mirrored registries
  nginx      nginx over HTTPS answering every POST with a fixed AdmissionReview (`return 200`):
             the floor of the same TLS + HTTP/1.1 exchange with no work behind it

The load: wrk (-t2, keep-alive connections, a Lua script that POSTs one AdmissionReview v1 of a
Pod with 10 containers, 8 of them rewritten) for --seconds per repetition. Rows, median of --reps:
reviews/s, wrk's p50 and p99 latency, the server's CPU time per review (utime + stime from /proc
over the run; 1e6 / that = reviews one core answers per second, the number the shared machine's
load changes least), and regmirror's peak RSS (VmHWM) after all repetitions. The answer
is checked once before the load (a JSONPatch with 8 operations). Targets: >= 5000 reviews/s,
p99 < 5 ms, RSS < 20 MB.

Results: a table on stdout, bench/results/webhook-<timestamp>.json.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import Proc, free_port, log, median  # noqa: E402

LUA = r'''
local f = io.open("%BODY%", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"non2xx\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
'''


def review_body():
    images = ["nginx:1.25", "library/redis:7", "bitnami/postgresql:16", "ghcr.io/org/api:v3",
              "registry.k8s.io/pause:3.9", "quay.io/prometheus/node-exporter:v1.7.0",
              "ghcr.io/org/worker@sha256:" + "ab" * 32, "busybox", "127.0.0.1:5101/team/app:2",
              "mirror.example.com:5000/docker.io/library/alpine:3.19"]
    containers = [{"name": f"c{i}", "image": im, "ports": [{"containerPort": 8000 + i}],
                   "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}} for i, im in enumerate(images)]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "bench", "namespace": "apps", "labels": {"app": "bench"}},
           "spec": {"containers": containers}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "bench-uid", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "apps", "operation": "CREATE", "userInfo": {"username": "bench"},
        "object": pod, "oldObject": None, "dryRun": False}}).encode()


CONFIG = '''listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
mirror = "mirror.example.com:5000"
[[registry]]
name = "docker.io"
[[registry]]
name = "ghcr.io"
[[registry]]
name = "127.0.0.1:5101"
prefix = "local"
[[registry]]
name = "registry.k8s.io"
host = "k8s.mirror.example.com"
'''


def make_cert(work):
    cert, key = os.path.join(work, "tls.pem"), os.path.join(work, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def post(port, body_file):
    out = subprocess.run(["curl", "-sSk", "--fail", "-H", "Content-Type: application/json",
                          "--data-binary", f"@{body_file}", f"https://127.0.0.1:{port}/mutate"],
                         capture_output=True, check=True).stdout
    return json.loads(out)


def wait_https(proc, port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise SystemExit(f"bench: {proc.name} exited; see {proc.logfile}")
        r = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"https://127.0.0.1:{port}/healthz"],
                           capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: {proc.name} not ready on {port}")


def start_nginx(work, cert, key, answer):
    port = free_port()
    prefix = os.path.join(work, "nginx")
    os.makedirs(prefix, exist_ok=True)
    temp = "".join(f"{t}_temp_path {prefix}/{t}; " for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2; daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; {temp}
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.3; client_body_buffer_size 64k; keepalive_requests 1000000;
    location = /healthz {{ return 200 "ok"; }}
    location / {{ default_type application/json; return 200 '{answer}'; }} }} }}
""")
    p = Proc("nginx", ["nginx", "-e", f"{prefix}/error.log", "-p", prefix, "-c", conf], os.path.join(work, "nginx.log"))
    wait_https(p, port)
    return p, port


def run_wrk(work, proc, port, conns, seconds):
    cpu0 = proc.cpu_seconds()
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s",
                          os.path.join(work, "review.lua"), f"https://127.0.0.1:{port}/mutate"],
                         capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON "):])
    if r["errors"] or r["non2xx"]:
        raise SystemExit(f"bench: wrk saw errors: {r}")
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    # The server's own CPU per answer: what the shared machine's load does not change much.
    r["cpu_us"] = (proc.cpu_seconds() - cpu0) / r["requests"] * 1e6
    return r


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="regmirror-bench-webhook-") as work:
        try:
            return run(args, work)
        finally:
            for p in list(Proc.live):
                p.stop()


def run(args, work):
    cert, key = make_cert(work)
    body_file = os.path.join(work, "review.json")
    with open(body_file, "wb") as f:
        f.write(review_body())
    with open(os.path.join(work, "review.lua"), "w") as f:
        f.write(LUA.replace("%BODY%", body_file))
    port = free_port()
    cfg = os.path.join(work, "webhook.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(port=port, cert=cert, key=key))
    hook = Proc("regmirror webhook", [args.binary, "webhook", "--config", cfg], os.path.join(work, "webhook.log"),
                env={**os.environ, "REGMIRROR_LOG": "warn,rustls=error"})
    wait_https(hook, port)
    answer = post(port, body_file)
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    if len(patch) != 8:
        raise SystemExit(f"bench: expected 8 rewrites, got {patch}")
    peers = [("regmirror webhook", hook, port)]
    if subprocess.run(["sh", "-c", "command -v nginx"], capture_output=True).returncode == 0:
        fixed = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer["response"]})
        nginx, nport = start_nginx(work, cert, key, fixed)
        peers.append(("nginx fixed answer", nginx, nport))
    rss_idle = status_kib(hook.pid, "VmRSS")
    samples = {name: [] for name, _, _ in peers}
    for rep in range(args.reps):
        order = peers if rep % 2 == 0 else list(reversed(peers))
        for name, proc, p in order:
            samples[name].append(run_wrk(work, proc, p, args.conns, args.seconds))
        log(f"webhook rep {rep + 1}/{args.reps}: " + ", ".join(
            f"{n} {samples[n][-1]['rps']:.0f}/s p99 {samples[n][-1]['p99_us'] / 1000:.2f} ms "
            f"{samples[n][-1]['cpu_us']:.0f} us CPU each" for n, _, _ in peers))
    hwm = status_kib(hook.pid, "VmHWM")
    load = os.getloadavg()
    rows = {}
    for name, _, _ in peers:
        rows[name] = {"rps": median([s["rps"] for s in samples[name]]),
                      "cpu_us": median([s["cpu_us"] for s in samples[name]]),
                      "p99_ms": median([s["p99_us"] / 1000 for s in samples[name]]),
                      "p50_ms": median([s["p50_us"] / 1000 for s in samples[name]])}
    print(f"Webhook: {platform.node()} {os.cpu_count()} CPUs, load {load[0]:.1f}, median of {args.reps} x {args.seconds} s, "
          f"wrk -t2 -c{args.conns}, a 10-container Pod review (8 rewrites)")
    print(f"{'':24} {'reviews/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/review':>14} {'per core/s':>11}")
    for name, r in rows.items():
        print(f"{name:24} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['cpu_us']:14.0f} {1e6 / r['cpu_us']:11.0f}")
    h = rows["regmirror webhook"]
    if "nginx fixed answer" in rows:
        print(f"regmirror / nginx reviews/s: {h['rps'] / rows['nginx fixed answer']['rps']:.2f}x")
    print(f"regmirror webhook RSS: {rss_idle / 1024:.1f} MiB idle, {hwm / 1024:.1f} MiB peak (VmHWM)")
    print(f"targets: >= 5000 reviews/s {'met' if h['rps'] >= 5000 else 'MISSED'}, "
          f"p99 < 5 ms {'met' if h['p99_ms'] < 5 else 'MISSED'}, RSS < 20 MB {'met' if hwm * 1024 < 20e6 else 'MISSED'}")
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(args.results, f"webhook-{stamp}.json"), "w") as f:
        json.dump({"rows": rows, "samples": samples, "rss_idle_kib": rss_idle, "rss_peak_kib": hwm,
                   "load": load, "reps": args.reps, "seconds": args.seconds, "conns": args.conns}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

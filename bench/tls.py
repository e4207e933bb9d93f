#!/usr/bin/env python3
"""regmirror over HTTPS beside nginx over HTTPS (issue 13's performance rows), one run, one machine.

Started by bench/run.sh with BENCH_TLS=1 (after the loopback benchmark) or BENCH_TLS=only. On
loopback, in one temporary directory:

  upstream   distribution (Debian docker-registry), seeded with a 256 MB random layer
  regmirror  the release binary, its shared listener on HTTPS (tls_cert / tls_key), the blob warm
  nginx      nginx serving the upstream's own blob file over HTTPS (`ssl_*`)
  plain      the same regmirror binary on plain HTTP (its sendfile path), warm: what TLS costs it

Both servers use the same ECDSA P-256 certificate, TLS 1.3 only and the same cipher suite
(TLS_AES_256_GCM_SHA384, the client's first choice; nginx is pinned to it with
`ssl_conf_command Ciphersuites`, and the suite each side negotiated is checked and printed).

Rows, median of --reps repetitions, servers interleaved in each repetition:
  warm blob over HTTPS, 4 clients (wrk -c4 over keep-alive connections): aggregate GB/s and
    server CPU-seconds per GB (utime + stime from /proc, workers included)
  TLS 1.3 new-connection handshakes per second (wrk -c16 with `Connection: close`, so every
    request is a new TCP connection and a full handshake; no session resumption), on a tiny
    answer (`/healthz` on both)

kTLS: the kernel's available ULPs are read from /proc/sys/net/ipv4/tcp_available_ulp and
printed; when "tls" is not among them neither server can hand encryption to the kernel (nginx's
`ssl_conf_command Options KTLS` and rustls's `dangerous_extract_secrets` both need it), so both
encrypt in user space and nginx's `sendfile` is off for TLS.

Results: a table on stdout, bench/results/tls-<timestamp>.json.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers: processes, seeding, distribution)
from bench import GB, MB, Proc, free_port, log, median  # noqa: E402

CIPHER = "TLS_AES_256_GCM_SHA384"


def make_cert(work):
    """One ECDSA P-256 certificate for 127.0.0.1, self-signed (both servers, same files)."""
    cert, key = os.path.join(work, "tls.pem"), os.path.join(work, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def start_nginx_tls(work, blob_file, cert, key):
    port = free_port()
    prefix = os.path.join(work, "nginx-tls")
    os.makedirs(prefix, exist_ok=True)
    temps = "\n".join(f"  {t}_temp_path {prefix}/{t}_temp;" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
{temps}
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites {CIPHER};
    location = /blob {{ default_type application/octet-stream; alias {blob_file}; }}
    location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
""")
    proc = Proc("nginx-tls", ["nginx", "-e", f"{prefix}/error.log", "-p", prefix, "-c", conf],
                os.path.join(work, "nginx-tls.log"))
    proc.port = port
    return proc


def start_regmirror_tls(binary, work, upstream_port, cert, key):
    port = free_port()
    data_dir = os.path.join(work, "regmirror-data")
    conf = os.path.join(work, "regmirror-tls.toml")
    toml = bench.regmirror_toml(port, data_dir, f"127.0.0.1:{upstream_port}")
    # Top-level keys go before the first table.
    head, sep, tables = toml.partition("[[upstream]]")
    head += f'tls_cert = "{cert}"\ntls_key = "{key}"\n\n'
    with open(conf, "w") as f:
        f.write(head + sep + tables)
    proc = Proc("regmirror-tls", [binary, "serve", "--config", conf], os.path.join(work, "regmirror-tls.log"))
    proc.port, proc.data_dir = port, data_dir
    return proc


def curl(port, path, out="/dev/null"):
    r = subprocess.run(["curl", "-sS", "-k", "--noproxy", "*", "-o", out, "-w", "%{http_code} %{size_download}",
                        f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    return r.stdout


def wait_https(proc, path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise SystemExit(f"bench: {proc.name} exited; see {proc.logfile}")
        if curl(proc.port, path).startswith("200"):
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: {proc.name} did not answer {path} over https; see {proc.logfile}")


def negotiated(port):
    out = subprocess.run(["sh", "-c", f"openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null"],
                         capture_output=True, text=True).stdout
    # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"
    line = next((l for l in out.splitlines() if l.startswith("New, ")), "New, ?, Cipher is ?")
    parts = line.split(", ")
    return parts[1], parts[-1].replace("Cipher is ", "")


def wrk_https(work, port, path, conns, seconds, headers=()):
    script = os.path.join(work, "wrk-report.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(bench.WRK_REPORT)
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s", "-s", script]
    for h in headers:
        argv += ["-H", h]
    return bench.wrk_json(argv + [f"https://127.0.0.1:{port}{path}"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    args = ap.parse_args()
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            ulps = f.read().split()
    except OSError:
        ulps = []
    ktls = "tls" in ulps
    work = bench.workdir("regmirror-bench-tls-")
    os.chmod(work, 0o755)  # nginx workers (www-data) read the upstream's blob file
    import atexit
    atexit.register(bench.stop_all)

    upstream = bench.start_distribution(work, "upstream")
    bench.ready(upstream, "distribution")
    blobs, _ = bench.seed(upstream.port, work, False)
    blob = blobs[0]
    cert, key = make_cert(work)
    rm = start_regmirror_tls(args.binary, work, upstream.port, cert, key)
    path = f"/v2/{blob['repo']}/blobs/{blob['digest']}"
    wait_https(rm, "/v2/")
    got = curl(rm.port, path)
    if got != f"200 {blob['size']}":
        raise SystemExit(f"bench: regmirror over https answered {got} for the blob")
    ng = start_nginx_tls(work, bench.distribution_blob_file(upstream.root, blob["digest"]), cert, key)
    wait_https(ng, "/healthz")
    # The same regmirror binary on plain HTTP (its sendfile path), warm: what TLS costs it.
    plain = bench.start_regmirror(args.binary, work, os.path.join(work, "plain-data"), upstream.port, name="regmirror-plain")
    bench.ready(plain, "regmirror (plain)")
    if bench.sha256_of_url(plain.port, path) != blob["digest"]:
        raise SystemExit("bench: plain regmirror served the wrong bytes")
    servers = [("regmirror", rm, path), ("nginx", ng, "/blob")]
    suites = {name: negotiated(p.port) for name, p, _ in servers}
    for name, (proto, cipher) in suites.items():
        log(f"{name}: {proto} {cipher}")
    for _, p, pth in servers:  # both read the file once into the page cache
        curl(p.port, pth)

    raw = {n: {"gbps": [], "cpu_s_per_gb": [], "hs_per_s": [], "cpu_s_per_1k_hs": []} for n, _, _ in servers}
    raw["regmirror-plain"] = {"gbps": [], "cpu_s_per_gb": []}
    for rep in range(args.reps):
        cpu0 = plain.cpu_seconds()
        r = bench.wrk(work, plain.port, path, 4, 4)
        cpu = plain.cpu_seconds() - cpu0
        gb = r["bytes"] / GB
        raw["regmirror-plain"]["gbps"].append(gb / (r["duration_us"] / 1e6))
        raw["regmirror-plain"]["cpu_s_per_gb"].append(cpu / gb)
        order = servers if rep % 2 == 0 else list(reversed(servers))
        for name, p, pth in order:
            cpu0 = p.cpu_seconds()
            r = wrk_https(work, p.port, pth, 4, 4)
            cpu = p.cpu_seconds() - cpu0
            if r["non2xx"] or r["socket_errors"]:
                raise SystemExit(f"bench: wrk against {name}: {r}")
            gb = r["bytes"] / GB
            raw[name]["gbps"].append(gb / (r["duration_us"] / 1e6))
            raw[name]["cpu_s_per_gb"].append(cpu / gb)
        for name, p, _ in order:
            cpu0 = p.cpu_seconds()
            r = wrk_https(work, p.port, "/healthz", 16, 4, headers=("Connection: close",))
            cpu = p.cpu_seconds() - cpu0
            n = r["requests"]
            raw[name]["hs_per_s"].append(n / (r["duration_us"] / 1e6))
            raw[name]["cpu_s_per_1k_hs"].append(cpu / n * 1000 if n else float("nan"))
        log(f"rep {rep + 1}: " + ", ".join(
            f"{n} {raw[n]['gbps'][-1]:.2f} GB/s {raw[n]['hs_per_s'][-1]:.0f} hs/s" for n, _, _ in servers))
    med = {n: {k: median(v) for k, v in raw[n].items()} for n in raw}
    r, n = med["regmirror"], med["nginx"]
    rows = [
        ("warm blob over HTTPS 256MB, 4 clients, GB/s", r["gbps"], n["gbps"], r["gbps"] / n["gbps"], ">= 1.0"),
        ("server CPU-s per GB (same)", r["cpu_s_per_gb"], n["cpu_s_per_gb"], r["cpu_s_per_gb"] / n["cpu_s_per_gb"], "<= 1.2"),
        ("TLS 1.3 new-connection handshakes/s (16 conns)", r["hs_per_s"], n["hs_per_s"], r["hs_per_s"] / n["hs_per_s"], ">= 1.0"),
        ("  regmirror HTTPS vs its plain-HTTP sendfile path, GB/s", r["gbps"], med["regmirror-plain"]["gbps"],
         r["gbps"] / med["regmirror-plain"]["gbps"], "report"),
        ("  regmirror HTTPS vs its plain-HTTP sendfile path, CPU-s/GB", r["cpu_s_per_gb"],
         med["regmirror-plain"]["cpu_s_per_gb"], r["cpu_s_per_gb"] / med["regmirror-plain"]["cpu_s_per_gb"], "report"),
        ("server CPU-s per 1000 handshakes", r["cpu_s_per_1k_hs"], n["cpu_s_per_1k_hs"],
         r["cpu_s_per_1k_hs"] / n["cpu_s_per_1k_hs"], "report"),
    ]
    print()
    print(f"TLS: {platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}, median of {args.reps}; "
          f"kTLS {'available' if ktls else 'NOT available (tcp_available_ulp: ' + ' '.join(ulps) + ')'}; "
          f"negotiated: " + ", ".join(f"{k} {v[0]} {v[1]}" for k, v in suites.items()))
    print(f"{'measure':58} {'regmirror':>10} {'peer':>10} {'ratio':>7}  target  (peer: nginx over TLS; 'vs plain' rows: regmirror on plain HTTP)")
    for m, a, b, ratio, target in rows:
        met = "" if target == "report" else (
            "met" if (ratio >= float(target[3:]) if target.startswith(">=") else ratio <= float(target[3:])) else "MISSED")
        print(f"{m:58} {a:10.3f} {b:10.3f} {ratio:7.2f}  {target} {met}")
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.join(args.results, f"tls-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"ktls_available": ktls, "ulps": ulps, "negotiated": suites, "raw": raw, "median": med,
                   "rows": [{"measure": m, "regmirror": a, "nginx": b, "ratio": ra, "target": t} for m, a, b, ra, t in rows]},
                  f, indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()

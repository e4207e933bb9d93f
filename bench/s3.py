#!/usr/bin/env python3
"""regmirror on S3 storage beside the S3 server itself and nginx (issue 14's storage rows), one run.

Started by bench/run.sh with BENCH_S3=1 (after the loopback benchmark) or BENCH_S3=only. On
loopback, in one temporary directory:

  upstream   distribution (Debian docker-registry), seeded with a 256 MB random layer
  s3s-fs     a real S3 server (SigV4 checked), bucket `regmirror`
  bucket     regmirror with storage = "s3" and no local tier: every warm GET streams the object
             from the bucket, hashing it (verified reads)
  tier       regmirror on the same bucket with local_cache_size: warm GETs are sendfile(2) from
             its local tier
  direct     a presigned GET URL of the same object, straight from s3s-fs (what a client
             redirected by `redirect_blobs_over` fetches): the bucket row's peer
  nginx      nginx with sendfile serving the upstream's own blob file: the tier row's peer

Rows, median of --reps repetitions, servers interleaved: aggregate GB/s of wrk -c4 (keep-alive).
Targets: bucket >= 0.8x direct, tier >= 1.0x nginx.

Results: a table on stdout, bench/results/s3-<timestamp>.json.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers: processes, seeding, distribution)
from bench import GB, Proc, free_port, log, median  # noqa: E402

KEY_ID, SECRET = "regmirror-bench", "regmirror-bench-secret"


def s3s_fs_binary():
    local = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target/tools/bin/s3s-fs")
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("s3s-fs")
    if not found:
        raise SystemExit("bench: s3s-fs missing (bench/run.sh installs it into target/tools)")
    return found


def start_s3(work):
    root = os.path.join(work, "s3")
    os.makedirs(os.path.join(root, "regmirror"), exist_ok=True)
    port = free_port()
    proc = Proc("s3s-fs", [s3s_fs_binary(), "--host", "127.0.0.1", "--port", str(port),
                           "--access-key", KEY_ID, "--secret-key", SECRET, root], os.path.join(work, "s3s-fs.log"))
    proc.port = port
    return proc


def start_regmirror_s3(binary, work, name, upstream_port, s3_port, extra_s3=""):
    port = free_port()
    data_dir = os.path.join(work, f"{name}-data")
    toml = bench.regmirror_toml(port, data_dir, f"127.0.0.1:{upstream_port}")
    head, sep, tables = toml.partition("[[upstream]]")
    head += 'storage = "s3"\n\n'
    s3 = (f'[s3]\nbucket = "regmirror"\nprefix = "bench/"\nregion = "us-east-1"\n'
          f'endpoint = "http://127.0.0.1:{s3_port}"\npath_style = true\n{extra_s3}\n')
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(head + sep + tables + s3)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)
    proc = Proc(name, [binary, "serve", "--config", conf], os.path.join(work, f"{name}.log"), env=env)
    proc.port, proc.data_dir = port, data_dir
    return proc


def wrk_url(work, url, conns, seconds):
    script = os.path.join(work, "wrk-report.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(bench.WRK_REPORT)
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s", "-s", script, url]
    return bench.wrk_json(argv)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--seconds", type=int, default=4)
    args = ap.parse_args()
    work = bench.workdir("regmirror-bench-s3-")
    os.chmod(work, 0o755)  # nginx workers (www-data) read the upstream's blob file
    import atexit
    atexit.register(bench.stop_all)

    upstream = bench.start_distribution(work, "upstream")
    bench.ready(upstream, "distribution")
    blobs, _ = bench.seed(upstream.port, work, False)
    blob = blobs[0]
    path = f"/v2/{blob['repo']}/blobs/{blob['digest']}"
    s3 = start_s3(work)
    filler = start_regmirror_s3(args.binary, work, "bucket", upstream.port, s3.port)
    bench.ready(filler, "regmirror (bucket)")
    if bench.sha256_of_url(filler.port, path) != blob["digest"]:
        raise SystemExit("bench: regmirror on S3 served the wrong bytes (cold)")
    if bench.sha256_of_url(filler.port, path) != blob["digest"]:
        raise SystemExit("bench: regmirror on S3 served the wrong bytes (warm, from the bucket)")
    tier = start_regmirror_s3(args.binary, work, "tier", upstream.port, s3.port, 'local_cache_size = "1GiB"\n')
    bench.ready(tier, "regmirror (tier)")
    if bench.sha256_of_url(tier.port, path) != blob["digest"]:
        raise SystemExit("bench: regmirror's local tier served the wrong bytes")
    # The presigned URL of the object, as a redirecting mirror hands it out.
    signer = start_regmirror_s3(args.binary, work, "signer", upstream.port, s3.port,
                                'redirect_blobs_over = "1"\npresign_secs = 3600\n')
    bench.ready(signer, "regmirror (signer)")
    status, headers, _ = bench.http_request(signer.port, "GET", path)
    if status != 307:
        raise SystemExit(f"bench: the redirecting mirror answered {status}, not 307")
    direct = headers["location"]
    u = urllib.parse.urlsplit(direct)
    if u.port != s3.port:
        raise SystemExit(f"bench: presigned URL {direct} is not the S3 server's")
    signer.stop()
    ng = bench.start_nginx(work, {"big": bench.distribution_blob_file(upstream.root, blob["digest"])})
    for _ in range(200):
        if subprocess.run(["curl", "-sSfI", "--noproxy", "*", "-o", "/dev/null", f"http://127.0.0.1:{ng.port}/blob-big"]).returncode == 0:
            break
        import time
        time.sleep(0.05)

    servers = [
        ("bucket", f"http://127.0.0.1:{filler.port}{path}", filler),
        ("direct", direct, s3),
        ("tier", f"http://127.0.0.1:{tier.port}{path}", tier),
        ("nginx", f"http://127.0.0.1:{ng.port}/blob-big", ng),
    ]
    for name, url, _ in servers:  # each reads its source once (page cache)
        subprocess.run(["curl", "-sSf", "--noproxy", "*", "-o", "/dev/null", url], check=True)
    raw = {n: {"gbps": [], "cpu_s_per_gb": []} for n, _, _ in servers}
    for rep in range(args.reps):
        order = servers if rep % 2 == 0 else list(reversed(servers))
        for name, url, p in order:
            cpu0 = p.cpu_seconds()
            r = wrk_url(work, url, 4, args.seconds)
            cpu = p.cpu_seconds() - cpu0
            if r["non2xx"] or r["socket_errors"]:
                raise SystemExit(f"bench: wrk against {name}: {r}")
            gb = r["bytes"] / GB
            raw[name]["gbps"].append(gb / (r["duration_us"] / 1e6))
            raw[name]["cpu_s_per_gb"].append(cpu / gb if gb else float("nan"))
        log(f"rep {rep + 1}: " + ", ".join(f"{n} {raw[n]['gbps'][-1]:.2f} GB/s" for n, _, _ in servers))
    med = {n: {k: median(v) for k, v in raw[n].items()} for n in raw}
    rows = [
        ("warm blob from S3, no local tier, 4 clients, GB/s", med["bucket"]["gbps"], med["direct"]["gbps"], 0.8,
         "direct presigned GET from s3s-fs"),
        ("warm blob from the local tier, 4 clients, GB/s", med["tier"]["gbps"], med["nginx"]["gbps"], 1.0,
         "nginx sendfile"),
    ]
    load = os.getloadavg()
    print()
    print(f"S3: {platform.node()} {os.cpu_count()} CPUs, median of {args.reps}, 256 MB blob, "
          f"load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'measure':52} {'regmirror':>10} {'peer':>10} {'ratio':>7}  target  peer")
    out_rows = []
    for m, a, b, target, peer in rows:
        ratio = a / b
        met = "met" if ratio >= target else "MISSED"
        print(f"{m:52} {a:10.3f} {b:10.3f} {ratio:7.2f}  >= {target} {met}  {peer}")
        out_rows.append({"measure": m, "regmirror": a, "peer": b, "peer_is": peer, "ratio": ratio, "target": target})
    print(f"{'  server CPU-s per GB: bucket / direct / tier / nginx':52} " + " / ".join(
        f"{med[n]['cpu_s_per_gb']:.2f}" for n in ("bucket", "direct", "tier", "nginx")))
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.join(args.results, f"s3-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"raw": raw, "median": med, "rows": out_rows, "load": load}, f, indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()

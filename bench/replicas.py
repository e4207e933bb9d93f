#!/usr/bin/env python3
"""regmirror replicas benchmark: three replicas coordinated by Redis beside one replica alone.

On loopback: distribution 2.8 (Debian docker-registry) as the upstream, one redis-server, one
regmirror alone and three regmirror replicas sharing that Redis (own ports, own data
directories). Per repetition (order alternating), a cold blob no replica holds is pulled by 60
curl clients at once: all 60 on the single replica, or 20 on each of the three. Reported: the
median wall time of each storm, the ratio 3 replicas / 1 replica (target <= 1.3x), and the upstream
GETs of each blob from distribution's access log (target: 1 for the fleet). Then warm
manifest-by-tag req/s (wrk) on a replica with Redis-shared tag records beside the one alone
(target >= 0.8x).

    python3 bench/replicas.py --binary target/release/regmirror [--mb 128] [--reps 3]

Everything runs on 127.0.0.1 in a temporary directory; every process started is stopped by PID.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (processes, registries, pushes, wrk)

MB = 1024 * 1024
REPO = "bench/replicas"
TAG = "v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def start_redis(work):
    port = bench.free_port()
    proc = bench.Proc("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                "--save", "", "--appendonly", "no"], os.path.join(work, "redis.log"))
    for _ in range(300):
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            proc.port = port
            return proc
        except OSError:
            time.sleep(0.01)
    raise SystemExit("replicas bench: redis-server did not start")


def start_mirror(binary, work, name, upstream_port, redis_port=None):
    port = bench.free_port()
    data = os.path.join(work, f"data-{name}")
    os.makedirs(data, exist_ok=True)
    conf = os.path.join(work, f"{name}.toml")
    text = bench.regmirror_toml(port, data, f"127.0.0.1:{upstream_port}")
    if redis_port:
        top, rest = text.split("[[upstream]]", 1)
        text = top + f'redis_url = "redis://127.0.0.1:{redis_port}"\nlease_secs = 30\n\n[[upstream]]' + rest
    with open(conf, "w") as f:
        f.write(text)
    proc = bench.Proc(name, [binary, "serve", "--config", conf], os.path.join(work, f"{name}.log"))
    proc.port = port
    bench.ready(proc, name)
    return proc


def storm(ports, path, clients):
    """`clients` curl GETs of `path` at once, spread over `ports`; (wall s, [(code, bytes)])."""
    t0 = time.perf_counter()
    procs = []
    for i in range(clients):
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                f"http://127.0.0.1:{ports[i % len(ports)]}{path}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    out = []
    for p in procs:
        o, _ = p.communicate()
        code, size = (o.decode().split() + ["0", "0"])[:2]
        out.append((int(code), int(size)))
    return time.perf_counter() - t0, out


def upstream_gets(logfile, digest):
    with open(logfile, "rb") as f:
        text = f.read().decode(errors="replace")
    return len(re.findall(r'"GET /v2/[^ ]*/blobs/' + re.escape(digest) + r' HTTP', text))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--mb", type=int, default=128, help="size of each cold blob")
    ap.add_argument("--clients", type=int, default=60)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "3")))
    ap.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    work = bench.workdir("regmirror-replicas-bench-")
    raw = {"one": [], "three": [], "one_gets": [], "three_gets": [], "tag_local": [], "tag_shared": []}
    try:
        upstream = bench.start_distribution(work, "upstream")
        bench.ready(upstream, "upstream")
        blobs = []
        for i in range(2 * args.reps):
            path = os.path.join(work, f"blob{i}.tar")
            d, size = bench.random_layer(path, args.mb * MB)
            with open(path, "rb") as f:
                bench.push_blob(upstream.port, REPO, d, f, size)
            os.remove(path)
            blobs.append((d, size))
        layer = bench.small_layer("replicas bench")
        bench.push_blob(upstream.port, REPO, bench.digest_of(layer), layer, len(layer))
        manifest = bench.image_manifest(upstream.port, REPO, "amd64", bench.digest_of(layer), len(layer))
        bench.push_manifest(upstream.port, REPO, TAG, manifest, OCI_MANIFEST)
        redis = start_redis(work)
        alone = start_mirror(args.binary, work, "alone", upstream.port)
        fleet = [start_mirror(args.binary, work, f"replica{i}", upstream.port, redis.port) for i in range(3)]
        time.sleep(0.5)  # every replica has read the fleet's secret from Redis
        for rep in range(args.reps):
            runs = [("one", [alone.port]), ("three", [m.port for m in fleet])]
            if rep % 2:
                runs.reverse()
            for name, ports in runs:
                digest, size = blobs.pop()
                wall, results = storm(ports, f"/v2/{REPO}/blobs/{digest}", args.clients)
                bad = [r for r in results if r != (200, size)]
                if bad:
                    raise SystemExit(f"replicas bench: {name}: {len(bad)} clients failed: {bad[:3]}")
                raw[name].append(wall)
                raw[f"{name}_gets"].append(upstream_gets(upstream.logfile, digest))
            bench.log(f"replicas rep {rep + 1}: one {raw['one'][-1]:.2f} s ({raw['one_gets'][-1]} GET), "
                      f"three {raw['three'][-1]:.2f} s ({raw['three_gets'][-1]} GET)")
        path = f"/v2/{REPO}/manifests/{TAG}"
        for p in [alone, fleet[0]]:
            bench.http_request(p.port, "GET", path, headers={"Accept": OCI_MANIFEST})
        for rep in range(args.reps):
            order = [("tag_local", alone), ("tag_shared", fleet[0])]
            if rep % 2:
                order.reverse()
            for name, p in order:
                r = bench.wrk(work, p.port, path, 64, args.seconds, [f"Accept: {OCI_MANIFEST}"])
                if r["non2xx"] or r["socket_errors"]:
                    raise SystemExit(f"replicas bench: wrk {name}: {r}")
                raw[name].append(r["requests"] / (r["duration_us"] / 1e6))
    finally:
        bench.stop_all()
    med = {k: bench.median(v) for k, v in raw.items()}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ratio = med["three"] / med["one"]
    tag_ratio = med["tag_shared"] / med["tag_local"]
    print(f"\ncold storm of {args.clients} curl clients, one {args.mb} MiB blob, {args.reps} reps (median); "
          f"{when}; load {os.getloadavg()[0]:.1f}\n")
    print("| setup | wall s | upstream GETs per blob | vs 1 replica | target | met |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 replica, no Redis | {med['one']:.2f} | {max(raw['one_gets'])} | 1.00x | | |")
    print(f"| 3 replicas, one Redis | {med['three']:.2f} | {max(raw['three_gets'])} | {ratio:.2f}x | <= 1.3x, 1 GET | "
          f"{'yes' if ratio <= 1.3 and max(raw['three_gets']) == 1 else 'NO'} |")
    print(f"\nwarm manifest by tag, wrk -c64, {args.seconds} s x {args.reps} (median)\n")
    print("| replica | req/s | vs local | target | met |")
    print("|---|---|---|---|---|")
    print(f"| alone (local tag records) | {med['tag_local']:.0f} | 1.00x | | |")
    print(f"| in the fleet (Redis-shared records) | {med['tag_shared']:.0f} | {tag_ratio:.2f}x | >= 0.8x | "
          f"{'yes' if tag_ratio >= 0.8 else 'NO'} |")
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, time.strftime("replicas-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump({"raw": raw, "median": med, "mb": args.mb, "clients": args.clients, "reps": args.reps}, f, indent=1)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()

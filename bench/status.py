#!/usr/bin/env python3
"""regmirror status-page benchmark: what the page costs the hot path, and how fast its API is.

On loopback, in one temporary directory:
1. Hot path. distribution 2.8 as the upstream with a small image; two regmirror processes of the
   same binary in front of it: `ui = false`, and the status page on. Warm manifest-by-tag GETs with
   wrk -c64 (3 s per run, BENCH_REPS repetitions, order rotating, median reported) against:
     ui off                 the page and its counters switched off;
     ui on, nobody looking  the counters recorded on every request;
     ui on, page open       plus a client fetching /api/v1/status and / once a second, as the
                            page open in a browser does (it refreshes every 5 s by default).
   Target (issue #16): page open within 3% of without (>= 0.97x).
2. /api/v1/status with 100k cached objects: a data directory generated on disk in the layout of
   src/storage (2,000 images x 50 objects: manifest, config, 48 layers; tag records), a regmirror
   started on it (the work directory is in /dev/shm when it exists), the background scan awaited, then 300 sequential GETs of /api/v1/status (and
   300 with a search ?q=) over one keep-alive connection. Target: < 5 ms.

    python3 bench/status.py --binary target/release/regmirror [--reps 5] [--seconds 3]
    BENCH_STATUS=1|only bench/run.sh

Every process started is stopped by PID at exit.
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the loopback benchmark's helpers: processes, registries, wrk)

OCI_MANIFEST = bench.OCI_MANIFEST
REPO, TAG = "bench/app", "v1"


def start_mirror(binary, work, upstream, name, extra, data=None):
    port = bench.free_port()
    data = data or os.path.join(work, f"{name}-data")
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(extra)
        f.write(bench.regmirror_toml(port, data, upstream))
    proc = bench.Proc(name, [binary, "serve", "--config", conf], os.path.join(work, f"{name}.log"))
    proc.port = port
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            status, _, _ = bench.http_request(port, "GET", "/healthz", timeout=2)
            if status == 200:
                return proc
        except OSError:
            pass
        if not proc.alive():
            break
        time.sleep(0.02)
    raise SystemExit(f"status bench: {name} did not start; see {proc.logfile}")


class Watcher(threading.Thread):
    """What a browser with the page open does: the API and the page, once a second."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.fetches, self.failures = port, threading.Event(), 0, 0

    def run(self):
        while not self.stop.is_set():
            t0 = time.perf_counter()
            for path in ("/api/v1/status", "/"):
                try:
                    status, _, _ = bench.http_request(self.port, "GET", path, timeout=5)
                    self.fetches += 1
                    self.failures += status != 200
                except OSError:
                    self.failures += 1
            self.stop.wait(max(0.0, 1.0 - (time.perf_counter() - t0)))


def hot_path(args, work, raw):
    upstream = bench.start_distribution(work, "upstream")
    bench.ready(upstream, "upstream")
    layer = bench.small_layer("status bench")
    bench.push_blob(upstream.port, REPO, bench.digest_of(layer), layer, len(layer))
    manifest = bench.image_manifest(upstream.port, REPO, "amd64", bench.digest_of(layer), len(layer))
    bench.push_manifest(upstream.port, REPO, TAG, manifest, OCI_MANIFEST)
    up = f"127.0.0.1:{upstream.port}"
    off = start_mirror(args.binary, work, up, "ui-off", "ui = false\n")
    on = start_mirror(args.binary, work, up, "ui-on", "ui = true\n")
    path = f"/v2/{REPO}/manifests/{TAG}"
    for p in (off, on):
        status, _, _ = bench.http_request(p.port, "GET", path, headers={"Accept": OCI_MANIFEST})
        if status != 200:
            raise SystemExit(f"status bench: warm-up of {p.name} answered {status}")
    status, _, _ = bench.http_request(on.port, "GET", "/api/v1/status")
    if status != 200:
        raise SystemExit(f"status bench: /api/v1/status answered {status}")
    runs = {"off": off, "on_idle": on, "on_watched": on}
    order = list(runs)
    watched = {"fetches": 0, "failures": 0}
    for rep in range(args.reps):
        for name in order[rep % 3:] + order[:rep % 3]:
            watcher = None
            if name == "on_watched":
                watcher = Watcher(on.port)
                watcher.start()
            r = bench.wrk(work, runs[name].port, path, args.connections, args.seconds, [f"Accept: {OCI_MANIFEST}"])
            if watcher:
                watcher.stop.set()
                watcher.join()
                watched["fetches"] += watcher.fetches
                watched["failures"] += watcher.failures
            if r["non2xx"] or r["socket_errors"]:
                raise SystemExit(f"status bench: wrk against {name}: {r}")
            raw[name].append(r["requests"] / (r["duration_us"] / 1e6))
        bench.log("status rep %d: %s" % (rep + 1, ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in raw.items())))
    if watched["failures"]:
        raise SystemExit(f"status bench: the page client saw {watched['failures']} failures")
    for p in (off, on, upstream):
        p.stop()
    return watched


def seed_data_dir(data, images, layers_per_image):
    """Write `images` cached images straight into a data directory, in the storage layout of
    src/storage (keys are paths under the data dir): blobs, manifests (media type line + bytes),
    tag records. Returns the number of blobs and manifests written."""
    upstream = "127.0.0.1:5999"
    objects = 0

    def put(key, body):
        path = os.path.join(data, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(body)

    def blob(body):
        d = hashlib.sha256(body).hexdigest()
        put(f"blobs/sha256/{d[:2]}/{d}", body)
        return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{d}", "size": len(body)}

    for i in range(images):
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
        cdesc = blob(config)
        cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
        layers = [blob(f"image {i} layer {j}".encode() * 8) for j in range(layers_per_image)]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": layers}).encode()
        d = hashlib.sha256(body).hexdigest()
        put(f"manifests/sha256/{d[:2]}/{d}", OCI_MANIFEST.encode() + b"\n" + body)
        record = {"digest": f"sha256:{d}", "media_type": OCI_MANIFEST, "size": len(body)}
        put(f"tags/{upstream}/bench/app{i}/_tag/v1", json.dumps(record).encode())
        objects += 2 + layers_per_image
    return upstream, objects


def latencies(port, path, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        out.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            raise SystemExit(f"status bench: {path} answered {resp.status}")
    conn.close()
    return sorted(out), body


def api_latency(args, work):
    data = os.path.join(work, "big-data")
    t0 = time.perf_counter()
    upstream, objects = seed_data_dir(data, args.images, 48)
    seeded_in = time.perf_counter() - t0
    bench.log(f"status: seeded {objects} objects in {seeded_in:.1f} s")
    mirror = start_mirror(args.binary, work, upstream, "ui-big", "ui_refresh_secs = 600\n", data=data)
    deadline = time.time() + 300
    while True:
        status, _, body = bench.http_request(mirror.port, "GET", "/api/v1/status?limit=1")
        s = json.loads(body)
        if s["images"]["total"] >= args.images and s["cache"]["objects"] is not None:
            break
        if time.time() > deadline:
            raise SystemExit(f"status bench: the scan did not finish: {s['images']}")
        time.sleep(0.5)
    res = {"objects": s["cache"]["objects"], "images": s["images"]["total"], "scan_seconds": s["images"]["scan_seconds"]}
    for name, path in (("default", "/api/v1/status"), ("search", "/api/v1/status?q=app19&limit=50")):
        ms, body = latencies(mirror.port, path, args.samples)
        res[name] = {"median_ms": ms[len(ms) // 2], "p99_ms": ms[int(len(ms) * 0.99) - 1], "bytes": len(body)}
    mirror.stop()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--images", type=int, default=2000, help="images seeded (50 objects each)")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    # The generated data directory is 100k small files: in memory (/dev/shm) when it is there,
    # which also keeps the numbers from depending on the disk.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = tempfile.mkdtemp(prefix="regmirror-status-bench-", dir=shm)
    raw = {"off": [], "on_idle": [], "on_watched": []}
    try:
        watched = hot_path(args, work, raw)
        api = api_latency(args, work)
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: bench.median(v) for k, v in raw.items()}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\nwarm manifest-by-tag GET, wrk -c{args.connections}, {args.seconds} s x {args.reps} (median); {when}; "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| mirror | req/s | vs ui off | per-rep ratio min-max | target | met |")
    print("|---|---|---|---|---|---|")
    print(f"| ui = false | {med['off']:.0f} | 1.00x | | | |")
    rows = {}
    for key, label, target in (("on_idle", "ui on, nobody looking", None),
                               ("on_watched", "ui on, page + API fetched every second", 0.97)):
        ratio = med[key] / med["off"]
        reps = [a / b for a, b in zip(raw[key], raw["off"])]
        rows[key] = {"req_per_s": med[key], "ratio": ratio, "rep_ratios": reps}
        met = "" if target is None else ("yes" if ratio >= target else "NO")
        print(f"| {label} | {med[key]:.0f} | {ratio:.2f}x | {min(reps):.2f}-{max(reps):.2f} | "
              f"{'>= %.2fx' % target if target else ''} | {met} |")
    print(f"\n(page client: {watched['fetches']} fetches, none failed)\n")
    print(f"/api/v1/status with {api['objects']} cached objects ({api['images']} images; background scan "
          f"{api['scan_seconds']:.1f} s), {args.samples} sequential GETs\n")
    print("| request | median | p99 | body | target | met |")
    print("|---|---|---|---|---|---|")
    for key, label in (("default", "/api/v1/status"), ("search", "/api/v1/status?q=...&limit=50")):
        r = api[key]
        print(f"| {label} | {r['median_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['bytes']} B | < 5 ms | "
              f"{'yes' if r['p99_ms'] < 5 else ('median only' if r['median_ms'] < 5 else 'NO')} |")
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, time.strftime("status-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump({"raw_req_per_s": raw, "median": med, "rows": rows, "api": api, "reps": args.reps,
                   "seconds": args.seconds, "connections": args.connections}, f, indent=1)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()

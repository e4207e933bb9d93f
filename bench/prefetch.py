#!/usr/bin/env python3
"""regmirror prefetch benchmark: `regmirror prefetch` of N images through a cold mirror, beside
`skopeo copy` of the same images straight from the upstream into one local OCI layout.

On loopback: distribution 2.8 as the upstream holds N single-platform images; every image has a
base layer shared by all (--shared-mb), a layer of its own (--own-mb) and a config. Per repetition
(order alternating): skopeo copies image after image into a `dir:` each (bytes as received: the
shared layer is fetched once per image), and again into one `oci:` layout (blobs it holds are not
fetched again, but skopeo gzips uncompressed layers for an OCI layout: CPU-bound); a fresh
regmirror on an empty data directory is started and `regmirror prefetch --mirror` pulls the whole
list. Reported: the median wall time of each, the ratio skopeo (dir:) / prefetch (>= 0.9 is the target: prefetch no more
than ~10% slower than skopeo), and the upstream blob GETs per blob during the prefetch (from the
upstream's access log; 1 is the target).

    python3 bench/prefetch.py --binary target/release/regmirror [--images 8] [--reps 3]

Everything runs on 127.0.0.1 in a temporary directory; every process started is stopped by PID.
"""

import argparse
import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the loopback benchmark's helpers: processes, registries, pushes)

MB = 1024 * 1024


def seed(port, work, n, shared_mb, own_mb):
    """Push N images sharing one base layer; returns their repositories and every blob digest."""
    shared_path = os.path.join(work, "shared.tar")
    shared, shared_size = bench.random_layer(shared_path, shared_mb * MB)
    repos, blobs = [], {shared}
    for i in range(n):
        repo = f"bench/prefetch{i}"
        with open(shared_path, "rb") as f:
            bench.push_blob(port, repo, shared, f, shared_size)
        own_path = os.path.join(work, f"own{i}.tar")
        own, own_size = bench.random_layer(own_path, own_mb * MB)
        with open(own_path, "rb") as f:
            bench.push_blob(port, repo, own, f, own_size)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [shared, own]}}).encode()
        cd = bench.digest_of(config)
        bench.push_blob(port, repo, cd, config, len(config))
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": bench.OCI_MANIFEST,
            "config": {"mediaType": bench.OCI_CONFIG, "digest": cd, "size": len(config)},
            "layers": [{"mediaType": bench.OCI_LAYER, "digest": shared, "size": shared_size},
                       {"mediaType": bench.OCI_LAYER, "digest": own, "size": own_size}],
        }).encode()
        bench.push_manifest(port, repo, "v1", manifest, bench.OCI_MANIFEST)
        repos.append(repo)
        blobs |= {own, cd}
        os.remove(own_path)
    os.remove(shared_path)
    return repos, sorted(blobs), shared_mb * MB + n * own_mb * MB


def blob_gets(logfile, start_offset):
    """Upstream blob GETs (digest -> count) logged after `start_offset` bytes of the log."""
    with open(logfile, "rb") as f:
        f.seek(start_offset)
        text = f.read().decode(errors="replace")
    counts = {}
    for m in re.finditer(r'"GET /v2/[^ ]*/blobs/(sha256:[0-9a-f]{64}) HTTP', text):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def skopeo_run(work, up_port, repos, rep, transport):
    """skopeo copies image after image: `dir` (a directory per image, bytes as received) or `oci`
    (one layout: blobs it holds are not fetched again, but skopeo gzips uncompressed layers for it)."""
    dest = os.path.join(work, f"skopeo-{transport}-{rep}")
    os.makedirs(dest, exist_ok=True)
    t = time.perf_counter()
    for r in repos:
        name = r.replace("/", "-")
        target = f"dir:{dest}/{name}" if transport == "dir" else f"oci:{dest}:{name}"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", "--retry-times=0",
                        f"docker://127.0.0.1:{up_port}/{r}:v1", target],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**os.environ, "REGISTRY_AUTH_FILE": os.path.join(work, "auth.json")})
    wall = time.perf_counter() - t
    shutil.rmtree(dest, ignore_errors=True)
    return wall


def prefetch_run(binary, work, upstream, repos, rep, concurrency):
    data = os.path.join(work, f"data-{rep}")
    mirror = bench.start_regmirror(binary, work, data, upstream.port, name=f"regmirror-{rep}")
    bench.ready(mirror, "regmirror")
    offset = os.path.getsize(upstream.logfile)
    images = [f"127.0.0.1:{upstream.port}/{r}:v1" for r in repos]
    t = time.perf_counter()
    out = subprocess.run([binary, "prefetch", "--mirror", f"http://127.0.0.1:{mirror.port}", "--quiet",
                          "--concurrency", str(concurrency), *images], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"bench-prefetch: prefetch failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    mirror.stop()
    shutil.rmtree(data, ignore_errors=True)
    return wall, blob_gets(upstream.logfile, offset)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True, help="the regmirror release binary")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--shared-mb", type=int, default=64)
    ap.add_argument("--own-mb", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "3")))
    ap.add_argument("--results", help="directory for prefetch-<timestamp>.json")
    args = ap.parse_args()
    atexit.register(bench.stop_all)
    work = tempfile.mkdtemp(prefix="regmirror-bench-prefetch-")
    upstream = bench.start_distribution(work, "upstream")
    bench.ready(upstream, "distribution")
    bench.log(f"seeding {args.images} images ({args.shared_mb} MB shared + {args.own_mb} MB each)")
    repos, blobs, total = seed(upstream.port, work, args.images, args.shared_mb, args.own_mb)
    skopeo, skopeo_oci, prefetch, worst = [], [], [], 0
    for rep in range(args.reps):
        order = ["skopeo", "prefetch", "skopeo-oci"] if rep % 2 == 0 else ["prefetch", "skopeo", "skopeo-oci"]
        for what in order:
            if what == "skopeo":
                skopeo.append(skopeo_run(work, upstream.port, repos, rep, "dir"))
            elif what == "skopeo-oci":
                skopeo_oci.append(skopeo_run(work, upstream.port, repos, rep, "oci"))
            else:
                wall, gets = prefetch_run(args.binary, work, upstream, repos, rep, args.concurrency)
                prefetch.append(wall)
                missing = [b for b in blobs if gets.get(b, 0) == 0]
                if missing:
                    raise SystemExit(f"bench-prefetch: the access log shows no GET of {missing[:3]}")
                worst = max(worst, max(gets.values()))
        bench.log(f"rep {rep + 1}/{args.reps}: skopeo dir: {skopeo[-1]:.2f} s, oci: {skopeo_oci[-1]:.2f} s, "
                  f"prefetch {prefetch[-1]:.2f} s")
    s, p, so = statistics.median(skopeo), statistics.median(prefetch), statistics.median(skopeo_oci)
    ratio = s / p
    print(f"\nprefetch benchmark | {args.images} images, {len(blobs)} blobs, {total / MB:.0f} MB distinct | "
          f"median of {args.reps} | {os.cpu_count()} CPUs")
    print(f"{'measure':<58} {'value':>10}  target")
    print(f"{'skopeo copy, image after image, dir: per image (the peer)':<58} {s:>8.2f} s")
    print(f"{'skopeo copy, image after image into one oci: layout (gzips)':<58} {so:>8.2f} s")
    print(f"{'regmirror prefetch --mirror (cold mirror), concurrency ' + str(args.concurrency):<58} {p:>8.2f} s")
    print(f"{'  skopeo / prefetch':<58} {ratio:>9.2f}x  >= 0.9x {'met' if ratio >= 0.9 else 'MISSED'}")
    print(f"{'  prefetch MB/s':<58} {total / MB / p:>10.0f}")
    print(f"{'  upstream GETs per blob during prefetch (max)':<58} {worst:>10}  1 {'met' if worst == 1 else 'MISSED'}")
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        path = os.path.join(args.results, time.strftime("prefetch-%Y%m%dT%H%M%SZ.json", time.gmtime()))
        with open(path, "w") as f:
            json.dump({"images": args.images, "blobs": len(blobs), "bytes": total, "skopeo_dir_s": skopeo, "skopeo_oci_s": skopeo_oci,
                       "prefetch_s": prefetch, "ratio": ratio, "max_gets_per_blob": worst}, f, indent=1)
        print(f"raw results: {path}")
    bench.stop_all()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

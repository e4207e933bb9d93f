#!/usr/bin/env python3
"""regmirror mixed-load benchmark: how many client requests become upstream requests.

Issue #12 found that under a 400-connection mixed load every request for a missing tag and every
`tags/list` went upstream (28,500 client requests for one missing tag became ~700 upstream
requests a minute). This runs that load against each mirror side by side, on loopback: Debian's
distribution 2.8 as the upstream, regmirror and distribution in proxy mode as mirrors (each warmed
with the image first), then `wrk` with N connections for S seconds, each connection cycling
through four requests:

  1. GET a manifest by a tag the upstream does not have   (404 expected)
  2. GET the repository's tags/list
  3. GET the image's manifest by tag                      (warm)
  4. GET the image's layer blob                           (warm)

Counted: client requests (wrk), and the upstream's requests during the load from its access log
(by kind, from the mirror's User-Agent). Printed side by side with ratios.

    python3 bench/mixed.py --binary target/release/regmirror [--connections 400] [--seconds 30]

Everything runs on 127.0.0.1 in a temporary directory; every process started is stopped by PID.
"""

import argparse
import collections
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the loopback benchmark's helpers: processes, registries, pushes)

REPO = "bench/mixed"
TAG = "latest"
MISSING = "no-such-tag"

WRK_SCRIPT = r'''
local paths = {}
local accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
local counter = 0
init = function(args)
  for i, p in ipairs(args) do paths[i] = p end
end
request = function()
  counter = counter + 1
  local p = paths[(counter % #paths) + 1]
  return wrk.format("GET", p, { ["Accept"] = accept })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"non2xx\":%d,\"socket_errors\":%d,\"timeouts\":%d," ..
    "\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
'''


def seed(port):
    layer = bench.small_layer(f"mixed load {os.urandom(8).hex()}\n")
    layer_digest = bench.digest_of(layer)
    bench.push_blob(port, REPO, layer_digest, layer, len(layer))
    manifest = bench.image_manifest(port, REPO, "amd64", layer_digest, len(layer))
    bench.push_manifest(port, REPO, TAG, manifest, bench.OCI_MANIFEST)
    return layer_digest


def kind_of(path):
    if f"/manifests/{MISSING}" in path:
        return "missing tag"
    if path.endswith("/tags/list") or "/tags/list?" in path:
        return "tags/list"
    if "/manifests/" in path:
        return "manifest"
    if "/blobs/" in path:
        return "blob"
    return "other"


def upstream_requests(logfile, offset, agent):
    """Requests in the upstream's access log after `offset` from User-Agent `agent`, by kind."""
    time.sleep(0.5)  # a line is written when the response ends
    counts = collections.Counter()
    pat = re.compile(rb'"(GET|HEAD) (/v2/[^ "]*)')
    with open(logfile, "rb") as f:
        f.seek(offset)
        for line in f:
            m = pat.search(line)
            if m and f'"{agent}'.encode() in line:
                counts[(m.group(1).decode(), kind_of(m.group(2).decode()))] += 1
    return counts


def run_wrk(work, port, paths, conns, seconds):
    script = os.path.join(work, "mixed.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", "-s", script,
            f"http://127.0.0.1:{port}", "--"] + paths
    return bench.wrk_json(argv)


def measure(name, mirror, agent, upstream, paths, args, work):
    for p in paths:  # warm: the image cached, the missing tag asked once
        bench.http_request(mirror.port, "GET", p, headers={"Accept": bench.OCI_MANIFEST})
    if name == "distribution proxy":
        time.sleep(2)  # its background blob store commits about 1 s after the response
    offset = os.path.getsize(upstream.logfile)
    cpu0 = mirror.cpu_seconds()
    w = run_wrk(work, mirror.port, paths, args.connections, args.seconds)
    cpu = mirror.cpu_seconds() - cpu0
    up = upstream_requests(upstream.logfile, offset, agent)
    per_kind = w["requests"] / len(paths)
    row = {
        "mirror": name,
        "client_requests": w["requests"],
        "req_per_s": w["requests"] / (w["duration_us"] / 1e6),
        "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
        "non2xx": w["non2xx"], "socket_errors": w["socket_errors"], "timeouts": w["timeouts"],
        "cpu_s": cpu,
        "upstream": {f"{m} {k}": n for (m, k), n in sorted(up.items())},
        "upstream_total": sum(up.values()),
        "client_requests_per_kind": per_kind,
    }
    bench.log(f"{name}: {json.dumps(row)}")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/regmirror")
    ap.add_argument("--connections", type=int, default=400)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--no-distribution", action="store_true", help="skip distribution's proxy as a peer")
    args = ap.parse_args()
    work = bench.workdir("regmirror-mixed-")
    rows = []
    try:
        upstream = bench.start_distribution(work, "upstream")
        bench.ready(upstream, "upstream distribution")
        layer = seed(upstream.port)
        paths = [f"/v2/{REPO}/manifests/{MISSING}", f"/v2/{REPO}/tags/list",
                 f"/v2/{REPO}/manifests/{TAG}", f"/v2/{REPO}/blobs/{layer}"]
        rm = bench.start_regmirror(args.binary, work, os.path.join(work, "rm-data"), upstream.port)
        bench.ready(rm, "regmirror")
        rows.append(measure("regmirror", rm, bench.REGMIRROR_AGENT, upstream, paths, args, work))
        rm.stop()
        if not args.no_distribution:
            proxy = bench.start_distribution(work, "proxy", remote=f"http://127.0.0.1:{upstream.port}")
            bench.ready(proxy, "distribution proxy")
            rows.append(measure("distribution proxy", proxy, bench.DISTRIBUTION_AGENT, upstream, paths, args,
                                work))
            proxy.stop()
    finally:
        bench.stop_all()
    print(f"\nmixed load: {args.connections} connections, {args.seconds} s, each cycling through "
          f"{len(paths)} requests (missing tag, tags/list, warm manifest, warm blob)\n")
    kinds = sorted({k for r in rows for k in r["upstream"]})
    head = f"{'':34}" + "".join(f"{r['mirror']:>22}" for r in rows)
    print(head)
    print("-" * len(head))

    def line(label, values):
        print(f"{label:34}" + "".join(f"{v:>22}" for v in values))

    line("client requests", [r["client_requests"] for r in rows])
    line("  of each kind (about)", [f"{r['client_requests_per_kind']:.0f}" for r in rows])
    line("client req/s", [f"{r['req_per_s']:.0f}" for r in rows])
    line("p50 / p99 ms", [f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" for r in rows])
    line("socket errors / timeouts", [f"{r['socket_errors']} / {r['timeouts']}" for r in rows])
    line("mirror CPU s", [f"{r['cpu_s']:.1f}" for r in rows])
    line("upstream requests", [r["upstream_total"] for r in rows])
    for k in kinds:
        line(f"  {k}", [r["upstream"].get(k, 0) for r in rows])
    line("upstream per 1000 client requests",
         [f"{1000 * r['upstream_total'] / max(r['client_requests'], 1):.2f}" for r in rows])
    if len(rows) == 2 and rows[0]["upstream_total"]:
        print(f"\nregmirror sends {rows[1]['upstream_total'] / max(rows[0]['upstream_total'], 1):.0f}x fewer "
              f"upstream requests than distribution's proxy for the same load")
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), exist_ok=True)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       time.strftime("mixed-%Y%m%d-%H%M%S.json"))
    with open(out, "w") as f:
        json.dump({"connections": args.connections, "seconds": args.seconds, "rows": rows,
                   "machine": bench.machine()}, f, indent=2)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()

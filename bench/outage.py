#!/usr/bin/env python3
"""regmirror outage benchmark: what a client waits for when the upstream is black-holed.

On loopback: distribution 2.8 as the upstream, reached through a TCP relay this script owns; each
mirror (regmirror, optionally a baseline regmirror binary, and distribution in proxy mode) caches
a tag through the relay, then the relay black-holes the upstream (a listener with backlog 0 whose
queue is filled and never accepted: further SYNs are dropped, as behind a firewall). Measured per
mirror, with the tag past its TTL (1 s):
  - expired-tag pulls (manifest GET by tag) with the upstream black-holed: p50 / p99 / max over N;
  - an uncached tag: the first failure, then the next ones (p50 / max).
Slow mirrors are measured a few times only, each bounded by --timeout.

    python3 bench/outage.py --binary target/release/regmirror [--baseline OLD] [--requests 200]

Everything runs on 127.0.0.1 in a temporary directory; every process started is stopped by PID.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the loopback benchmark's helpers: processes, registries, pushes)

OCI_MANIFEST = bench.OCI_MANIFEST


class Relay:
    """127.0.0.1:PORT -> target, until `black_hole()`: then nothing is accepted any more."""

    def __init__(self, target_port):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(64)
        self.conns = []
        self.stopped = False
        self.fillers = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def black_hole(self):
        """Drop every relayed connection, then listen with backlog 0 on the same port and fill
        the queue: connects to the port now hang until the client gives up."""
        self.stopped = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): the port is freed
        except OSError:
            pass
        self.listener.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        hole = socket.socket()
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", self.port))
        hole.listen(0)
        self.fillers.append(hole)
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(f)
        time.sleep(0.2)

    def close(self):
        for s in self.fillers:
            s.close()


def timed_get(port, path, timeout):
    start = time.perf_counter()
    try:
        status, _, _ = bench.http_request(port, "GET", path, headers={"Accept": OCI_MANIFEST}, timeout=timeout)
    except OSError:
        status = "timeout"
    return status, time.perf_counter() - start


def start_mirror(kind, binary, work, relay_port):
    data = os.path.join(work, f"{kind}-data")
    os.makedirs(data, exist_ok=True)
    if kind == "distribution":
        proc = bench.start_distribution(work, "proxy", remote=f"http://127.0.0.1:{relay_port}")
    else:
        # A 1 s tag TTL, so that the measured pulls are of an expired tag.
        proc = bench.start_regmirror(binary, work, data, relay_port, name=kind, tag_ttl_secs=1)
    if bench.first_200(proc.port, proc) is None:
        raise SystemExit(f"outage: {kind} did not start; see {proc.logfile}")
    return proc


def measure(kind, binary, work, upstream, repo, n, timeout):
    relay = Relay(upstream.port)
    proc = start_mirror(kind, binary, work, relay.port)
    path = f"/v2/{repo}/manifests/v1"
    status, _ = timed_get(proc.port, path, 30)
    if status != 200:
        raise SystemExit(f"outage: {kind} could not cache the tag ({status})")
    relay.black_hole()
    time.sleep(1.2)  # past the 1 s tag TTL (distribution revalidates every tag request anyway)
    slow = kind != "regmirror"
    count = 2 if slow else n
    cached = [timed_get(proc.port, path, timeout) for _ in range(count)]
    if not slow:
        # Past the TTL again, with the upstream known down: still nothing to wait for.
        time.sleep(1.2)
        cached += [timed_get(proc.port, path, timeout) for _ in range(count)]
    uncached = [timed_get(proc.port, f"/v2/{repo}/manifests/never-{i}", timeout) for i in range(2 if slow else 20)]
    proc.stop()
    relay.close()
    return {"cached": cached, "uncached": uncached}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--baseline", help="an older regmirror binary, measured the same way")
    ap.add_argument("--requests", type=int, default=200, help="expired-tag pulls per regmirror (twice)")
    ap.add_argument("--timeout", type=float, default=35.0, help="client timeout per request, s")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    work = bench.workdir("regmirror-outage-")
    results = {}
    try:
        upstream = bench.start_distribution(work, "upstream")
        bench.ready(upstream, "upstream")
        repo = "outage/app"
        layer = bench.small_layer("outage")
        bench.push_blob(upstream.port, repo, bench.digest_of(layer), layer, len(layer))
        manifest = bench.image_manifest(upstream.port, repo, "amd64", bench.digest_of(layer), len(layer))
        bench.push_manifest(upstream.port, repo, "v1", manifest, OCI_MANIFEST)
        mirrors = [("regmirror", args.binary)]
        if args.baseline:
            mirrors.append(("baseline", args.baseline))
        mirrors.append(("distribution", None))
        for kind, binary in mirrors:
            print(f"outage: measuring {kind}", file=sys.stderr)
            results[kind] = measure(kind, binary, work, upstream, repo, args.requests, args.timeout)
    finally:
        bench.stop_all()
    rows = []
    for kind, r in results.items():
        ok = [t for s, t in r["cached"] if s == 200]
        first = r["uncached"][0]
        later = [t for _, t in r["uncached"][1:]]
        rows.append((kind, len(r["cached"]), len(ok),
                     f"{pct([t for _, t in r['cached']], 50) * 1000:.1f}",
                     f"{pct([t for _, t in r['cached']], 99) * 1000:.1f}",
                     f"{max(t for _, t in r['cached']) * 1000:.1f}",
                     f"{first[0]} in {first[1]:.2f} s",
                     f"{statistics.median(later) * 1000:.1f} / {max(later) * 1000:.1f}" if later else "-"))
    print("\nupstream black-holed (SYNs dropped), tag past its TTL; client timeout "
          f"{args.timeout:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    head = ("mirror", "expired-tag pulls", "200s", "p50 ms", "p99 ms", "max ms",
            "uncached: first failure", "uncached: next p50 / max ms")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    mine = results["regmirror"]["cached"]
    p99 = pct([t for _, t in mine], 99) * 1000
    print(f"\ntarget: expired-tag pull p99 < 50 ms: {'met' if p99 < 50 else 'NOT met'} ({p99:.1f} ms)")
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, time.strftime("outage-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()

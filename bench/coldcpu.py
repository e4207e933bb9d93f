#!/usr/bin/env python3
"""regmirror cold CPU benchmark: the CPU a cold GB costs regmirror, against what the bytes cost anyway.

The loopback cold row of issue #12: regmirror's CPU seconds per cold GiB within 1.3x of (a) + (b):

  (a) the direct GET's CPU: one `curl -o /dev/null` of each blob straight from distribution, CPU of
      the curl process (utime + stime from rusage): what receiving the bytes over TCP costs;
  (b) one SHA-256 pass over the same bytes: CPU of a hasher over the upstream's blob files in the
      page cache. Three are measured (coreutils `sha256sum`, `openssl dgst -sha256`, Python's
      hashlib, which is OpenSSL too) and the cheapest is the bound, so that a slow hasher cannot
      make the target easier;
  (c) regmirror's CPU per cold GiB: utime + stime of the regmirror process (/proc/PID/stat, every
      thread, also the ones that ended) while one curl pulls each blob cold through it, a fresh
      process on an empty data dir per repetition. The curl client's CPU is reported beside it.

On loopback, in a temporary directory: distribution 2.8 (Debian docker-registry) seeded over the
raw API with --blobs random blobs of --blob-mib MiB (default 4 x 256 MiB = 1 GiB). Every
repetition measures (a), (b) and (c) back to back (median reported, min-max beside it).

With --perf: after the repetitions, one more cold pull of all blobs under
`perf record -e cpu-clock -g -p <regmirror>`; the top symbols (self time, and by shared object)
are printed and kept in the JSON (perf.data stays in the work dir with --keep).

    python3 bench/coldcpu.py --binary target/release/regmirror [--reps 5] [--perf] [--keep]
    BENCH_COLDCPU=only bench/run.sh [--perf]

Every process started is stopped by PID; nothing here is a timed assertion of the test suite.
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the loopback benchmark's helpers: processes, registries, pushes)

MiB = 1 << 20
GiB = 1 << 30
TARGET = 1.3
# counted during the profiled pull (perf stat): the syscalls of the cold path
SYSCALLS = ("recvfrom", "pwrite64", "pwritev", "sendfile64", "futex", "epoll_wait", "fallocate", "preadv2")


def log(msg):
    print(f"coldcpu: {msg}", file=sys.stderr, flush=True)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cpu(argv):
    """Run argv to completion; returns its CPU seconds (utime + stime) and its stdout."""
    c0 = children_cpu()
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout
    return children_cpu() - c0, out


def seed(port, work, n, mib):
    """n random blobs of `mib` MiB in one repository; returns [(digest, size, upstream file)]."""
    blobs = []
    for i in range(n):
        path = os.path.join(work, f"seed-{i}")
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for _ in range(mib // 8):
                chunk = os.urandom(8 * MiB)
                h.update(chunk)
                f.write(chunk)
        digest, size = "sha256:" + h.hexdigest(), os.path.getsize(path)
        with open(path, "rb") as f:
            bench.push_blob(port, "cold/cpu", digest, f, size)
        os.remove(path)
        blobs.append((digest, size))
    return blobs


def curl_all(port, blobs):
    """One curl -o /dev/null per blob, in turn; returns (client CPU s, wall s)."""
    cpu, t0 = 0.0, time.perf_counter()
    for digest, size in blobs:
        c, out = run_cpu(["curl", "-sSf", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          f"http://127.0.0.1:{port}/v2/cold/cpu/blobs/{digest}"])
        if out.decode().split() != ["200", str(size)]:
            raise SystemExit(f"coldcpu: GET {digest} from port {port}: {out!r}")
        cpu += c
    return cpu, time.perf_counter() - t0


def hashers(files):
    """CPU seconds of one SHA-256 pass over `files` with each hasher; checks the digests."""
    py = ("import hashlib,sys\n"
          "for p in sys.argv[1:]:\n"
          "    h=hashlib.sha256()\n"
          "    with open(p,'rb',buffering=0) as f:\n"
          "        while (b:=f.read(1<<20)): h.update(b)\n"
          "    print(h.hexdigest())\n")
    argvs = {"sha256sum": ["sha256sum"], "openssl": ["openssl", "dgst", "-sha256", "-r"],
             "hashlib": [sys.executable, "-c", py]}
    out = {}
    for name, argv in argvs.items():
        cpu, text = run_cpu(argv + [f for _, f in files])
        got = [line.split()[0] for line in text.decode().splitlines()]
        if got != [d.split(":", 1)[1] for d, _ in files]:
            raise SystemExit(f"coldcpu: {name} printed {got}")
        out[name] = cpu
    return out


def start_fresh(binary, work, upstream_port, rm):
    if rm:
        rm.stop()
    data = os.path.join(work, "regmirror-data")
    shutil.rmtree(data, ignore_errors=True)
    os.sync()  # the last repetition's spool writes are not being flushed while this one runs
    rm = bench.start_regmirror(binary, work, data, upstream_port)
    bench.ready(rm, "regmirror")
    return rm


def perf_profile(rm, blobs, work):
    """One cold pull of every blob with perf recording regmirror; the top of the report."""
    data = os.path.join(work, "perf.data")
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", data,
                            "-p", str(rm.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = os.path.join(work, "perf-stat.txt")
    events = ",".join(["context-switches", "cpu-migrations"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS])
    stat = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-o", counts, "-p", str(rm.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches
    curl_all(rm.port, blobs)
    for p in (rec, stat):
        p.send_signal(signal.SIGINT)
    for p in (rec, stat):
        p.wait(timeout=60)
    calls = {}
    with open(counts) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                calls[parts[2].replace("syscalls:sys_enter_", "")] = int(float(parts[0]))
    def report(*sort, children=False):
        r = subprocess.run(["perf", "report", "-i", data, "--children" if children else "--no-children",
                            "--stdio", "-g", "none",
                            "--percent-limit", "0.5", "--sort", ",".join(sort)],
                           capture_output=True, text=True)
        return [line.rstrip() for line in r.stdout.splitlines() if line.strip() and not line.startswith("#")]
    return {"counts": calls, "symbols": report("dso", "symbol"), "inclusive": report("symbol", children=True), "dsos": report("dso"), "threads": report("comm"),
            "perf_data": data}


def spread(xs):
    return f"{min(xs):.3f}-{max(xs):.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True, help="the regmirror release binary")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--blobs", type=int, default=4)
    ap.add_argument("--blob-mib", type=int, default=256)
    ap.add_argument("--baseline", metavar="BINARY",
                    help="a second regmirror binary whose (c) is measured beside --binary's in every repetition "
                         "(order alternating), for before/after")
    ap.add_argument("--baseline-label", help="what to call the baseline (default: its file name)")
    ap.add_argument("--perf", action="store_true", help="also profile one cold pull with perf record")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(bench.stop_all)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = tempfile.mkdtemp(prefix="regmirror-coldcpu-")
    log(f"working in {work}")
    raw = {k: [] for k in ("direct_client_cpu_s", "direct_upstream_cpu_s", "direct_wall_s",
                           "regmirror_cpu_s", "via_client_cpu_s", "via_upstream_cpu_s", "via_wall_s",
                           "sha256sum_cpu_s", "openssl_cpu_s", "hashlib_cpu_s", "loadavg")}
    profile = None
    try:
        up = bench.start_distribution(work, "upstream")
        bench.ready(up, "upstream")
        t = time.perf_counter()
        blobs = seed(up.port, work, args.blobs, args.blob_mib)
        total = sum(s for _, s in blobs)
        log(f"seeded {len(blobs)} blobs, {total / GiB:.2f} GiB, in {time.perf_counter() - t:.1f}s")
        files = [(d, bench.distribution_blob_file(up.root, d)) for d, _ in blobs]
        curl_all(up.port, blobs)  # the upstream's files into the page cache
        rm = None
        for rep in range(args.reps):
            raw["loadavg"].append(os.getloadavg()[0])
            u0 = up.cpu_seconds()
            cpu, wall = curl_all(up.port, blobs)
            raw["direct_client_cpu_s"].append(cpu)
            raw["direct_upstream_cpu_s"].append(up.cpu_seconds() - u0)
            raw["direct_wall_s"].append(wall)
            for name, cpu in hashers(files).items():
                raw[f"{name}_cpu_s"].append(cpu)
            sides = [("", args.binary)] + ([("baseline_", args.baseline)] if args.baseline else [])
            for key, binary in (sides if rep % 2 == 0 else sides[::-1]):
                rm = start_fresh(binary, work, up.port, rm)
                r0, u0 = rm.cpu_seconds(), up.cpu_seconds()
                cpu, wall = curl_all(rm.port, blobs)
                time.sleep(0.2)  # the fill's last commit (rename, metadata) is done
                raw.setdefault(f"{key}regmirror_cpu_s", []).append(rm.cpu_seconds() - r0)
                raw.setdefault(f"{key}via_client_cpu_s", []).append(cpu)
                raw.setdefault(f"{key}via_upstream_cpu_s", []).append(up.cpu_seconds() - u0)
                raw.setdefault(f"{key}via_wall_s", []).append(wall)
                cached = sum(1 for d, _ in blobs if os.path.exists(bench.regmirror_blob_file(rm.data_dir, d)))
                if cached != len(blobs):
                    raise SystemExit(f"coldcpu: {binary} cached {cached} of {len(blobs)} blobs")
            log(f"rep {rep + 1}: direct curl {raw['direct_client_cpu_s'][-1]:.2f} s, "
                f"openssl {raw['openssl_cpu_s'][-1]:.2f} s, sha256sum {raw['sha256sum_cpu_s'][-1]:.2f} s, "
                f"regmirror {raw['regmirror_cpu_s'][-1]:.2f} s"
                + (f", baseline {raw['baseline_regmirror_cpu_s'][-1]:.2f} s" if args.baseline else "")
                + f" CPU for {total / GiB:.2f} GiB "
                f"(load {raw['loadavg'][-1]:.1f})")
        if args.perf:
            rm = start_fresh(args.binary, work, up.port, rm)
            profile = perf_profile(rm, blobs, work)
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    gib = total / GiB
    per = {k: [v / gib for v in vs] for k, vs in raw.items() if k.endswith("_cpu_s")}
    med = {k: statistics.median(v) for k, v in per.items()}
    hasher = min(("sha256sum", "openssl", "hashlib"), key=lambda n: med[f"{n}_cpu_s"])
    a, b, c = med["direct_client_cpu_s"], med[f"{hasher}_cpu_s"], med["regmirror_cpu_s"]
    # the ratio per repetition too: its min-max is the noise of the row
    ratios = [cc / (aa + bb) for aa, bb, cc in
              zip(per["direct_client_cpu_s"], per[f"{hasher}_cpu_s"], per["regmirror_cpu_s"])]
    ratio = c / (a + b)
    rows = [
        ("(a) direct GET: curl's CPU", a, spread(per["direct_client_cpu_s"])),
        ("    (the upstream sending it)", med["direct_upstream_cpu_s"], spread(per["direct_upstream_cpu_s"])),
        (f"(b) one SHA-256 pass: {hasher}", b, spread(per[f"{hasher}_cpu_s"])),
    ] + [(f"    (other hasher: {n})", med[f"{n}_cpu_s"], spread(per[f"{n}_cpu_s"]))
         for n in ("sha256sum", "openssl", "hashlib") if n != hasher] + [
        ("(a) + (b)", a + b, ""),
        ("(c) regmirror, cold", c, spread(per["regmirror_cpu_s"])),
        ("    (curl's CPU pulling through regmirror)", med["via_client_cpu_s"], spread(per["via_client_cpu_s"])),
        ("    (the upstream sending to regmirror)", med["via_upstream_cpu_s"], spread(per["via_upstream_cpu_s"])),
    ]
    if args.baseline:
        ab = [x / y for x, y in zip(per["regmirror_cpu_s"], per["baseline_regmirror_cpu_s"])]
        rows += [(f"(c) baseline {args.baseline_label or os.path.basename(args.baseline)}", med["baseline_regmirror_cpu_s"],
                  spread(per["baseline_regmirror_cpu_s"])),
                 ("    (c) / baseline's (c), per repetition", statistics.median(ab), spread(ab))]
    m = bench.machine()
    print(f"\nregmirror {bench.git_rev(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))} | "
          f"{started:%Y-%m-%d %H:%M} UTC | {m['cpus']} CPUs ({m['cpu_model']}) | {len(blobs)} x "
          f"{args.blob_mib} MiB cold | median of {args.reps} | load {min(raw['loadavg']):.1f}-{max(raw['loadavg']):.1f}\n")
    print("| CPU seconds per GiB | median | min-max over reps |")
    print("|---|---|---|")
    for name, v, s in rows:
        print(f"| {name} | {v:.3f} | {s} |")
    wall = statistics.median(raw["via_wall_s"]), statistics.median(raw["direct_wall_s"])
    print(f"\nc / (a + b) = {ratio:.2f}x (per repetition {min(ratios):.2f}-{max(ratios):.2f}x); target <= {TARGET}x: "
          f"{'met' if ratio <= TARGET else 'NOT met'}")
    print(f"wall for {gib:.2f} GiB: {wall[0]:.2f} s through regmirror cold, {wall[1]:.2f} s direct (report only)")
    if profile:
        print("\nperf (cpu-clock, self time) of regmirror during one cold pull, top symbols:")
        print("\n".join(profile["symbols"][:40]))
        print("\nevents during that pull: " + ", ".join(f"{k} {v}" for k, v in profile["counts"].items()))
        print("\ninclusive (with callees), top 40:")
        print("\n".join(profile["inclusive"][:40]))
        print("\nby shared object:")
        print("\n".join(profile["dsos"][:12]))
        print("\nby thread name:")
        print("\n".join(profile["threads"][:12]))
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, started.strftime("coldcpu-%Y%m%dT%H%M%SZ.json"))
    with open(path, "w") as f:
        json.dump({"started": started.isoformat(timespec="seconds"), "machine": m,
                   "binary": bench.binary_info(args.binary), "bytes": total, "reps": args.reps,
                   "hasher": hasher, "a": a, "b": b, "c": c, "ratio": ratio, "rep_ratios": ratios,
                   "target": TARGET, "raw": raw, "profile": profile}, f, indent=1)
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    main()

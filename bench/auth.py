#!/usr/bin/env python3
"""regmirror auth-cost benchmark: warm manifest-by-tag requests/s with authentication on vs off.

On loopback, in one temporary directory: distribution 2.8 as the upstream with a small image, and
two regmirror processes of the same binary in front of it, side by side:
  off  no [auth] (every client admitted, as without configuration);
  on   [auth] with an htpasswd file made by `htpasswd -Bbc` (bcrypt cost 5, its default), no
       anonymous pulls, an [[access]] rule and a deny list on the upstream, so every request is
       authenticated and goes through the policy.
Measured with wrk -c64 (3 s per run, BENCH_REPS repetitions, order rotating, median reported):
  off             no credentials;
  on, Bearer      the token the token endpoint issued (verification cached);
  on, Basic       Basic credentials on every request (bcrypt once, then remembered).
Target (issue #13): auth on >= 0.8x auth off.

    python3 bench/auth.py --binary target/release/regmirror [--reps 5] [--seconds 3]
    BENCH_AUTH=1|only bench/run.sh

Every process started is stopped by PID at exit.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the loopback benchmark's helpers: processes, registries, wrk)

OCI_MANIFEST = bench.OCI_MANIFEST
USER, PASSWORD = "bench", "bench-password"
REPO, TAG = "bench/app", "v1"


def start_mirror(binary, work, upstream_port, name, auth_toml):
    port = bench.free_port()
    data = os.path.join(work, f"{name}-data")
    upstream = f"127.0.0.1:{upstream_port}"
    conf = os.path.join(work, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(bench.regmirror_toml(port, data, upstream))
        f.write(auth_toml)
    proc = bench.Proc(name, [binary, "serve", "--config", conf], os.path.join(work, f"{name}.log"))
    proc.port = port
    deadline = time.time() + 20
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
    raise SystemExit(f"auth bench: {name} did not start; see {proc.logfile}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    work = bench.workdir("regmirror-auth-bench-")
    raw = {"off": [], "on_bearer": [], "on_basic": []}
    try:
        upstream = bench.start_distribution(work, "upstream")
        bench.ready(upstream, "upstream")
        layer = bench.small_layer("auth bench")
        bench.push_blob(upstream.port, REPO, bench.digest_of(layer), layer, len(layer))
        manifest = bench.image_manifest(upstream.port, REPO, "amd64", bench.digest_of(layer), len(layer))
        bench.push_manifest(upstream.port, REPO, TAG, manifest, OCI_MANIFEST)
        htpasswd = os.path.join(work, "htpasswd")
        subprocess.run(["htpasswd", "-Bbc", htpasswd, USER, PASSWORD], check=True, capture_output=True)
        up = f"127.0.0.1:{upstream.port}"
        # The upstream table continues: its deny list first, then [auth] and a rule.
        auth_toml = f"""deny = ["blocked/*"]
deny_message = "not mirrored here"

[auth]
htpasswd = "{htpasswd}"

[[access]]
users = ["intern*"]
upstreams = ["{up}"]
repositories = ["secret/*"]
action = "deny"
message = "ask the platform team"
"""
        off = start_mirror(args.binary, work, upstream.port, "auth-off", "")
        on = start_mirror(args.binary, work, upstream.port, "auth-on", auth_toml)
        path = f"/v2/{REPO}/manifests/{TAG}"
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        status, _, body = bench.http_request(on.port, "GET", f"/token?service=regmirror&scope=repository:{REPO}:pull",
                                             headers={"Authorization": basic})
        if status != 200:
            raise SystemExit(f"auth bench: token endpoint answered {status}: {body[:200]!r}")
        bearer = "Bearer " + json.loads(body)["token"]
        status, _, _ = bench.http_request(on.port, "GET", path, headers={"Accept": OCI_MANIFEST})
        if status != 401:
            raise SystemExit(f"auth bench: auth-on answered {status} without credentials (want 401)")
        runs = {
            "off": (off, []),
            "on_bearer": (on, [f"Authorization: {bearer}"]),
            "on_basic": (on, [f"Authorization: {basic}"]),
        }
        for name, (p, headers) in runs.items():
            hdrs = dict(h.split(": ", 1) for h in headers)
            hdrs["Accept"] = OCI_MANIFEST
            status, _, _ = bench.http_request(p.port, "GET", path, headers=hdrs)
            if status != 200:
                raise SystemExit(f"auth bench: warm-up of {name} answered {status}")
        order = list(runs)
        for rep in range(args.reps):
            for name in order[rep % 3:] + order[:rep % 3]:
                p, headers = runs[name]
                r = bench.wrk(work, p.port, path, args.connections, args.seconds, [f"Accept: {OCI_MANIFEST}"] + headers)
                if r["non2xx"] or r["socket_errors"]:
                    raise SystemExit(f"auth bench: wrk against {name}: {r}")
                raw[name].append(r["requests"] / (r["duration_us"] / 1e6))
            bench.log("auth rep %d: %s" % (rep + 1, ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in raw.items())))
    finally:
        bench.stop_all()
    med = {k: bench.median(v) for k, v in raw.items()}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\nwarm manifest-by-tag GET, wrk -c{args.connections}, {args.seconds} s x {args.reps} (median); {when}; "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| client | req/s | vs auth off | per-rep ratio min-max | target | met |")
    print("|---|---|---|---|---|---|")
    print(f"| auth off, no credentials | {med['off']:.0f} | 1.00x | | | |")
    rows = {}
    for key, label in (("on_bearer", "auth on, Bearer token"), ("on_basic", "auth on, Basic on every request")):
        ratio = med[key] / med["off"]
        reps = [a / b for a, b in zip(raw[key], raw["off"])]
        rows[key] = {"req_per_s": med[key], "ratio": ratio, "rep_ratios": reps}
        print(f"| {label} | {med[key]:.0f} | {ratio:.2f}x | {min(reps):.2f}-{max(reps):.2f} | >= 0.8x | "
              f"{'yes' if ratio >= 0.8 else 'NO'} |")
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, time.strftime("auth-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump({"raw_req_per_s": raw, "median": med, "rows": rows, "reps": args.reps,
                   "seconds": args.seconds, "connections": args.connections}, f, indent=1)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()

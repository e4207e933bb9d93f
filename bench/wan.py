#!/usr/bin/env python3
"""regmirror with a far upstream: the WAN section of the benchmark (Python 3 standard library only).

Run as root (it makes network namespaces), after a release build:

  BENCH_WAN=1 bench/run.sh        the loopback benchmark, then this section
  BENCH_WAN=only bench/run.sh     this section alone
  python3 bench/wan.py --binary target/release/regmirror --results bench/results

What a user waits for when the registry is far away, measured side by side in one run: the same
image pulled straight from the upstream, through regmirror (cold, then warm) and through
distribution in proxy mode (cold), with skopeo and with containerd's ctr; the time to the first
byte of a cold blob; and 50 clients pulling the same image cold at once. Each row is the median
of BENCH_REPS repetitions (default 3 here), the sides interleaved within a repetition. Two floors
show what the clients themselves cost on this machine: the same pull from distribution on the
mirror's loopback (no link), and the 50 clients again once regmirror holds the image.

The link. Three network namespaces of this script's own, so that no interface of the host is
touched and nothing on the host's loopback is shaped:

  rmwan-<pid>-up   distribution (Debian docker-registry) on its loopback, and the delay relay
                   listening on up0 10.77.0.1:5000
  rmwan-<pid>-rt   a router: rt-up 10.77.0.2/30 <-> up0, rt-mir 10.77.0.5/30 <-> mir0; tbf on
                   the egress of both (the rate limit, and the drops of a small queue)
  rmwan-<pid>-mir  mir0 10.77.0.6/30: regmirror, distribution's proxy, containerd and every
                   client, each on the namespace's own loopback or talking to 10.77.0.1:5000

This kernel has tbf but no netem, so the delay is a TCP relay (this file, `wan.py relay`, asyncio,
in the up namespace): it forwards 10.77.0.1:5000 to distribution, and delivers every chunk half
the RTT after it arrived, in each direction. The kernel completes the TCP handshake at once, so
the relay also holds a new connection's first bytes one extra RTT: a request on a new connection
is answered 2 RTT after connect(), as on a real path. The relay holds up to 32 MB per direction,
far above rate x delay, so only tbf limits the throughput. The router sits between the ends so
that tbf's drops are real losses to the sending TCP (a qdisc on the sender's own device would
push back on the socket instead).

What the emulation does not do: TCP itself sees the short veth path (under a millisecond plus
tbf's queue), not the relay's delay, so slow start and loss recovery take far less time than on
a real 150 ms path, where a drop costs a sender several RTTs of reduced window. The rows compare
clients and mirrors on the same emulated link; absolute times on a real path would be longer.

Every process is stopped by PID and every namespace deleted at the end, also on error or Ctrl-C.
"""

import argparse
import asyncio
import collections
import ctypes
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  the loopback benchmark: processes, seeding over the raw API, the table

MB = bench.MB
REPO, TAG = "bench/wan", "v1"
UP_ADDR, RT_UP_ADDR, RT_MIR_ADDR, MIR_ADDR = "10.77.0.1", "10.77.0.2", "10.77.0.5", "10.77.0.6"
RELAY_PORT = 5000
UPSTREAM = f"{UP_ADDR}:{RELAY_PORT}"  # the registry's name, as clients and regmirror see it
FIRST_LOCAL_PORT = 5100               # servers in the mir namespace take the next free one

# The two links of the issue. tbf's `limit` is its queue: (a) holds ~8 ms at 1 Gbit/s, (b) ~10 ms
# at 50 Mbit/s, small enough that a sender overruns it and tbf drops packets (here, one 50 MB GET
# over (b): 32kb dropped 8% of the packets, 64kb 0.3%, 256kb none; the goodput stayed 45-46 Mbit/s;
# a whole run of (b), with parallel layer streams, sees ~5% dropped and ~10% retransmitted).
LINKS = {
    "a": {"name": "(a)", "rtt_ms": 30, "rate": "1gbit", "burst": "256kb", "limit": "1mb",
          "label": "30 ms RTT, 1 Gbit/s"},
    "b": {"name": "(b)", "rtt_ms": 150, "rate": "50mbit", "burst": "16kb", "limit": "64kb",
          "label": "150 ms RTT, 50 Mbit/s, tbf drops"},
}
# The targets.
COLD_MAX = 1.05      # cold through regmirror <= 1.05 x direct wall time
TTFB_SLACK_MS = 5.0  # time to first byte <= direct + 5 ms
WARM_MIN = 20.0      # warm >= 20 x faster than direct on link (b)
CROWD_MAX = 1.2      # 50 cold clients over (b): wall <= 1.2 x one direct pull


def log(msg):
    print(f"bench-wan: {msg}", file=sys.stderr, flush=True)


def run(argv, **kw):
    """A set-up command that must succeed; its output is returned."""
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"bench-wan: {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


# ---------------------------------------------------------------------------------------------
# Network namespaces

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns, fn, *args):
    """fn(*args) on a thread that has entered network namespace `ns` (setns applies to the calling
    thread only): its sockets live in `ns`. Returns fn's value; re-raises what it raised."""
    box = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # SystemExit from bench's helpers too: handed to the caller
            box["error"] = e
    t = threading.Thread(target=body, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Topology:
    """The three namespaces, the two veth pairs and the router's tbf qdiscs."""

    def __init__(self):
        tag = f"rmwan-{os.getpid()}"
        self.ns = {"up": f"{tag}-up", "rt": f"{tag}-rt", "mir": f"{tag}-mir"}
        self.made = []
        self.congestion_control = None
        self.commands = []  # how the link was made, for the output and the JSON

    def enter(self, role):
        """argv prefix running a program in a namespace. nsenter joins the network namespace only
        (`ip netns exec` also remounts /sys, which containerd does not like) and execs the program,
        so a Proc's PID is the server's own."""
        return ["nsenter", f"--net=/run/netns/{self.ns[role]}"]

    def sh(self, role, *argv):
        self.commands.append(f"[{role}] {' '.join(argv)}")
        return run(self.enter(role) + list(argv))

    def create(self):
        for role, name in self.ns.items():
            run(["ip", "netns", "add", name])
            self.made.append(name)
            self.commands.append(f"ip netns add {name}")
            self.sh(role, "ip", "link", "set", "lo", "up")
        # both pairs are created from inside the router namespace, each peer straight into its own
        self.sh("rt", "ip", "link", "add", "rt-up", "type", "veth", "peer", "name", "up0", "netns", self.ns["up"])
        self.sh("rt", "ip", "link", "add", "rt-mir", "type", "veth", "peer", "name", "mir0", "netns", self.ns["mir"])
        self.sh("rt", "ip", "addr", "add", f"{RT_UP_ADDR}/30", "dev", "rt-up")
        self.sh("rt", "ip", "addr", "add", f"{RT_MIR_ADDR}/30", "dev", "rt-mir")
        self.sh("rt", "ip", "link", "set", "rt-up", "up")
        self.sh("rt", "ip", "link", "set", "rt-mir", "up")
        self.sh("rt", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.sh("up", "ip", "addr", "add", f"{UP_ADDR}/30", "dev", "up0")
        self.sh("up", "ip", "link", "set", "up0", "up")
        self.sh("up", "ip", "route", "add", "10.77.0.4/30", "via", RT_UP_ADDR)
        self.sh("mir", "ip", "addr", "add", f"{MIR_ADDR}/30", "dev", "mir0")
        self.sh("mir", "ip", "link", "set", "mir0", "up")
        self.sh("mir", "ip", "route", "add", "10.77.0.0/30", "via", RT_MIR_ADDR)
        # the sender of the data is the relay in the up namespace (new namespaces take the host's default)
        self.congestion_control = run(self.enter("up") + ["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).strip()

    def shape(self, link):
        """tbf on the router's two egresses: toward the mirror (the data) and toward the upstream."""
        for dev in ("rt-mir", "rt-up"):
            self.sh("rt", "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", link["rate"],
                    "burst", link["burst"], "limit", link["limit"])

    def qdisc_stats(self):
        out = {}
        for dev in ("rt-mir", "rt-up"):
            q = json.loads(run(self.enter("rt") + ["tc", "-s", "-j", "qdisc", "show", "dev", dev]))[0]
            out[dev] = {k: q.get(k) for k in ("bytes", "packets", "drops", "overlimits")}
        return out

    def tcp_counters(self, role):
        """RetransSegs and OutSegs of the namespace's TCP (/proc/net follows the reader's namespace)."""
        lines = [l.split() for l in run(self.enter(role) + ["cat", "/proc/net/snmp"]).splitlines() if l.startswith("Tcp:")]
        row = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
        return {"retrans_segs": row["RetransSegs"], "out_segs": row["OutSegs"]}

    def destroy(self):
        """Deleting a namespace destroys its veth ends (the processes in it are stopped first)."""
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made = []


def remove_stale_namespaces():
    """Namespaces of an earlier run of this script that died before its clean-up (its PID gone)."""
    for line in run(["ip", "netns", "list"]).splitlines():
        m = re.match(r"(rmwan-(\d+)-(?:up|rt|mir))\b", line)
        if not m or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            log(f"removing namespace {m.group(1)} left by an earlier run")
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)
        except PermissionError:
            pass


# ---------------------------------------------------------------------------------------------
# The delay relay (`wan.py relay ...`, run inside the up namespace)

EOF, CLOSE = object(), object()


class DelayLine:
    """One direction of a relayed connection: each chunk pushed is written to `dst` at its time.
    Reading from the source pauses while more than HIGH bytes are held or `dst` pushes back."""
    HIGH = 32 * MB

    def __init__(self, loop):
        self.loop, self.queue, self.held = loop, collections.deque(), 0
        self.src = self.dst = self.timer = None
        self.src_paused = self.dst_blocked = self.closed = False

    def attach(self, dst):
        self.dst = dst
        self._arm()

    def push(self, when, item):
        if self.closed:
            return
        self.queue.append((when, item))
        if isinstance(item, bytes):
            self.held += len(item)
        self._arm()
        self._flow()

    def blocked(self, yes):
        self.dst_blocked = yes
        self._flow()

    def drop(self):
        """The destination is gone: nothing more is delivered."""
        self.closed = True
        self.queue.clear()
        self.held = 0
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def _arm(self):
        if self.timer is None and self.queue and self.dst is not None and not self.closed:
            self.timer = self.loop.call_at(self.queue[0][0], self._fire)

    def _fire(self):
        self.timer = None
        due = self.loop.time() + 0.0005
        while self.queue and self.queue[0][0] <= due:
            _, item = self.queue.popleft()
            if self.dst.is_closing():
                self.drop()
                return
            if item is EOF:
                if self.dst.can_write_eof():
                    self.dst.write_eof()
            elif item is CLOSE:
                self.dst.close()
                self.drop()
                return
            else:
                self.held -= len(item)
                self.dst.write(item)
        self._arm()
        self._flow()

    def _flow(self):
        want = self.held > self.HIGH or self.dst_blocked
        if self.src is None or want == self.src_paused or self.src.is_closing():
            return
        self.src_paused = want
        (self.src.pause_reading if want else self.src.resume_reading)()


class Relayed:
    """One client connection and its connection to the target."""

    def __init__(self, loop, target, rtt):
        self.loop, self.target, self.rtt, self.delay = loop, target, rtt, rtt / 2
        self.up, self.down = DelayLine(loop), DelayLine(loop)  # client -> target, target -> client
        self.opened = None

    def made(self, side, transport):
        transport.set_write_buffer_limits(high=4 * MB)
        if side == "client":
            self.opened = self.loop.time()
            self.up.src = transport
            self.down.attach(transport)
            self.client = transport
            self.loop.create_task(self.connect())
        else:
            self.down.src = transport
            self.up.attach(transport)

    async def connect(self):
        host, port = self.target
        try:
            await self.loop.create_connection(lambda: End(self, "target"), host, port)
        except OSError:
            self.client.close()

    def received(self, side, item):
        now = self.loop.time()
        if side == "client":
            # the handshake's round trip, which the kernel skipped, is paid by the first bytes
            self.up.push(max(now, self.opened + self.rtt) + self.delay, item)
        else:
            self.down.push(now + self.delay, item)

    def lost(self, side):
        if side == "client":
            self.down.drop()
            self.received("client", CLOSE)
        else:
            self.up.drop()
            self.received("target", CLOSE)

    def blocked(self, side, yes):
        (self.down if side == "client" else self.up).blocked(yes)


class End(asyncio.Protocol):
    def __init__(self, conn, side):
        self.conn, self.side = conn, side

    def connection_made(self, transport):
        self.conn.made(self.side, transport)

    def data_received(self, data):
        self.conn.received(self.side, data)

    def eof_received(self):
        self.conn.received(self.side, EOF)
        return True  # half-close: keep sending the other way

    def connection_lost(self, exc):
        self.conn.lost(self.side)

    def pause_writing(self):
        self.conn.blocked(self.side, True)

    def resume_writing(self):
        self.conn.blocked(self.side, False)


def relay_main(argv):
    ap = argparse.ArgumentParser(prog="wan.py relay", description="TCP relay delaying each direction by RTT/2")
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--to", required=True, help="HOST:PORT")
    ap.add_argument("--rtt-ms", type=float, required=True)
    a = ap.parse_args(argv)
    lhost, lport = a.listen.rsplit(":", 1)
    thost, tport = a.to.rsplit(":", 1)

    async def serve():
        loop = asyncio.get_running_loop()
        target, rtt = (thost, int(tport)), a.rtt_ms / 1000
        server = await loop.create_server(lambda: End(Relayed(loop, target, rtt), "client"), lhost, int(lport),
                                          reuse_address=True, backlog=1024)
        print(f"relay {a.listen} -> {a.to}, {a.rtt_ms} ms RTT", flush=True)
        await server.serve_forever()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())


# ---------------------------------------------------------------------------------------------
# Helpers run inside a namespace (through in_netns)

def http_get(host, port, path, method="GET", headers=None, timeout=10):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def poll_200(host, port, proc, path="/v2/", timeout=30.0):
    """Seconds until GET `path` answers 200 (None if the process died or the time ran out)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if not proc.alive():
            return None
        try:
            if http_get(host, port, path, timeout=5)[0] == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.01)
    return None


def seed_image(port, work, base_mb, big_mb):
    """Push the image to the upstream (its loopback): five base layers summing to ~base_mb, one
    big_mb layer, all random (incompressible) uncompressed tars, an OCI manifest tagged TAG."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    parts = [1, 2, 3, 4, 5]  # the base layers' shares: 2, 4, 6, 8, 10 MB of a 30 MB base
    sizes = [max(1, base_mb * MB * p // sum(parts)) for p in parts] + [big_mb * MB]
    layers = []
    for i, payload in enumerate(sizes):
        path = os.path.join(work, f"layer-{i}.tar")
        digest, size = bench.random_layer(path, payload)
        with open(path, "rb") as f:
            bench.push_blob(port, REPO, digest, f, size)
        os.remove(path)
        layers.append({"digest": digest, "size": size})
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode()
    bench.push_blob(port, REPO, bench.digest_of(config), config, len(config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": bench.OCI_MANIFEST,
        "config": {"mediaType": bench.OCI_CONFIG, "digest": bench.digest_of(config), "size": len(config)},
        "layers": [{"mediaType": bench.OCI_LAYER, **l} for l in layers],
    }).encode()
    bench.push_manifest(port, REPO, TAG, manifest, bench.OCI_MANIFEST)
    return {"layers": layers, "config": {"digest": bench.digest_of(config), "size": len(config)},
            "manifest_digest": bench.digest_of(manifest), "bytes": sum(l["size"] for l in layers) + len(config)}


# ---------------------------------------------------------------------------------------------
# The benchmark

class Wan:
    def __init__(self, args, work, topo):
        self.args, self.work, self.topo, self.reps = args, work, topo, args.reps
        self.rows, self.raw, self.notes = [], {}, []
        self.port = FIRST_LOCAL_PORT
        self.relay = None
        self.ctr_ok = not args.no_ctr and shutil.which("ctr") and shutil.which("containerd")
        with open(os.path.join(work, "policy.json"), "w") as f:
            f.write('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.pull_n = 0

    def next_port(self):
        """Servers in the mir namespace never reuse a port (a stopped Go server may hold it a moment)."""
        self.port += 1
        return self.port

    # -- servers -------------------------------------------------------------------------------

    def start_upstream(self):
        port = 5000  # on the up namespace's loopback, behind the relay
        root = os.path.join(self.work, "upstream")
        conf = os.path.join(self.work, "upstream.yml")
        write_distribution_config(conf, root, port)
        self.upstream = bench.Proc("upstream", self.topo.enter("up") + ["docker-registry", "serve", conf],
                                   os.path.join(self.work, "upstream.log"))
        self.upstream.port = port
        if in_netns(self.topo.ns["up"], poll_200, "127.0.0.1", port, self.upstream) is None:
            raise SystemExit(f"bench-wan: the upstream registry did not come up; see {self.upstream.logfile}")
        t = time.perf_counter()
        self.image = in_netns(self.topo.ns["up"], seed_image, port, self.work, self.args.base_mb, self.args.big_mb)
        log(f"seeded {UPSTREAM}/{REPO}:{TAG}: {len(self.image['layers'])} layers, "
            f"{self.image['bytes'] / MB:.0f} MiB, in {time.perf_counter() - t:.1f}s")

    def start_relay(self, link):
        if self.relay:
            self.relay.stop()
        self.relay = bench.Proc("relay", self.topo.enter("up") + [
            sys.executable, os.path.abspath(__file__), "relay", "--listen", UPSTREAM,
            "--to", f"127.0.0.1:{self.upstream.port}", "--rtt-ms", str(link["rtt_ms"])],
            os.path.join(self.work, "relay.log"))
        if in_netns(self.topo.ns["mir"], poll_200, UP_ADDR, RELAY_PORT, self.relay) is None:
            raise SystemExit(f"bench-wan: the relay does not reach the upstream; see {self.relay.logfile}")

    def start_regmirror(self):
        port = self.next_port()
        data_dir = os.path.join(self.work, f"regmirror-data-{port}")
        conf = os.path.join(self.work, f"regmirror-{port}.toml")
        with open(conf, "w") as f:
            f.write(bench.regmirror_toml(port, data_dir, UPSTREAM))
        p = bench.Proc("regmirror", self.topo.enter("mir") + [self.args.binary, "serve", "--config", conf],
                       os.path.join(self.work, "regmirror.log"))
        p.port, p.data_dir, p.kind = port, data_dir, "regmirror"
        self.ready(p)
        return p

    def start_proxy(self):
        port = self.next_port()
        root = os.path.join(self.work, f"proxy-{port}")
        conf = os.path.join(self.work, f"proxy-{port}.yml")
        write_distribution_config(conf, root, port, remote=f"http://{UPSTREAM}")
        p = bench.Proc("proxy", self.topo.enter("mir") + ["docker-registry", "serve", conf],
                       os.path.join(self.work, "proxy.log"))
        p.port, p.root, p.kind = port, root, "proxy"
        self.ready(p)
        return p

    def ready(self, p):
        if in_netns(self.topo.ns["mir"], poll_200, "127.0.0.1", p.port, p) is None:
            raise SystemExit(f"bench-wan: {p.name} did not come up; see {p.logfile}")

    def stop(self, p):
        p.stop()
        for d in (getattr(p, "data_dir", None), getattr(p, "root", None)):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    # -- clients -------------------------------------------------------------------------------

    def upstream_log_offset(self):
        return os.path.getsize(self.upstream.logfile)

    def upstream_gets(self, offset, agent):
        """GETs in the upstream's access log after `offset` from User-Agent `agent`, by blob digest."""
        time.sleep(0.3)  # a line is written when the response ends
        counts = collections.Counter()
        pat = re.compile(rb'"GET /v2/' + re.escape(REPO.encode()) + rb'/blobs/(sha256:[0-9a-f]{64})')
        with open(self.upstream.logfile, "rb") as f:
            f.seek(offset)
            for line in f:
                m = pat.search(line)
                if m and f'"{agent}'.encode() in line:
                    counts[m.group(1).decode()] += 1
        return counts

    def skopeo_argv(self, host, dest):
        return self.topo.enter("mir") + ["skopeo", "--policy", os.path.join(self.work, "policy.json"), "copy",
                                         "--src-tls-verify=false", f"docker://{host}/{REPO}:{TAG}", f"dir:{dest}"]

    def new_dest(self, what):
        self.pull_n += 1
        os.makedirs(os.path.join(self.work, "pulls"), exist_ok=True)
        return os.path.join(self.work, "pulls", f"{self.pull_n:03d}-{what}")

    def check_dir(self, dest, what):
        for l in self.image["layers"]:
            path = os.path.join(dest, l["digest"].split(":", 1)[1])
            if not os.path.isfile(path) or os.path.getsize(path) != l["size"]:
                raise SystemExit(f"bench-wan: skopeo via {what} left no complete {l['digest']} in {dest}")

    def skopeo_pull(self, host, what):
        dest = self.new_dest(what)
        t0 = time.perf_counter()
        r = subprocess.run(self.skopeo_argv(host, dest), capture_output=True, text=True)
        t = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench-wan: skopeo copy via {what} failed: {r.stderr.strip()[-800:]}")
        self.check_dir(dest, what)
        shutil.rmtree(dest, ignore_errors=True)
        return t

    def hosts_dir(self, mirror_port):
        """containerd's hosts dir for UPSTREAM: straight to it, or to a mirror on this namespace's
        loopback with a dead `server`, so that a failing mirror fails the pull instead of falling
        back to the upstream unseen."""
        d = os.path.join(self.work, "hosts", str(mirror_port or "direct"))
        os.makedirs(os.path.join(d, UPSTREAM), exist_ok=True)
        with open(os.path.join(d, UPSTREAM, "hosts.toml"), "w") as f:
            if mirror_port is None:
                f.write(f'server = "http://{UPSTREAM}"\n')
            else:
                f.write(f'server = "http://127.0.0.1:1"\n\n[host."http://127.0.0.1:{mirror_port}"]\n'
                        f'  capabilities = ["pull", "resolve"]\n')
        return d

    def start_containerd(self):
        d = tempfile.mkdtemp(prefix="ctd-", dir=self.work)
        conf = os.path.join(d, "config.toml")
        with open(conf, "w") as f:
            f.write(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
""")
        p = bench.Proc("containerd", self.topo.enter("mir") + ["containerd", "--config", conf],
                       os.path.join(self.work, "containerd.log"))
        p.dir, p.sock = d, f"{d}/containerd.sock"
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            if not p.alive():
                break
            if subprocess.run(["ctr", "--address", p.sock, "version"], capture_output=True).returncode == 0:
                return p
            time.sleep(0.05)
        p.stop()
        raise SystemExit(f"bench-wan: containerd did not come up; see {p.logfile}")

    def ctr_pull(self, mirror_port, what):
        """`ctr image pull` (fetch and unpack) into a containerd of its own with empty storage."""
        ctd = self.start_containerd()
        try:
            argv = self.topo.enter("mir") + [
                "ctr", "--address", ctd.sock, "-n", "wan", "image", "pull", "--plain-http",
                "--hosts-dir", self.hosts_dir(mirror_port), "--snapshotter", "overlayfs", f"{UPSTREAM}/{REPO}:{TAG}"]
            with open(os.path.join(self.work, "ctr.log"), "ab") as out:
                out.write(f"\n== ctr pull via {what}\n".encode())
                out.flush()
                t0 = time.perf_counter()
                rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
                t = time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"bench-wan: ctr pull via {what} failed; see {self.work}/ctr.log")
            return t
        finally:
            ctd.stop()
            shutil.rmtree(ctd.dir, ignore_errors=True)

    def pull(self, client, server, what):
        """One pull of the image with `client` ("skopeo" or "ctr") from `server` (None: direct)."""
        if client == "skopeo":
            return self.skopeo_pull(f"127.0.0.1:{server.port}" if server else UPSTREAM, what)
        return self.ctr_pull(server.port if server else None, what)

    def ttfb(self, host, blob):
        """curl's time_starttransfer and time_total for a GET of `blob`, seconds."""
        argv = self.topo.enter("mir") + ["curl", "-sS", "-o", "/dev/null", "-w",
                                         "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
                                         f"http://{host}/v2/{REPO}/blobs/{blob['digest']}"]
        out = subprocess.run(argv, capture_output=True, text=True).stdout.split()
        if len(out) != 4 or out[0] != "200" or int(out[1]) != blob["size"]:
            raise SystemExit(f"bench-wan: GET of {blob['digest']} from {host} gave {out}")
        return float(out[2]), float(out[3])

    # -- rows ----------------------------------------------------------------------------------

    def order(self, rep):
        """direct and regmirror swap places every repetition; distribution's proxy comes last."""
        return (["direct", "regmirror"] if rep % 2 == 0 else ["regmirror", "direct"]) + ["distribution"]

    def start_local(self):
        """The floor of a warm pull: distribution on the mir namespace's loopback, serving the
        upstream's own storage (read only), so no byte crosses the link."""
        port = self.next_port()
        conf = os.path.join(self.work, f"local-{port}.yml")
        write_distribution_config(conf, os.path.join(self.work, "upstream"), port)
        p = bench.Proc("local", self.topo.enter("mir") + ["docker-registry", "serve", conf],
                       os.path.join(self.work, "local.log"))
        p.port, p.kind = port, "local"  # no p.root: stop() must not remove the upstream's storage
        self.ready(p)
        return p

    def pulls(self, key, link, rep, client):
        """One repetition of the pull rows of `client` on `link`."""
        raw = self.raw[key][client]
        for side in self.order(rep):
            if side == "direct":
                raw["direct_s"].append(self.pull(client, None, "direct"))
            elif side == "regmirror":
                rm = self.start_regmirror()
                try:
                    off = self.upstream_log_offset()
                    raw["regmirror_cold_s"].append(self.pull(client, rm, "regmirror cold"))
                    raw["regmirror_cold_max_gets_per_blob"].append(
                        max(self.upstream_gets(off, bench.REGMIRROR_AGENT).values(), default=0))
                    off = self.upstream_log_offset()
                    raw["regmirror_warm_s"].append(self.pull(client, rm, "regmirror warm"))
                    raw["regmirror_warm_upstream_gets"].append(sum(self.upstream_gets(off, bench.REGMIRROR_AGENT).values()))
                finally:
                    self.stop(rm)
            else:
                proxy = self.start_proxy()
                try:
                    raw["distribution_cold_s"].append(self.pull(client, proxy, "distribution proxy cold"))
                finally:
                    self.stop(proxy)  # also ends its background store of the blobs (it fetches each twice)
        local = self.start_local()
        try:
            raw["local_floor_s"].append(self.pull(client, local, "distribution on loopback"))
        finally:
            self.stop(local)
        log(f"link {link['name']} {client} rep {rep + 1}: " + ", ".join(
            f"{k[:-2]} {v[-1]:.2f}s" for k, v in raw.items() if k.endswith("_s")))

    def ttfbs(self, key, link, rep):
        raw = self.raw[key]["ttfb"]
        blob = self.image["layers"][0]
        for side in self.order(rep):
            if side == "direct":
                first, total = self.ttfb(UPSTREAM, blob)
            else:
                p = self.start_regmirror() if side == "regmirror" else self.start_proxy()
                try:
                    first, total = self.ttfb(f"127.0.0.1:{p.port}", blob)
                finally:
                    self.stop(p)
            raw[f"{side}_s"].append(first)
            raw[f"{side}_total_s"].append(total)
        log(f"link {link['name']} ttfb rep {rep + 1}: " + ", ".join(
            f"{s} {raw[s + '_s'][-1] * 1000:.1f} ms" for s in self.order(0)))

    def crowd_once(self, port, what):
        """`clients` skopeo pulls of the image from 127.0.0.1:`port`, started at once; wall seconds
        from the first start to the last exit."""
        n = self.args.clients
        os.sync()  # the previous row's writes are not still being flushed under this one
        dests = [self.new_dest(f"crowd-{i}") for i in range(n)]
        logs = [open(os.path.join(self.work, f"crowd-{i}.log"), "wb") for i in range(n)]
        try:
            t0 = time.perf_counter()
            procs = [subprocess.Popen(self.skopeo_argv(f"127.0.0.1:{port}", d), stdout=lf, stderr=subprocess.STDOUT)
                     for d, lf in zip(dests, logs)]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t0
        finally:
            for lf in logs:
                lf.close()
        failed = [i for i, c in enumerate(codes) if c != 0]
        if failed:
            raise SystemExit(f"bench-wan: {len(failed)} of {n} {what} pulls failed; see {self.work}/crowd-{failed[0]}.log")
        for d in dests:
            self.check_dir(d, what)
            shutil.rmtree(d, ignore_errors=True)
        return wall

    def crowd(self, key, link, rep):
        """`clients` skopeo pulls started at once through one cold regmirror; then the same crowd
        again, warm, as the floor: what the clients themselves need on this machine."""
        raw = self.raw[key]["crowd"]
        rm = self.start_regmirror()
        try:
            off = self.upstream_log_offset()
            wall = self.crowd_once(rm.port, "cold crowd")
            gets = self.upstream_gets(off, bench.REGMIRROR_AGENT)
            wanted = [l["digest"] for l in self.image["layers"]] + [self.image["config"]["digest"]]
            raw["wall_s"].append(wall)
            raw["gets_per_blob"].append({d: gets.get(d, 0) for d in wanted})
            raw["peak_rss_kb"].append(rm.status_kb("VmHWM"))
            raw["warm_wall_s"].append(self.crowd_once(rm.port, "warm crowd"))
        finally:
            self.stop(rm)
        log(f"link {link['name']} {self.args.clients} clients rep {rep + 1}: cold {wall:.2f}s, upstream GETs per blob "
            f"{sorted(raw['gets_per_blob'][-1].values())}; warm {raw['warm_wall_s'][-1]:.2f}s")

    def measure_link(self, key):
        link = LINKS[key]
        t_link = time.perf_counter()
        self.topo.shape(link)
        self.start_relay(link)
        probe = [self.ttfb(UPSTREAM, self.image["layers"][0]) for _ in range(2)]
        log(f"link {link['name']} {link['label']}: a fresh connection's first byte after "
            f"{min(p[0] for p in probe) * 1000:.0f} ms (2 RTT expected)")
        clients = ["skopeo"] + (["ctr"] if self.ctr_ok else [])
        self.raw[key] = {"link": link, "probe_ttfb_s": [p[0] for p in probe],
                         "loadavg_1min_at_start": os.getloadavg()[0],
                         "qdisc_before": self.topo.qdisc_stats(), "tcp_up_before": self.topo.tcp_counters("up"),
                         "ttfb": collections.defaultdict(list)}
        for c in clients:
            self.raw[key][c] = collections.defaultdict(list)
        for rep in range(self.reps):
            for c in clients:
                self.pulls(key, link, rep, c)
            self.ttfbs(key, link, rep)
        if key == "b" and self.args.clients:
            self.raw[key]["crowd"] = collections.defaultdict(list)
            for rep in range(self.reps):
                self.crowd(key, link, rep)
        self.raw[key]["qdisc_after"] = self.topo.qdisc_stats()
        self.raw[key]["tcp_up_after"] = self.topo.tcp_counters("up")
        self.raw[key]["seconds"] = round(time.perf_counter() - t_link)
        self.relay.stop()
        self.relay = None
        self.add_rows(key, clients)

    def add(self, measure, rm, peer, peer_name, ratio, target, met, unit=""):
        self.rows.append({"measure": measure, "regmirror": rm, "peer": peer, "peer_name": peer_name,
                          "ratio": ratio, "target": target, "met": met, "unit": unit})

    def add_rows(self, key, clients):
        link, raw, med = LINKS[key], self.raw[key], statistics.median
        n = link["name"]
        for c in clients:
            r = raw[c]
            direct, cold, warm, dist, local = (med(r[k]) for k in (
                "direct_s", "regmirror_cold_s", "regmirror_warm_s", "distribution_cold_s", "local_floor_s"))
            self.add(f"{n} {c} pull, cold via regmirror, s", cold, direct, "direct", cold / direct,
                     f"<= {COLD_MAX} x direct", cold / direct <= COLD_MAX, "s")
            self.add(f"{n}   same, vs distribution proxy cold", cold, dist, "distribution", cold / dist, "", None, "s")
            self.add(f"{n}   effective Mbit/s of the cold pull", self.image["bytes"] * 8 / 1e6 / cold,
                     self.image["bytes"] * 8 / 1e6 / direct, "direct", direct / cold, "", None, "Mbit/s")
            speedup = direct / warm
            self.add(f"{n} {c} pull, warm via regmirror, s (ratio: x faster)", warm, direct, "direct", speedup,
                     f">= {WARM_MIN:.0f} x faster" if key == "b" else "", speedup >= WARM_MIN if key == "b" else None, "s")
            self.add(f"{n}   floor: {c} pull from distribution on loopback (no link), s", warm, local,
                     "loopback", warm / local, "", None, "s")
        t = raw["ttfb"]
        rm_ms, direct_ms, dist_ms = (1000 * med(t[f"{s}_s"]) for s in ("regmirror", "direct", "distribution"))
        size_mb = self.image["layers"][0]["size"] / MB
        self.add(f"{n} TTFB, cold {size_mb:.1f} MiB blob (curl), ms", rm_ms, direct_ms, "direct", rm_ms / direct_ms,
                 f"<= direct + {TTFB_SLACK_MS:.0f} ms", rm_ms <= direct_ms + TTFB_SLACK_MS, "ms")
        self.add(f"{n}   regmirror - direct, ms", rm_ms - direct_ms, None, "", None, "", None, "ms")
        self.add(f"{n}   same, vs distribution proxy cold", rm_ms, dist_ms, "distribution", rm_ms / dist_ms, "", None, "ms")
        if "crowd" in raw:
            cr = raw["crowd"]
            worst = max(max(g.values()) for g in cr["gets_per_blob"])
            fewest = min(min(g.values()) for g in cr["gets_per_blob"])
            self.add(f"{n} {self.args.clients} skopeo clients cold at once: upstream GETs per blob (max of runs)",
                     worst, None, "", None, "1", worst == 1 and fewest == 1)
            wall, one = med(cr["wall_s"]), med(raw["skopeo"]["direct_s"])
            self.add(f"{n} {self.args.clients} skopeo clients cold at once: wall s vs one direct pull", wall, one,
                     "1 direct pull", wall / one, f"<= {CROWD_MAX} x", wall / one <= CROWD_MAX, "s")
            warm = med(cr["warm_wall_s"])
            self.add(f"{n}   floor: the same {self.args.clients} clients again, warm (no link), s", wall, warm,
                     "warm crowd", wall / warm, "", None, "s")
            self.add(f"{n}   peak RSS of regmirror, MB", med(cr["peak_rss_kb"]) / 1024, None, "", None, "", None, "MB")


def write_distribution_config(conf, root, port, remote=None):
    os.makedirs(root, exist_ok=True)
    lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:", f"    rootdirectory: {root}",
             "  cache:", "    blobdescriptor: inmemory", "http:", f"  addr: 127.0.0.1:{port}",
             "  secret: regmirror-bench-secret"]
    if remote:
        lines += ["proxy:", f"  remoteurl: {remote}"]
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Report

def describe(topo, wan, links):
    """How the link was made, in words and in the exact commands."""
    out = ["The link: three network namespaces of this run (no host interface touched, host loopback unshaped):",
           f"  {topo.ns['up']}: distribution on 127.0.0.1:{wan.upstream.port}; the delay relay on {UPSTREAM} (up0)",
           f"  {topo.ns['rt']}: router, rt-up {RT_UP_ADDR}/30 <-> up0 {UP_ADDR}/30, rt-mir {RT_MIR_ADDR}/30 <-> mir0 {MIR_ADDR}/30",
           f"  {topo.ns['mir']}: regmirror, distribution's proxy, containerd and every client (127.0.0.1:{FIRST_LOCAL_PORT + 1}+)",
           "Rate and drops: tbf on the router's egress toward each end (the sender's TCP sees its drops as losses).",
           "Delay: a TCP relay (wan.py relay, asyncio) delivers each chunk RTT/2 after it arrived, each way; a new",
           "  connection's first bytes wait one more RTT (the handshake the kernel completed at once).",
           "  TCP itself sees the sub-millisecond veth path: slow start and loss recovery are faster than on a real WAN."]
    for key in links:
        l = LINKS[key]
        out.append(f"  link {l['name']} {l['label']}: relay --rtt-ms {l['rtt_ms']}; "
                   f"tc qdisc replace dev rt-mir|rt-up root tbf rate {l['rate']} burst {l['burst']} limit {l['limit']}")
    return "\n".join(out)


def link_stats(raw):
    q0, q1 = raw["qdisc_before"], raw["qdisc_after"]
    drops = {dev: q1[dev]["drops"] - q0[dev]["drops"] for dev in q1}
    sent = {dev: q1[dev]["packets"] - q0[dev]["packets"] for dev in q1}
    t0, t1 = raw["tcp_up_before"], raw["tcp_up_after"]
    retr = t1["retrans_segs"] - t0["retrans_segs"]
    segs = max(1, t1["out_segs"] - t0["out_segs"])
    return (f"tbf toward the mirror sent {sent['rt-mir']} packets and dropped {drops['rt-mir']}; "
            f"toward the upstream sent {sent['rt-up']}, dropped {drops['rt-up']}; "
            f"the upstream side's TCP retransmitted {retr} of {segs} segments ({100 * retr / segs:.2f}%)")


def main():
    if sys.argv[1:2] == ["relay"]:
        return relay_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True, help="the regmirror release binary")
    ap.add_argument("--results", required=True, help="directory for wan-<timestamp>.json")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "3")))
    ap.add_argument("--links", default="a,b", help="which links to measure: a, b or a,b (default)")
    ap.add_argument("--clients", type=int, default=50, help="the crowd on link (b); 0 skips it")
    ap.add_argument("--base-mb", type=int, default=30, help="MiB of the five base layers together")
    ap.add_argument("--big-mb", type=int, default=200, help="MiB of the big layer")
    ap.add_argument("--no-ctr", action="store_true", help="skip the containerd (ctr) rows")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test of the script: a 5+20 MiB image, 1 repetition, 5 clients (numbers mean little)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = ap.parse_args()
    if args.quick:
        args.base_mb, args.big_mb, args.reps, args.clients = 5, 20, 1, min(args.clients, 5)
    links = [k.strip() for k in args.links.split(",") if k.strip()]
    if args.reps < 1 or not links or any(k not in LINKS for k in links):
        ap.error("--reps must be at least 1 and --links a list of a and b")
    if not (os.path.isfile(args.binary) and os.access(args.binary, os.X_OK)):
        ap.error(f"--binary {args.binary}: not an executable file")
    if os.geteuid() != 0:
        raise SystemExit("bench-wan: needs root (network namespaces, veth, tc); run it with sudo")
    missing = [t for t in ("docker-registry", "skopeo", "curl", "ip", "tc", "nsenter") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"bench-wan: missing {', '.join(missing)}: apt-get install docker-registry skopeo curl "
                         "iproute2 util-linux (bench/run.sh does with BENCH_WAN=1)")
    args.binary = os.path.abspath(args.binary)
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.timezone.utc)
    work = tempfile.mkdtemp(prefix="rmwan-")
    log(f"working in {work}")
    remove_stale_namespaces()
    topo = Topology()
    wan = Wan(args, work, topo)
    if not wan.ctr_ok:
        wan.notes.append("containerd rows skipped (" + ("--no-ctr" if args.no_ctr else "ctr/containerd not installed") + ")")
    ok = False
    try:
        topo.create()
        wan.start_upstream()
        for key in links:
            wan.measure_link(key)
        ok = True
    finally:
        bench.stop_all()
        topo.destroy()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            log(f"failed; logs and data kept in {work}")

    finished = datetime.datetime.now(datetime.timezone.utc)
    if "b" in links and args.clients:
        wan.notes.append(f"the {args.clients}-client row has no distribution-proxy peer: each of its clients streams "
                         f"from the upstream, {args.clients} x {wan.image['bytes'] / MB:.0f} MiB over link (b) "
                         "(the loopback benchmark measures that count)")
    wan.notes.append("skopeo tries HTTPS first with --src-tls-verify=false: against the far plain-HTTP upstream that "
                     "probe costs it about 2 RTT per pull, against regmirror on loopback nothing")
    out = {"started": started.isoformat(timespec="seconds"), "seconds": round((finished - started).total_seconds()),
           "git": bench.git_rev(repo_root), "reps": args.reps, "binary": bench.binary_info(args.binary),
           "machine": bench.machine(), "image": wan.image, "links": {k: LINKS[k] for k in links},
           "link_commands": topo.commands, "tcp_congestion_control": topo.congestion_control,
           "rows": wan.rows, "raw": wan.raw, "notes": wan.notes}
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, "wan-" + started.strftime("%Y%m%dT%H%M%SZ") + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    m = out["machine"]
    print(f"\nregmirror {out['git']} over a shaped link | {started:%Y-%m-%d %H:%M} UTC | {m['cpus']} CPUs "
          f"({m['cpu_model']}), {m['mem_gib']} GiB | median of {args.reps} | {out['seconds']} s\n")
    print(describe(topo, wan, links))
    print(f"  TCP congestion control in the namespaces: {out['tcp_congestion_control']}")
    print(f"Image {UPSTREAM}/{REPO}:{TAG}: " + " + ".join(f"{l['size'] / MB:.0f}" for l in wan.image["layers"])
          + f" MiB layers, random (incompressible), uncompressed tars; {wan.image['bytes'] / MB:.0f} MiB in all")
    for key in links:
        r = wan.raw[key]
        print(f"  link {LINKS[key]['name']}: {link_stats(r)}; a fresh connection's first byte after "
              f"{1000 * min(r['probe_ttfb_s']):.0f} ms; {r['seconds']} s of measuring")
    print()
    print(bench.table(wan.rows))
    for note in wan.notes:
        print(f"\nnote: {note}")
    print(f"\nraw results: {path}")
    missed = [r["measure"].strip() for r in wan.rows if r["met"] is False]
    print("targets missed: " + ("; ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()

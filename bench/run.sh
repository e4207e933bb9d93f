#!/usr/bin/env bash
# regmirror side-by-side benchmark: one command from a clean checkout.
#
#   bench/run.sh               default run (256 MB blob, 5 repetitions, ~6 min on 2 cores)
#   BENCH_BIG=1 bench/run.sh   also measure a 1 GB blob (warm, cold, 50 cold clients, peak RSS)
#   BENCH_REPS=N               repetitions per measurement (default 5; the median is reported)
#
# Before/after (say, around a refactor): measure a baseline regmirror beside the working tree's in
# the same run. Every regmirror row is then taken for both in each repetition (order alternating:
# A B, B A, ...), and the table adds the baseline's value, the after/before ratio and its min-max
# over the repetitions.
#
#   BENCH_BASELINE=<git rev> bench/run.sh
#       builds <rev> (anything `git rev-parse` takes: 77633a5, main~3, v0.1.0) in release mode with
#       --locked, in a detached git worktree bench/.baseline/worktree with its own target dir
#       bench/.baseline/target (both git-ignored, kept for the next run), keeps the binary as
#       bench/.baseline/regmirror-<full sha> (built once per revision) and passes it as --baseline.
#       The first build of a revision takes as long as a clean release build (minutes on 2 cores).
#   BENCH_BASELINE_BIN=/path/to/regmirror bench/run.sh
#       uses that prebuilt binary as the baseline instead (BENCH_BASELINE is then ignored).
#   With a baseline every regmirror row is taken twice: the default run takes about 8-10 min on 2
#   cores instead of 4-6 (plus that first build). The "per-rep spread" column is the run-to-run
#   noise; on a busy machine it is wide, and more repetitions (BENCH_REPS=9) narrow the medians.
#
# WAN section (bench/wan.py, needs root, about 25 min): the same image pulled straight from a far
# upstream, through regmirror and through distribution's proxy, over two shaped links between
# network namespaces that wan.py makes and removes (no host interface is touched).
#
#   BENCH_WAN=1 bench/run.sh      the loopback benchmark, then the WAN section
#   BENCH_WAN=only bench/run.sh   the WAN section alone (extra arguments then go to wan.py)
#   BENCH_REPS=N                  also sets the WAN section's repetitions (its default is 3)
#
# Cold CPU section (bench/coldcpu.py, about 3 min): regmirror's CPU seconds per cold GiB against the
# direct GET's CPU (curl straight from distribution) plus one SHA-256 pass, 4 x 256 MiB blobs.
#
#   BENCH_COLDCPU=1 bench/run.sh      the loopback benchmark, then the cold CPU section
#   BENCH_COLDCPU=only bench/run.sh   the cold CPU section alone (extra arguments go to coldcpu.py,
#                                     e.g. --perf for the profile, --baseline OLD for before/after)
#
# Auth-cost section (bench/auth.py, about 1 min): warm manifest-by-tag req/s through regmirror with
# [auth] on (Bearer token, and Basic on every request) vs off, side by side in one run.
#
#   BENCH_AUTH=1 bench/run.sh     the loopback benchmark, then the auth section (then WAN if asked)
#   BENCH_AUTH=only bench/run.sh  the auth section alone (extra arguments then go to auth.py)
#
# TLS section (bench/tls.py, about 2 min): regmirror's HTTPS listener beside nginx over HTTPS with
# the same certificate and cipher: warm blob GB/s and CPU-s per GB with 4 clients, TLS 1.3
# new-connection handshakes per second, and whether the kernel offers kTLS.
#
#   BENCH_TLS=1 bench/run.sh      the loopback benchmark, then the TLS section
#   BENCH_TLS=only bench/run.sh   the TLS section alone
#
# Prefetch section (bench/prefetch.py, about 2 min): `regmirror prefetch` of N images sharing a base
# layer through a cold mirror beside `skopeo copy` of the same images into one OCI layout, with the
# upstream GETs per blob from distribution's access log.
#
#   BENCH_PREFETCH=1 bench/run.sh     the loopback benchmark, then the prefetch section
#   BENCH_PREFETCH=only bench/run.sh  the prefetch section alone (extra arguments go to prefetch.py)
#
# Status-page section (bench/status.py, about 2 min): warm manifest-by-tag req/s with `ui = false`,
# with the page on and nobody looking, and with a client fetching /api/v1/status and / every second;
# then /api/v1/status latency on a generated data directory of 100k cached objects.
#
#   BENCH_STATUS=1 bench/run.sh     the loopback benchmark, then the status-page section
#   BENCH_STATUS=only bench/run.sh  the status-page section alone (extra arguments go to status.py)
#
# Webhook section (bench/webhook.py, about 1 min): `regmirror webhook` reviews/s and p99 for a
# 10-container Pod over HTTPS (wrk with a Lua body), beside nginx answering a fixed review, and RSS.
#
#   BENCH_WEBHOOK=1 bench/run.sh      the loopback benchmark, then the webhook section
#   BENCH_WEBHOOK=only bench/run.sh   the webhook section alone (extra arguments go to webhook.py)
#
# S3 section (bench/s3.py, about 2 min): regmirror with storage = "s3" (s3s-fs on loopback) serving a
# warm 256 MB blob from the bucket beside a direct presigned GET from s3s-fs, and from its local
# tier beside nginx (sendfile). Installs s3s-fs into target/tools when missing (~2 min, once).
#
#   BENCH_S3=1 bench/run.sh       the loopback benchmark, then the S3 section
#   BENCH_S3=only bench/run.sh    the S3 section alone
#
# Replicas section (bench/replicas.py, about 2 min): three replicas coordinated by one redis-server
# beside one replica alone: a cold storm of 60 clients (wall-time ratio, upstream GETs per blob from
# distribution's access log) and warm manifest-by-tag req/s with Redis-shared tag records.
#
#   BENCH_REPLICAS=1 bench/run.sh     the loopback benchmark, then the replicas section
#   BENCH_REPLICAS=only bench/run.sh  the replicas section alone (extra arguments go to replicas.py)
#   BENCH_KEEP=1 ...                  keep the temporary directories (logs, data) of the scripts
#
# Installs its tools from Debian when missing, builds regmirror in release mode, then hands over
# to bench/bench.py, which starts every server on loopback, measures, prints the table and writes
# bench/results/<timestamp>.json. See docs/performance.md.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# command -> Debian package
declare -A tools=(
  [docker-registry]=docker-registry
  [nginx]=nginx
  [wrk]=wrk
  [hyperfine]=hyperfine
  [curl]=curl
  [jq]=jq
  [python3]=python3
)
coldcpu=${BENCH_COLDCPU:-}
case $coldcpu in
  ""|0) coldcpu="" ;;
  1|only) tools+=([perf]=linux-perf [sha256sum]=coreutils [openssl]=openssl) ;;
  *) echo "bench: BENCH_COLDCPU=$coldcpu: use 1 (loopback, then cold CPU) or only (cold CPU alone)" >&2; exit 1 ;;
esac
wan=${BENCH_WAN:-}
case $wan in
  ""|0) wan="" ;;
  1|only) tools+=([skopeo]=skopeo [ctr]=containerd [containerd]=containerd [ip]=iproute2 [tc]=iproute2
                  [nsenter]=util-linux) ;;
  *) echo "bench: BENCH_WAN=$wan: use 1 (loopback, then WAN) or only (WAN alone)" >&2; exit 1 ;;
esac
auth=${BENCH_AUTH:-}
case $auth in
  ""|0) auth="" ;;
  1|only) tools+=([htpasswd]=apache2-utils) ;;
  *) echo "bench: BENCH_AUTH=$auth: use 1 (loopback, then auth) or only (auth alone)" >&2; exit 1 ;;
esac
tls=${BENCH_TLS:-}
case $tls in
  ""|0) tls="" ;;
  1|only) tools+=([openssl]=openssl) ;;
  *) echo "bench: BENCH_TLS=$tls: use 1 (loopback, then TLS) or only (TLS alone)" >&2; exit 1 ;;
esac
prefetch=${BENCH_PREFETCH:-}
case $prefetch in
  ""|0) prefetch="" ;;
  1|only) tools+=([skopeo]=skopeo) ;;
  *) echo "bench: BENCH_PREFETCH=$prefetch: use 1 (loopback, then prefetch) or only" >&2; exit 1 ;;
esac
status=${BENCH_STATUS:-}
case $status in
  ""|0) status="" ;;
  1|only) ;;
  *) echo "bench: BENCH_STATUS=$status: use 1 (loopback, then status page) or only" >&2; exit 1 ;;
esac
webhook=${BENCH_WEBHOOK:-}
case $webhook in
  ""|0) webhook="" ;;
  1|only) tools+=([openssl]=openssl) ;;
  *) echo "bench: BENCH_WEBHOOK=$webhook: use 1 (loopback, then webhook) or only" >&2; exit 1 ;;
esac
s3=${BENCH_S3:-}
case $s3 in
  ""|0) s3="" ;;
  1|only) ;;
  *) echo "bench: BENCH_S3=$s3: use 1 (loopback, then S3) or only (S3 alone)" >&2; exit 1 ;;
esac
replicas=${BENCH_REPLICAS:-}
case $replicas in
  ""|0) replicas="" ;;
  1|only) tools+=([redis-server]=redis-server) ;;
  *) echo "bench: BENCH_REPLICAS=$replicas: use 1 (loopback, then replicas) or only" >&2; exit 1 ;;
esac
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's nginx package starts a system nginx on port 80; the benchmark never uses it.

echo "bench: building regmirror (release)" >&2
cargo build --release --quiet
if [[ -n $s3 && ! -x target/tools/bin/s3s-fs ]] && ! command -v s3s-fs >/dev/null; then
  echo "bench: installing s3s-fs into target/tools" >&2
  cargo install s3s-fs@0.14.1 --features binary --locked --root target/tools --quiet
fi

baseline_args=()
if [[ -n ${BENCH_BASELINE_BIN:-} ]]; then
  [[ -x $BENCH_BASELINE_BIN ]] || { echo "bench: BENCH_BASELINE_BIN=$BENCH_BASELINE_BIN is not an executable" >&2; exit 1; }
  [[ -z ${BENCH_BASELINE:-} ]] || echo "bench: BENCH_BASELINE_BIN given; ignoring BENCH_BASELINE=$BENCH_BASELINE" >&2
  baseline_args=(--baseline "$(realpath "$BENCH_BASELINE_BIN")")
elif [[ -n ${BENCH_BASELINE:-} ]]; then
  base_sha="$(git rev-parse --verify --quiet "${BENCH_BASELINE}^{commit}")" ||
    { echo "bench: BENCH_BASELINE=$BENCH_BASELINE is not a commit of this repository" >&2; exit 1; }
  base_short="$(git rev-parse --short "$base_sha")"
  base_dir="$repo_root/bench/.baseline"
  base_bin="$base_dir/regmirror-$base_sha"
  if [[ ! -x $base_bin ]]; then
    wt="$base_dir/worktree"
    mkdir -p "$base_dir"
    git worktree prune  # a bench/.baseline deleted by hand leaves a stale registration behind
    if git -C "$wt" rev-parse --git-dir >/dev/null 2>&1 &&
       [[ "$(git -C "$wt" rev-parse --show-toplevel)" == "$(realpath "$wt")" ]]; then
      # our own worktree from an earlier run: move it to the revision (it holds no work of anyone's)
      git -C "$wt" checkout --quiet --force --detach "$base_sha"
    else
      rm -rf "$wt"
      git worktree add --quiet --detach "$wt" "$base_sha"
    fi
    echo "bench: building baseline $base_short (release) in $wt" >&2
    (cd "$wt" && CARGO_TARGET_DIR="$base_dir/target" cargo build --release --locked --quiet)
    cp "$base_dir/target/release/regmirror" "$base_bin.tmp"
    mv "$base_bin.tmp" "$base_bin"
  fi
  baseline_args=(--baseline "$base_bin" --baseline-label "$base_short")
fi

loopback=(python3 "$repo_root/bench/bench.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results" "${baseline_args[@]}")
coldcpu_cmd=(python3 "$repo_root/bench/coldcpu.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results" "${baseline_args[@]}")
auth_cmd=(python3 "$repo_root/bench/auth.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
tls_cmd=(python3 "$repo_root/bench/tls.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
prefetch_cmd=(python3 "$repo_root/bench/prefetch.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
status_cmd=(python3 "$repo_root/bench/status.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
webhook_cmd=(python3 "$repo_root/bench/webhook.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
s3_cmd=(python3 "$repo_root/bench/s3.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
replicas_cmd=(python3 "$repo_root/bench/replicas.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")
wan_cmd=("${sudo_cmd[@]}" python3 "$repo_root/bench/wan.py" --binary "$repo_root/target/release/regmirror"
  --results "$repo_root/bench/results")

# One section may be "only" (it alone runs, with the extra arguments); otherwise the loopback
# benchmark runs (with the extra arguments), then each section switched on with 1, in this order.
only=()
for s in coldcpu auth tls prefetch status webhook s3 replicas wan; do
  [[ ${!s} == only ]] && only+=("$s")
done
if ((${#only[@]} > 1)); then
  echo "bench: only one section can be 'only' (got: ${only[*]})" >&2
  exit 1
elif ((${#only[@]} == 1)); then
  cmd="${only[0]}_cmd[@]"
  exec "${!cmd}" "$@"
fi
"${loopback[@]}" "$@"
[[ -z $coldcpu ]] || "${coldcpu_cmd[@]}"
[[ -z $auth ]] || "${auth_cmd[@]}"
[[ -z $tls ]] || "${tls_cmd[@]}"
[[ -z $prefetch ]] || "${prefetch_cmd[@]}"
[[ -z $status ]] || "${status_cmd[@]}"
[[ -z $webhook ]] || "${webhook_cmd[@]}"
[[ -z $s3 ]] || "${s3_cmd[@]}"
[[ -z $replicas ]] || "${replicas_cmd[@]}"
[[ -z $wan ]] || exec "${wan_cmd[@]}"

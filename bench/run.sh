#!/usr/bin/env bash
# regmirror side-by-side benchmark: one command from a clean checkout.
#
#   bench/run.sh               default run (256 MB blob, 5 repetitions, ~6 min on 2 cores)
#   BENCH_BIG=1 bench/run.sh   also measure a 1 GB blob (warm, cold, 50 cold clients, peak RSS)
#   BENCH_REPS=N               repetitions per measurement (default 5; the median is reported)
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
missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's nginx package starts a system nginx on port 80; the benchmark never uses it.

echo "bench: building regmirror (release)" >&2
cargo build --release --quiet

exec python3 "$repo_root/bench/bench.py" --binary "$repo_root/target/release/regmirror" \
  --results "$repo_root/bench/results" "$@"

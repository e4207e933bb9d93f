#!/usr/bin/env bash
# THE test command: install what the end-to-end tests need (Debian 12, as root), then run every test.
# Exits non-zero on any failure. With REGMIRROR_E2E=1 a missing tool fails the e2e tests instead of
# skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the end-to-end tests run: upstream registry, clients, helpers, the busybox put into test images,
# and the outbound proxies of tests/e2e_proxies.rs (tinyproxy, squid, microsocks).
PACKAGES=(docker-registry skopeo apache2-utils openssl curl jq socat busybox-static ca-certificates
    tinyproxy squid microsocks
    bsdutils # `script`: the pseudo-terminal of tests/e2e_prefetch.rs
    redis-server) # coordination of replicas (src/coord/tests.rs, tests/e2e_replicas.rs)
# The real clients of tests/e2e_clients.rs (dockerd, containerd, podman) and what they need.
while read -r p; do [[ -n "$p" ]] && PACKAGES+=("$p"); done < scripts/apt-clients.txt

missing=()
for p in "${PACKAGES[@]}"; do
    # "install ok installed" only: a removed package whose config files remain also passes `dpkg -s`.
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "scripts/test.sh: missing packages ${missing[*]} and not root; install them first" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"

export REGMIRROR_E2E=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
threads="${REGMIRROR_TEST_THREADS:-$(( $(nproc) > 4 ? 4 : $(nproc) ))}"
# --no-fail-fast: report every failing test binary, not just the first; still exits non-zero.
cargo test --locked --no-fail-fast -- --test-threads="$threads"

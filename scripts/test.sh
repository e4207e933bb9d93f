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
    pebble # the ACME test CA of tests/e2e_acme.rs
    chromium # headless, renders the status page in tests/e2e_ui.rs
    redis-server) # coordination of replicas (src/coord/*tests.rs, tests/e2e_replicas.rs, tests/e2e_redis_modes.rs;
    # Sentinel runs as `redis-server --sentinel`, so Debian's redis-sentinel package is not needed)
# tests/e2e_image.rs strips the binary into the image (binutils); tests/e2e_systemd.rs runs systemd-analyze.
# tests/e2e_kube.rs needs kubectl 1.21+ (kustomize v4+), which this machine has (1.32, kustomize v5.5);
# Debian 12's own kubernetes-client (1.20, kustomize v2.0.3) renders these manifests wrongly, so it is
# not installed: without a recent kubectl that suite fails under REGMIRROR_E2E=1 saying so.
PACKAGES+=(binutils)
command -v systemd-analyze >/dev/null || PACKAGES+=(systemd)
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

# Independent checkers of tests/e2e_webhook.rs and tests/e2e_kube.rs (pinned): PyPI jsonpatch applies
# the webhook's JSONPatches, kubernetes-validate checks objects against several Kubernetes versions.
PY_PACKAGES=(jsonpatch==1.33 kubernetes-validate==1.37.0)
if ! python3 - "${PY_PACKAGES[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
    echo "scripts/test.sh: pip installing ${PY_PACKAGES[*]}"
    python3 -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}" ||
        python3 -m pip install -q --disable-pip-version-check --break-system-packages "${PY_PACKAGES[@]}"
fi
# The real S3 server (SigV4 checked) of the S3 storage tests (src/storage/s3/tests.rs,
# tests/e2e_s3.rs): built once into target/tools (~2 min), skipped when present.
if [[ ! -x target/tools/bin/s3s-fs ]]; then
    echo "scripts/test.sh: installing s3s-fs into target/tools"
    cargo install s3s-fs@0.14.1 --features binary --locked --root target/tools
fi

export REGMIRROR_E2E=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
threads="${REGMIRROR_TEST_THREADS:-$(( $(nproc) > 4 ? 4 : $(nproc) ))}"
# --no-fail-fast: report every failing test binary, not just the first; still exits non-zero.
cargo test --locked --no-fail-fast -- --test-threads="$threads"

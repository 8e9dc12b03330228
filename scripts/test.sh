#!/usr/bin/env bash
# One command: install everything the tests need, then run the whole suite on loopback only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh full
venv="${VENV:-$root/.venv}"
export PATH="$venv/bin:$PATH"
run=(bash scripts/pytest_passes.sh "$@")  # two passes: without TensorFlow, then with it
# Tests talk to loopback only; a network namespace with nothing but `lo` guarantees it (root only).
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${run[@]}"
fi
echo "[test] not root or unshare unavailable: running without the loopback-only namespace"
exec "${run[@]}"

#!/usr/bin/env bash
# One command: set up the serving environment (no TensorFlow) and run the service on the bundled
# default model at http://127.0.0.1:8080/ . Extra arguments go to deepfake-serve (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" serve
exec "${VENV:-$root/.venv}/bin/deepfake-serve" "$@"

#!/usr/bin/env bash
# Retrains the default bundle (models/default_bundle) from ../shared/data with the documented recipe,
# then runs the leave-one-generator-family-out evaluation and writes its table into the model card.
#   scripts/train_default.sh [OUT=runs/default]     (after scripts/test.sh or setup_env.sh full set up .venv)
# About 25 minutes for the bundle and 35 more for the five leave-one-out runs (400 steps each) on a 2-core CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-runs/default}"
data="${DATA:-$root/../shared/data}"
py="${VENV:-$root/.venv}/bin/python"
common=(--data "$data/dev" "$data/dev_extra" "$data/reenact" --images "$data/faces"
        --pairs "$data/dfdc_faces" --groups models/data/identity_groups.json
        --cache "$out/cache" --input-size 160)
"$py" -m models "${common[@]}" --out "$out/model" --bundle models/default_bundle \
  --encoder-steps "${STEPS:-1000}" --head-epochs 5 --name deepfake-cnn-gru --version 0.4.0
"$py" -m models.lofo --out "$out/lofo" --bundle models/default_bundle -- "${common[@]}" \
  --encoder-steps "${LOFO_STEPS:-400}"

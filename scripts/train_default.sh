#!/usr/bin/env bash
# Retrains the default bundle (models/default_bundle) from ../shared/data with the documented recipe,
# then runs the leave-one-generator-family-out evaluation and writes its table into the model card.
#   scripts/train_default.sh [OUT=runs/default]     (after scripts/test.sh or setup_env.sh full set up .venv)
# Two stages (docs/training.md): the encoder first learns from synthetic fakes of the real
# training crops only (no real deepfake of any generator), then from the whole unit mix,
# starting where the first stage left off. On the 2-core CPU build machine: about 14 minutes for
# stage 1, 5 for stage 2 with the head, export and evaluation, and 21 for the five
# leave-one-out runs (which reuse stage 1: it has seen no family).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-runs/default}"
data="${DATA:-$root/../shared/data}"
py="${VENV:-$root/.venv}/bin/python"
common=(--data "$data/dev" "$data/dev_extra" "$data/reenact" --images "$data/faces"
        --pairs "$data/dfdc_faces" --groups models/data/identity_groups.json
        --cache "$out/cache" --input-size 160)
# Stage 1: synthetic fakes only (self-blend, graphics swap, landmark warp, re-render), with
# every generator family left out, so no real deepfake reaches it and its frame_eval.json is a
# zero-shot measurement of all five families. It also learns the manipulation map (where each
# synthetic fake was blended: --mask-loss), 2,000 batches (0.7.0), and makes its synthetic fakes
# from the real face images as well as the real clips (--synth-sources, 0.8.0; docs/training.md).
no_family=(); for f in deepfacelive dfdc faceswap talking_head reenactment; do no_family+=(--exclude-family "$f"); done
if [ ! -f "$out/synth/frame_eval.json" ]; then  # done already: keep it (delete it to redo)
  "$py" -m models "${common[@]}" --out "$out/synth" --encoder-only \
    --encoder-steps "${SYNTH_STEPS:-2000}" --unit-weights synth=1 "${no_family[@]}" --mask-loss 1.0 \
    --synth-sources clips,stills
fi
stage1="$out/synth/checkpoints/finetune.weights.h5"
# Stage 2: the full unit mix from stage 1's weights at half the learning rate; the bundle's head
# is the fine-tuned frame classifier averaged over the window (it measured better than a GRU
# trained on windows of these embeddings: docs/training.md).
# Its synthetic fakes come from every real source: clips, the still pairs' real halves, face images.
stage2=(--encoder-steps "${STEPS:-600}" --lr 1e-4 --init-from "$stage1"
        --synth-sources clips,still_pairs,stills)
"$py" -m models "${common[@]}" --out "$out/model" --bundle models/default_bundle \
  "${stage2[@]}" --head frame-mean --name deepfake-cnn-gru --version 0.8.0
"$py" -m models.lofo --out "$out/lofo" --bundle models/default_bundle -- "${common[@]}" \
  "${stage2[@]}"

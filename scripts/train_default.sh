#!/usr/bin/env bash
# Retrains the default bundle (models/default_bundle) from ../shared/data with the documented recipe,
# then runs the leave-one-generator-family-out evaluation and writes its table into the model card.
#   scripts/train_default.sh [OUT=runs/default]     (after scripts/test.sh or setup_env.sh full set up .venv)
# Two stages (docs/training.md): the encoder first learns from synthetic fakes of the real
# training crops only (no real deepfake of any generator), then from the whole unit mix,
# starting where the first stage left off; the bundle averages the two stages' frame classifiers.
# On the 2-core CPU build machine: about 14 minutes for stage 1, 5 for stage 2 with its export
# and evaluation, 4 for the ensemble's export and evaluation, and 25 for the five leave-one-out
# runs (which reuse stage 1: it has seen no family).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-runs/default}"
data="${DATA:-$root/../shared/data}"
py="${VENV:-$root/.venv}/bin/python"
# TensorFlow leaves its oneDNN kernels off on CPUs without AVX-512; on the 2-core AVX2 build
# machine they train 1.6x faster (1.18 -> 0.71 s per batch of 32 crops at 160 px, measured
# 2026-12-07). Results differ from oneDNN-off runs only by floating-point round-off.
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
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
# Stage 2 exports and evaluates its own bundle ($out/stage2_bundle), for comparison.
"$py" -m models "${common[@]}" --out "$out/model" --bundle "$out/stage2_bundle" \
  "${stage2[@]}" --head frame-mean --name deepfake-cnn-gru-stage2 --version 0.9.0
# The default bundle: stage 1 and stage 2 averaged (their frame probabilities, weights 0.5/0.5;
# 0.9.0, docs/training.md): they fail on different families.
"$py" -m models.ensemble build "$out/model" "$out/synth" --out "$out/ensemble" \
  --bundle models/default_bundle --data "$data/dev" "$data/dev_extra" "$data/reenact" \
  --name deepfake-cnn-gru --version 0.9.0
# Leave one family out: stage 2 without each family (its own table in the stage-2 bundle), then
# each averaged with stage 1 as the default bundle averages them (the default bundle's table).
"$py" -m models.lofo --out "$out/lofo" --bundle "$out/stage2_bundle" -- "${common[@]}" \
  "${stage2[@]}"
"$py" -m models.ensemble lofo --out "$out/ensemble_lofo" --fixed "$out/synth" --lofo "$out/lofo" \
  --bundle models/default_bundle

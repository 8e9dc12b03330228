"""Average the frame classifiers of several `deepfake-train` runs into one model directory, and
measure the average the way `models.lofo` measures one run.

    python -m models.ensemble build --out runs/default/ensemble RUN [RUN ...] \
        [--bundle models/default_bundle --name deepfake-cnn-gru --version 0.9.0 --data ...]
    python -m models.ensemble lofo --out runs/default/ensemble_lofo --fixed runs/default/synth \
        --lofo runs/default/lofo [--bundle models/default_bundle]

Each RUN holds the fine-tuned frame classifier in RUN/checkpoints/finetune.weights.h5; the first
RUN must be a whole model directory (config.json, training.json, split.json; its calibration.npy
is used for INT8), and every RUN must share its backbone and input size. The model directory it
writes is an ordinary one for `deepfake-export`: the encoder runs the members' encoders side by
side on each crop and concatenates their embeddings; the frame-mean head gives each member's
frame probability from its part of the embedding, takes their weighted mean, and averages that
over the valid steps of the window. So a video's score is the weighted mean of the members'
video scores, exactly, and the serving code runs it like any other bundle.

Why (docs/training.md): stage 1 (synthetic fakes only) and stage 2 (every family) fail on
different families; the mean of their probabilities measured better on every unseen family than
either alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ModelConfig

WEIGHTS = "checkpoints/finetune.weights.h5"
MEMBER_LAYER = "member_mean"


def member_weights(run: Path) -> Path:
    w = run / WEIGHTS
    if not w.is_file():
        raise FileNotFoundError(f"{run} has no fine-tuned frame classifier ({WEIGHTS})")
    return w


def normalised(weights: list[float] | None, n: int) -> list[float]:
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"--weights: {len(w)} weights for {n} runs")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("--weights must be >= 0 and not all 0")
    return [x / sum(w) for x in w]


def build_model(cfg: ModelConfig, weight_files: list[Path], weights: list[float]) -> Any:
    """A KerasModel whose encoder concatenates the members' embeddings and whose frame-mean head
    is the weighted mean of their frame classifiers (see the module docstring)."""
    from dataclasses import replace

    import keras
    from keras import layers

    from models.cnn_gru import (
        ENCODER_INPUT,
        FRAME_LAYER,
        HEAD_EMBEDDINGS,
        HEAD_MASK,
        MaskedMean,
        build_encoder,
        feature_dim_of,
    )
    from models.finetune import frame_classifier
    from models.saving import KerasModel

    base = replace(cfg, weights=None, head="frame_mean")
    inp = keras.Input((cfg.input_size, cfg.input_size, 3), dtype="uint8", name=ENCODER_INPUT)
    embeddings, kernels, biases = [], [], []
    for i, wf in enumerate(weight_files):
        enc = build_encoder(base)
        clf = frame_classifier(enc)
        clf.load_weights(wf)
        k, b = clf.get_layer(FRAME_LAYER).get_weights()
        kernels.append(k)
        biases.append(b)
        member = keras.Model(enc.input, enc.output, name=f"member{i}")
        embeddings.append(member(inp))
    dims = [int(k.shape[0]) for k in kernels]
    encoder = keras.Model(
        inp, layers.Concatenate(name="embedding")(embeddings), name="encoder_ensemble"
    )
    dim = feature_dim_of(encoder)
    emb = keras.Input((cfg.window, dim), name=HEAD_EMBEDDINGS)
    mask = keras.Input((cfg.window,), dtype="bool", name=HEAD_MASK)
    frame = layers.Dense(len(dims), activation="sigmoid", name=FRAME_LAYER)
    mean = layers.Dense(1, use_bias=False, trainable=False, name=MEMBER_LAYER)
    p = mean(frame(emb))
    head = keras.Model([emb, mask], MaskedMean(name="p_fake")([p, mask]), name="head")
    block = np.zeros((dim, len(dims)), np.float32)  # member i reads only its own embedding
    start = 0
    for i, (k, d) in enumerate(zip(kernels, dims, strict=True)):
        block[start : start + d, i] = k[:, 0]
        start += d
    frame.set_weights([block, np.concatenate(biases).astype(np.float32)])
    mean.set_weights([np.asarray(weights, np.float32).reshape(-1, 1)])
    return KerasModel(base, encoder, head)


def build(
    runs: list[Path], out: Path, weights: list[float] | None = None, say: Any = print
) -> Path:
    """Write the ensemble's model directory `out` from `runs` (the first a whole model dir)."""
    from models.finetune_run import init_record

    if len(runs) < 2:
        raise ValueError("an ensemble needs two or more runs")
    first = runs[0]
    for need in ("config.json", "training.json", "split.json"):
        if not (first / need).is_file():
            raise FileNotFoundError(f"{first} is not a whole model directory: {need} is missing")
    files = [member_weights(r) for r in runs]
    w = normalised(weights, len(runs))
    cfg = ModelConfig.load(first / "config.json")
    from models.saving import save_model_dir  # Keras: after the checks

    say(f"[ensemble] {len(runs)} members, weights {', '.join(f'{x:.2f}' for x in w)}")
    model = build_model(cfg, files, w)
    training = json.loads((first / "training.json").read_text())
    training["ensemble"] = {
        "how": "the weighted mean of the members' frame probabilities, averaged over the window",
        "command": "python -m models.ensemble " + " ".join(sys.argv[1:]),
        "members": [{**init_record(f), "weight": x} for f, x in zip(files, w, strict=True)],
    }
    model.training = training
    out.mkdir(parents=True, exist_ok=True)
    save_model_dir(model, out)
    for name in ("split.json", "calibration.npy"):
        if (first / name).is_file():
            shutil.copy(first / name, out / name)
    say(f"[ensemble] model directory written to {out} ({model.feature_dim}-d embedding)")
    return out


def average_rows(evals: list[dict[str, Any]], weights: list[float]) -> list[dict[str, Any]]:
    """frame_eval.json rows with each clip's p_fake the weighted mean of the runs' scores for
    it; only the clips every run scored."""
    by_run = [{r["video"]: r for r in ev["rows"]} for ev in evals]
    common = [v for v in by_run[-1] if all(v in d for d in by_run)]
    rows = []
    for v in common:
        row = dict(by_run[-1][v])  # the last run's side: its left-out family, its split
        row["p_fake"] = float(sum(x * d[v]["p_fake"] for x, d in zip(weights, by_run, strict=True)))
        rows.append(row)
    return rows


def average_eval(ev_files: list[Path], weights: list[float], left_out: list[str]) -> dict[str, Any]:
    from models.finetune_run import row_summary

    evals = [json.loads(f.read_text()) for f in ev_files]
    rows = average_rows(evals, weights)
    return {
        "how": "weighted mean of the runs' frame-classifier clip scores",
        "runs": [str(f.parent) for f in ev_files],
        "weights": weights,
        **row_summary(rows, left_out),
        "rows": rows,
        "fine_tune": evals[-1]["fine_tune"],
    }


def lofo(
    fixed: list[Path],
    lofo_dir: Path,
    out: Path,
    weights: list[float] | None = None,
    bundle: Path | None = None,
) -> dict[str, Any]:
    """The ensemble's leave-one-family-out table: for each family F, the `fixed` runs (trained on
    no family, like stage 1) averaged with `lofo_dir`/F (the run without F), scored as
    `models.lofo` scores one run; written to OUT/lofo.json (and BUNDLE/lofo.json)."""
    from models.finetune import FAMILY_NAMES
    from models.lofo import summarise

    w = normalised(weights, len(fixed) + 1)
    families = []
    for f in FAMILY_NAMES:
        run = lofo_dir / f
        if not (run / "frame_eval.json").is_file():
            continue
        (out / f).mkdir(parents=True, exist_ok=True)
        ev = average_eval(
            [*(r / "frame_eval.json" for r in fixed), run / "frame_eval.json"], w, [f]
        )
        (out / f / "frame_eval.json").write_text(json.dumps(ev, indent=1))
        if (run / "split.json").is_file():
            shutil.copy(run / "split.json", out / f / "split.json")
        families.append(f)
    if not families:
        raise FileNotFoundError(f"{lofo_dir} has no leave-one-out runs (F/frame_eval.json)")
    how = (
        "The served ensemble's frame classifiers, per family: "
        + " + ".join(str(r) for r in fixed)
        + f" (trained on no family) averaged (weights {', '.join(f'{x:.2f}' for x in w)}) with "
        f"the fine-tune without that family ({lofo_dir}/F); the same identity split; the "
        "family's fakes (train and held-out side alike, none trained on by either) scored by the "
        "mean of up to 16 frames per clip against the held-out real clips. Command: python -m "
        "models.ensemble " + " ".join(sys.argv[1:])
    )
    result = summarise(out, families, how)
    missing = [f for f in FAMILY_NAMES if f not in families]
    if missing:
        result["missing"] = missing
    (out / "lofo.json").write_text(json.dumps(result, indent=1))
    if bundle is not None:
        from models.evaluation import rewrite_model_card

        (bundle / "lofo.json").write_text(json.dumps(result, indent=1))
        rewrite_model_card(bundle)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.ensemble",
        description="Average the frame classifiers of deepfake-train runs into one model.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the ensemble's model directory (and bundle)")
    b.add_argument("runs", nargs="+", type=Path, help="the first: a whole model directory")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--weights", nargs="+", type=float, help="one per run (default: equal)")
    b.add_argument("--bundle", type=Path, help="also export it here and evaluate it (needs --data)")
    b.add_argument("--data", nargs="+", type=Path, default=[], help="the runs' DFDC folders")
    b.add_argument("--name", default="deepfake-cnn-gru")
    b.add_argument("--version", default="0.0.0")
    b.add_argument("--quantize", choices=["int8", "none"], default="int8")
    b.add_argument("--detector", default="full_range")
    b.add_argument(
        "--keep-fp32",
        action="store_true",
        help="keep the fp32 encoder in the bundle beside the INT8 one (default: INT8 only)",
    )
    lo = sub.add_parser("lofo", help="leave-one-family-out table of the average")
    lo.add_argument("--out", type=Path, required=True)
    lo.add_argument("--fixed", nargs="+", type=Path, required=True, help="runs on no family")
    lo.add_argument("--lofo", type=Path, required=True, help="python -m models.lofo's --out")
    lo.add_argument("--weights", nargs="+", type=float, help="fixed runs, then the lofo run")
    lo.add_argument("--bundle", type=Path, help="write lofo.json into this bundle and its card")
    return p


def export_and_evaluate(args: argparse.Namespace, model_dir: Path, t0: float) -> None:
    """`deepfake-export build` into the bundle, then the held-out scan of the first run's
    held-out videos through the serving path, and the model card."""
    from models.dfdc import read_folders
    from models.evaluation import evaluate_bundle, write_model_card
    from models.train import _deepfake_export, export_argv

    training = json.loads((model_dir / "training.json").read_text())
    s = training.get("settings", {})
    calibration = model_dir / "calibration.npy"
    _deepfake_export(
        *export_argv(
            model_dir,
            args.bundle,
            name=args.name,
            version=args.version,
            detector=args.detector,
            fps=s.get("fps"),
            margin=s.get("margin"),
            quantize=args.quantize,
            calibration=calibration if calibration.is_file() else None,
            # two encoders: the fp32 pair alone would be 27 MB
            int8_only=not args.keep_fp32,
        )
    )
    val = set(json.loads((model_dir / "split.json").read_text())["val"])
    videos = [v for v in read_folders(args.data).videos if v.name in val]
    if len(videos) != len(val):
        raise FileNotFoundError(
            f"--data holds {len(videos)} of the {len(val)} held-out videos in split.json"
        )
    metrics = evaluate_bundle(args.bundle, videos, model_dir)
    print("[ensemble] held-out evaluation: " + json.dumps(metrics["metrics"]), file=sys.stderr)
    command = "python -m models.ensemble " + " ".join(sys.argv[1:])
    write_model_card(args.bundle, model_dir, command, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.cmd == "build":
            if args.bundle and not args.data:
                raise ValueError("--bundle needs --data (the held-out videos are scanned)")
            build(args.runs, args.out, args.weights, say)
            if args.bundle:
                export_and_evaluate(args, args.out, t0)
        else:
            r = lofo(args.fixed, args.lofo, args.out, args.weights, args.bundle)
            for f, row in r["families"].items():
                say(f"[ensemble lofo] without {f}: its {row['fakes']} fakes AUC {row['auc']:.3f}")
            say(f"[ensemble lofo] mean AUC {r['mean_auc']:.3f}, min {r['min_auc']:.3f}")
    except (FileNotFoundError, ValueError) as exc:
        print(f"python -m models.ensemble: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The end-to-end encoder stage of `deepfake-train`: build the pool (training clips, still pairs,
stills), fine-tune, and measure held-out clips per generator family (frame mean of the frame
classifier) and held-out still pairs (frame level)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.dfdc import Video
from models.finetune import (
    FAMILY_NAMES,
    BatchMaker,
    Clip,
    Pool,
    clip_scores,
    family_of,
    finetune,
    frame_classifier,
    parse_sources,
)

if TYPE_CHECKING:
    from models.train import TrainConfig


def still_pairs(
    config: TrainConfig,
    videos: list[Video],
    size: int,
    cache_dir: Path,
    stage: Any,
    say: Callable[[str], None],
) -> tuple[
    tuple[np.ndarray, np.ndarray] | None, tuple[np.ndarray, np.ndarray] | None, dict[str, Any]
]:
    """(training pairs, held-out pairs, info) from `--pairs` folders. Pairs are split by a hash of
    the pair id; pairs whose original video also gave a clip in the DFDC folders are dropped, so
    no person is on both sides through them."""
    from models.dfdc import read_image_folder, read_pair_folder
    from models.train import image_crops_kept

    if not config.pairs:
        return None, None, {}
    # DFDC ids in clip names and face-image paths (e.g. genconvit's <fake>_<original>_<frame>).
    names = " ".join(
        [v.name for v in videos]
        + [str(i.path) for f in config.images for i in read_image_folder(f)]
    )
    tr_r: list[Any] = []
    tr_f: list[Any] = []
    va_r: list[Any] = []
    va_f: list[Any] = []
    info: dict[str, Any] = {"folders": [str(p) for p in config.pairs]}
    dropped = faceless = 0
    for folder in config.pairs:
        pairs = read_pair_folder(folder)
        kept_pairs = [p for p in pairs if not (p.original and p.original in names)]
        dropped += len(pairs) - len(kept_pairs)
        imgs = read_image_folder(folder)  # every image, so the crop cache matches --images
        crops, _, _, _, kept = image_crops_kept(imgs, config, size, cache_dir, stage)
        where = {imgs[int(k)].path: i for i, k in enumerate(kept)}
        for p in kept_pairs:
            a, b = where.get(p.real.path), where.get(p.fake.path)
            if a is None or b is None:
                faceless += 1
                continue
            h = int(
                hashlib.sha256(f"{config.seed}:{folder.name}:{p.pair}".encode()).hexdigest()[:8], 16
            )
            held = (h % 1000) < config.pair_val_fraction * 1000
            (va_r if held else tr_r).append(crops[a])
            (va_f if held else tr_f).append(crops[b])
    info.update(
        train_pairs=len(tr_r),
        held_out_pairs=len(va_r),
        dropped_shared_people=dropped,
        without_face=faceless,
    )
    say(
        f"still pairs: {len(tr_r)} training, {len(va_r)} held out ({dropped} dropped: same DFDC "
        f"originals as clips; {faceless} without a face in one image)"
    )

    def stack(r: list[np.ndarray], f: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        return (np.stack(r), np.stack(f)) if r else None

    train = None if "dfdc" in config.exclude_family else stack(tr_r, tr_f)
    if train is None and tr_r:
        say("still pairs are DFDC fakes: not trained on (leave-family-out)")
    return train, stack(va_r, va_f), info


def end_to_end(
    encoder: Any,
    config: TrainConfig,
    videos: list[Video],
    train: list[Video],
    val: list[Video],
    excluded: list[Video],
    crops: dict[str, Any],
    stills: tuple[np.ndarray, np.ndarray] | None,
    size: int,
    cache_dir: Path,
    stage: Any,
    ckpt: Path,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], Any]:
    """Fine-tune the encoder inside a frame classifier; returns the held-out measurements and
    the frame classifier (whose output layer a frame-mean head takes over)."""
    import json

    from models.dfdc import identity_groups
    from stream_server.core.evaluate import auc

    groups = identity_groups(videos, json.loads(config.groups.read_text()) if config.groups else {})

    def clip(v: Video) -> Clip:
        c = crops[v.name]
        fam = family_of(v.generator, v.label)
        return Clip(v.name, v.label, fam, c.crops, c.times, v.original, groups.get(v.name))

    train_clips = [clip(v) for v in train if len(crops[v.name].crops)]
    val_clips = [clip(v) for v in val if len(crops[v.name].crops)]
    pairs_train, pairs_val, pair_info = still_pairs(config, videos, size, cache_dir, stage, say)
    kinds = tuple(k for k in config.synth.split(",") if k and k != "none")
    landmarks = None
    if kinds:
        from models.synth import Landmarks

        landmarks = Landmarks(config.margin)
    pool = Pool(
        train_clips,
        pairs_train,
        stills,
        kinds,
        parse_weights(config.unit_weights),
        parse_sources(config.synth_sources),
    )
    maker = BatchMaker(pool, landmarks, config.margin)
    say("encoder fine-tune pool: " + maker.describe())
    clf = frame_classifier(
        encoder, train_from_block=config.train_from_block, train_bn=config.train_bn
    )
    if config.init_from is not None and not config.resume:
        clf.load_weights(config.init_from)
        say(f"encoder fine-tune starts from {config.init_from}")
    result = finetune(
        clf,
        maker,
        config.encoder_steps,
        ckpt,
        units=config.units,
        lr=config.lr,
        ema=config.ema,
        rank=config.rank,
        adversary=config.adversary,
        mask_loss=config.mask_loss,
        seed=config.seed if config.batch_seed is None else config.batch_seed,
        resume=config.resume,
        val=val_clips,
        say=say,
    )
    # Held-out measurements: clips per family (frame mean) and still pairs (frame level).
    ev: dict[str, Any] = {
        "how": "frame classifier, mean over up to 16 frames per clip",
        "command": "deepfake-train " + " ".join(sys.argv[1:]),
    }
    if config.init_from is not None:
        ev["init_from"] = init_record(config.init_from)
    scored = val_clips + [clip(v) for v in excluded if len(crops[v.name].crops)]
    p = clip_scores(clf, scored)
    rows: list[dict[str, Any]] = [
        {
            "video": c.name,
            "label": c.label,
            "family": c.family,
            "p_fake": float(s),
            "excluded_family": c in scored[len(val_clips) :],
        }
        for c, s in zip(scored, p, strict=True)
    ]
    ev.update(row_summary(rows, config.exclude_family))
    fam = ev["families"]
    if pairs_val is not None:
        import keras

        xs = np.concatenate(pairs_val)
        y = np.r_[np.zeros(len(pairs_val[0])), np.ones(len(pairs_val[1]))]
        s = np.asarray(
            keras.ops.convert_to_numpy(clf.predict(xs, batch_size=64, verbose=0))
        ).reshape(-1)
        ev["still_pairs"] = {**pair_info, "frame_auc": float(auc(y, s))}
    ev["rows"] = rows
    ev["fine_tune"] = {
        "steps": result.steps,
        "final_loss": float(np.mean(result.losses[-50:])) if result.losses else None,
        "val_auc_by_step": result.val_auc,
        "seconds": round(result.seconds, 1),
        "units_per_batch": config.units,
        "ema": config.ema,
        "rank": config.rank,
        "adversary": config.adversary,
        "mask_loss": config.mask_loss,
        "synth_sources": config.synth_sources,
        "train_bn": config.train_bn,
        "synthetic_kinds": list(kinds),
        "pool": maker.describe(),
    }
    say(
        "held-out clips (frame mean): AUC "
        + (f"{ev['held_out_auc']:.3f}" if ev["held_out_auc"] is not None else "n/a")
        + "; "
        + ", ".join(f"{k} {v['auc']:.3f}" for k, v in fam.items())
        + (
            f"; held-out still pairs frame AUC {ev['still_pairs']['frame_auc']:.3f}"
            if "still_pairs" in ev
            else ""
        )
    )
    return ev, clf


def row_summary(rows: list[dict[str, Any]], left_out: Any = ()) -> dict[str, Any]:
    """frame_eval.json's summary of its per-clip rows: the AUC on the held-out identities (rows
    not of a left-out family), each family's fakes against every scored real, and the reals'
    mean score. `left_out`: the families the run did not train on."""
    from stream_server.core.evaluate import auc

    reals = [r["p_fake"] for r in rows if r["label"] == 0]
    fam: dict[str, Any] = {}
    for f in (*FAMILY_NAMES, "other"):
        fk = [r["p_fake"] for r in rows if r["family"] == f]
        if fk and reals:
            y = np.r_[np.zeros(len(reals)), np.ones(len(fk))]
            fam[f] = {
                "auc": float(auc(y, np.r_[reals, fk])),
                "fakes": len(fk),
                "reals": len(reals),
                "mean_p_fake": float(np.mean(fk)),
                "left_out_of_training": f in left_out,
            }
    return {
        "held_out_auc": _auc([r for r in rows if not r["excluded_family"]]),
        "families": fam,
        "mean_p_fake_real": float(np.mean(reals)) if reals else None,
    }


def init_record(weights: Path) -> dict[str, Any]:
    """What `--init-from` started from: the weights file and, where it was written by an earlier
    `deepfake-train` run (OUT/checkpoints/finetune.weights.h5 beside OUT/frame_eval.json), that
    run's command, fine-tune summary and held-out numbers."""
    import json

    rec: dict[str, Any] = {"weights": str(weights)}
    ev_file = weights.parent.parent / "frame_eval.json"
    if ev_file.is_file():
        ev = json.loads(ev_file.read_text())
        rec.update(
            {
                "command": ev.get("command"),
                "fine_tune": {
                    k: ev.get("fine_tune", {}).get(k)
                    for k in ("steps", "seconds", "pool", "synthetic_kinds", "final_loss")
                },
                "held_out_auc": ev.get("held_out_auc"),
                "families": {k: v.get("auc") for k, v in ev.get("families", {}).items()},
            }
        )
    return rec


def parse_weights(text: str) -> dict[str, float]:
    """'pair=0.3,synth=0.7' -> {'pair': 0.3, 'synth': 0.7}, with clear errors."""
    kinds = ("pair", "clip", "still_pair", "synth", "still")
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        if k not in kinds:
            raise ValueError(f"--unit-weights: unknown unit {k!r}; choose from {', '.join(kinds)}")
        try:
            out[k] = float(v)
        except ValueError:
            raise ValueError(f"--unit-weights: {part!r} is not unit=number") from None
        if out[k] < 0:
            raise ValueError(f"--unit-weights: {k} must be >= 0")
    return out


def _auc(rows: list[dict[str, Any]]) -> float | None:
    from stream_server.core.evaluate import auc

    y = np.array([r["label"] for r in rows])
    if len(rows) == 0 or y.sum() in (0, len(y)):
        return None
    return float(auc(y, np.array([r["p_fake"] for r in rows])))

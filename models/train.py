"""`deepfake-train`: DFDC-format folders -> a trained Keras CNN-GRU (and, with --bundle, an
exported, evaluated ONNX bundle with its model card).

Stages: read metadata -> identity-held-out split -> face crops with the server's face stage
(cached) -> self-blended synthetic fakes from real clips -> fine-tune the last backbone blocks on
frames -> embeddings -> train the GRU head on windows -> save -> export -> evaluate held-out videos
through the serving code path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from models.dfdc import DatasetError, Video, identity_groups, read_folders, split_by_identity  # noqa: E402
from models.finetune import (  # noqa: E402
    DEFAULT_UNIT_WEIGHTS,
    FAMILY_NAMES,
    family_of,
    parse_sources,
)
from stream_server.core.manifest import DEFAULT_ANALYSIS_FPS, DEFAULT_MARGIN  # noqa: E402

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[train {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfake-train",
        description="Train the CNN-GRU on DFDC-format folders (metadata.json + mp4). Whole identities "
        "are held out for validation; with --bundle the model is exported and evaluated too.",
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="DFDC-format folder(s)")
    p.add_argument(
        "--images",
        type=Path,
        nargs="*",
        default=[],
        help="labelled face-image folder(s) (labels.csv: path,label) added to the training side",
    )
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--bundle", type=Path, help="also export a bundle here and evaluate it")
    p.add_argument("--groups", type=Path, help="identity rules JSON (see models/data/)")
    p.add_argument("--cache", type=Path, default=None, help="crop cache (default: OUT/cache)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--weights", default="imagenet", help="imagenet, a weights file, or none")
    p.add_argument(
        "--feature-layer",
        default=None,
        help="backbone layer whose pooled output is the embedding (default: the last)",
    )
    p.add_argument(
        "--head-noise",
        type=float,
        default=0.3,
        help="std of Gaussian noise added to training embeddings (relative to their std)",
    )
    p.add_argument(
        "--head-dropout",
        type=float,
        default=0.5,
        help="dropout on the standardised embeddings before the GRUs",
    )
    p.add_argument("--head-l2", type=float, default=1e-3, help="L2 penalty on the GRU kernels")
    p.add_argument(
        "--head",
        choices=["gru", "frame-mean"],
        type=lambda s: s.replace("_", "-"),  # frame_mean, as the manifest spells it, works too
        default="gru",
        help="gru: a masked GRU trained on windows of embeddings; frame-mean: the fine-tuned "
        "frame classifier averaged over the window (needs --encoder-steps)",
    )
    p.add_argument("--window", type=int, default=20)
    p.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_ANALYSIS_FPS,
        help="analysis frames per second (written into the bundle; the server may override it)",
    )
    p.add_argument("--max-seconds", type=float, default=15.0, help="seconds read per video")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-seed",
        type=int,
        default=None,
        help="seed of the encoder fine-tune's batch order only (default: --seed); the identity "
        "split stays the one --seed gives",
    )
    p.add_argument(
        "--sbi",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="synthetic self-blended fakes from real training clips (default on)",
    )
    p.add_argument(
        "--finetune-blocks",
        type=int,
        default=0,
        help="last backbone blocks fine-tuned on frames (0 = frozen backbone)",
    )
    p.add_argument(
        "--encoder-steps",
        type=int,
        default=0,
        help="batches of end-to-end encoder fine-tuning on video face crops with paired units, "
        "synthetic fakes and stream degradations (0 = frozen ImageNet encoder)",
    )
    p.add_argument("--units", type=int, default=16, help="real/fake units per batch (2 crops each)")
    p.add_argument(
        "--unit-weights",
        default=",".join(f"{k}={v:g}" for k, v in DEFAULT_UNIT_WEIGHTS.items()),
        help="share of each unit kind in a batch (pair, clip, still_pair, synth, still)",
    )
    p.add_argument(
        "--train-from-block",
        type=int,
        default=0,
        help="fine-tune from this backbone block on (the stem and earlier blocks stay ImageNet)",
    )
    p.add_argument(
        "--train-bn",
        action="store_true",
        help="train the batch-norm layers too (batch statistics while fine-tuning; default: keep "
        "ImageNet's statistics)",
    )
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of the fine-tune")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start the encoder fine-tune from an earlier run's frame classifier "
        "(its OUT/checkpoints/finetune.weights.h5, same backbone and input size): a second "
        "stage on another unit mix",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the fine-tuned weights (momentum, e.g. "
        "0.995; 0 = off)",
    )
    p.add_argument(
        "--rank",
        type=float,
        default=0.0,
        help="weight of a ranking loss inside each real/fake unit (the fake above its real)",
    )
    p.add_argument(
        "--adversary",
        type=float,
        default=0.0,
        help="strength of an identity-adversarial head (gradient reversal) that pushes the "
        "encoder to forget who is in the training clips (e.g. 0.1; 0 = off)",
    )
    p.add_argument(
        "--mask-loss",
        type=float,
        default=0.0,
        help="weight of a manipulation-map loss: a training-only head marks where each synthetic "
        "fake was blended (Face X-ray style localisation; e.g. 1.0; 0 = off)",
    )
    p.add_argument(
        "--pairs",
        type=Path,
        nargs="*",
        default=[],
        help="real/fake still-pair folder(s) (labels.csv: path,label,original,pair) for the fine-tune",
    )
    p.add_argument(
        "--pair-val-fraction",
        type=float,
        default=0.1,
        help="share of still pairs held out for a frame-level AUC",
    )
    p.add_argument(
        "--synth",
        default="sbi,swap,warp,rerender",
        help="synthetic fake kinds made online from real crops (comma list, or none)",
    )
    p.add_argument(
        "--synth-sources",
        default="clips,still_pairs",
        help="real crops the synthetic fakes are made from (comma list of clips, still_pairs, "
        "stills: the real training clips, the real halves of the still pairs, the real face "
        "images of --images)",
    )
    p.add_argument(
        "--exclude-family",
        action="append",
        default=[],
        choices=FAMILY_NAMES,
        help="train without this generator family's fakes and report their AUC (leave-one-out)",
    )
    p.add_argument(
        "--encoder-only",
        action="store_true",
        help="stop after the encoder fine-tune and its held-out measurement (frame_eval.json); "
        "for leave-one-family-out runs",
    )
    p.add_argument("--encoder-epochs", type=int, default=3)
    p.add_argument("--head-epochs", type=int, default=5)
    p.add_argument("--head-steps", type=int, default=40, help="batches per head epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--detector", choices=["full_range", "short_range"], default="full_range")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    p.add_argument("--quantize", choices=["int8", "none"], default="int8")
    p.add_argument("--name", default="deepfake-cnn-gru")
    from stream_server.core.version import VersionOrValue

    # `--version V` names the trained model's version; `--version` alone prints the program's.
    p.add_argument(
        "--version", nargs="?", default="0.1.0", action=VersionOrValue, prog_name="deepfake-train"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    return p


@dataclass(frozen=True)
class TrainConfig:
    """`deepfake-train`'s configuration, typed: one field per flag of `parser()` (which holds
    each flag's default and help). `from_args` builds it from the parsed flags; the training
    steps read it, never the `argparse.Namespace`."""

    data: list[Path]
    images: list[Path]
    out: Path
    bundle: Path | None
    groups: Path | None
    cache: Path | None
    backbone: str
    input_size: int | None
    weights: str
    feature_layer: str | None
    head_noise: float
    head_dropout: float
    head_l2: float
    head: str
    window: int
    fps: float
    max_seconds: float
    val_fraction: float
    seed: int
    batch_seed: int | None
    sbi: bool
    finetune_blocks: int
    encoder_steps: int
    units: int
    unit_weights: str
    train_from_block: int
    train_bn: bool
    lr: float
    init_from: Path | None
    ema: float
    rank: float
    adversary: float
    mask_loss: float
    pairs: list[Path]
    pair_val_fraction: float
    synth: str
    synth_sources: str
    exclude_family: list[str]
    encoder_only: bool
    encoder_epochs: int
    head_epochs: int
    head_steps: int
    batch_size: int
    detector: str
    margin: float
    quantize: str
    name: str
    version: str
    resume: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        return cls(**vars(args))

    def settings(self) -> dict[str, Any]:
        """The settings recorded in the model's training record (paths as text; the data,
        output and cache locations are recorded on their own)."""
        skip = ("data", "out", "bundle", "cache", "groups", "images", "pairs")
        return {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(self).items()
            if k not in skip
        }


# -- face crops ----------------------------------------------------------------------------------


def _deepfake_export(*argv: str) -> None:
    """Run `deepfake-export` (export/cli.py) as its own process: models/ never imports export/
    (export reads the model directory this package writes). Same interpreter, same source tree."""
    import subprocess

    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    r = subprocess.run([sys.executable, "-m", "export", *argv], env=env)
    if r.returncode != 0:
        raise ExportFailed(f"deepfake-export {argv[0]} failed (exit status {r.returncode})")


class ExportFailed(RuntimeError):
    """`deepfake-export` refused (its reason is on stderr above)."""


def face_stage(cache: Path, detector: str) -> tuple[Any, dict[str, Any]]:
    """The serving face stage (detector, and the tracked-face detector a default export adds),
    converted once by `deepfake-export face-stage` into the cache with its manifest sections."""
    from stream_server.core.faces import Detectors
    from stream_server.core.manifest import DetectorSpec, RoiSpec
    from stream_server.core.runtime import open_detector

    d = cache / f"detector_{detector}"
    section_file, roi_file = d / "section.json", d / "roi_section.json"
    if not (section_file.is_file() and roi_file.is_file()):
        _deepfake_export("face-stage", str(d), "--detector", detector)
    section = json.loads(section_file.read_text())
    roi_section = json.loads(roi_file.read_text())
    roi = RoiSpec.from_dict(roi_section)
    full = open_detector(DetectorSpec.from_dict(section), d)
    return Detectors(full, open_detector(roi.detector, d), roi), {**section, "roi": roi_section}


def all_crops(
    videos: list[Video],
    config: TrainConfig,
    size: int,
    cache_dir: Path,
    stage: tuple[Any, dict[str, Any]],
) -> dict[str, Any]:
    """Face crops of every video; `stage` is `face_stage(...)`'s (detectors, section)."""
    from tqdm import tqdm

    from models.extract import CropCache, extract_video
    from stream_server.core.frames import MAX_FRAME_SIDE
    from stream_server.core.manifest import DEFAULT_RETRY_PAD, CropSpec

    detector, section = stage
    crop = CropSpec(margin=config.margin)
    cache = CropCache(
        cache_dir / "crops",
        {
            "detector": section["kind"],
            "retry_pad": section.get("retry_pad", DEFAULT_RETRY_PAD),
            "roi": {
                k: section["roi"][k] for k in ("kind", "calibration", "roi_scale", "redetect_every")
            }
            if "roi" in section
            else None,
            "margin": config.margin,
            "size": size,
            "fps": config.fps,
            "max_s": config.max_seconds,
            "max_side": MAX_FRAME_SIDE,  # frames are downscaled as serving does
        },
    )
    out = {}
    for v in tqdm(videos, desc="face crops", unit="video", file=sys.stderr):
        c = cache.get(v.path)
        if c is None:
            c = extract_video(v.path, detector, crop, size, config.fps, config.max_seconds)
            cache.put(v.path, c)
        out[v.name] = c
    return out


def image_crops(
    images: list[Any],
    config: TrainConfig,
    size: int,
    cache_dir: Path,
    stage: tuple[Any, dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Face crops of still images with the serving face stage (a first frame: full search),
    cached; returns (crops, labels, groups, images without a face)."""
    crops, labels, groups, faceless, _ = image_crops_kept(images, config, size, cache_dir, stage)
    return crops, labels, groups, faceless


def image_crops_kept(
    images: list[Any],
    config: TrainConfig,
    size: int,
    cache_dir: Path,
    stage: tuple[Any, dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray, list[str], int, np.ndarray]:
    """`image_crops` plus the index into `images` of every crop (images without a face have
    none), so paired images can be matched up."""
    from PIL import Image
    from tqdm import tqdm

    from models.extract import largest
    from stream_server.core.faces import FaceStage, crop_face
    from stream_server.core.manifest import CropSpec

    detector, section = stage
    ident = json.dumps(
        [[str(i.path), i.label, i.path.stat().st_size] for i in images]
        + [section["kind"], config.margin, size],
        sort_keys=True,
    )
    f = cache_dir / f"images-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.npz"
    if f.is_file():
        with np.load(f, allow_pickle=False) as z:
            if "kept" in z.files:
                return (
                    z["crops"],
                    z["labels"],
                    [str(g) for g in z["groups"]],
                    int(z["faceless"]),
                    z["kept"],
                )
    crops, labels, groups, kept, faceless = [], [], [], [], 0
    for k, im in enumerate(tqdm(images, desc="image crops", unit="image", file=sys.stderr)):
        rgb = np.asarray(Image.open(im.path).convert("RGB"))
        dets = [d for _, d in FaceStage(detector).step(rgb)[0]]
        if not dets:
            faceless += 1
            continue
        crops.append(crop_face(rgb, largest(dets).box, CropSpec(margin=config.margin), size))
        labels.append(im.label)
        groups.append(im.group)
        kept.append(k)
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    lab = np.asarray(labels, np.int64)
    idx = np.asarray(kept, np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(f, crops=arr, labels=lab, groups=np.asarray(groups), faceless=faceless, kept=idx)
    return arr, lab, groups, faceless, idx


def image_sequences(
    feats: np.ndarray, labels: np.ndarray, groups: list[str], length: int, seed: int
) -> dict[str, tuple[np.ndarray, int]]:
    """Still images as pseudo-clips for the GRU head: images of one folder and label, shuffled,
    in runs of `length` (different faces in a row: they teach frame content, not motion)."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, int]] = {}
    for key in sorted({(g, int(y)) for g, y in zip(groups, labels, strict=True)}):
        idx = [i for i, (g, y) in enumerate(zip(groups, labels, strict=True)) if (g, int(y)) == key]
        idx = list(rng.permutation(idx))
        for k in range(0, len(idx), length):
            out[f"img:{key[0]}:{key[1]}:{k // length}"] = (feats[idx[k : k + length]], key[1])
    return out


# -- encoder fine-tuning -------------------------------------------------------------------------


def split_encoder(encoder: Any, backbone: str, blocks: int) -> tuple[Any, Any]:
    """(trunk, top) sharing the encoder's layers: top(trunk(x)) == encoder(x). Only the top trains."""
    import keras

    if blocks <= 0:
        return encoder, None
    if backbone.startswith("efficientnet_lite"):
        from models.efficientnet_lite import n_blocks

        variant = backbone.removeprefix("efficientnet_")
        last = n_blocks(variant) - blocks - 1
        if last < 0:
            raise ValueError(
                f"{backbone} has {n_blocks(variant)} blocks; cannot fine-tune {blocks}"
            )
        names = {layer.name for layer in encoder.layers}
        cut = f"block{last}_add" if f"block{last}_add" in names else f"block{last}_project_bn"
    elif backbone == "tiny_cnn":
        cut = "normalize"
    else:
        raise ValueError(
            f"fine-tuning blocks is supported for efficientnet_lite0/1/2 and tiny_cnn, not "
            f"{backbone}; use --finetune-blocks 0"
        )
    t = encoder.get_layer(cut).output
    trunk = keras.Model(encoder.input, t, name="trunk")
    top = keras.Model(t, encoder.output, name="top")
    for layer in trunk.layers:
        layer.trainable = False
    for layer in top.layers:  # fine-tune weights, keep ImageNet batch-norm statistics
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return trunk, top


def predict(model: Any, x: np.ndarray, batch: int = 64, desc: str = "") -> np.ndarray:
    from tqdm import tqdm

    outs = [
        np.asarray(model(x[i : i + batch], training=False))
        for i in tqdm(
            range(0, len(x), batch), desc=desc, unit="batch", file=sys.stderr, disable=not desc
        )
    ]
    return (
        np.concatenate(outs) if outs else np.zeros((0,) + tuple(model.output.shape[1:]), np.float32)
    )


def balanced_weights(y: np.ndarray) -> np.ndarray:
    pos = max(1, int(y.sum()))
    neg = max(1, len(y) - pos)
    return np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg)).astype(np.float32)


def finetune_encoder(
    top: Any,
    feats: dict[str, np.ndarray],
    labels: dict[str, int],
    val: set[str],
    config: TrainConfig,
    ckpt: Path,
    start_epoch: int,
) -> None:
    import keras

    from stream_server.core.evaluate import auc

    x_in = keras.Input(top.input.shape[1:])
    h = keras.layers.Dropout(0.3)(top(x_in))
    clf = keras.Model(x_in, keras.layers.Dense(1, activation="sigmoid", name="frame_fake")(h))
    if start_epoch > 0 and (ckpt / "encoder.weights.h5").is_file():
        clf.load_weights(ckpt / "encoder.weights.h5")
        say(f"restored the fine-tuned encoder from checkpoints (epoch {start_epoch})")
    clf.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    train_names = [n for n in feats if n not in val and len(feats[n])]
    x = np.concatenate([feats[n] for n in train_names])
    y = np.concatenate([np.full(len(feats[n]), labels[n], np.float32) for n in train_names])
    w = balanced_weights(y)
    val_names = [n for n in feats if n in val and len(feats[n])]
    for epoch in range(start_epoch, config.encoder_epochs):
        hist = clf.fit(
            x, y, sample_weight=w, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0
        )
        msg = f"encoder epoch {epoch + 1}/{config.encoder_epochs}: loss {hist.history['loss'][-1]:.4f}"
        if val_names:
            vp = [float(np.mean(predict(clf, feats[n]))) for n in val_names]
            msg += f", held-out video AUC (frame mean) {auc(np.array([labels[n] for n in val_names]), np.array(vp)):.3f}"
        say(msg)
        clf.save_weights(ckpt / "encoder.weights.h5")
        write_state(ckpt, "encoder", epoch + 1)


# -- head ----------------------------------------------------------------------------------------


def train_head(
    head: Any,
    emb: dict[str, np.ndarray],
    labels: dict[str, int],
    val: set[str],
    config: TrainConfig,
    ckpt: Path,
    start_epoch: int,
) -> list[float]:
    import keras

    from models.sequences import sample_windows, video_windows
    from stream_server.core.evaluate import auc

    if start_epoch > 0 and (ckpt / "head.weights.h5").is_file():
        head.load_weights(ckpt / "head.weights.h5")
        say(f"resumed head training after epoch {start_epoch}")
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    names = [n for n in emb if n not in val and len(emb[n])]
    seqs, labs = [emb[n] for n in names], [labels[n] for n in names]
    val_names = [n for n in emb if n in val and len(emb[n])]
    rng = np.random.default_rng(config.seed + 1000 * start_epoch)
    losses = []
    frames = np.concatenate(seqs)
    if start_epoch == 0:
        from models.cnn_gru import set_embedding_norm

        set_embedding_norm(head, frames.mean(0), frames.var(0))
    noise = config.head_noise * frames.std(0)
    for epoch in range(start_epoch, config.head_epochs):
        x, m, y, _ = sample_windows(
            seqs, labs, config.window, config.head_steps * config.batch_size, rng, noise=noise
        )
        hist = head.fit([x, m], y, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
        losses.append(float(hist.history["loss"][-1]))
        msg = f"head epoch {epoch + 1}/{config.head_epochs}: loss {losses[-1]:.4f}"
        if val_names and (epoch + 1) % 5 == 0:
            vp = []
            for n in val_names:
                w, mk = video_windows(emb[n], config.window, stride=1)
                vp.append(float(np.mean(np.asarray(head([w, mk], training=False)))))
            msg += f", held-out video AUC {auc(np.array([labels[n] for n in val_names]), np.array(vp)):.3f}"
        say(msg)
        head.save_weights(ckpt / "head.weights.h5")
        write_state(ckpt, "head", epoch + 1)
    return losses


def write_state(ckpt: Path, stage: str, epoch: int) -> None:
    (ckpt / "state.json").write_text(json.dumps({"stage": stage, "epoch": epoch}))


def read_state(ckpt: Path) -> dict[str, Any]:
    f = ckpt / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {"stage": "start", "epoch": 0}


# -- main ----------------------------------------------------------------------------------------


@dataclass
class Split:
    """Which videos train and which are held out (whole identities), and the training fakes a
    leave-family-out run leaves out."""

    videos: list[Video]  # every video read
    groups: dict[str, str]  # video name -> identity group
    train: list[Video]
    val: list[Video]
    excluded: list[Video]


@dataclass
class Clips:
    """The training material: face crops per video and the clips built from them."""

    crops: dict[str, Any]  # video name -> its extracted crops
    seqs: dict[str, np.ndarray]  # clip name -> crops (videos, self-blended fakes, image clips)
    labels: dict[str, int]
    stills: tuple[np.ndarray, np.ndarray] | None  # face images (crops, labels)
    n_faces: int
    synthetic: set[str] = field(default_factory=set)  # the self-blended fakes among `seqs`
    image_info: dict[str, Any] = field(default_factory=dict)


def run(config: TrainConfig) -> Path:
    """The steps: split the videos by identity, gather face crops and clips, fit the encoder
    and head, record how the model was made, save it, and (with --bundle) export and evaluate."""
    import keras

    from models.backbones import get_backbone
    from models.saving import new_model, save_model_dir

    keras.utils.set_random_seed(config.seed)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    cache_dir = config.cache or out / "cache"
    size = config.input_size or get_backbone(config.backbone).default_input_size

    split = split_videos(config, out)
    stage = face_stage(cache_dir, config.detector)
    clips = gather_clips(config, split, size, cache_dir, stage)
    model = new_model(model_config(config, size))
    fitted = fit(config, model, split, clips, size, cache_dir, stage, ckpt)
    if fitted is None:
        return out
    e2e_info, losses = fitted
    model.training = training_record(config, split, clips, e2e_info, losses)
    save_model_dir(model, out)
    say(f"model saved to {out}")
    if config.bundle:
        export_and_evaluate(config, config.bundle, out, clips, split.val)
    return out


def split_videos(config: TrainConfig, out: Path) -> Split:
    """Read the folders and hold out whole identities (written to OUT/split.json)."""
    ds = read_folders(config.data)
    say(f"read {ds.summary()}")
    rules = json.loads(config.groups.read_text()) if config.groups else {}
    groups = identity_groups(ds.videos, rules)
    if config.val_fraction > 0:
        train, val = split_by_identity(ds.videos, groups, config.val_fraction, config.seed)
    else:
        train, val = ds.videos, []
    excluded: list[Video] = []
    if config.exclude_family:
        excluded = [v for v in train if family_of(v.generator, v.label) in config.exclude_family]
        train = [v for v in train if v not in excluded]
        say(
            f"leave-family-out: {len(excluded)} training fakes of "
            f"{', '.join(config.exclude_family)} not trained on"
        )
    say(
        f"split by identity: {len(train)} training videos, {len(val)} held out "
        f"({len({groups[v.name] for v in val})} of {len(set(groups.values()))} identity groups)"
    )
    (out / "split.json").write_text(
        json.dumps(
            {
                "train": sorted(v.name for v in train),
                "val": sorted(v.name for v in val),
                "groups": groups,
                "seed": config.seed,
            },
            indent=1,
        )
    )
    return Split(ds.videos, groups, train, val, excluded)


def gather_clips(
    config: TrainConfig, split: Split, size: int, cache_dir: Path, stage: tuple[Any, Any]
) -> Clips:
    """Face crops of every video (cached), self-blended fakes from real training clips (without
    an end-to-end encoder fine-tune), and pseudo-clips of face images (--images)."""
    from models.sbi import blend_clip

    crops = all_crops(split.videos, config, size, cache_dir, stage)
    labels = {v.name: v.label for v in split.videos}
    no_face = [n for n, c in crops.items() if len(c.crops) == 0]
    errors = {n: c.error for n, c in crops.items() if c.error}
    n_faces = sum(len(c.crops) for c in crops.values())
    sampled = sum(c.sampled for c in crops.values())
    say(
        f"faces: {n_faces} crops from {sampled} sampled frames; {len(no_face)} videos without a "
        f"face{'; errors: ' + str(errors) if errors else ''}"
    )
    seqs = {n: c.crops for n, c in crops.items() if len(c.crops)}
    synthetic: set[str] = set()
    if config.sbi and config.encoder_steps <= 0:
        reals = [v.name for v in split.train if v.label == 0 and v.name in seqs]
        for n in reals:
            rng = np.random.default_rng(
                int(hashlib.sha256(f"{config.seed}:{n}".encode()).hexdigest()[:8], 16)
            )
            name = f"sbi:{n}"  # a name of its own; what it is, is `synthetic`
            seqs[name] = blend_clip(seqs[n], rng, config.margin)
            labels[name] = 1
            synthetic.add(name)
        say(f"self-blended fakes: {len(reals)} synthetic clips from real training clips")
    clips = Clips(crops, seqs, labels, None, n_faces, synthetic)
    if config.images:
        add_image_clips(config, clips, size, cache_dir, stage)
    return clips


def add_image_clips(
    config: TrainConfig, clips: Clips, size: int, cache_dir: Path, stage: tuple[Any, Any]
) -> None:
    """--images: face crops of the stills (kept in `clips.stills`) and pseudo-clips of them."""
    from models.dfdc import read_image_folder

    imgs = [i for folder in config.images for i in read_image_folder(folder)]
    crops_i, labs_i, groups_i, faceless = image_crops(imgs, config, size, cache_dir, stage)
    if "dfdc" in config.exclude_family:  # DFDC fakes among the stills (e.g. genconvit_dfdc)
        keep = np.array(
            [not (y == 1 and "dfdc" in g.lower()) for g, y in zip(groups_i, labs_i, strict=True)],
            bool,
        )
        crops_i, labs_i = crops_i[keep], labs_i[keep]
        groups_i = [g for g, k in zip(groups_i, keep, strict=True) if k]
    clips.stills = (crops_i, labs_i)
    pseudo = image_sequences(crops_i, labs_i, groups_i, config.window, config.seed)
    for n, (c, y) in pseudo.items():
        clips.seqs[n], clips.labels[n] = c, y
    clips.image_info = {
        "folders": [str(f) for f in config.images],
        "images": len(imgs),
        "face_crops": len(labs_i),
        "fake": int(labs_i.sum()),
        "real": int(len(labs_i) - labs_i.sum()),
        "without_face": faceless,
        "pseudo_clips": len(pseudo),
    }
    say(
        f"images: {len(labs_i)} face crops from {len(imgs)} images "
        f"({clips.image_info['real']} real, {clips.image_info['fake']} fake; {faceless} without "
        f"a face) as {len(pseudo)} training clips"
    )


def model_config(config: TrainConfig, size: int) -> Any:
    from models.config import ModelConfig

    return ModelConfig(
        backbone=config.backbone,
        input_size=size,
        window=config.window,
        weights=None if config.weights == "none" else config.weights,
        feature_layer=config.feature_layer,
        input_dropout=config.head_dropout,
        l2=config.head_l2,
        head=config.head.replace("-", "_"),
    )


def fit(
    config: TrainConfig,
    model: Any,
    split: Split,
    clips: Clips,
    size: int,
    cache_dir: Path,
    stage: tuple[Any, Any],
    ckpt: Path,
) -> tuple[dict[str, Any] | None, list[float]] | None:
    """Fine-tune the encoder (end to end with --encoder-steps, else its last blocks on cached
    trunk features), then train the GRU head on windows of embeddings; resumable from
    OUT/checkpoints. Returns (the end-to-end record, the head's losses), or None for an
    --encoder-only run."""
    state: dict[str, Any] = read_state(ckpt) if config.resume else {"stage": "start", "epoch": 0}
    val_names = {v.name for v in split.val}
    e2e_info: dict[str, Any] | None = None
    if config.encoder_steps > 0:
        from models.finetune_run import end_to_end

        e2e_info, clf = end_to_end(
            model.encoder,
            config,
            split.videos,
            split.train,
            split.val,
            split.excluded,
            clips.crops,
            clips.stills,
            size,
            cache_dir,
            stage,
            ckpt,
            say,
        )
        (config.out / "frame_eval.json").write_text(json.dumps(e2e_info, indent=1))
        e2e_info = {k: v for k, v in e2e_info.items() if k != "rows"}
        if config.encoder_only:
            say(f"encoder-only run: held-out measurements in {config.out / 'frame_eval.json'}")
            return None
        for v in split.excluded:  # left-out families train nothing, the head included
            clips.seqs.pop(v.name, None)
        if config.head == "frame-mean":
            from models.cnn_gru import FRAME_LAYER

            model.head.get_layer(FRAME_LAYER).set_weights(clf.get_layer(FRAME_LAYER).get_weights())
            say("frame-mean head: the fine-tuned frame classifier, averaged over each window")
            write_state(ckpt, "done", 0)
            return e2e_info, []
        trunk, top = model.encoder, None
    else:
        trunk, top = split_encoder(model.encoder, config.backbone, config.finetune_blocks)
    feats = {n: predict(trunk, s) for n, s in _progress(clips.seqs, "embeddings")}
    if top is not None:
        start = (
            state["epoch"]
            if state["stage"] == "encoder"
            else (config.encoder_epochs if state["stage"] in ("head", "done") else 0)
        )
        finetune_encoder(top, feats, clips.labels, val_names, config, ckpt, start)
        emb = {n: predict(top, f) for n, f in feats.items()}
    else:
        emb = feats
    head_start = state["epoch"] if state["stage"] in ("head", "done") else 0
    losses = train_head(model.head, emb, clips.labels, val_names, config, ckpt, head_start)
    write_state(ckpt, "done", max(head_start, config.head_epochs))
    return e2e_info, losses


def training_record(
    config: TrainConfig,
    split: Split,
    clips: Clips,
    e2e_info: dict[str, Any] | None,
    losses: list[float],
) -> dict[str, Any]:
    """The manifest's `training` section: data, split sizes, settings, losses, time."""
    train, val = split.train, split.val
    return {
        "data": [str(d) for d in config.data],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "videos": {
            "train": len(train),
            "val": len(val),
            "train_real": sum(1 for v in train if v.label == 0),
            "train_fake": sum(1 for v in train if v.label == 1),
            "val_real": sum(1 for v in val if v.label == 0),
            "val_fake": sum(1 for v in val if v.label == 1),
        },
        "synthetic_fakes": len(clips.synthetic & set(clips.seqs)),
        "encoder_finetune": e2e_info,
        "images": clips.image_info or None,
        "pairs": [str(p) for p in config.pairs] or None,
        "face_crops": clips.n_faces,
        "settings": config.settings(),
        "head_loss": losses[-1] if losses else None,
        "seconds": round(time.monotonic() - T0, 1),
    }


def _progress(d: dict[str, Any], desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(d.items(), desc=desc, unit="clip", file=sys.stderr)


def export_argv(
    model_dir: Path,
    bundle: Path,
    *,
    name: str,
    version: str,
    detector: str,
    fps: float | None,
    margin: float | None,
    quantize: str,
    calibration: Path | None,
    int8_only: bool = False,
) -> list[str]:
    """The `deepfake-export build` arguments that turn a saved model directory into a bundle the
    way training does: the run's face stage (detector, analysis rate, crop margin), INT8 with the
    fp32 fallback when its drift fails the export's limits (`int8_only`: no fp32 encoder in the
    bundle beside it), calibrated on `calibration` when given."""
    argv = ["build", str(model_dir), "--out", str(bundle), "--name", name]
    argv += ["--version", version, "--detector", detector]
    if fps is not None:
        argv += ["--analysis-fps", repr(fps)]
    if margin is not None:
        argv += ["--margin", repr(margin)]
    argv += ["--force"]
    if quantize != "none":
        argv += ["--quantize", quantize, "--int8-fallback"]
        if int8_only:
            argv += ["--int8-only"]
        if calibration is not None:
            argv += ["--calibration", str(calibration)]
    return argv


def export_and_evaluate(
    config: TrainConfig, bundle: Path, out: Path, clips: Clips, val: list[Video]
) -> None:
    """`deepfake-export build` on the saved model directory `out` into `bundle`, then the held-out evaluation
    through the serving code path and the model card."""
    from models.evaluation import evaluate_bundle, write_model_card

    rng = np.random.default_rng(config.seed)
    held_out = {v.name for v in val}
    # INT8 calibration crops: the training clips that are not synthetic.
    real = [s for n, s in clips.seqs.items() if n not in clips.synthetic and n not in held_out]
    pool = np.concatenate(real) if real else None
    calibration = None
    if config.quantize != "none" and pool is not None:
        calib = pool[rng.choice(len(pool), size=min(256, len(pool)), replace=False)]
        calibration = out / "calibration.npy"
        np.save(calibration, calib)
    build = export_argv(
        out,
        bundle,
        name=config.name,
        version=config.version,
        detector=config.detector,
        fps=config.fps,
        margin=config.margin,
        quantize=config.quantize,
        calibration=calibration,
    )
    _deepfake_export(*build)
    if val:
        metrics = evaluate_bundle(bundle, val, out)
        say("held-out evaluation: " + json.dumps(metrics["metrics"]))
    command = "deepfake-train " + " ".join(sys.argv[1:])
    write_model_card(bundle, out, command, time.monotonic() - T0)


def refusal(config: TrainConfig) -> str | None:
    """Flag combinations refused before any crop is cut, so a mistake costs nothing."""
    try:
        parse_sources(config.synth_sources)
    except ValueError as exc:
        return str(exc)
    if config.head == "frame-mean" and config.encoder_steps <= 0:
        return (
            "--head frame-mean needs --encoder-steps (the frame classifier it averages comes "
            "from the encoder fine-tune)"
        )
    if config.init_from is not None and not config.init_from.is_file():
        return f"--init-from: no such weights file: {config.init_from}"
    if config.init_from is not None and not config.init_from.name.endswith(".weights.h5"):
        # Keras reads any other .h5 as a legacy whole-model file and fails with a layer count
        return (
            f"--init-from: {config.init_from} is not a Keras weights file (the name must end "
            "in .weights.h5, as OUT/checkpoints/finetune.weights.h5 does)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    config = TrainConfig.from_args(parser().parse_args(argv))
    refused = refusal(config)
    if refused:
        print(f"deepfake-train: error: {refused}", file=sys.stderr)
        return 2
    try:
        run(config)
    except (DatasetError, ValueError, FileNotFoundError, ExportFailed) as exc:
        print(f"deepfake-train: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

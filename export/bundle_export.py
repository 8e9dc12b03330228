"""Keras CNN-GRU -> model bundle directory (encoder.onnx, head.onnx, face_detector.onnx,
optional encoder_int8.onnx, manifest.json)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from export.convert import ExportError, keras_to_onnx
from export.detector import export_detector, export_roi_detector
from export.parity import check_parity
from export.quantize import check_drift, measure_drift, quantize_encoder, session
from export.reference_faces import astronaut_frames, face_crops
from stream_server.core.bundle import load_bundle, write_manifest
from stream_server.core.manifest import (
    DEFAULT_ANALYSIS_FPS,
    DEFAULT_MARGIN,
    DEFAULT_THRESHOLD,
    CropSpec,
    EncoderInput,
    EncoderSection,
    HeadSpec,
    Manifest,
    default_warmup,
)
from stream_server.core.runtime import open_detector

ONNX_NAMES = {
    "encoder_in": "crops",
    "encoder_out": "embeddings",
    "head_emb": "embeddings",
    "head_mask": "mask",
    "head_out": "p_fake",
}


def _say(msg: str, t0: float) -> None:
    print(f"[export {time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def export_bundle(
    model: Any,
    out_dir: Path,
    *,
    name: str = "deepfake-cnn-gru",
    version: str = "0.0.0",
    quantize: str | None = None,
    calibration_crops: np.ndarray | None = None,
    detector: str = "full_range",
    roi_detector: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    analysis_fps: float = DEFAULT_ANALYSIS_FPS,
    margin: float = DEFAULT_MARGIN,
    warmup_frames: int | None = None,
    force: bool = False,
) -> Path:
    """Write a bundle for `model` (a `models.saving.KerasModel`) and verify it; returns its path.

    Work happens in a temporary directory next to `out_dir`; nothing is left behind on failure.
    """
    import tensorflow as tf

    t0 = time.monotonic()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty (use --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg, dim = model.config, model.feature_dim
    size = cfg.input_size
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        _say(f"converting encoder ({cfg.backbone}, {size}x{size}, {dim}-d)", t0)
        keras_to_onnx(
            model.encoder,
            (tf.TensorSpec((None, size, size, 3), tf.uint8, name=ONNX_NAMES["encoder_in"]),),
            [ONNX_NAMES["encoder_out"]],
            tmp / "encoder.onnx",
        )
        _say(f"converting head (window {cfg.window}, GRU {list(cfg.gru_units)})", t0)
        keras_to_onnx(
            model.head,
            (
                tf.TensorSpec((None, cfg.window, dim), tf.float32, name=ONNX_NAMES["head_emb"]),
                tf.TensorSpec((None, cfg.window), tf.bool, name=ONNX_NAMES["head_mask"]),
            ),
            [ONNX_NAMES["head_out"]],
            tmp / "head.onnx",
        )
        _say(f"converting face detector (BlazeFace {detector})", t0)
        det_spec = export_detector(tmp, detector)
        det = open_detector(det_spec, tmp)
        roi_spec = None
        if roi_detector:
            _say("converting tracked-face detector (BlazeFace short_range) and calibrating it", t0)
            roi_spec = export_roi_detector(tmp, det)
        crop = CropSpec(margin=margin)

        _say("checking Keras/onnxruntime parity on random and real face crops", t0)
        sessions = {"encoder": session(tmp / "encoder.onnx"), "head": session(tmp / "head.onnx")}
        rng = np.random.default_rng(0)
        faces = face_crops(astronaut_frames(24), det, crop, size)
        if len(faces) < 8:
            raise ExportError("the face detector found too few faces in the reference photo")
        inputs = {
            "random": rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8),
            "faces": faces,
        }
        parity = check_parity(model, sessions, inputs, cfg.window, ONNX_NAMES)
        _say(
            f"parity ok: max probability difference "
            f"{max(parity.max_prob_diff_full, parity.max_prob_diff_masked):.2e}",
            t0,
        )

        encoder_section = EncoderSection(
            file="encoder.onnx",
            precision="fp32",
            input=EncoderInput(
                name=ONNX_NAMES["encoder_in"],
                size=size,
                preprocessing="in graph: (x - mean) / std per the backbone; pass raw 0..255 RGB",
            ),
            output=ONNX_NAMES["encoder_out"],
        )
        if quantize == "int8":
            calib = (
                calibration_crops
                if calibration_crops is not None
                else face_crops(astronaut_frames(64, seed=1), det, crop, size)
            )
            _say(
                f"quantizing encoder to INT8 (static QDQ per-channel, {len(calib)} calibration crops)",
                t0,
            )
            quantize_encoder(
                tmp / "encoder.onnx", tmp / "encoder_int8.onnx", ONNX_NAMES["encoder_in"], calib
            )
            evaluation = face_crops(astronaut_frames(32, seed=2), det, crop, size)
            if calibration_crops is not None and len(calibration_crops) > 8:
                evaluation = np.concatenate([evaluation, calibration_crops[-32:]])
            drift = measure_drift(
                sessions["encoder"],
                session(tmp / "encoder_int8.onnx"),
                sessions["head"],
                ONNX_NAMES,
                evaluation,
                cfg.window,
                len(calib),
            )
            check_drift(drift)
            _say(
                f"INT8 drift: min cosine {drift.min_cosine:.5f}, max probability change "
                f"{drift.max_prob_change:.4f}",
                t0,
            )
            encoder_section = replace(
                encoder_section,
                file="encoder_int8.onnx",
                precision="int8",
                alternatives={"fp32": "encoder.onnx"},
                quantization=drift.to_dict(),
            )
        elif quantize is not None:
            raise ExportError(f"unknown quantization {quantize!r} (supported: int8)")

        manifest = Manifest(
            name=name,
            version=version,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            backbone=cfg.backbone,
            encoder=encoder_section,
            head=HeadSpec(
                file="head.onnx",
                embeddings_name=ONNX_NAMES["head_emb"],
                mask_name=ONNX_NAMES["head_mask"],
                output_name=ONNX_NAMES["head_out"],
                gru_units=tuple(cfg.gru_units),
            ),
            detector=det_spec,
            roi_detector=roi_spec,
            crop=crop,
            feature_dim=dim,
            window=cfg.window,
            warmup_frames=warmup_frames
            if warmup_frames is not None
            else default_warmup(cfg.window),
            analysis_fps=analysis_fps,
            threshold=threshold,
            parity=parity.to_dict(),
            training=model.training,
        )
        write_manifest(tmp, manifest)
        load_bundle(tmp)  # the reader agrees with the writer
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o755)
        os.replace(tmp, out_dir)
        _say(f"bundle written to {out_dir}", t0)
        return out_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

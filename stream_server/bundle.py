"""The model bundle contract: `manifest.json` plus the ONNX files it names.

The export command writes bundles with `write_manifest`; the server and `deepfake-export validate`
read them with `load_bundle`, which refuses any bundle whose files, hashes or declared shapes
disagree with the manifest (`BundleError`, one-line reason).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "deepfake-bundle/1"
MANIFEST = "manifest.json"


class BundleError(Exception):
    """A bundle that cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class EncoderSpec:
    file: str
    input_name: str
    output_name: str
    input_size: int
    precision: str  # "fp32" | "int8"


@dataclass(frozen=True)
class HeadSpec:
    file: str
    embeddings_name: str
    mask_name: str
    output_name: str


@dataclass(frozen=True)
class DetectorSpec:
    file: str
    kind: str
    input_name: str
    boxes_name: str
    scores_name: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_cell: int
    min_score: float
    nms_iou: float
    retry_pad: float = 0.5  # zoom-out retry border for frames where no face was found (0 = off)


@dataclass(frozen=True)
class RoiSpec:
    """Optional second detector that only looks around tracked faces (see `faces.FaceStage`)."""

    detector: DetectorSpec
    scale: float  # region side = scale * the tracked box's longer side
    calibration: tuple[float, float, float, float]  # scale_w, scale_h, dx, dy -> full's boxes
    redetect_every: int  # full-frame search at least every N analysed frames


@dataclass(frozen=True)
class CropSpec:
    margin: float  # the square crop is max(w, h) * (1 + margin) around the face box centre


@dataclass(frozen=True)
class Bundle:
    path: Path
    name: str
    version: str
    backbone: str
    feature_dim: int
    window: int
    analysis_fps: float
    threshold: float
    warmup_frames: int
    encoder: EncoderSpec
    head: HeadSpec
    detector: DetectorSpec
    crop: CropSpec
    manifest: dict[str, Any]
    roi: RoiSpec | None = None

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    """Fill in `format` and the per-file sha256/bytes, then write manifest.json."""
    files: dict[str, dict[str, Any]] = {}
    for name in sorted(_referenced_files(manifest)):
        p = bundle_dir / name
        files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    out = {"format": FORMAT, **{k: v for k, v in manifest.items() if k != "format"}, "files": files}
    path = bundle_dir / MANIFEST
    path.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    return path


def _referenced_files(manifest: dict[str, Any]) -> set[str]:
    names = set()
    for section in ("encoder", "head", "detector", "roi_detector"):
        sec = manifest.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("file"), str):
            names.add(sec["file"])
        if isinstance(sec, dict) and isinstance(sec.get("alternatives"), dict):
            names.update(str(v) for v in sec["alternatives"].values())
    return names


def _get(d: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"manifest is missing {where}{key}")
    value = d[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise BundleError(
            f"manifest field {where}{key} has the wrong type ({type(value).__name__})"
        )
    return value


def _strides(values: list[Any]) -> tuple[int, ...]:
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise BundleError("manifest detector.anchors.strides must be a list of positive integers")
    return tuple(values)


def parse_detector(det: dict[str, Any], where: str = "detector.") -> DetectorSpec:
    """The manifest's `detector` section (BlazeFace ONNX and how to decode its anchors)."""
    anchors = _get(det, "anchors", dict, where)
    return DetectorSpec(
        file=_get(det, "file", str, where),
        kind=_get(det, "kind", str, where),
        input_name=_get(det, "input", str, where),
        boxes_name=_get(det, "boxes", str, where),
        scores_name=_get(det, "scores", str, where),
        input_size=_get(det, "input_size", int, where),
        strides=_strides(_get(anchors, "strides", list, where + "anchors.")),
        anchors_per_cell=_get(anchors, "per_cell", int, where + "anchors."),
        min_score=_get(det, "min_score", float, where),
        nms_iou=_get(det, "nms_iou", float, where),
        retry_pad=_get({"retry_pad": det.get("retry_pad", 0.5)}, "retry_pad", float, where),
    )


def parse_roi(sec: Any) -> RoiSpec:
    """The optional `roi_detector` section: a detector section plus the region and box mapping."""
    w = "roi_detector."
    spec = parse_detector(sec, w)
    scale = _get(sec, "roi_scale", float, w)
    cal = _get(sec, "calibration", dict, w)
    values = tuple(
        _get(cal, k, float, w + "calibration.") for k in ("scale_w", "scale_h", "dx", "dy")
    )
    every = _get(sec, "redetect_every", int, w)
    if not 1.2 <= scale <= 6.0:
        raise BundleError(f"manifest roi_detector.roi_scale {scale} is outside [1.2, 6]")
    if not all(0.5 <= v <= 2.0 for v in values[:2]) or not all(abs(v) <= 0.5 for v in values[2:]):
        raise BundleError("manifest roi_detector.calibration is out of range")
    if not 1 <= every <= 1000:
        raise BundleError(f"manifest roi_detector.redetect_every {every} is outside [1, 1000]")
    return RoiSpec(spec, scale, values, every)


def parse_manifest(path: Path, manifest: Any, precision: str = "auto") -> Bundle:
    """Turn manifest JSON into a `Bundle`; raises `BundleError` on anything missing or malformed."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json must hold a JSON object")
    fmt = _get(manifest, "format", str, "")
    if fmt != FORMAT:
        raise BundleError(f"unsupported bundle format {fmt!r} (this server reads {FORMAT!r})")
    enc = _get(manifest, "encoder", dict, "")
    enc_in = _get(enc, "input", dict, "encoder.")
    for key, want in (("layout", "NHWC"), ("color", "RGB"), ("dtype", "uint8")):
        got = _get(enc_in, key, str, "encoder.input.")
        if got != want:
            raise BundleError(f"encoder.input.{key} is {got!r}; this server feeds {want!r}")
    enc_file = _get(enc, "file", str, "encoder.")
    enc_precision = str(enc.get("precision", "fp32"))
    if precision != "auto":
        alternatives = enc.get("alternatives") or {}
        if precision != enc_precision:
            if precision not in alternatives:
                raise BundleError(f"bundle has no {precision} encoder (has {enc_precision})")
            enc_file, enc_precision = str(alternatives[precision]), precision
    encoder = EncoderSpec(
        file=enc_file,
        input_name=_get(enc_in, "name", str, "encoder.input."),
        output_name=_get(enc, "output", str, "encoder."),
        input_size=_get(enc_in, "size", int, "encoder.input."),
        precision=enc_precision,
    )
    head_d = _get(manifest, "head", dict, "")
    head = HeadSpec(
        file=_get(head_d, "file", str, "head."),
        embeddings_name=_get(head_d, "embeddings", str, "head."),
        mask_name=_get(head_d, "mask", str, "head."),
        output_name=_get(head_d, "output", str, "head."),
    )
    detector = parse_detector(_get(manifest, "detector", dict, ""))
    roi = parse_roi(manifest["roi_detector"]) if manifest.get("roi_detector") is not None else None
    crop = CropSpec(margin=_get(_get(manifest, "crop", dict, ""), "margin", float, "crop."))
    window = _get(manifest, "window", int, "")
    fps = _get(manifest, "analysis_fps", float, "")
    threshold = _get(manifest, "threshold", float, "")
    feature_dim = _get(manifest, "feature_dim", int, "")
    if window < 1 or feature_dim < 1 or encoder.input_size < 8:
        raise BundleError("manifest window, feature_dim and encoder.input.size must be positive")
    if not 0.0 < fps <= 60.0:
        raise BundleError(f"manifest analysis_fps {fps} is outside (0, 60]")
    if not 0.0 < threshold < 1.0:
        raise BundleError(f"manifest threshold {threshold} is outside (0, 1)")
    warmup = manifest.get("warmup_frames", min(window, 5))
    if not isinstance(warmup, int) or isinstance(warmup, bool):
        raise BundleError("manifest field warmup_frames has the wrong type")
    return Bundle(
        path=path,
        name=_get(manifest, "name", str, ""),
        version=_get(manifest, "version", str, ""),
        backbone=_get(manifest, "backbone", str, ""),
        feature_dim=feature_dim,
        window=window,
        analysis_fps=fps,
        threshold=threshold,
        warmup_frames=max(1, min(window, warmup)),
        encoder=encoder,
        head=head,
        detector=detector,
        crop=crop,
        manifest=manifest,
        roi=roi,
    )


def load_bundle(path: str | Path, precision: str = "auto", verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle directory: manifest, every named file present, sha256 equal.

    The ONNX graphs' real input/output shapes are checked against the manifest by
    `stream_server.runtime.open_sessions` when the sessions are created.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle {root} is not a directory")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"model bundle {root} has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON: {exc}") from None
    bundle = parse_manifest(root, manifest, precision)
    files = _get(manifest, "files", dict, "")
    for name in sorted(_referenced_files(manifest)):
        entry = files.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"manifest files has no sha256 for {name}")
        fp = root / name
        if not fp.is_file():
            raise BundleError(f"bundle file {name} named by the manifest is missing")
        if verify_hashes and sha256_file(fp) != entry["sha256"]:
            raise BundleError(f"bundle file {name} does not match its sha256 in the manifest")
    return bundle

"""The bundle manifest (`manifest.json`) as typed dataclasses: the one schema export writes and the
server and the evaluation read (`Manifest.from_dict` / `Manifest.to_dict`).

`from_dict` raises `BundleError` with a one-line reason on anything missing, of the wrong type or
out of range; `from_dict(m.to_dict()) == m`. `docs/manifest.schema.json` is the same schema as JSON
Schema (a test checks the two agree on a freshly exported bundle).

This module also owns the defaults a bundle carries, so export, training and serving share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

FORMAT = "deepfake-bundle/1"
MANIFEST = "manifest.json"

# Defaults, each owned here (export, training and the parser read them from this module).
DEFAULT_MARGIN = 0.25  # square crop of side max(w, h) * (1 + margin)
DEFAULT_RETRY_PAD = 0.5  # zoom-out retry border when the detector finds no face (0 = off)
DEFAULT_ANALYSIS_FPS = 5.0
MAX_ANALYSIS_FPS = 60.0  # analysis_fps is in (0, MAX_ANALYSIS_FPS], the bundle's and overrides
DEFAULT_THRESHOLD = 0.5
HEAD_KINDS = ("gru", "frame_mean")  # head.kind; absent means gru
WARMUP_FRAMES_CAP = 5  # warm-up default: min(window, 5) analysed frames


def default_warmup(window: int) -> int:
    """Frames a face's window needs before it gets a label (when the manifest does not say)."""
    return min(window, WARMUP_FRAMES_CAP)


def check_analysis_fps(fps: float, what: str = "analysis_fps") -> None:
    """The one range check for an analysis rate (the bundle's or a server override)."""
    if not 0.0 < fps <= MAX_ANALYSIS_FPS:
        raise BundleError(f"{what} {fps} is outside (0, {MAX_ANALYSIS_FPS:g}]")


class BundleError(Exception):
    """A bundle that cannot be used; the message is one line saying why."""


# -- typed reading -------------------------------------------------------------------------------


def _get(d: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"manifest is missing {where}{key}")
    return _typed(d[key], typ, where + key)


def _opt(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    return None if d.get(key) is None else _typed(d[key], typ, where + key)


def _typed(value: Any, typ: type | tuple[type, ...], name: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise BundleError(f"manifest field {name} has the wrong type ({type(value).__name__})")
    return value


def _positive_ints(values: list[Any], name: str) -> tuple[int, ...]:
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise BundleError(f"manifest {name} must be a list of positive integers")
    return tuple(values)


def _floats(values: Any, name: str) -> tuple[float, ...]:
    if not isinstance(values, list):
        raise BundleError(f"manifest field {name} has the wrong type ({type(values).__name__})")
    return tuple(_typed(v, float, name) for v in values)


def _record(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    """A free-form measured record (parity, quantization, training): a JSON object or absent."""
    record: dict[str, Any] | None = _opt(d, key, dict, where)
    return record


def _section(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    section: dict[str, Any] = _get(d, key, dict, where)
    return section


# -- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSpec:
    """The `detector` section: a BlazeFace ONNX graph and how to decode its SSD anchors."""

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
    retry_pad: float = DEFAULT_RETRY_PAD
    source: str | None = None
    input_range: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, det: Any, where: str = "detector.") -> DetectorSpec:
        anchors = _get(det, "anchors", dict, where)
        a = where + "anchors."
        return cls(
            file=_get(det, "file", str, where),
            kind=_get(det, "kind", str, where),
            input_name=_get(det, "input", str, where),
            boxes_name=_get(det, "boxes", str, where),
            scores_name=_get(det, "scores", str, where),
            input_size=_get(det, "input_size", int, where),
            strides=_positive_ints(_get(anchors, "strides", list, a), a + "strides"),
            anchors_per_cell=_get(anchors, "per_cell", int, a),
            min_score=_get(det, "min_score", float, where),
            nms_iou=_get(det, "nms_iou", float, where),
            retry_pad=_typed(det.get("retry_pad", DEFAULT_RETRY_PAD), float, where + "retry_pad"),
            source=_opt(det, "source", str, where),
            input_range=None
            if det.get("input_range") is None
            else _floats(det["input_range"], where + "input_range"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "kind": self.kind}
        if self.source is not None:
            out["source"] = self.source
        out.update(input=self.input_name, boxes=self.boxes_name, scores=self.scores_name)
        out["input_size"] = self.input_size
        if self.input_range is not None:
            out["input_range"] = list(self.input_range)
        out["anchors"] = {"strides": list(self.strides), "per_cell": self.anchors_per_cell}
        out.update(min_score=self.min_score, nms_iou=self.nms_iou, retry_pad=self.retry_pad)
        return out


@dataclass(frozen=True)
class RoiSpec:
    """The optional `roi_detector` section: a second detector that only looks around tracked
    faces (see `faces.FaceStage`), with the region size and the mapping of its boxes."""

    detector: DetectorSpec
    scale: float  # region side = scale * the tracked box's longer side
    calibration: tuple[float, float, float, float]  # scale_w, scale_h, dx, dy -> full's boxes
    redetect_every: int  # full-frame search at least every N analysed frames
    fitted_on: int | None = None  # faces the calibration was fitted on

    @classmethod
    def from_dict(cls, sec: Any) -> RoiSpec:
        w = "roi_detector."
        spec = DetectorSpec.from_dict(sec, w)
        scale = _get(sec, "roi_scale", float, w)
        cal = _get(sec, "calibration", dict, w)
        c = w + "calibration."
        sw, sh, dx, dy = (_get(cal, k, float, c) for k in ("scale_w", "scale_h", "dx", "dy"))
        every = _get(sec, "redetect_every", int, w)
        if not 1.2 <= scale <= 6.0:
            raise BundleError(f"manifest roi_detector.roi_scale {scale} is outside [1.2, 6]")
        if not all(0.5 <= v <= 2.0 for v in (sw, sh)) or not all(abs(v) <= 0.5 for v in (dx, dy)):
            raise BundleError("manifest roi_detector.calibration is out of range")
        if not 1 <= every <= 1000:
            raise BundleError(f"manifest roi_detector.redetect_every {every} is outside [1, 1000]")
        return cls(spec, scale, (sw, sh, dx, dy), every, _opt(cal, "fitted_on", int, c))

    def to_dict(self) -> dict[str, Any]:
        sw, sh, dx, dy = self.calibration
        cal: dict[str, Any] = {"scale_w": sw, "scale_h": sh, "dx": dx, "dy": dy}
        if self.fitted_on is not None:
            cal["fitted_on"] = self.fitted_on
        return {
            **self.detector.to_dict(),
            "roi_scale": self.scale,
            "calibration": cal,
            "redetect_every": self.redetect_every,
        }


@dataclass(frozen=True)
class CropSpec:
    """The `crop` section: a square crop of side max(w, h) * (1 + margin) around the face box."""

    margin: float = DEFAULT_MARGIN
    shape: str | None = "square, max(w, h) * (1 + margin), black outside"

    @classmethod
    def from_dict(cls, d: Any) -> CropSpec:
        return cls(_get(d, "margin", float, "crop."), _opt(d, "shape", str, "crop."))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"margin": self.margin}
        if self.shape is not None:
            out["shape"] = self.shape
        return out


@dataclass(frozen=True)
class EncoderInput:
    """`encoder.input`: what the encoder graph takes (the server feeds NHWC uint8 RGB)."""

    name: str
    size: int
    layout: str = "NHWC"
    color: str = "RGB"
    dtype: str = "uint8"
    preprocessing: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> EncoderInput:
        w = "encoder.input."
        for key, want in (("layout", "NHWC"), ("color", "RGB"), ("dtype", "uint8")):
            got = _get(d, key, str, w)
            if got != want:
                raise BundleError(f"encoder.input.{key} is {got!r}; this server feeds {want!r}")
        return cls(
            name=_get(d, "name", str, w),
            size=_get(d, "size", int, w),
            layout=d["layout"],
            color=d["color"],
            dtype=d["dtype"],
            preprocessing=_opt(d, "preprocessing", str, w),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "layout": self.layout,
            "color": self.color,
            "dtype": self.dtype,
        }
        if self.preprocessing is not None:
            out["preprocessing"] = self.preprocessing
        return out


@dataclass(frozen=True)
class EncoderSection:
    """The `encoder` section: the default graph, its precision and the other precisions' files."""

    file: str
    input: EncoderInput
    output: str
    precision: str = "fp32"  # "fp32" | "int8"
    alternatives: dict[str, str] = field(default_factory=dict)  # precision -> file
    quantization: dict[str, Any] | None = None  # measured INT8 drift (export.quantize.Drift)

    @classmethod
    def from_dict(cls, d: Any) -> EncoderSection:
        w = "encoder."
        inp = EncoderInput.from_dict(_get(d, "input", dict, w))
        alternatives = _opt(d, "alternatives", dict, w) or {}
        if not all(isinstance(v, str) for v in alternatives.values()):
            raise BundleError("manifest encoder.alternatives must map precisions to file names")
        return cls(
            file=_get(d, "file", str, w),
            input=inp,
            output=_get(d, "output", str, w),
            precision=_opt(d, "precision", str, w) or "fp32",
            alternatives=dict(alternatives),
            quantization=_record(d, "quantization", w),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "precision": self.precision,
            "input": self.input.to_dict(),
            "output": self.output,
        }
        if self.alternatives:
            out["alternatives"] = dict(self.alternatives)
        if self.quantization is not None:
            out["quantization"] = self.quantization
        return out


@dataclass(frozen=True)
class HeadSpec:
    """The `head` section: the head graph over (embeddings, mask) -> p_fake. `kind` says what
    it computes: "gru" (a masked GRU over the window; also when absent, as in bundles before it
    was recorded) or "frame_mean" (a per-frame probability averaged over the valid steps)."""

    file: str
    embeddings_name: str
    mask_name: str
    output_name: str
    mask_semantics: str | None = "bool (batch, window); valid steps first, masked steps skipped"
    gru_units: tuple[int, ...] | None = None
    kind: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> HeadSpec:
        w = "head."
        units = _opt(d, "gru_units", list, w)
        kind = _opt(d, "kind", str, w)
        if kind is not None and kind not in HEAD_KINDS:
            raise BundleError(f"{w}kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        return cls(
            file=_get(d, "file", str, w),
            embeddings_name=_get(d, "embeddings", str, w),
            mask_name=_get(d, "mask", str, w),
            output_name=_get(d, "output", str, w),
            mask_semantics=_opt(d, "mask_semantics", str, w),
            gru_units=None if units is None else _positive_ints(units, w + "gru_units"),
            kind=kind,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "embeddings": self.embeddings_name,
            "mask": self.mask_name,
            "output": self.output_name,
        }
        if self.mask_semantics is not None:
            out["mask_semantics"] = self.mask_semantics
        if self.gru_units is not None:
            out["gru_units"] = list(self.gru_units)
        if self.kind is not None:
            out["kind"] = self.kind
        return out


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


def _files(d: dict[str, Any]) -> dict[str, FileEntry]:
    raw = _opt(d, "files", dict, "")
    out = {}
    for name, entry in (raw or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"manifest files has no sha256 for {name}")
        size = entry.get("bytes", 0)
        out[str(name)] = FileEntry(entry["sha256"], _typed(size, int, f"files.{name}.bytes"))
    return out


# -- the manifest --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A whole `manifest.json`. `files` is filled in by `bundle.write_manifest`."""

    name: str
    version: str
    backbone: str
    encoder: EncoderSection
    head: HeadSpec
    detector: DetectorSpec
    feature_dim: int
    window: int
    analysis_fps: float = DEFAULT_ANALYSIS_FPS
    threshold: float = DEFAULT_THRESHOLD
    crop: CropSpec = field(default_factory=CropSpec)
    roi_detector: RoiSpec | None = None
    warmup_frames: int | None = None  # None: default_warmup(window)
    created: str | None = None
    parity: dict[str, Any] | None = None  # export's Keras/onnxruntime comparison
    training: dict[str, Any] | None = None  # data, settings, the held-out evaluation
    files: dict[str, FileEntry] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def warmup(self) -> int:
        """Frames before a label, as the server runs it: the manifest's, within [1, window]."""
        w = default_warmup(self.window) if self.warmup_frames is None else self.warmup_frames
        return max(1, min(self.window, w))

    def referenced_files(self) -> set[str]:
        """Every file the sections name (the encoder's alternatives included)."""
        names = {self.encoder.file, self.head.file, self.detector.file}
        names.update(self.encoder.alternatives.values())
        if self.roi_detector is not None:
            names.add(self.roi_detector.detector.file)
        return names

    def with_(self, **changes: Any) -> Manifest:
        """A copy with some fields changed (e.g. `threshold`, `training`, `files`)."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, m: Any) -> Manifest:
        if not isinstance(m, dict):
            raise BundleError("manifest.json must hold a JSON object")
        fmt = _get(m, "format", str, "")
        if fmt != FORMAT:
            raise BundleError(f"unsupported bundle format {fmt!r} (this server reads {FORMAT!r})")
        encoder = EncoderSection.from_dict(_section(m, "encoder"))
        head = HeadSpec.from_dict(_section(m, "head"))
        detector = DetectorSpec.from_dict(_section(m, "detector"))
        roi = RoiSpec.from_dict(m["roi_detector"]) if m.get("roi_detector") is not None else None
        crop = CropSpec.from_dict(_section(m, "crop"))
        window = _get(m, "window", int, "")
        fps = _get(m, "analysis_fps", float, "")
        threshold = _get(m, "threshold", float, "")
        feature_dim = _get(m, "feature_dim", int, "")
        if window < 1 or feature_dim < 1 or encoder.input.size < 8:
            raise BundleError(
                "manifest window, feature_dim and encoder.input.size must be positive"
            )
        check_analysis_fps(fps, "manifest analysis_fps")
        if not 0.0 < threshold < 1.0:
            raise BundleError(f"manifest threshold {threshold} is outside (0, 1)")
        warmup = m.get("warmup_frames")
        if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool)):
            raise BundleError("manifest field warmup_frames has the wrong type")
        return cls(
            name=_get(m, "name", str, ""),
            version=_get(m, "version", str, ""),
            backbone=_get(m, "backbone", str, ""),
            encoder=encoder,
            head=head,
            detector=detector,
            feature_dim=feature_dim,
            window=window,
            analysis_fps=fps,
            threshold=threshold,
            crop=crop,
            roi_detector=roi,
            warmup_frames=warmup,
            created=_opt(m, "created", str, ""),
            parity=_record(m, "parity"),
            training=_record(m, "training"),
            files=_files(m),
            format=fmt,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "name": self.name, "version": self.version}
        if self.created is not None:
            out["created"] = self.created
        out["backbone"] = self.backbone
        out["encoder"] = self.encoder.to_dict()
        out["head"] = self.head.to_dict()
        out["detector"] = self.detector.to_dict()
        if self.roi_detector is not None:
            out["roi_detector"] = self.roi_detector.to_dict()
        out["crop"] = self.crop.to_dict()
        out["feature_dim"] = self.feature_dim
        out["window"] = self.window
        if self.warmup_frames is not None:
            out["warmup_frames"] = self.warmup_frames
        out["analysis_fps"] = self.analysis_fps
        out["threshold"] = self.threshold
        if self.parity is not None:
            out["parity"] = self.parity
        if self.training is not None:
            out["training"] = self.training
        out["files"] = {n: e.to_dict() for n, e in sorted(self.files.items())}
        return out

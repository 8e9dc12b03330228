"""Static INT8 (QDQ, per-channel) encoder, calibrated on face crops, with its drift measured."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.convert import ExportError
from stream_server.core.runtime import session

__all__ = [
    "STEM_CONVS",
    "Drift",
    "DriftError",
    "check_drift",
    "measure_drift",
    "quantize_encoder",
    "session",
]

# Refuse an INT8 encoder that moves embeddings or probabilities more than this.
MIN_COSINE = 0.98
MAX_PROB_CHANGE = 0.05


@dataclass(frozen=True)
class Drift:
    mean_cosine: float
    min_cosine: float
    max_prob_change: float
    calibration_crops: int
    evaluation_crops: int
    bounds: dict[str, float]
    float_nodes: tuple[str, ...] = ()  # nodes left in fp32 (the stem, when full INT8 drifted)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["float_nodes"] = list(self.float_nodes)
        return d


class _Reader:
    def __init__(self, name: str, crops: np.ndarray, batch: int = 8) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            {name: crops[i : i + batch]} for i in range(0, len(crops), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


# With `float_stem`, this many of the first convolutions stay fp32 (EfficientNet-Lite: the stem
# and block 0's depthwise convolution, which see the raw pixel range).
STEM_CONVS = 2


def quantize_encoder(
    fp32_path: Path,
    out_path: Path,
    input_name: str,
    calibration: np.ndarray,
    float_stem: bool = False,
) -> tuple[str, ...]:
    """Write the static INT8 encoder to `out_path`; returns the names of the nodes left fp32
    (with `float_stem`, the first `STEM_CONVS` convolutions in graph order; else none)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        keep: tuple[str, ...] = ()
        if float_stem:
            convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
            keep = tuple(convs[:STEM_CONVS])
        quantize_static(
            str(pre),
            str(out_path),
            _Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(keep),
        )
    return keep


def measure_drift(
    fp32: Any,
    int8: Any,
    head: Any,
    names: dict[str, str],
    crops: np.ndarray,
    window: int,
    calibration_count: int,
    float_nodes: tuple[str, ...] = (),
) -> Drift:
    a = fp32.run([names["encoder_out"]], {names["encoder_in"]: crops})[0]
    b = int8.run([names["encoder_out"]], {names["encoder_in"]: crops})[0]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(crops), size=(16, window))
    mask = np.ones((16, window), bool)
    pa = head.run([names["head_out"]], {names["head_emb"]: a[idx], names["head_mask"]: mask})[0]
    pb = head.run([names["head_out"]], {names["head_emb"]: b[idx], names["head_mask"]: mask})[0]
    return Drift(
        mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()),
        max_prob_change=float(np.abs(pa - pb).max()),
        calibration_crops=calibration_count,
        evaluation_crops=len(crops),
        bounds={"min_cosine": MIN_COSINE, "max_prob_change": MAX_PROB_CHANGE},
        float_nodes=tuple(float_nodes),
    )


class DriftError(ExportError):
    """The INT8 encoder moves embeddings or probabilities beyond the bounds; it is not written
    (the caller may export fp32 only instead)."""


def check_drift(d: Drift) -> None:
    if d.min_cosine < MIN_COSINE or d.max_prob_change > MAX_PROB_CHANGE:
        raise DriftError(
            f"INT8 encoder drifts too far (min cosine {d.min_cosine:.4f} < {MIN_COSINE} or max "
            f"probability change {d.max_prob_change:.4f} > {MAX_PROB_CHANGE}); not written"
        )

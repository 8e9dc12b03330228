"""Keras vs onnxruntime on the same inputs; the export fails if they disagree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from export.convert import ExportError

PROB_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityReport:
    max_embedding_diff: float
    max_prob_diff_full: float
    max_prob_diff_masked: float
    cases: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _windows(n_emb: int, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of 4 windows drawn from n_emb embeddings, each used twice: fully valid and partially
    masked (first k valid, k in 1, window/3, window-1, window)."""
    idx = rng.integers(0, n_emb, size=(4, window))
    full = np.ones((4, window), bool)
    partial = full.copy()
    for i, k in enumerate((1, max(1, window // 3), max(1, window - 1), window)):
        partial[i, k:] = False  # masked steps keep real embeddings: the mask alone must hide them
    return np.concatenate([idx, idx]), np.concatenate([full, partial])


def check_parity(
    keras_model: Any,
    sessions: Any,
    inputs: dict[str, np.ndarray],
    window: int,
    names: dict[str, str],
    seed: int = 0,
) -> ParityReport:
    """`inputs` maps a case name ("random", "faces") to uint8 crops. Raises ExportError beyond
    PROB_TOLERANCE."""
    rng = np.random.default_rng(seed)
    emb_diff, full_diff, masked_diff = 0.0, 0.0, 0.0
    for case, crops in inputs.items():
        k_emb = np.asarray(keras_model.encoder(crops, training=False), dtype=np.float32)
        o_emb = sessions["encoder"].run([names["encoder_out"]], {names["encoder_in"]: crops})[0]
        emb_diff = max(emb_diff, float(np.abs(k_emb - o_emb).max()))
        idx, masks = _windows(len(crops), window, rng)
        head, out = sessions["head"], [names["head_out"]]
        k_p = np.asarray(keras_model.head([k_emb[idx], masks], training=False)).reshape(-1)
        o_p = head.run(out, {names["head_emb"]: k_emb[idx], names["head_mask"]: masks})[0].reshape(
            -1
        )
        # End to end through the ONNX encoder too: the server never sees Keras embeddings.
        o_p2 = head.run(out, {names["head_emb"]: o_emb[idx], names["head_mask"]: masks})[0].reshape(
            -1
        )
        d = np.abs(k_p - o_p)
        d2 = np.abs(k_p - o_p2)
        half = len(d) // 2
        full_diff = max(full_diff, float(d[:half].max()), float(d2[:half].max()))
        masked_diff = max(masked_diff, float(d[half:].max()), float(d2[half:].max()))
        worst = max(full_diff, masked_diff)
        if worst > PROB_TOLERANCE:
            raise ExportError(
                f"onnxruntime and Keras disagree on {case} inputs: probability differs by "
                f"{worst:.2e} (> {PROB_TOLERANCE:.0e})"
            )
    return ParityReport(emb_diff, full_diff, masked_diff, len(inputs))

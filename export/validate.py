"""Re-verify a bundle the way the server will use it: hashes, graph shapes, a test run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream_server.core.bundle import BundleError, load_bundle
from stream_server.core.engine import FaceJob, InferenceEngine
from stream_server.core.runtime import open_sessions, warm_up
from stream_server.core.window import FrameWindow


def validate_bundle(path: Path, precision: str = "auto") -> dict[str, Any]:
    bundle = load_bundle(path, precision=precision)
    sessions = open_sessions(bundle, "cpu")
    warm_up(bundle, sessions)
    engine = InferenceEngine(bundle, sessions)
    engine.start()
    try:
        size = bundle.encoder.input_size
        crops = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        windows = [FrameWindow(bundle.window, bundle.feature_dim) for _ in range(3)]
        p = engine.submit(FaceJob(crops, windows)).result(timeout=60)
    finally:
        engine.stop()
    if p.shape != (3,) or not np.all(np.isfinite(p)) or not np.all((p >= 0) & (p <= 1)):
        raise BundleError(f"test run gave invalid probabilities {p!r}")
    return {
        "bundle": str(path),
        "model": bundle.model_id,
        "backbone": bundle.backbone,
        "encoder": bundle.encoder.file,
        "precision": bundle.encoder.precision,
        "feature_dim": bundle.feature_dim,
        "window": bundle.window,
        "providers": sessions.providers,
        "test_run_p_fake": [round(float(v), 6) for v in p],
    }

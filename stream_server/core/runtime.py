"""onnxruntime sessions for a bundle: provider choice, thread settings, and the shape contract.

Sessions are created (and warmed by the engine) once at start-up, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_server.core.bundle import Bundle, BundleError
from stream_server.core.faces import FaceDetector, ssd_anchors
from stream_server.core.manifest import DetectorSpec

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BundleError(
            "onnxruntime is not installed: pip install '.[serve]' (CPU) or '.[gpu]' (CUDA)"
        ) from exc
    return onnxruntime


def resolve_providers(choice: str) -> list[str]:
    """`auto` -> CUDA when onnxruntime-gpu offers it, else CPU; or a comma list of names/aliases.

    onnxruntime-gpu lists CUDA even on machines without a GPU and silently falls back to CPU, so
    what really runs is read back from the session (`Sessions.providers`).
    """
    available = _ort().get_available_providers()
    if choice == "auto":
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available]
        return [*wanted, "CPUExecutionProvider"]
    names = [
        PROVIDER_ALIASES.get(c.strip().lower(), c.strip()) for c in choice.split(",") if c.strip()
    ]
    missing = [n for n in names if n not in available]
    if missing:
        raise BundleError(f"execution provider(s) {missing} not available (have {available})")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


@dataclass
class Sessions:
    encoder: Any
    head: Any
    detector: Any
    providers: list[str]  # what the encoder session really runs on
    roi_detector: Any = None  # the bundle's optional tracked-face detector


def session(
    path: str | Path, providers: list[str] | None = None, threads: int = 0, spin: bool = True
) -> Any:
    """The one onnxruntime session builder (serving, export, training): quiet logging, one
    inter-op thread, `threads` intra-op threads (0 = onnxruntime's choice), CPU unless told.

    `spin=False`: the intra-op pool's threads sleep between runs instead of spin-waiting for
    the next one (onnxruntime's default). A live service runs the encoder dozens of times a
    second on cores its streams need: measured with 8 webcam streams on a 2-core machine, the
    spinning pool thread used more CPU than the encoder itself (docs/performance.md)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise BundleError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None


def open_detector(
    spec: DetectorSpec, root: Path, providers: list[str] | None = None
) -> FaceDetector:
    """A `FaceDetector` from a manifest detector section and the folder holding its file."""
    return FaceDetector(session(root / spec.file, providers, threads=1), spec)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BundleError(what)


def _io(session: Any, kind: str) -> dict[str, Any]:
    items = session.get_inputs() if kind == "in" else session.get_outputs()
    return {i.name: i for i in items}


def _dim_ok(dim: Any, want: int | None) -> bool:
    if want is None:  # dynamic axis expected
        return not isinstance(dim, int) or dim < 1
    return bool(dim == want)


def check_contract(bundle: Bundle, s: Sessions) -> None:
    """Refuse a bundle whose graphs disagree with its manifest (names, dtypes, shapes)."""
    e, h, d = bundle.encoder, bundle.head, bundle.detector
    ein, eout = _io(s.encoder, "in"), _io(s.encoder, "out")
    _check(e.input_name in ein, f"encoder graph has no input {e.input_name!r} (has {list(ein)})")
    i = ein[e.input_name]
    _check(i.type == "tensor(uint8)", f"encoder input is {i.type}, manifest says uint8")
    shp = list(i.shape)
    _check(
        len(shp) == 4 and _dim_ok(shp[0], None) and shp[1:] == [e.input_size, e.input_size, 3],
        f"encoder input shape {shp} does not match the manifest [batch, {e.input_size}, "
        f"{e.input_size}, 3]",
    )
    _check(e.output_name in eout, f"encoder graph has no output {e.output_name!r}")
    oshp = list(eout[e.output_name].shape)
    _check(
        oshp[-1] == bundle.feature_dim,
        f"encoder output shape {oshp} does not match feature_dim {bundle.feature_dim}",
    )
    hin, hout = _io(s.head, "in"), _io(s.head, "out")
    _check(
        h.embeddings_name in hin and h.mask_name in hin,
        f"head graph inputs {list(hin)} do not include {h.embeddings_name!r} and {h.mask_name!r}",
    )
    hs = list(hin[h.embeddings_name].shape)
    _check(
        hs[1:] == [bundle.window, bundle.feature_dim],
        f"head input shape {hs} does not match [batch, {bundle.window}, {bundle.feature_dim}]",
    )
    ms = list(hin[h.mask_name].shape)
    _check(
        ms[1:] == [bundle.window], f"head mask shape {ms} does not match [batch, {bundle.window}]"
    )
    _check(h.output_name in hout, f"head graph has no output {h.output_name!r}")
    _check_detector(s.detector, d, "detector")
    if bundle.roi is not None and s.roi_detector is not None:
        _check_detector(s.roi_detector, bundle.roi.detector, "roi_detector")


def _check_detector(sess: Any, d: Any, what: str) -> None:
    din, dout = _io(sess, "in"), _io(sess, "out")
    _check(d.input_name in din, f"{what} graph has no input {d.input_name!r}")
    ds = list(din[d.input_name].shape)
    _check(
        ds[1:] == [d.input_size, d.input_size, 3],
        f"{what} input shape {ds} does not match the manifest size {d.input_size}",
    )
    n_anchors = len(ssd_anchors(d.input_size, d.strides, d.anchors_per_cell))
    _check(d.boxes_name in dout and d.scores_name in dout, f"{what} outputs do not match manifest")
    bs = list(dout[d.boxes_name].shape)
    _check(
        not isinstance(bs[-2], int) or bs[-2] == n_anchors,
        f"{what} has {bs[-2]} anchors, the manifest's anchor scheme makes {n_anchors}",
    )


def open_sessions(
    bundle: Bundle, providers: str = "auto", threads: int = 0, spin: bool = False
) -> Sessions:
    """The bundle's sessions; the encoder with `threads` intra-op threads that spin between
    runs only with `spin` (see `session`)."""
    chosen = resolve_providers(providers)
    enc = session(bundle.file(bundle.encoder.file), chosen, threads, spin)
    head = session(bundle.file(bundle.head.file), ["CPUExecutionProvider"], 1)
    det = session(bundle.file(bundle.detector.file), chosen, 1)
    roi = (
        session(bundle.file(bundle.roi.detector.file), chosen, 1)
        if bundle.roi is not None
        else None
    )
    s = Sessions(enc, head, det, list(enc.get_providers()), roi)
    check_contract(bundle, s)
    return s


def warm_up(bundle: Bundle, s: Sessions) -> None:
    """One run of each graph so the first real frame does not pay for lazy initialisation."""
    size = bundle.encoder.input_size
    emb = s.encoder.run(None, {bundle.encoder.input_name: np.zeros((1, size, size, 3), np.uint8)})[
        0
    ]
    w = np.zeros((1, bundle.window, bundle.feature_dim), np.float32)
    w[0, 0] = emb[0]
    m = np.zeros((1, bundle.window), bool)
    m[0, 0] = True
    s.head.run(None, {bundle.head.embeddings_name: w, bundle.head.mask_name: m})
    ds = bundle.detector.input_size
    s.detector.run(None, {bundle.detector.input_name: np.zeros((1, ds, ds, 3), np.float32)})
    if bundle.roi is not None and s.roi_detector is not None:
        r = bundle.roi.detector
        s.roi_detector.run(
            None, {r.input_name: np.zeros((1, r.input_size, r.input_size, 3), np.float32)}
        )

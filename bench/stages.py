"""Stage costs on this machine: decode, face detection, encoder batches (fp32 and INT8), head,
the full per-frame path, the engine against onnxruntime alone, and the prototype's baseline."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from bench.common import face_frames, stats_ms, time_it
from bench.media import write_video
from stream_server.core.bundle import load_bundle
from stream_server.core.engine import FaceJob, InferenceEngine
from stream_server.core.faces import Detectors
from stream_server.core.pipeline import FramePipeline
from stream_server.core.runtime import open_sessions, warm_up
from stream_server.core.window import FrameWindow


def decode_cost(frames: list[np.ndarray], codec: str) -> dict[str, float]:
    buf = write_video(
        io.BytesIO(), frames, 30, codec, format="webm" if codec == "libvpx" else "mp4"
    )
    samples = []
    buf.seek(0)
    with av.open(buf) as c:
        stream = c.streams.video[0]
        for packet in c.demux(stream):
            t0 = time.perf_counter()
            decoded = packet.decode()
            for f in decoded:
                f.to_ndarray(format="rgb24")
            if decoded:
                samples.append(time.perf_counter() - t0)
    return stats_ms(samples)


def run(bundle_dir: Path, quick: bool = False) -> dict[str, Any]:
    reps = 10 if quick else 60
    frames = face_frames(30 if quick else 90)
    out: dict[str, Any] = {"bundle": str(bundle_dir)}
    out["decode_640x480"] = {
        "vp8": decode_cost(frames, "libvpx"),
        "h264": decode_cost(frames, "libx264"),
    }
    bundle = load_bundle(bundle_dir)
    s = open_sessions(bundle, "cpu")
    warm_up(bundle, s)
    det = Detectors.for_bundle(bundle, s)
    out["model"] = bundle.model_id
    out["face_detection_640x480"] = stats_ms(time_it(lambda: det.full.detect(frames[3]), reps))
    if det.roi is not None:
        box = det.full.detect(frames[3])[0].box
        out["face_detection_roi_640x480"] = stats_ms(
            time_it(lambda: det.near(frames[4], box), reps)
        )
    size = bundle.encoder.input_size
    crops = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    enc: dict[str, Any] = {}
    have = {*bundle.manifest.encoder.alternatives, bundle.encoder.precision}
    precisions = [p for p in ("fp32", "int8") if p in have]  # an INT8-only bundle: int8 alone
    for prec in precisions:
        b = load_bundle(bundle_dir, precision=prec)
        sess = open_sessions(b, "cpu").encoder
        row = {}
        for n in (1, 4, 8, 16):
            feed = {b.encoder.input_name: crops[:n]}
            t = time_it(lambda sess=sess, feed=feed: sess.run(None, feed), max(3, reps // n))
            st = stats_ms(t)
            st["per_crop_ms"] = round(st["median_ms"] / n, 3)
            row[f"batch_{n}"] = st
        enc[prec] = row
    out["encoder"] = enc
    w = (
        np.random.default_rng(1)
        .normal(size=(8, bundle.window, bundle.feature_dim))
        .astype(np.float32)
    )
    m = np.ones((8, bundle.window), bool)
    h = bundle.head
    out["head"] = {
        "batch_1": stats_ms(
            time_it(lambda: s.head.run(None, {h.embeddings_name: w[:1], h.mask_name: m[:1]}), reps)
        ),
        "batch_8": stats_ms(
            time_it(lambda: s.head.run(None, {h.embeddings_name: w, h.mask_name: m}), reps)
        ),
    }
    engine = InferenceEngine(bundle, s, max_batch=16)
    engine.start()
    try:
        pipe = FramePipeline(bundle, det, engine)
        i = iter(range(10**9))
        out["full_per_frame_path"] = stats_ms(
            time_it(lambda: pipe.analyze(frames[next(i) % len(frames)]), reps)
        )
        out["engine_vs_onnxruntime"] = engine_throughput(engine, bundle, crops, enc, quick)
    finally:
        engine.stop()
    return out


def engine_throughput(
    engine: InferenceEngine, bundle: Any, crops: np.ndarray, enc: dict[str, Any], quick: bool
) -> dict[str, Any]:
    """Crops/s through the engine with 8 streams submitting one face each, against the encoder
    session alone at its best batch size."""
    n_per = 10 if quick else 40
    done = []

    def stream() -> None:
        w = FrameWindow(bundle.window, bundle.feature_dim)
        for k in range(n_per):
            engine.submit(FaceJob(crops[k % 16 : k % 16 + 1], [w])).result()
        done.append(n_per)

    threads = [threading.Thread(target=stream) for _ in range(8)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_crop = (time.perf_counter() - t0) / sum(done) * 1000
    prec = bundle.encoder.precision
    best = min(v["per_crop_ms"] for v in enc[prec].values())
    return {
        "engine_ms_per_crop": round(per_crop, 3),
        "onnxruntime_best_ms_per_crop": best,
        "ratio": round(per_crop / best, 3),
        "precision": prec,
        "streams": 8,
    }


BASELINE = r"""
import json, sys, time, numpy as np, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
from PIL import Image
sys.path.insert(0, sys.argv[1])
from bench.media import face_frames
frames = face_frames(int(sys.argv[2]))
model = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3))
x = [np.asarray(Image.fromarray(f).resize((224, 224)), np.float32)[None] / 127.5 - 1 for f in frames]
for f in x[:2]:
    model.predict(f, verbose=0)
t = []
for f in x:
    t0 = time.perf_counter(); model.predict(f, verbose=0); t.append(time.perf_counter() - t0)
print(json.dumps(t))
"""


def baseline(quick: bool) -> dict[str, float]:
    """The original prototype: Keras InceptionV3 `predict` once per frame on the full frame resized
    to 224 (in a subprocess: TensorFlow stays out of the serving process)."""
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-c", BASELINE, str(root), "8" if quick else "40"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if r.returncode != 0:
        raise RuntimeError(f"baseline failed: {r.stderr.strip().splitlines()[-1:]}")
    return stats_ms(json.loads(r.stdout.strip().splitlines()[-1]))

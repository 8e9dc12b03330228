"""Per-stream analysis of the frames sampled by `stream_server.core.frames`: find and track faces, crop
them, get each track's p_fake from the shared engine, and label the frame.

Every source (WebRTC, RTSP, files) goes through `FramePipeline`; there is no second implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_server.core.bundle import Bundle
from stream_server.core.engine import FaceJob, InferenceEngine
from stream_server.core.faces import Detectors, FaceDetector, FaceStage, Track, crop_face
from stream_server.core.messages import FaceScore, Label
from stream_server.core.window import FrameWindow


@dataclass(frozen=True)
class FrameResult:
    p_fake: float | None
    label: Label
    faces: tuple[FaceScore, ...]


@dataclass
class Prepared:
    tracks: list[Track]
    crops: np.ndarray
    windows: list[FrameWindow]


class FramePipeline:
    """State of one stream: its face tracks and their embedding windows."""

    def __init__(
        self, bundle: Bundle, detectors: Detectors | FaceDetector, engine: InferenceEngine
    ) -> None:
        self.bundle = bundle
        self.faces = FaceStage(detectors)
        self.engine = engine
        self.windows: dict[int, FrameWindow] = {}

    def prepare(self, rgb: np.ndarray) -> Prepared:
        """Detection, tracking and crops (blocking: run it off the event loop)."""
        matched, ended = self.faces.step(rgb)
        for tid in ended:
            self.windows.pop(tid, None)
        size = self.bundle.encoder.input_size
        tracks, crops, windows = [], [], []
        for track, det in matched:
            tracks.append(track)
            crops.append(crop_face(rgb, det.box, self.bundle.crop, size))
            w = self.windows.get(track.id)
            if w is None:
                w = self.windows[track.id] = FrameWindow(
                    self.bundle.window, self.bundle.feature_dim
                )
            windows.append(w)
        arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        return Prepared(tracks, arr, windows)

    def label(self, prepared: Prepared, probs: np.ndarray) -> FrameResult:
        if not prepared.tracks:
            return FrameResult(None, "no_face", ())
        thr, warm = self.bundle.threshold, self.bundle.warmup_frames
        faces = []
        for track, w, p in zip(prepared.tracks, prepared.windows, probs, strict=True):
            lab: Label = "warming_up" if w.count < warm else ("fake" if p >= thr else "real")
            faces.append(FaceScore(track.id, track.box, float(p), w.count, lab))
        ready = [f.p_fake for f in faces if f.label != "warming_up"]
        if not ready:
            return FrameResult(max(f.p_fake for f in faces), "warming_up", tuple(faces))
        p_fake = max(ready)
        return FrameResult(p_fake, "fake" if p_fake >= thr else "real", tuple(faces))

    def job(self, prepared: Prepared) -> FaceJob:
        return FaceJob(prepared.crops, prepared.windows)

    def analyze(self, rgb: np.ndarray) -> FrameResult:
        """Synchronous analysis of one sampled frame (scans, tests, direct use)."""
        prepared = self.prepare(rgb)
        if not prepared.tracks:
            return self.label(prepared, np.zeros(0, np.float32))
        probs = self.engine.submit(self.job(prepared)).result()
        return self.label(prepared, probs)

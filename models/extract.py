"""Face crops from videos with the server's own frame source and face stage (same decoding,
sampling, downscale, detector and crops), cached on disk so repeated training runs decode and
detect each video once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from stream_server.core.faces import Detectors, FaceDetector, FaceStage, crop_face
from stream_server.core.frames import MAX_FRAME_SIDE, FrameSource, decode_video
from stream_server.core.manifest import CropSpec


@dataclass
class Crops:
    crops: np.ndarray  # (n, size, size, 3) uint8, one per sampled frame with a face
    times: np.ndarray  # (n,) stream seconds
    sampled: int  # frames sampled at the analysis rate
    error: str | None = None

    @property
    def faceless(self) -> int:
        return self.sampled - len(self.crops)


def largest(dets: list[Any]) -> Any:
    return max(dets, key=lambda d: d.box[2] * d.box[3])


def extract_video(
    path: Path,
    detector: Detectors | FaceDetector,
    crop: CropSpec,
    size: int,
    fps: float,
    max_seconds: float | None = None,
    max_side: int = MAX_FRAME_SIDE,
) -> Crops:
    """Sample `fps` frames per second, keep the largest face of each, crop it as the server does
    (frames larger than `max_side` are downscaled first, as serving does)."""
    faces = FaceStage(detector)  # detection + tracking exactly as a live stream runs it
    crops, times = [], []
    source = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return Crops(
                    np.zeros((0, size, size, 3), np.uint8), np.zeros(0), 0, "no video stream"
                )
            source = FrameSource(
                decode_video(container), fps, max_side=max_side, max_seconds=max_seconds
            )
            for t, rgb in source:
                dets = [d for _, d in faces.step(rgb)[0]]
                if dets:
                    crops.append(crop_face(rgb, largest(dets).box, crop, size))
                    times.append(t)
    except av.FFmpegError as exc:
        sampled = source.sampled if source is not None else 0
        return Crops(
            np.zeros((0, size, size, 3), np.uint8), np.zeros(0), sampled, f"decode error: {exc}"
        )
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return Crops(arr, np.asarray(times, np.float32), source.sampled if source else 0)


class CropCache:
    """npz per (video, face-stage settings) under `root`."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings

    def key(self, path: Path) -> str:
        st = path.stat()
        ident = json.dumps([path.name, st.st_size, int(st.st_mtime), self.settings], sort_keys=True)
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    def get(self, path: Path) -> Crops | None:
        f = self.root / f"{self.key(path)}.npz"
        if not f.is_file():
            return None
        with np.load(f, allow_pickle=False) as z:
            err = str(z["error"]) if "error" in z.files else None
            return Crops(z["crops"], z["times"], int(z["sampled"]), err or None)

    def put(self, path: Path, c: Crops) -> None:
        f = self.root / f"{self.key(path)}.npz"
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, crops=c.crops, times=c.times, sampled=c.sampled, error=c.error or "")
        tmp.replace(f)

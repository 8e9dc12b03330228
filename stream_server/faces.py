"""Face stage: BlazeFace detection (ONNX), simple IoU tracks, square crops with a margin.

Training (`models.data`) uses this same module, so the crops the model learns from are the crops
the server feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from stream_server.bundle import CropSpec, DetectorSpec

RAW_SCORE_LIMIT = 80.0


@dataclass(frozen=True)
class Detection:
    """A face box in normalised image coordinates: x, y (top-left), w, h in 0..1."""

    box: tuple[float, float, float, float]
    score: float


def ssd_anchors(input_size: int, strides: tuple[int, ...], per_cell: int) -> np.ndarray:
    """Anchor centres (N, 2) as MediaPipe's SSD anchor calculator makes them for BlazeFace."""
    anchors: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        repeats = per_cell * (j - i)
        fm = input_size // strides[i]
        ys, xs = np.meshgrid((np.arange(fm) + 0.5) / fm, (np.arange(fm) + 0.5) / fm, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        anchors.extend(map(tuple, np.repeat(centres, repeats, axis=0)))
        i = j
    return np.asarray(anchors, dtype=np.float32)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> list[Detection]:
    """MediaPipe-style weighted NMS: overlapping boxes are averaged, weighted by score."""
    order = list(np.argsort(-scores))
    out: list[Detection] = []
    while order:
        top = order[0]
        group = [k for k in order if iou(tuple(boxes[top]), tuple(boxes[k])) > iou_thr]
        group_set = set(group) | {top}
        order = [k for k in order if k not in group_set]
        w = scores[list(group_set)]
        box = (boxes[list(group_set)] * w[:, None]).sum(axis=0) / w.sum()
        out.append(Detection(tuple(float(v) for v in box), float(scores[top])))  # type: ignore[arg-type]
    return out


class FaceDetector:
    """BlazeFace on an onnxruntime session; thread-safe (onnxruntime sessions are)."""

    def __init__(self, session: Any, spec: DetectorSpec) -> None:
        self.session = session
        self.spec = spec
        self.anchors = ssd_anchors(spec.input_size, spec.strides, spec.anchors_per_cell)

    def letterbox(
        self, rgb: np.ndarray, pad: float = 0.0
    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Resize keeping aspect ratio into a square, centred, with `pad` (fraction of the longer
        side) of extra border on every side; returns the input tensor and the padding (left, top,
        right, bottom) as fractions of the square."""
        h, w = rgb.shape[:2]
        s = self.spec.input_size
        scale = s / (max(h, w) * (1.0 + 2.0 * pad))
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
        canvas = np.zeros((s, s, 3), dtype=np.uint8)
        left, top = (s - nw) // 2, (s - nh) // 2
        canvas[top : top + nh, left : left + nw] = resized
        x = canvas.astype(np.float32) / 127.5 - 1.0
        return x[None], (left / s, top / s, (s - nw - left) / s, (s - nh - top) / s)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB frame. BlazeFace misses faces that fill the whole frame (a face-crop
        video, a face right at the webcam), so a frame without a face is tried once more zoomed
        out (`retry_pad` of border on every side)."""
        found = self._detect(rgb, 0.0)
        if not found and self.spec.retry_pad > 0:
            found = self._detect(rgb, self.spec.retry_pad)
        return found

    def _detect(self, rgb: np.ndarray, pad: float) -> list[Detection]:
        x, (pl, pt, pr, pb) = self.letterbox(rgb, pad)
        raw_boxes, raw_scores = self.session.run(
            [self.spec.boxes_name, self.spec.scores_name], {self.spec.input_name: x}
        )
        raw_boxes = raw_boxes.reshape(-1, 16)
        scores = 1.0 / (
            1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT))
        )
        keep = scores > self.spec.min_score
        if not keep.any():
            return []
        b = raw_boxes[keep, :4] / self.spec.input_size
        a = self.anchors[keep]
        cx, cy, bw, bh = b[:, 0] + a[:, 0], b[:, 1] + a[:, 1], b[:, 2], b[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        valid = (bw > 0) & (bh > 0)
        dets = weighted_nms(boxes[valid], scores[keep][valid], self.spec.nms_iou)
        # Undo the letterbox: map square coordinates back to the frame, clip to it.
        sx, sy = 1.0 - pl - pr, 1.0 - pt - pb
        out = []
        for d in dets:
            x0 = (d.box[0] - pl) / sx
            y0 = (d.box[1] - pt) / sy
            x1 = (d.box[0] + d.box[2] - pl) / sx
            y1 = (d.box[1] + d.box[3] - pt) / sy
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)
            if x1 > x0 and y1 > y0:
                out.append(Detection((x0, y0, x1 - x0, y1 - y0), d.score))
        return out


def crop_face(
    rgb: np.ndarray, box: tuple[float, float, float, float], crop: CropSpec, size: int
) -> np.ndarray:
    """A square crop of side max(w, h) * (1 + margin) centred on the box, resized to `size`.

    Parts outside the frame are black. Returns uint8 (size, size, 3) RGB.
    """
    h, w = rgb.shape[:2]
    bx, by, bw, bh = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    side = max(bw, bh) * (1.0 + crop.margin)
    cx, cy = bx + bw / 2, by + bh / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = x0 + max(1, round(side)), y0 + max(1, round(side))
    img = Image.fromarray(rgb).crop((x0, y0, x1, y1))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass
class Track:
    id: int
    box: tuple[float, float, float, float]
    missed: int = 0


@dataclass
class FaceTracker:
    """Greedy IoU matching of detections to the previous frame's tracks (one per stream)."""

    min_iou: float = 0.2
    max_missed: int = 3
    max_faces: int = 4
    tracks: dict[int, Track] = field(default_factory=dict)
    next_id: int = 0

    def update(
        self, detections: list[Detection]
    ) -> tuple[list[tuple[Track, Detection]], list[int]]:
        """Returns (matched/new tracks with their detection, ids of tracks that ended)."""
        dets = sorted(detections, key=lambda d: -d.score)[: self.max_faces]
        pairs = sorted(
            (
                (iou(t.box, d.box), tid, k)
                for tid, t in self.tracks.items()
                for k, d in enumerate(dets)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        out: list[tuple[Track, Detection]] = []
        for score, tid, k in pairs:
            if score < self.min_iou or tid in used_t or k in used_d:
                continue
            used_t.add(tid)
            used_d.add(k)
            t = self.tracks[tid]
            t.box, t.missed = dets[k].box, 0
            out.append((t, dets[k]))
        for k, d in enumerate(dets):
            if k not in used_d:
                t = Track(self.next_id, d.box)
                self.next_id += 1
                self.tracks[t.id] = t
                out.append((t, d))
        ended = []
        for tid, t in list(self.tracks.items()):
            if tid not in used_t and all(t is not p[0] for p in out):
                t.missed += 1
                if t.missed > self.max_missed:
                    ended.append(tid)
                    del self.tracks[tid]
        out.sort(key=lambda p: p[0].id)
        return out, ended

"""Face stage: BlazeFace detection (ONNX), simple IoU tracks, square crops with a margin.

Training (`models.extract`) uses this same module, so the crops the model learns from are the crops
the server feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from stream_server.core.manifest import CropSpec, DetectorSpec, RoiSpec

if TYPE_CHECKING:  # runtime opens the sessions with this module's FaceDetector
    from stream_server.core.bundle import Bundle
    from stream_server.core.runtime import Sessions

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
        # Undo the letterbox: map square coordinates back to the frame, clip to it.
        sx, sy = 1.0 - pl - pr, 1.0 - pt - pb
        out = []
        for d in self._run(x):
            x0 = (d.box[0] - pl) / sx
            y0 = (d.box[1] - pt) / sy
            x1 = (d.box[0] + d.box[2] - pl) / sx
            y1 = (d.box[1] + d.box[3] - pt) / sy
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)
            if x1 > x0 and y1 > y0:
                out.append(Detection((x0, y0, x1 - x0, y1 - y0), d.score))
        return out

    def _run(self, x: np.ndarray) -> list[Detection]:
        """Decoded faces in the coordinates of the square input tensor `x` (0..1)."""
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
        return weighted_nms(boxes[valid], scores[keep][valid], self.spec.nms_iou)

    def detect_near(
        self, rgb: np.ndarray, box: tuple[float, float, float, float], scale: float
    ) -> Detection | None:
        """The face closest to `box` inside a square region `scale` times the box's longer side
        around its centre (black outside the frame), or None. Meant for a small detector that
        follows a face a tracker already knows, instead of searching the whole frame again."""
        h, w = rgb.shape[:2]
        side = max(box[2] * w, box[3] * h) * scale
        n = max(1, round(side))
        x0 = round((box[0] + box[2] / 2) * w - n / 2)
        y0 = round((box[1] + box[3] / 2) * h - n / 2)
        s = self.spec.input_size
        region = Image.fromarray(square_region(rgb, x0, y0, n))
        x = np.asarray(region.resize((s, s), Image.Resampling.BILINEAR), np.float32)
        best: Detection | None = None
        best_iou = 0.0
        for d in self._run(x[None] / 127.5 - 1.0):
            fx0 = max(0.0, (x0 + d.box[0] * n) / w)
            fy0 = max(0.0, (y0 + d.box[1] * n) / h)
            fx1 = min(1.0, (x0 + (d.box[0] + d.box[2]) * n) / w)
            fy1 = min(1.0, (y0 + (d.box[1] + d.box[3]) * n) / h)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            cand = Detection((fx0, fy0, fx1 - fx0, fy1 - fy0), d.score)
            overlap = iou(cand.box, box)
            if overlap > best_iou:
                best, best_iou = cand, overlap
        return best


@dataclass(frozen=True)
class Detectors:
    """A bundle's face detectors: `full` searches whole frames; `roi` (optional, e.g. BlazeFace
    short-range) only looks around faces that are already tracked, which is several times cheaper.
    `roi_spec` says how: the region's size, how often to search in full anyway, and the
    calibration (scale_w, scale_h, dx, dy) that maps roi boxes to the full detector's box
    convention (fitted at export time), so crops do not depend on which detector found the face."""

    full: FaceDetector
    roi: FaceDetector | None = None
    roi_spec: RoiSpec | None = None

    @classmethod
    def for_bundle(cls, bundle: Bundle, sessions: Sessions) -> Detectors:
        full = FaceDetector(sessions.detector, bundle.detector)
        roi = bundle.roi
        if roi is None or sessions.roi_detector is None:
            return cls(full)
        return cls(full, FaceDetector(sessions.roi_detector, roi.detector), roi)

    @property
    def redetect_every(self) -> int:
        """A full-frame search at least every N analysed frames (1: every frame)."""
        return self.roi_spec.redetect_every if self.roi is not None and self.roi_spec else 1

    def near(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> Detection | None:
        if self.roi is None or self.roi_spec is None:
            return None
        d = self.roi.detect_near(rgb, box, self.roi_spec.scale)
        if d is None:
            return None
        sw, sh, dx, dy = self.roi_spec.calibration
        x, y, bw, bh = d.box
        cx, cy = x + bw / 2 - dx * bw, y + bh / 2 - dy * bh
        bw, bh = bw / sw, bh / sh
        return Detection((cx - bw / 2, cy - bh / 2, bw, bh), d.score)


class FaceStage:
    """Detection plus tracking for one stream. While every tracked face is found again by the
    region-of-interest detector, the whole frame is not searched; it is searched when a face is
    lost, when there is none, and every `redetect_every` frames to pick up new faces."""

    def __init__(self, detectors: Detectors | FaceDetector) -> None:
        self.detectors = detectors if isinstance(detectors, Detectors) else Detectors(detectors)
        self.tracker = FaceTracker()
        self.since_full = 0
        self.full_searches = 0

    def locate(self, rgb: np.ndarray) -> list[Detection]:
        d = self.detectors
        tracks = list(self.tracker.tracks.values())
        if tracks and all(t.missed == 0 for t in tracks) and self.since_full < d.redetect_every - 1:
            found = [f for f in (d.near(rgb, t.box) for t in tracks) if f is not None]
            distinct = all(
                iou(a.box, b.box) < 0.5 for i, a in enumerate(found) for b in found[i + 1 :]
            )
            if len(found) == len(tracks) and distinct:
                self.since_full += 1
                return found
        self.since_full = 0
        self.full_searches += 1
        return d.full.detect(rgb)

    def step(self, rgb: np.ndarray) -> tuple[list[tuple[Track, Detection]], list[int]]:
        """Faces of this frame matched to tracks, and the ids of tracks that ended."""
        return self.tracker.update(self.locate(rgb))


def square_region(rgb: np.ndarray, x0: int, y0: int, n: int) -> np.ndarray:
    """rgb[y0:y0+n, x0:x0+n] with black where the square leaves the frame (no full-frame copy)."""
    h, w = rgb.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + n), min(h, y0 + n)
    if sx0 == x0 and sy0 == y0 and sx1 == x0 + n and sy1 == y0 + n:
        return rgb[sy0:sy1, sx0:sx1]
    out = np.zeros((n, n, 3), dtype=np.uint8)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
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
    img = Image.fromarray(square_region(rgb, x0, y0, max(1, round(side))))
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

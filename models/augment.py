"""Degrade face crops the way live streams do, so image quality is never the label.

`degrade` draws one set of parameters and applies it to every crop of a unit (a real crop and the
fake made from it, or a real/fake pair of the same scene), so the only difference the encoder can
learn inside a pair is the manipulation itself.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def _affine(img: Image.Image, scale: float, dx: float, dy: float) -> Image.Image:
    s = img.size[0]
    a = 1.0 / scale
    c = s / 2
    return img.transform(
        (s, s),
        Image.Transform.AFFINE,
        (a, 0, c - a * c - dx * s, 0, a, c - a * c - dy * s),
        resample=Image.Resampling.BILINEAR,
    )


def degrade(crops: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip, crop jitter, colour shift, down/up-scaling, blur, noise and
    JPEG re-compression for every crop in `crops` (uint8 HxWx3, equal sizes)."""
    return degrade_with_masks(crops, [], rng)[0]


def degrade_with_masks(
    crops: list[np.ndarray], masks: list[np.ndarray], rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`degrade`, plus the same flip and crop jitter (only the geometry) applied to each of
    `masks` (float HxW in [0, 1], the crops' size), so a mask still covers the pixels it marked.
    Draws exactly the random numbers `degrade` draws."""
    flip = rng.random() < 0.5
    jitter = (
        (rng.uniform(0.92, 1.1), rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
        if rng.random() < 0.7
        else None
    )
    colour = (
        (rng.uniform(0.75, 1.25), rng.uniform(0.8, 1.2), rng.uniform(0.7, 1.3))
        if rng.random() < 0.6
        else None
    )
    rescale = rng.uniform(0.3, 0.9) if rng.random() < 0.4 else None
    blur = rng.uniform(0.3, 1.2) if rng.random() < 0.2 else None
    noise = rng.uniform(1.0, 6.0) if rng.random() < 0.25 else None
    quality = int(rng.integers(35, 96)) if rng.random() < 0.6 else None
    field = rng.normal(0, noise, crops[0].shape) if noise is not None else None
    out = []
    for c in crops:
        img = Image.fromarray(c)
        s = img.size[0]
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if jitter is not None:
            img = _affine(img, *jitter)
        if colour is not None:
            img = ImageEnhance.Brightness(img).enhance(colour[0])
            img = ImageEnhance.Contrast(img).enhance(colour[1])
            img = ImageEnhance.Color(img).enhance(colour[2])
        if rescale is not None:
            small = max(16, round(s * rescale))
            img = img.resize((small, small), Image.Resampling.BILINEAR).resize(
                (s, s), Image.Resampling.BILINEAR
            )
        if blur is not None:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        arr = np.asarray(img)
        if field is not None:
            arr = np.clip(arr + field, 0, 255).astype(np.uint8)
        if quality is not None:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
            arr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append(np.ascontiguousarray(arr, dtype=np.uint8))
    moved = []
    for m in masks:
        img = Image.fromarray(np.ascontiguousarray(m, np.float32))  # mode "F"
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if jitter is not None:
            img = _affine(img, *jitter)
        moved.append(np.clip(np.asarray(img, np.float32), 0.0, 1.0))
    return out, moved

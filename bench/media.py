"""Media the tests and the benchmarks generate (both import it from here; bench/ never imports
tests/): a real face (scikit-image's astronaut photo) panned and zoomed, and faceless scenes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

# Where the astronaut's face is in the 512x512 photo (x, y, w, h), checked by eye.
PHOTO_FACE = (174.0, 70.0, 105.0, 105.0)


def _view(i: int, n: int) -> tuple[int, int]:
    """The square window (x0, side) of the photo shown in frame i of n; y0 is 0."""
    phase = i / max(1, n - 1)
    zoom = 0.75 + 0.15 * np.sin(2 * np.pi * phase)
    side = int(512 * zoom)
    cx = 256 + 20 * np.sin(2 * np.pi * phase * 2)
    return int(np.clip(cx - side / 2, 0, 512 - side)), side


def face_box(
    i: int, n: int, size: tuple[int, int] = (640, 480)
) -> tuple[float, float, float, float]:
    """The face's true box in frame i of `face_frames(n, size)`, normalised (x, y, w, h)."""
    w, h = size
    x0, side = _view(i, n)
    s = h / side
    fx, fy, fw, fh = PHOTO_FACE
    return (((fx - x0) * s + (w - h) / 2) / w, fy * s / h, fw * s / w, fh * s / h)


def face_frames(n: int, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """The astronaut's face slowly panned and zoomed inside a wider scene."""
    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut())
    w, h = size
    frames = []
    for i in range(n):
        x0, side = _view(i, n)
        crop = photo.crop((x0, 0, x0 + side, side)).resize((h, h), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (w, h), (40, 60, 80))
        canvas.paste(crop, ((w - h) // 2, 0))
        frames.append(np.asarray(canvas))
    return frames


def faceless_frames(n: int, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """A moving colour gradient: no face anywhere."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        r = (x + 4 * i) % 256
        g = (y + 2 * i) % 256
        b = ((x + y) // 2 + 3 * i) % 256
        out.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return out


def write_video(
    target: Any,
    frames: list[np.ndarray],
    fps: int = 25,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    format: str | None = None,
) -> Any:
    """Encode RGB frames as yuv420p video into a path or a binary file object; returns `target`."""
    with av.open(
        target if not isinstance(target, Path) else str(target), "w", format=format
    ) as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            for pkt in stream.encode(vf):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return target

"""Real face crops for parity checks and INT8 calibration when no face data is given:
scikit-image's `astronaut` photo, panned, zoomed and flipped, cropped by the bundle's own face stage."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stream_server.core.faces import FaceDetector, crop_face
from stream_server.core.manifest import CropSpec


def astronaut_frames(n: int, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    import skimage.data

    img = Image.fromarray(skimage.data.astronaut())  # type: ignore[no-untyped-call]
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        zoom = rng.uniform(0.6, 1.0)
        side = int(512 * zoom)
        x0 = int(rng.uniform(0, 512 - side))
        y0 = int(rng.uniform(0, 512 - side))
        f = img.crop((x0, y0, x0 + side, y0 + side)).resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            f = f.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        frames.append(np.asarray(f))
    return frames


def face_crops(
    frames: list[np.ndarray], detector: FaceDetector, crop: CropSpec, size: int
) -> np.ndarray:
    crops = []
    for f in frames:
        for d in detector.detect(f)[:1]:
            crops.append(crop_face(f, d.box, crop, size))
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)

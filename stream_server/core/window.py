"""Per-face-track ring buffer of the last W embeddings, with the mask the head expects."""

from __future__ import annotations

import numpy as np


class FrameWindow:
    """Holds up to `window` embeddings in arrival order; valid steps first while it fills."""

    __slots__ = ("buf", "count")

    def __init__(self, window: int, dim: int) -> None:
        self.buf = np.zeros((window, dim), dtype=np.float32)
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count == self.buf.shape[0]

    def push(self, embedding: np.ndarray) -> None:
        if self.full:
            self.buf[:-1] = self.buf[1:]
            self.buf[-1] = embedding
        else:
            self.buf[self.count] = embedding
            self.count += 1

    def mask(self) -> np.ndarray:
        m = np.zeros(self.buf.shape[0], dtype=bool)
        m[: self.count] = True
        return m

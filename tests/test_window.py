"""stream_server/core/window.py: the per-track ring buffer of embeddings and its mask."""

from __future__ import annotations

import numpy as np

from stream_server.core.window import FrameWindow


def emb(v: float, dim: int = 3) -> np.ndarray:
    return np.full(dim, v, np.float32)


def test_fills_valid_steps_first_and_masks_the_rest() -> None:
    w = FrameWindow(4, 3)
    assert w.count == 0 and not w.full and not w.mask().any()
    w.push(emb(1))
    w.push(emb(2))
    assert w.count == 2 and not w.full
    assert w.mask().tolist() == [True, True, False, False]
    assert w.buf[:, 0].tolist() == [1, 2, 0, 0]  # masked steps stay zero


def test_when_full_the_oldest_leaves_and_order_is_kept() -> None:
    w = FrameWindow(3, 2)
    for v in range(1, 6):
        w.push(emb(v, 2))
    assert w.full and w.count == 3 and w.mask().all()
    assert w.buf[:, 0].tolist() == [3, 4, 5]  # arrival order, newest last


def test_buffer_is_float32_of_window_by_dim() -> None:
    w = FrameWindow(5, 7)
    w.push(np.arange(7, dtype=np.float64))  # stored as float32, as the head expects
    assert w.buf.shape == (5, 7) and w.buf.dtype == np.float32 and w.mask().dtype == bool

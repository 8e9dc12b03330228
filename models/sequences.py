"""Training windows for the GRU head, drawn from per-video embedding sequences.

Windows follow the server's layout: valid steps first, then masked padding, so the head learns
from full windows and from windows that are still filling (a stream's first seconds).
"""

from __future__ import annotations

import numpy as np


def sample_windows(
    seqs: list[np.ndarray],
    labels: list[int],
    window: int,
    n: int,
    rng: np.random.Generator,
    partial_prob: float = 0.3,
    min_len: int = 1,
    noise: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n windows: (embeddings (n, W, D), mask (n, W), labels (n,), weights (n,)).

    Videos are drawn so that both labels carry equal total weight.
    """
    usable = [i for i, s in enumerate(seqs) if len(s) >= min_len]
    if not usable:
        raise ValueError("no sequence has enough frames to make a window")
    lab = np.asarray([labels[i] for i in usable])
    probs = np.where(lab == 1, 0.5 / max(1, (lab == 1).sum()), 0.5 / max(1, (lab == 0).sum()))
    if (lab == 1).sum() == 0 or (lab == 0).sum() == 0:
        probs = np.full(len(usable), 1.0 / len(usable))
    probs /= probs.sum()
    dim = seqs[usable[0]].shape[1]
    x = np.zeros((n, window, dim), np.float32)
    m = np.zeros((n, window), bool)
    y = np.zeros(n, np.float32)
    picks = rng.choice(len(usable), size=n, p=probs)
    for k, j in enumerate(picks):
        s = seqs[usable[j]]
        length = min(window, len(s))
        if rng.random() < partial_prob:
            length = int(rng.integers(min_len, length + 1))
        start = int(rng.integers(0, len(s) - length + 1))
        x[k, :length] = s[start : start + length]
        m[k, :length] = True
        y[k] = lab[j]
    if np.any(np.asarray(noise) > 0):  # noise: a scale, or one per embedding dimension
        x += (rng.normal(0, 1, x.shape) * noise).astype(np.float32) * m[..., None]
    return x, m, y, np.ones(n, np.float32)


def video_windows(seq: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive windows over one video as the server would see it (for evaluation)."""
    dim = seq.shape[1]
    outs, masks = [], []
    for end in range(1, len(seq) + 1, stride):
        start = max(0, end - window)
        w = np.zeros((window, dim), np.float32)
        mk = np.zeros(window, bool)
        w[: end - start] = seq[start:end]
        mk[: end - start] = True
        outs.append(w)
        masks.append(mk)
    return np.stack(outs), np.stack(masks)

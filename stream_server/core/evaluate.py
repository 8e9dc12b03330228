"""Video-level metrics against labels: AUC, log loss, accuracy, EER, and the ROC curve.

Used by `deepfake-train` on its held-out videos and by `deepfake-scan` on a labelled folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """Scores against labels over `n` videos (`positives` of them fake)."""

    n: int
    positives: int
    auc: float
    log_loss: float
    accuracy: float
    eer: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (ties handled together)."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(1, int(y.sum())), max(1, int(len(y) - y.sum()))
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random fake scores above a random real (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auc_interval(
    labels: Any,
    scores: Any,
    clusters: Any = None,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC at `level` (2.5th-97.5th percentile at 0.95).

    With `clusters` (one key per video, e.g. its identity group), whole clusters are drawn with
    replacement, not single videos: the videos of one person or one footage (a fake and its own
    real) are not independent, and resampling them one by one would make the interval too
    narrow. Resamples without a fake or without a real are drawn again. NaN, NaN when the labels
    hold only one class."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be equal-length 1-d sequences")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, not {level}")
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    keys = np.arange(len(y)) if clusters is None else np.asarray(clusters)
    if keys.shape != y.shape:
        raise ValueError("clusters must name one cluster per score")
    _, cid = np.unique(keys, return_inverse=True)
    n_clusters = int(cid.max()) + 1
    # 1 where the fake outscores the real, 0.5 for a tie: the AUC is the weighted mean of this.
    wins = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    need = resamples
    while need > 0:
        draws = rng.integers(0, n_clusters, size=(need, n_clusters))
        counts = np.zeros((need, n_clusters))
        np.add.at(counts, (np.arange(need)[:, None], draws), 1.0)
        w = counts[:, cid]  # each video's weight: how often its cluster was drawn
        wp, wn = w[:, pos], w[:, neg]
        ok = (wp.sum(1) > 0) & (wn.sum(1) > 0)
        wp, wn = wp[ok], wn[ok]
        out.append(((wp @ wins) * wn).sum(1) / (wp.sum(1) * wn.sum(1)))
        need -= int(ok.sum())
    aucs = np.concatenate(out)[:resamples]
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def eer_threshold(labels: Any, scores: Any) -> float:
    """The score threshold where the false-positive and false-negative rates are closest (the
    equal-error point), midway between the two scores that bracket it."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    cands = np.unique(s)
    if len(cands) == 0 or y.sum() in (0, len(y)):
        return 0.5
    best, best_gap = 0.5, np.inf
    for k, t in enumerate(cands):
        fpr = float(np.mean(s[y == 0] >= t))
        fnr = float(np.mean(s[y == 1] < t))
        if abs(fpr - fnr) < best_gap:
            lo = cands[k - 1] if k > 0 else t
            best, best_gap = float((lo + t) / 2), abs(fpr - fnr)
    return best


def compute(labels: Any, scores: Any, threshold: float = 0.5) -> Evaluation:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError("labels and scores must be equal-length, non-empty 1-d sequences")
    p = np.clip(s, 1e-7, 1 - 1e-7)
    ll = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return Evaluation(
        n=len(y),
        positives=int(y.sum()),
        auc=auc(y, s),
        log_loss=ll,
        accuracy=float(np.mean((s >= threshold) == (y == 1))),
        eer=eer(y, s),
        threshold=threshold,
    )


def plot_roc(labels: Any, scores: Any, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fpr, tpr = roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc(y, s):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

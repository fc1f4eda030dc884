"""Top-k accuracy for classifiers (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekit.metrics.errors import MetricInputError


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Count the samples whose label is among the ``k`` highest scores, for each ``k``.

    Ties are broken towards the lower class index (a stable sort), so a constant output
    is not counted correct for every class. ``k`` larger than the number of classes is
    clipped to it (every label is then in the top k).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise MetricInputError(f"scores {scores.shape} must be [N, C] with N = {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise MetricInputError(f"labels must be in 0..{scores.shape[1] - 1}; got {labels.min()}..{labels.max()}")
    kmax = min(max(k), scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
    hit = top == labels[:, None]
    return {kk: int(hit[:, :min(kk, kmax)].any(axis=1).sum()) for kk in k}


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose label is among the ``k`` highest scores.

    Args:
        scores: ``[N, C]`` logits or probabilities (any monotone score).
        labels: ``[N]`` class indices.
        k: the ``k`` values to report.

    Returns:
        ``{k: accuracy in 0..1}``; NaN for an empty batch.
    """
    n = int(np.asarray(labels).size)
    return {kk: (c / n if n else float("nan")) for kk, c in topk_correct(scores, labels, k).items()}


class TopKAccuracy:
    """Streaming top-k accuracy: :meth:`update` per batch, :meth:`compute` at the end."""

    def __init__(self, k: Sequence[int] = (1, 5)) -> None:
        self.k = tuple(k)
        self.correct = dict.fromkeys(self.k, 0)
        self.count = 0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one batch of ``[N, C]`` scores and ``[N]`` labels."""
        for kk, c in topk_correct(scores, labels, self.k).items():
            self.correct[kk] += c
        self.count += int(np.asarray(labels).size)

    def compute(self) -> dict[int, float]:
        """``{k: accuracy}`` over everything seen; NaN before any update."""
        return {kk: (c / self.count if self.count else float("nan")) for kk, c in self.correct.items()}

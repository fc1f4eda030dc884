"""Segmentation metrics from a streaming confusion matrix (numpy only).

Convention: IoU of class c = TP / (TP + FP + FN) over all pixels seen. A class absent from
both the ground truth and the predictions has no IoU (NaN) and is left out of the mean; a
class that is only predicted (never in the ground truth) scores 0 and counts. This is
mmsegmentation's and torchmetrics' convention. Pixels whose ground truth is
``ignore_index`` are not counted, whatever was predicted there.
"""

from __future__ import annotations

import numpy as np

from edgekit.metrics.errors import MetricInputError


class ConfusionMatrix:
    """``num_classes x num_classes`` pixel counts, rows = ground truth, columns = prediction.

    Args:
        num_classes: classes 0..C-1.
        ignore_index: ground-truth value that marks pixels not to score.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise MetricInputError(f"num_classes {num_classes} must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add predicted and ground-truth class-id masks of the same shape (any batch layout)."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise MetricInputError(
                f"prediction {pred.shape} and ground truth {gt.shape} must have the same shape; "
                f"take the argmax over classes and resize to the mask first"
            )
        keep = gt != self.ignore_index if self.ignore_index is not None else np.ones(gt.shape, bool)
        p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        for name, v in (("prediction", p), ("ground truth", g)):
            if v.size and (v.min() < 0 or v.max() >= self.num_classes):
                raise MetricInputError(
                    f"{name} has class ids {v.min()}..{v.max()} outside 0..{self.num_classes - 1} "
                    f"(ignore_index {self.ignore_index})"
                )
        n = self.num_classes
        self.matrix += np.bincount(g * n + p, minlength=n * n).reshape(n, n)

    def iou(self) -> np.ndarray:
        """Per-class IoU ``[C]``; NaN for a class absent from both ground truth and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that have one (NaN when nothing was counted)."""
        ious = self.iou()
        return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def reset(self) -> None:
        """Forget every update."""
        self.matrix[:] = 0

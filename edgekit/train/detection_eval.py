"""The detection entry of :mod:`edgekit.evaluate`: COCO box mAP of a detector in PyTorch.

Each image goes through the weights' preprocessing, ``model(x)`` returns padded
``(boxes [N, K, 4], scores [N, K], labels [N, K])`` in input pixels (label -1 = padding,
the :class:`~edgekit.models.detection.TwoStageDetector` contract), and the boxes are mapped
back to the original image through the preprocessing geometry before
:func:`~edgekit.metrics.coco_map` scores them against the dataset's own boxes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from edgekit.data import ImageDataset, ImageMeta, Preprocess, boxes_to_original
from edgekit.errors import EdgekitError
from edgekit.evaluate import iterate_batches, register_evaluator
from edgekit.metrics import Detections, coco_map
from edgekit.models.registry import Task


def to_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, meta: ImageMeta) -> Detections:
    """One image's padded model outputs -> :class:`Detections` in original-image pixels."""
    valid = labels >= 0
    return Detections(boxes=boxes_to_original(boxes[valid], meta), scores=scores[valid].astype(np.float32),
                      labels=labels[valid].astype(np.int64))


@register_evaluator(Task.DETECT)
def evaluate_detection(model: nn.Module, dataset: ImageDataset, preprocess: Preprocess, *,
                       batch_size: int, progress: bool) -> dict[str, Any]:
    """COCO ``map`` (AP@[.5:.95]), ``map50``, ``map75`` and per-class AP@[.5:.95] by class name."""
    predictions: list[Detections] = []
    truths: list[Any] = []
    for x, samples, metas in iterate_batches(dataset, preprocess, batch_size=batch_size, progress=progress):
        boxes, scores, labels = (t.float().numpy() if t.is_floating_point() else t.numpy() for t in model(x))
        for i, (sample, meta) in enumerate(zip(samples, metas)):
            predictions.append(to_detections(boxes[i], scores[i], labels[i], meta))
            truths.append(sample)
    if not truths:
        raise EdgekitError("the dataset is empty; nothing to evaluate")
    metrics = coco_map(predictions, truths)
    names = list(dataset.class_names)
    per_class = {(names[c] if c < len(names) else str(c)): _json_float(v) for c, v in metrics.per_class.items()}
    return {"map": _json_float(metrics.map), "map50": _json_float(metrics.map50),
            "map75": _json_float(metrics.map75), "per_class_ap": per_class}


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)

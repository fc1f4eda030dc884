"""COCO box mAP through pycocotools, from predictions and ground truth in image pixels.

The COCO objects are built in memory (no JSON files) and pycocotools' progress prints are
swallowed. AP@[.5:.95] averages 10 IoU thresholds and 101 recall points over the classes
that have ground truth; a class with ground truth and no predictions scores 0. Ground
truth flagged ``difficult`` (VOC) or crowd (COCO) goes to pycocotools as ``iscrowd=1``:
a detection on it is neither a true nor a false positive.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from edgekit.errors import MissingDependencyError
from edgekit.metrics.errors import MetricInputError


class Boxes(Protocol):
    """Anything with ``[N, 4]`` xyxy ``boxes`` and ``[N]`` integer ``labels`` (e.g. a DetectionSample)."""

    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Detections:
    """One image's predictions.

    Args:
        boxes: ``[N, 4]`` xyxy in image pixels.
        scores: ``[N]`` confidences.
        labels: ``[N]`` class indices 0..C-1.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class DetectionMetrics:
    """COCO box metrics, each in 0..1 (NaN where no image has ground truth).

    Args:
        map: AP averaged over IoU 0.50:0.05:0.95 (COCO's primary metric).
        map50: AP at IoU 0.50 (the VOC-style number, with COCO's 101-point interpolation).
        map75: AP at IoU 0.75.
        per_class: AP@[.5:.95] per class index that has ground truth.
    """

    map: float
    map50: float
    map75: float
    per_class: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (class indices as string keys)."""
        out = asdict(self)
        out["per_class"] = {str(k): v for k, v in self.per_class.items()}
        return out


def coco_map(predictions: Sequence[Detections], ground_truths: Sequence[Boxes], *,
             max_detections: int = 100) -> DetectionMetrics:
    """COCO mAP of ``predictions[i]`` against ``ground_truths[i]`` for every image ``i``.

    Args:
        predictions: one :class:`Detections` per image.
        ground_truths: one per image, with ``boxes`` and ``labels`` and optionally a bool
            ``difficult`` array (a :class:`~edgekit.data.base.DetectionSample` fits).
        max_detections: highest-scoring detections kept per image (COCO: 100).
    """
    if len(predictions) != len(ground_truths):
        raise MetricInputError(
            f"{len(predictions)} predictions for {len(ground_truths)} images; give one per image"
        )
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise MissingDependencyError("COCO mAP needs pycocotools: pip install pycocotools") from exc

    gt_anns, dt_anns, classes = [], [], set()
    for image_id, (pred, gt) in enumerate(zip(predictions, ground_truths), start=1):
        difficult = getattr(gt, "difficult", None)
        boxes, labels = _checked(gt.boxes, gt.labels, "ground truth", image_id)
        for box, label, crowd in zip(boxes, labels, _flags(difficult, len(labels), image_id)):
            gt_anns.append(_ann(len(gt_anns) + 1, image_id, box, label, iscrowd=int(crowd)))
            classes.add(label)
        boxes, labels = _checked(pred.boxes, pred.labels, "prediction", image_id)
        scores = np.asarray(pred.scores, np.float64).reshape(-1)
        if len(scores) != len(labels):
            raise MetricInputError(f"image {image_id - 1}: {len(scores)} scores for {len(labels)} predicted boxes")
        for box, label, score in zip(boxes, labels, scores):
            dt_anns.append(_ann(len(dt_anns) + 1, image_id, box, label, score=float(score)))
            classes.add(label)
    if not gt_anns:
        return DetectionMetrics(float("nan"), float("nan"), float("nan"))

    images = [{"id": i} for i in range(1, len(predictions) + 1)]
    categories = [{"id": c} for c in sorted(classes)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt_coco, dt_coco = COCO(), COCO()
        gt_coco.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        dt_coco.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        gt_coco.createIndex()
        dt_coco.createIndex()
        evaluator = COCOeval(gt_coco, dt_coco, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: [IoU threshold, recall point, class, area range (0 = all), max dets]; -1 = no gt
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {c: _mean(precision[:, :, k]) for k, c in enumerate(sorted(classes))}
    return DetectionMetrics(map=_mean(precision), map50=_mean(precision[0]), map75=_mean(precision[5]),
                            per_class={c: v for c, v in per_class.items() if not np.isnan(v)})


def _mean(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _checked(boxes: np.ndarray, labels: np.ndarray, what: str, image_id: int) -> tuple[np.ndarray, list[int]]:
    b = np.asarray(boxes, np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    labels_list = [int(v) for v in np.asarray(labels).reshape(-1)]
    if b.ndim != 2 or b.shape[1] != 4 or len(b) != len(labels_list):
        raise MetricInputError(f"image {image_id - 1}: {what} boxes {b.shape} must be [N, 4] xyxy "
                               f"with one label each ({len(labels_list)} labels)")
    return b, labels_list


def _flags(difficult: np.ndarray | None, n: int, image_id: int) -> np.ndarray:
    if difficult is None:
        return np.zeros(n, bool)
    flags = np.asarray(difficult, bool).reshape(-1)
    if len(flags) != n:
        raise MetricInputError(f"image {image_id - 1}: {len(flags)} difficult flags for {n} ground-truth boxes")
    return flags


def _ann(ann_id: int, image_id: int, box: np.ndarray, label: int, *, iscrowd: int = 0,
         score: float | None = None) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    ann = {"id": ann_id, "image_id": image_id, "category_id": label, "bbox": [x1, y1, w, h],
           "area": w * h, "iscrowd": iscrowd}
    if score is not None:
        ann["score"] = score
    return ann

"""Label-free metrics: how well a quantized model's predictions agree with the fp32 model's on the same images.

Users often calibrate and check with unlabelled photos. Without labels the accuracy budget
applies to agreement with fp32, per task (values in 0..1, 1 = identical):

- classify: ``top1_agreement``, the share of images whose top-1 class is fp32's;
- segment: ``miou_vs_fp32`` (the fp32 masks as ground truth) and ``pixel_agreement``;
- detect: ``box_f1``: fp32 detections scoring at least ``MATCH_SCORE`` are the truth; a
  quantized detection of the same class matches one at IoU >= ``MATCH_IOU`` (greedy, best
  score first); F1 of the matches, with precision and recall beside it.

Every function takes the runtime SDK's results (:mod:`edgekit.runtimes.results`), so the
search and the report score agreement on exactly what ``predict`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

MATCH_IOU = 0.5
MATCH_SCORE = 0.3

AgreementMetric = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def classify_agreement(predicted: Sequence[Any], reference: Sequence[Any]) -> dict[str, float]:
    """``top1_agreement``: the share of images whose best class equals the reference's."""
    same = [int(p.class_ids[0]) == int(r.class_ids[0]) for p, r in zip(predicted, reference)]
    return {"top1_agreement": float(np.mean(same)) if same else float("nan")}


def segment_agreement(predicted: Sequence[Any], reference: Sequence[Any]) -> dict[str, float]:
    """``miou_vs_fp32`` (reference masks as ground truth) and ``pixel_agreement``."""
    from edgekit.metrics import ConfusionMatrix

    if not reference:
        return {"miou_vs_fp32": float("nan"), "pixel_agreement": float("nan")}
    classes = max(int(r.num_classes) for r in reference)
    cm = ConfusionMatrix(classes, ignore_index=None)
    equal = total = 0
    for p, r in zip(predicted, reference):
        cm.update(p.mask, r.mask)
        equal += int((p.mask == r.mask).sum())
        total += int(r.mask.size)
    return {"miou_vs_fp32": float(cm.miou()), "pixel_agreement": equal / max(total, 1)}


def detect_agreement(predicted: Sequence[Any], reference: Sequence[Any]) -> dict[str, float]:
    """``box_f1`` of detections matched to fp32's (same class, IoU >= MATCH_IOU), with precision and recall."""
    matched = n_pred = n_ref = 0
    for p, r in zip(predicted, reference):
        pk, rk = p.scores >= MATCH_SCORE, r.scores >= MATCH_SCORE
        n_pred, n_ref = n_pred + int(pk.sum()), n_ref + int(rk.sum())
        matched += _matches(p.boxes[pk], p.scores[pk], p.class_ids[pk], r.boxes[rk], r.class_ids[rk])
    if n_pred == 0 and n_ref == 0:
        return {"box_f1": 1.0, "box_precision": 1.0, "box_recall": 1.0}
    precision, recall = matched / max(n_pred, 1), matched / max(n_ref, 1)
    f1 = 2 * matched / (n_pred + n_ref)
    return {"box_f1": f1, "box_precision": precision, "box_recall": recall}


def _matches(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, ref_boxes: np.ndarray,
             ref_classes: np.ndarray) -> int:
    """Greedy one-to-one matches, best score first (as COCO evaluation matches)."""
    taken = np.zeros(len(ref_boxes), bool)
    count = 0
    for i in np.argsort(-scores, kind="stable"):
        ious = np.where((ref_classes == classes[i]) & ~taken, _iou(boxes[i], ref_boxes), 0.0)
        if len(ious) and ious.max() >= MATCH_IOU:
            taken[int(ious.argmax())] = True
            count += 1
    return count


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


# Task -> (its agreement metrics, the key the budget applies to).
AGREEMENT: Mapping[str, tuple[AgreementMetric, str]] = {
    "classify": (classify_agreement, "top1_agreement"),
    "segment": (segment_agreement, "miou_vs_fp32"),
    "detect": (detect_agreement, "box_f1"),
}

# Task -> how the report names the label-free headline.
AGREEMENT_LABELS: Mapping[str, str] = {
    "classify": "top-1 agreement with fp32",
    "segment": "mIoU against the fp32 masks",
    "detect": "box F1 against the fp32 detections",
}


def agreement_headline(task: str) -> dict[str, str]:
    """The report's headline (``key``, ``label``) in label-free mode."""
    return {"key": AGREEMENT[task][1], "label": AGREEMENT_LABELS[task]}


def agreement_metrics(tasks: Mapping[str, Any], samples: Any, *, progress: bool = False) -> dict[str, dict[str, Any]]:
    """``{"fp32": ..., "int8": ...}`` agreement metrics of two loaded task pipelines on unlabelled images.

    fp32 agrees with itself (every metric 1.0); ``images`` counts the samples.
    """
    from edgekit.progress import track

    fp32, int8 = tasks["fp32"], tasks["int8"]
    reference, predicted = [], []
    for sample in track(samples, "evaluating fp32 vs int8 (label-free)", enabled=progress):
        reference.append(fp32.predict(sample.image))
        predicted.append(int8.predict(sample.image))
    metric = AGREEMENT[fp32.manifest.task][0]
    same = metric(reference, reference)
    count = {"images": len(reference)}
    return {"fp32": {**same, **count}, "int8": {**metric(predicted, reference), **count}}

# Task -> label-free metric keys and how tables and plots name them, headline first.
AGREEMENT_METRIC_LABELS: Mapping[str, dict[str, str]] = {
    "classify": {"top1_agreement": "top-1 agreement"},
    "segment": {"miou_vs_fp32": "mIoU vs fp32", "pixel_agreement": "pixel agreement"},
    "detect": {"box_f1": "box F1", "box_precision": "box precision", "box_recall": "box recall"},
}

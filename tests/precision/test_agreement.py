"""Label-free metrics: agreement of quantized predictions with fp32's, on the SDK's result objects."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.precision.agreement import AGREEMENT, classify_agreement, detect_agreement, segment_agreement
from edgekit.runtimes.results import ClassResult, Detections, SegmentationResult


def _cls(*ids: int) -> ClassResult:
    return ClassResult(class_ids=np.array(ids), scores=np.ones(len(ids), np.float32), labels=())


def _seg(mask: list[list[int]], classes: int = 3) -> SegmentationResult:
    m = np.array(mask, np.uint8)
    return SegmentationResult(mask=m, class_ids=np.unique(m).astype(np.int64), labels=(), num_classes=classes)


def _det(boxes: list[list[float]], scores: list[float], ids: list[int]) -> Detections:
    return Detections(boxes=np.array(boxes, np.float32).reshape(-1, 4), scores=np.array(scores, np.float32),
                      class_ids=np.array(ids, np.int64), labels=())


def test_top1_agreement_counts_only_the_best_class() -> None:
    assert classify_agreement([_cls(1, 2), _cls(0, 1), _cls(2)], [_cls(1, 0), _cls(1, 0), _cls(2)]) == {
        "top1_agreement": pytest.approx(2 / 3)}


def test_masks_against_fp32_masks() -> None:
    ref = [_seg([[0, 0, 1, 1], [0, 0, 1, 1]])]
    same = segment_agreement(ref, ref)
    assert same == {"miou_vs_fp32": 1.0, "pixel_agreement": 1.0}
    half = segment_agreement([_seg([[0, 0, 0, 0], [0, 0, 1, 1]])], ref)
    assert half["pixel_agreement"] == 0.75
    assert half["miou_vs_fp32"] == pytest.approx((4 / 6 + 2 / 4) / 2)  # class 2 absent from both: no IoU


def test_boxes_match_by_class_and_iou() -> None:
    ref = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 2])]
    assert detect_agreement(ref, ref) == {"box_f1": 1.0, "box_precision": 1.0, "box_recall": 1.0}
    moved = [_det([[1, 1, 11, 11], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 3, 1])]
    out = detect_agreement(moved, ref)  # one match (IoU 0.68), a wrong class, one extra box
    assert (out["box_precision"], out["box_recall"]) == (pytest.approx(1 / 3), 0.5)
    assert out["box_f1"] == pytest.approx(2 * 1 / 5)
    low = [_det([[0, 0, 10, 10]], [0.1], [1])]  # below MATCH_SCORE: not a detection either side
    assert detect_agreement(low, low)["box_f1"] == 1.0


def test_every_task_has_a_headline_among_its_metrics() -> None:
    for task, (metric, key) in AGREEMENT.items():
        assert callable(metric) and key

"""COCO mAP through pycocotools on cases whose AP can be worked out by hand.

COCO interpolates precision at 101 recall points 0, 0.01, ..., 1 (taking the best precision
at any recall >= r), then averages over classes with ground truth and IoU thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.data import DetectionSample
from edgekit.metrics import Detections, MetricInputError, coco_map

GT_BOXES = np.array([[10, 10, 60, 60], [100, 100, 180, 150]], np.float32)


class GT:
    def __init__(self, boxes: np.ndarray, labels: list[int], difficult: list[bool] | None = None) -> None:
        self.boxes, self.labels = np.asarray(boxes, np.float32), np.asarray(labels)
        if difficult is not None:
            self.difficult = np.asarray(difficult)


def det(boxes: np.ndarray, scores: list[float], labels: list[int]) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores), np.asarray(labels))


def test_perfect_is_one(capsys: pytest.CaptureFixture[str]) -> None:
    result = coco_map([det(GT_BOXES, [0.9, 0.8], [0, 1])], [GT(GT_BOXES, [0, 1])])
    assert result.map == pytest.approx(1.0) and result.map50 == pytest.approx(1.0)
    assert result.per_class == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are swallowed


def test_one_missed_box_of_two() -> None:
    # One class, two gt, one correct detection: precision 1 up to recall 0.5, nothing beyond.
    # 51 of the 101 recall points (0.00..0.50) have precision 1 -> AP = 51/101 at every IoU.
    result = coco_map([det(GT_BOXES[:1], [0.9], [0])], [GT(GT_BOXES, [0, 0])])
    assert result.map50 == pytest.approx(51 / 101) and result.map == pytest.approx(51 / 101)


def test_false_positive_with_lower_score_costs_nothing() -> None:
    fp = [300, 300, 340, 340]
    result = coco_map([det([*GT_BOXES, fp], [0.9, 0.8, 0.1], [0, 0, 0])], [GT(GT_BOXES, [0, 0])])
    assert result.map50 == pytest.approx(1.0)


def test_false_positive_with_higher_score() -> None:
    # Ranked FP, TP, TP: precision 1/2 at recall 0.5 and 2/3 at recall 1; interpolated 2/3 everywhere.
    fp = [300, 300, 340, 340]
    result = coco_map([det([fp, *GT_BOXES], [0.95, 0.9, 0.8], [0, 0, 0])], [GT(GT_BOXES, [0, 0])])
    assert result.map50 == pytest.approx(2 / 3)


def test_iou_082_box_counts_at_seven_of_ten_thresholds() -> None:
    # IoU of [0,0,100,82] with [0,0,100,100] is 0.82: a hit at 0.50..0.80, a miss at 0.85..0.95.
    result = coco_map([det([[0, 0, 100, 82]], [0.9], [0])], [GT([[0, 0, 100, 100]], [0])])
    assert result.map50 == pytest.approx(1.0) and result.map75 == pytest.approx(1.0)
    assert result.map == pytest.approx(0.7)


def test_class_with_gt_and_no_prediction_scores_zero_and_classes_average() -> None:
    result = coco_map([det(GT_BOXES[:1], [0.9], [0])], [GT(GT_BOXES, [0, 1])])
    assert result.per_class == {0: pytest.approx(1.0), 1: 0.0}
    assert result.map == pytest.approx(0.5)


def test_difficult_gt_is_neither_hit_nor_miss() -> None:
    gts = [GT(GT_BOXES, [0, 0], difficult=[False, True])]
    only_easy = coco_map([det(GT_BOXES[:1], [0.9], [0])], gts)
    both = coco_map([det(GT_BOXES, [0.9, 0.8], [0, 0])], gts)
    assert only_easy.map50 == pytest.approx(1.0) and both.map50 == pytest.approx(1.0)


def test_across_images_and_with_loader_samples() -> None:
    sample = DetectionSample(image=None, boxes=GT_BOXES, labels=np.array([0, 0]), path=None)
    empty = DetectionSample(image=None, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, int), path=None)
    result = coco_map([det(GT_BOXES[:1], [0.9], [0]), det([[0, 0, 5, 5]], [0.1], [0]), det([], [], [])],
                      [sample, empty, sample])
    # 4 gt, one found with the top score, then a low FP: precision 1 up to recall 0.25 -> 26/101
    assert result.map50 == pytest.approx(26 / 101)
    assert result.to_dict()["per_class"] == {"0": pytest.approx(26 / 101)}


def test_no_ground_truth_is_nan_and_bad_input_is_refused() -> None:
    assert np.isnan(coco_map([det([], [], [])], [GT(np.zeros((0, 4)), [])]).map)
    with pytest.raises(MetricInputError, match="one per image"):
        coco_map([], [GT(GT_BOXES, [0, 0])])
    with pytest.raises(MetricInputError, match="scores"):
        coco_map([Detections(GT_BOXES, np.array([0.5]), np.array([0, 0]))], [GT(GT_BOXES, [0, 0])])

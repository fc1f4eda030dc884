"""Confusion-matrix mIoU: hand-computed IoUs, ignore label, absent classes left out."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.metrics import ConfusionMatrix, MetricInputError


def _square(shift: int = 0) -> np.ndarray:
    mask = np.zeros((20, 20), np.uint8)
    mask[0:10, shift:10 + shift] = 1
    return mask


def test_perfect() -> None:
    cm = ConfusionMatrix(3)
    cm.update(_square(), _square())
    assert cm.miou() == 1.0 and cm.pixel_accuracy() == 1.0
    assert np.isnan(cm.iou()[2])  # class 2 never appears: no IoU, not in the mean


def test_shifted_square_by_hand() -> None:
    # gt square 10x10 at columns 0..9, prediction shifted right by 2: overlap 8x10 = 80,
    # union 120 -> IoU 2/3. Background: 300 gt, 300 predicted, 400 - 120 = 280 shared -> 280/320.
    cm = ConfusionMatrix(2)
    cm.update(_square(shift=2), _square())
    np.testing.assert_allclose(cm.iou(), [280 / 320, 80 / 120])
    assert cm.miou() == pytest.approx((280 / 320 + 80 / 120) / 2)
    assert cm.pixel_accuracy() == pytest.approx((80 + 280) / 400)


def test_ignore_label_is_not_scored() -> None:
    gt = _square()
    gt[:, 15:] = 255  # whatever is predicted there does not count
    pred = _square()
    pred[:, 15:] = 1
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    assert cm.miou() == 1.0 and cm.matrix.sum() == 400 - 100


def test_class_only_predicted_scores_zero_and_counts() -> None:
    cm = ConfusionMatrix(3)
    pred = _square()
    pred[19, 19] = 2  # a stray class-2 pixel where gt is background
    cm.update(pred, _square())
    iou = cm.iou()
    assert iou[2] == 0.0 and iou[1] == 1.0 and iou[0] == pytest.approx(299 / 300)
    assert cm.miou() == pytest.approx((299 / 300 + 1.0 + 0.0) / 3)


def test_accumulates_and_resets() -> None:
    one, two = ConfusionMatrix(2), ConfusionMatrix(2)
    one.update(_square(2), _square())
    one.update(_square(), _square())
    two.update(np.stack([_square(2), _square()]), np.stack([_square(), _square()]))
    np.testing.assert_array_equal(one.matrix, two.matrix)
    one.reset()
    assert np.isnan(one.miou())


def test_bad_input() -> None:
    cm = ConfusionMatrix(2)
    with pytest.raises(MetricInputError, match="same shape"):
        cm.update(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(MetricInputError, match="ground truth has class ids"):
        cm.update(np.zeros((2, 2), int), np.full((2, 2), 3))

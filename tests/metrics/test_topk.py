"""Top-k accuracy on hand-checkable scores."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.metrics import MetricInputError, TopKAccuracy, topk_accuracy

SCORES = np.array([
    [0.1, 0.7, 0.2, 0.0, 0.0, 0.0],  # label 1: top-1
    [0.5, 0.1, 0.4, 0.0, 0.0, 0.0],  # label 2: second
    [0.3, 0.2, 0.1, 0.0, 0.0, 0.4],  # label 3: 5th (tie with 4 goes to the lower index)
    [0.0, 0.0, 0.0, 0.0, 0.9, 0.1],  # label 4: top-1
])
LABELS = np.array([1, 2, 3, 4])


def test_perfect() -> None:
    assert topk_accuracy(np.eye(5) * 3, np.arange(5), k=(1, 5)) == {1: 1.0, 5: 1.0}


def test_hand_counted() -> None:
    # row 3: order 5 (0.4), 0 (0.3), 1, 2, then 3 and 4 tied at 0 -> 3 is 5th (lower index first)
    assert topk_accuracy(SCORES, LABELS, k=(1, 2, 5)) == {1: 0.5, 2: 0.75, 5: 1.0}


def test_constant_output_is_not_always_right() -> None:
    assert topk_accuracy(np.zeros((4, 10)), np.array([0, 3, 5, 9]), k=(1,)) == {1: 0.25}


def test_k_above_class_count_is_clipped() -> None:
    assert topk_accuracy(np.array([[0.0, 1.0, 2.0]]), np.array([0]), k=(1, 5)) == {1: 0.0, 5: 1.0}


def test_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(50, 10)), rng.integers(0, 10, 50)
    acc = TopKAccuracy(k=(1, 5))
    for i in range(0, 50, 7):
        acc.update(scores[i:i + 7], labels[i:i + 7])
    assert acc.compute() == topk_accuracy(scores, labels)
    assert np.isnan(TopKAccuracy().compute()[1])


def test_bad_input() -> None:
    with pytest.raises(MetricInputError, match=r"\[N, C\]"):
        topk_accuracy(np.zeros((3, 4)), np.zeros(2, int))
    with pytest.raises(MetricInputError, match="0..3"):
        topk_accuracy(np.zeros((1, 4)), np.array([4]))

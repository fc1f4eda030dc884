"""Pascal VOC: splits from ImageSets, 1-based boxes to 0-based xyxy, difficult kept, classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgekit.data import VOC_CLASSES, DatasetError, VocDetection


def test_split_boxes_and_difficult(voc_dir: Path) -> None:
    ds = VocDetection(voc_dir, split="val")
    assert len(ds) == 1 and ds.class_names == list(VOC_CLASSES)
    (sample,) = list(ds)
    assert sample.path.name == "000007.jpg" and sample.image.size == (100, 80)
    np.testing.assert_allclose(sample.boxes, [[40, 4, 90, 70], [10, 20, 40, 60]])
    assert sample.labels.tolist() == [VOC_CLASSES.index("car"), VOC_CLASSES.index("dog")]
    assert sample.difficult.tolist() == [False, True]


def test_all_annotations_without_split(voc_dir: Path) -> None:
    ds = VocDetection(voc_dir)
    first = next(iter(ds))
    assert len(ds) == 2 and first.path.name == "000005.jpg"
    np.testing.assert_allclose(first.boxes[1], [0, 0, 100, 80])  # xmin=1..xmax=W spans the image


def test_classes_derived_from_data(tmp_path: Path, make_voc: Callable) -> None:
    root = make_voc(tmp_path / "custom", {"a": [("widget", 0, 1, 1, 9, 9)], "b": [("gadget", 0, 2, 2, 5, 5)]})
    ds = VocDetection(root)
    assert ds.class_names == ["gadget", "widget"]
    assert [s.labels.tolist() for s in ds] == [[1], [0]]
    with pytest.raises(DatasetError, match="'widget' is not one of the classes"):
        list(VocDetection(root, classes=["gadget"]))


def test_unknown_split_lists_the_real_ones(voc_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"\['train', 'val'\]"):
        VocDetection(voc_dir, split="test")


def test_bad_xml(voc_dir: Path) -> None:
    (voc_dir / "Annotations" / "000007.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="not valid XML"):
        list(VocDetection(voc_dir, split="val", classes=VOC_CLASSES))

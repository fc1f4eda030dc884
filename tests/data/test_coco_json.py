"""COCO JSON: xywh -> xyxy, sparse category ids -> 0..C-1, crowd kept, image folder found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.data import CocoDetection, DatasetError


def test_boxes_labels_and_category_mapping(coco_dir: Path) -> None:
    ds = CocoDetection(coco_dir / "annotations" / "instances_val.json")
    assert ds.images == coco_dir / "val"
    assert ds.class_names == ["car", "zebra"] and ds.category_ids == [3, 7]
    first, second, third = list(ds)  # sorted by image id
    assert (first.image_id, second.image_id, third.image_id) == (1, 2, 3)
    np.testing.assert_allclose(first.boxes, [[10, 20, 40, 60], [0, 0, 5.5, 6.5]])
    assert first.labels.tolist() == [1, 0] and first.difficult.tolist() == [False, True]
    assert first.boxes.dtype == np.float32 and first.labels.dtype == np.int64
    np.testing.assert_allclose(second.boxes, [[50, 10, 70, 20]])  # the zero-width box is dropped
    assert third.boxes.shape == (0, 4) and third.labels.shape == (0,)  # a negative image is kept
    assert first.image.size == (100, 80)


def test_explicit_image_folder_and_flat_layout(tmp_path: Path, coco_dir: Path) -> None:
    ann = coco_dir / "annotations" / "instances_val.json"
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    for p in (coco_dir / "val").iterdir():
        (flat / "images" / p.name).write_bytes(p.read_bytes())
    (flat / "instances_x.json").write_text(ann.read_text())
    assert CocoDetection(flat / "instances_x.json").images == flat / "images"
    assert CocoDetection(ann, coco_dir / "val", limit=1).__len__() == 1


def test_errors(coco_dir: Path, tmp_path: Path) -> None:
    ann = coco_dir / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category_id 99"):
        CocoDetection(bad, coco_dir / "val")
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="annotations"):
        CocoDetection(bad)
    bad.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoDetection(bad)
    with pytest.raises(DatasetError, match="cannot find the images"):
        CocoDetection(_moved(ann, tmp_path))


def _moved(ann: Path, tmp_path: Path) -> Path:
    moved = tmp_path / "lonely" / "instances_val.json"
    moved.parent.mkdir()
    moved.write_text(ann.read_text())
    return moved


def test_malformed_entries(coco_dir: Path, tmp_path: Path) -> None:
    data = json.loads((coco_dir / "annotations" / "instances_val.json").read_text())
    del data["annotations"][0]["bbox"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="malformed"):
        CocoDetection(bad, coco_dir / "val")

"""open_dataset recognises each layout and says what it knows when nothing matches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from edgekit.data import (
    LAYOUTS,
    ClassFolders,
    CocoDetection,
    DatasetError,
    MaskFolders,
    VocDetection,
    open_dataset,
)


def test_detects_each_layout(class_dir: Path, coco_dir: Path, voc_dir: Path, mask_dir: Path) -> None:
    assert isinstance(open_dataset(class_dir), ClassFolders)
    assert isinstance(open_dataset(coco_dir), CocoDetection)
    assert isinstance(open_dataset(coco_dir / "annotations" / "instances_val.json"), CocoDetection)
    voc = open_dataset(voc_dir, split="val", limit=1)
    assert isinstance(voc, VocDetection) and len(voc) == 1
    assert isinstance(open_dataset(mask_dir), MaskFolders)


def test_split_folders_need_a_split(tmp_path: Path, class_dir: Path) -> None:
    class_dir.rename(tmp_path / "val")
    with pytest.raises(DatasetError, match="split folders"):
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, split="val").class_names == ["cat", "dog"]


def test_several_coco_files_need_a_split(coco_dir: Path, make_coco: Callable) -> None:
    make_coco(coco_dir, "train")
    with pytest.raises(DatasetError, match="choose one with split"):
        open_dataset(coco_dir)
    assert open_dataset(coco_dir, split="train").annotations.name == "instances_train.json"
    with pytest.raises(DatasetError, match="no instances_test.json"):
        open_dataset(coco_dir, split="test")


def test_empty_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("no pictures")  # files, but no images and no annotations
    with pytest.raises(DatasetError, match="matches no dataset layout") as err:
        open_dataset(tmp_path)
    for layout in LAYOUTS:
        assert layout.name in str(err.value)


def test_loose_images_open_unlabelled(tmp_path: Path) -> None:
    # A folder of photos without labels: calibration data, and label-free evaluation.
    for name in ("b.jpg", "a.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    dataset = open_dataset(tmp_path)
    assert dataset.task == "" and len(dataset) == 2
    assert [s.path.name for s in dataset] == ["a.png", "b.jpg"]
    assert not hasattr(dataset[0], "label")

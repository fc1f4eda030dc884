"""Segmentation folders: palette and grey masks, ignore label, pairing, Cityscapes ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import CITYSCAPES_CLASSES, DatasetError, MaskFolders, open_dataset, read_mask


def test_palette_and_grey_masks(mask_dir: Path) -> None:
    ds = MaskFolders(mask_dir)
    assert ds.class_names == ["background", "red", "green"] and ds.task == "segment"
    a, b = list(ds)
    assert a.path.name == "a.jpg" and a.mask.shape == (30, 40) and a.mask.dtype == np.uint8
    assert a.mask[10, 15] == 2 and a.mask[20, 5] == 0 and (a.mask[0] == 255).all()  # palette indices, not colours
    assert (b.mask == 1).all()


def test_palette_mask_reads_indices(tmp_path: Path) -> None:
    p = Image.new("P", (3, 3), 2)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    p.save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[2] * 3] * 3


def test_bad_masks(mask_dir: Path) -> None:
    Image.new("RGB", (40, 30), (255, 0, 0)).save(mask_dir / "masks" / "b.png")
    with pytest.raises(DatasetError, match="one channel"):
        list(MaskFolders(mask_dir))
    Image.new("L", (20, 30), 1).save(mask_dir / "masks" / "b.png")
    with pytest.raises(DatasetError, match="20x30 but its image is 40x30"):
        list(MaskFolders(mask_dir))
    Image.new("L", (40, 30), 7).save(mask_dir / "masks" / "b.png")
    with pytest.raises(DatasetError, match=r"values \[7\]"):
        list(MaskFolders(mask_dir))
    assert (next(iter(MaskFolders(mask_dir, classes=[str(i) for i in range(8)]).take(None))).mask[10, 15] == 2)


def test_unpaired_image(mask_dir: Path) -> None:
    Image.new("RGB", (4, 4)).save(mask_dir / "images" / "lonely.jpg")
    with pytest.raises(DatasetError, match="1 image.*lonely.jpg"):
        MaskFolders(mask_dir)


def test_cityscapes_layout_maps_label_ids(tmp_path: Path) -> None:
    root = tmp_path / "cityscapes"
    img = root / "leftImg8bit" / "val" / "ulm" / "ulm_000000_000019_leftImg8bit.png"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (8, 4)).save(img)
    raw = np.array([[7, 8, 26, 33, 0, 1, 3, 255]] * 4, np.uint8)  # road, sidewalk, car, bicycle, then void
    mask = root / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    mask.parent.mkdir(parents=True)
    Image.fromarray(raw).save(mask)
    ds = open_dataset(root, split="val")
    assert ds.class_names == list(CITYSCAPES_CLASSES) and ds.num_classes == 19
    assert next(iter(ds)).mask[0].tolist() == [0, 1, 13, 18, 255, 255, 255, 255]

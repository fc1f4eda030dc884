"""Small datasets written in each real on-disk format, for the loader tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def solid(path: Path, size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (10, 200, 30)) -> Path:
    """Write a ``size`` = (width, height) image of one colour (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def class_dir(tmp_path: Path) -> Path:
    """``cat/`` with 2 images (one in a sub-folder), ``dog/`` with 3, plus files to skip."""
    root = tmp_path / "cls"
    solid(root / "dog" / "a.jpg")
    solid(root / "dog" / "b.PNG")
    solid(root / "dog" / "c.webp")
    solid(root / "cat" / "x.jpeg")
    solid(root / "cat" / "nested" / "y.bmp")
    (root / "cat" / "notes.txt").write_text("not an image")
    solid(root / "cat" / ".hidden.jpg")
    return root


def write_coco(root: Path, split: str = "val") -> Path:
    """COCO layout: ``annotations/instances_<split>.json`` + ``<split>/``; sparse category ids 7 and 3."""
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        solid(root / split / name, (100, 80))
    data = {
        "images": [{"id": 2, "file_name": "2.jpg", "width": 100, "height": 80},
                   {"id": 1, "file_name": "1.jpg", "width": 100, "height": 80},
                   {"id": 3, "file_name": "3.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 7, "name": "zebra"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5.5, 6.5], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [50, 10, 20, 10]},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10]},  # degenerate: dropped
        ],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


VOC_XML = """<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>
<size><width>100</width><height>80</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{cls}</name><pose>Left</pose><truncated>0</truncated>
<difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def write_voc(root: Path, objects: dict[str, list[tuple[str, int, int, int, int, int]]]) -> Path:
    """VOC layout: Annotations/, JPEGImages/, ImageSets/Main/{train,val}.txt (val = the last id)."""
    for name, objs in objects.items():
        solid(root / "JPEGImages" / f"{name}.jpg", (100, 80))
        body = "".join(VOC_OBJECT.format(cls=c, difficult=d, x1=x1, y1=y1, x2=x2, y2=y2)
                       for c, d, x1, y1, x2, y2 in objs)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, objects=body))
    names = sorted(objects)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text(names[-1] + "\n")
    (root / "ImageSets" / "Main" / "dog_val.txt").write_text(names[-1] + " 1\n")  # per-class list: not a split
    return root


@pytest.fixture
def make_voc() -> object:
    """The VOC writer, for tests that need their own objects."""
    return write_voc


@pytest.fixture
def make_coco() -> object:
    """The COCO writer, for tests that need another split."""
    return write_coco


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "VOC2007", {
        "000005": [("chair", 0, 11, 21, 50, 60), ("chair", 1, 1, 1, 100, 80)],
        "000007": [("car", 0, 41, 5, 90, 70), ("dog", 1, 11, 21, 40, 60)],
    })


PALETTE = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 252 + [255, 255, 255]


def write_mask(path: Path, mask: np.ndarray, *, palette: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8))
    if palette:
        image.putpalette(PALETTE)
    image.save(path)
    return path


@pytest.fixture
def mask_dir(tmp_path: Path) -> Path:
    """images/ + masks/ (one palette PNG, one L PNG) + classes.txt with 3 classes."""
    root = tmp_path / "seg"
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:20] = 2
    mask[0, :] = 255
    solid(root / "images" / "a.jpg")
    write_mask(root / "masks" / "a.png", mask)
    solid(root / "images" / "b.png")
    write_mask(root / "masks" / "b.png", np.ones((30, 40), np.uint8), palette=False)
    (root / "classes.txt").write_text("background\nred\ngreen\n")
    return root

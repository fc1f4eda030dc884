"""Synthetic shapes: deterministic bytes, real formats the loaders read, exact ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.data import SHAPES, DatasetError, open_dataset, synth_main, synthesize
from edgekit.data.synth import classification_scene, detection_scene, scene_rng


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task, imgsz", [("cls", 64), ("det", 96), ("seg", 64)])
def test_same_seed_same_bytes(tmp_path: Path, task: str, imgsz: int) -> None:
    a = _files(synthesize(task, 6, 11, tmp_path / "a", imgsz=imgsz))
    b = _files(synthesize(task, 6, 11, tmp_path / "b", imgsz=imgsz))
    c = _files(synthesize(task, 6, 12, tmp_path / "c", imgsz=imgsz))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_image_i_does_not_depend_on_n(tmp_path: Path) -> None:
    few = _files(synthesize("seg", 2, 5, tmp_path / "few", imgsz=64))
    more = _files(synthesize("seg", 4, 5, tmp_path / "more", imgsz=64))
    assert few["masks/000001.png"] == more["masks/000001.png"]


def test_loaders_read_every_task(tmp_path: Path) -> None:
    cls = open_dataset(synth_main("cls", 12, 1, tmp_path / "cls", 64))
    assert cls.class_names == list(SHAPES) and len(cls) == 12
    assert sorted(s.label for s in cls) == sorted(list(range(6)) * 2)
    det = open_dataset(synthesize("det", 5, 1, tmp_path / "det", imgsz=96))
    samples = list(det)
    assert det.class_names == list(SHAPES) and len(samples) == 5
    assert all(1 <= len(s.boxes) <= 6 and s.image.size == (96, 96) for s in samples)
    assert all(((s.boxes[:, 2:] > s.boxes[:, :2]).all() and (s.boxes >= 0).all() and (s.boxes <= 96).all())
               for s in samples)
    seg = open_dataset(synthesize("seg", 3, 1, tmp_path / "seg", imgsz=64))
    assert seg.class_names == ["background", *SHAPES]
    assert all(s.mask.shape == (64, 64) and s.mask.max() <= 6 and s.mask.max() > 0 for s in seg)


@pytest.mark.parametrize("index", range(6))
def test_boxes_are_tight_around_visible_pixels(index: int) -> None:
    scene = detection_scene(scene_rng(3, index), 128)
    assert len(scene.shapes) == len(scene.boxes) >= 1
    covered = np.zeros(scene.labels.shape, bool)
    for spec, (x1, y1, x2, y2) in zip(scene.shapes, scene.boxes.astype(int)):
        own = scene.labels[y1:y2, x1:x2] == spec.label + 1
        # the class's pixels touch all four sides of its box
        assert own[0].any() and own[-1].any() and own[:, 0].any() and own[:, -1].any()
        covered[y1:y2, x1:x2] = True
    assert not (scene.labels[~covered] > 0).any()  # every shape pixel lies in some box


@pytest.mark.parametrize("index", range(12))
def test_classification_shape_dominates(index: int) -> None:
    label = index % len(SHAPES)
    scene = classification_scene(scene_rng(4, index), label, 96)
    counts = np.bincount(scene.labels.ravel(), minlength=len(SHAPES) + 1)[1:]
    assert counts.argmax() == label


def test_occluded_shapes_stay_mostly_visible() -> None:
    for index in range(20):
        scene = detection_scene(scene_rng(8, index), 128)
        for spec, area in zip(scene.shapes, scene.areas):
            full = _polygon_area(spec)
            assert area >= 0.45 * full, (index, spec, area, full)


def _polygon_area(spec: object) -> float:
    x, y = np.asarray(spec.polygon(1.0)).T
    # area inside the image only matters little: shapes are placed fully inside
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def test_refuses_to_clobber_and_writes_atomically(tmp_path: Path) -> None:
    out = synthesize("cls", 6, 0, tmp_path / "out", imgsz=32)
    with pytest.raises(DatasetError, match="already exists"):
        synthesize("cls", 6, 0, out, imgsz=32)
    synthesize("cls", 7, 1, out, imgsz=32, overwrite=True)
    assert len(list(out.rglob("*.jpg"))) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown synthetic task 'detect'"):
        synthesize("detect", 1, 0, tmp_path / "x")
    with pytest.raises(DatasetError, match="n=0"):
        synthesize("det", 0, 0, tmp_path / "x")
    assert not (tmp_path / "x").exists()

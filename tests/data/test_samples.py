"""The shipped samples load, are small, and are exactly what the generator writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.data import SHAPES, open_dataset
from edgekit.data.synth import write_samples

SAMPLES = Path(__file__).resolve().parents[2] / "edgekit" / "data" / "samples"


def test_shipped_sets_load() -> None:
    cls = open_dataset(SAMPLES / "cls-val")
    assert len(cls) == 60 and cls.class_names == list(SHAPES)
    det = open_dataset(SAMPLES / "det-val")
    assert len(det) == 60 and sum(len(s.boxes) for s in det) >= 120
    seg = open_dataset(SAMPLES / "seg-val")
    assert len(seg) == 60 and seg.num_classes == 7
    assert (SAMPLES / "sample.jpg").stat().st_size > 0


def test_shipped_samples_are_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 5 * 2**20, f"{total / 2**20:.2f} MiB"


def test_generator_reproduces_the_shipped_samples(tmp_path: Path) -> None:
    # Text files must match byte for byte. Pixels are compared with a tolerance: on the pinned
    # Pillow/numpy on x86-64 they match exactly too, but another libjpeg or libm may move a
    # value by one.
    write_samples(tmp_path)
    shipped = sorted(p.relative_to(SAMPLES) for p in SAMPLES.rglob("*") if p.is_file() and p.suffix != ".md")
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in shipped:
        old, new = SAMPLES / rel, tmp_path / rel
        if rel.suffix in (".json", ".txt") and rel.name != "instances_default.json":
            assert old.read_bytes() == new.read_bytes(), rel
        elif rel.suffix == ".json":
            a, b = json.loads(old.read_text()), json.loads(new.read_text())
            assert a["images"] == b["images"] and a["categories"] == b["categories"]
            assert [x["category_id"] for x in a["annotations"]] == [x["category_id"] for x in b["annotations"]]
            np.testing.assert_allclose([x["bbox"] for x in a["annotations"]],
                                       [x["bbox"] for x in b["annotations"]], atol=1)
        elif rel.suffix == ".png":
            assert (np.asarray(Image.open(old)) == np.asarray(Image.open(new))).mean() > 0.999, rel
        else:
            diff = np.abs(np.asarray(Image.open(old), np.int16) - np.asarray(Image.open(new), np.int16))
            assert diff.mean() < 1.0, rel

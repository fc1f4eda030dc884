"""ImageNet-style class folders: sorted class indices, recursive search, limit and shuffle."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.data import ClassFolders, DatasetError


def test_reads_classes_in_sorted_order(class_dir: Path) -> None:
    ds = ClassFolders(class_dir)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.task == "classify"
    samples = list(ds)
    assert len(ds) == len(samples) == 5  # .txt and the hidden file skipped, nested/ searched
    assert [(s.path.name, s.label) for s in samples] == [
        ("y.bmp", 0), ("x.jpeg", 0), ("a.jpg", 1), ("b.PNG", 1), ("c.webp", 1)]
    assert all(s.image.mode == "RGB" and s.image.size == (40, 30) for s in samples)


def test_limit_and_deterministic_shuffle(class_dir: Path) -> None:
    ds = ClassFolders(class_dir)
    names = [s.path.name for s in ds]
    a = [s.path.name for s in ds.shuffle(3)]
    assert a == [s.path.name for s in ds.shuffle(3)] and sorted(a) == sorted(names) and a != names
    limited = ClassFolders(class_dir, limit=2)
    assert len(limited) == 2 and [s.path.name for s in limited] == names[:2]
    assert [s.path.name for s in ds.shuffle(3).take(2)] == a[:2]
    assert [s.path.name for s in ds] == names  # shuffle returned a copy


def test_iteration_is_lazy(class_dir: Path) -> None:
    (class_dir / "dog" / "c.webp").write_bytes(b"corrupt")
    it = iter(ClassFolders(class_dir))
    assert next(it).path.name == "y.bmp"  # the bad file is only decoded when reached
    with pytest.raises(DatasetError, match="c.webp"):
        list(it)


def test_explicit_classes(class_dir: Path) -> None:
    ds = ClassFolders(class_dir, classes=["ant", "cat", "dog"])
    assert {s.label for s in ds} == {1, 2}
    with pytest.raises(DatasetError, match=r"\['dog'\]"):
        ClassFolders(class_dir, classes=["cat"])


def test_no_images_and_bad_limit(tmp_path: Path, class_dir: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        ClassFolders(tmp_path / "empty")
    with pytest.raises(DatasetError, match="limit"):
        ClassFolders(class_dir, limit=0)

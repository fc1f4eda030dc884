"""``open_dataset(path)``: recognise a dataset's format from its folder layout.

Each known layout is one entry of :data:`LAYOUTS` (a probe and a builder); the first whose
probe matches builds the dataset. Adding a format is adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.data.base import ImageDataset
from edgekit.data.class_folders import ClassFolders
from edgekit.data.coco import CocoDetection
from edgekit.data.errors import DatasetError
from edgekit.data.image_folder import ImageFolder
from edgekit.data.image_io import is_image_file, list_images
from edgekit.data.mask_folders import MaskFolders, cityscapes
from edgekit.data.voc import VocDetection


@dataclass(frozen=True)
class Layout:
    """A dataset format recognisable from its files.

    Args:
        name: short name shown in errors.
        description: the files that make it up.
        probe: True when a path has this layout.
        build: ``(path, split, limit) -> dataset``.
    """

    name: str
    description: str
    probe: Callable[[Path], bool]
    build: Callable[[Path, str | None, int | None], ImageDataset]


def _coco_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".json" else []
    return sorted([*path.glob("instances_*.json"), *path.glob("annotations/instances_*.json")])


def _build_coco(path: Path, split: str | None, limit: int | None) -> ImageDataset:
    files = found = _coco_files(path)
    if split is not None and path.is_dir():
        files = [f for f in found if f.stem == f"instances_{split}"]
        if not files:
            raise DatasetError(f"no instances_{split}.json in '{path}'; found {[f.name for f in found]}")
    if len(files) > 1:
        raise DatasetError(f"'{path}' holds COCO annotation files {[f.name for f in files]}; "
                           f"choose one with split=<name>")
    return CocoDetection(files[0], limit=limit)


def _build_class_folders(path: Path, split: str | None, limit: int | None) -> ImageDataset:
    subs = {p.name for p in path.iterdir() if p.is_dir()}
    if split is None and subs and subs <= _SPLIT_NAMES:
        # train/ val/ holding class folders would otherwise become two "classes"
        raise DatasetError(f"'{path}' holds split folders {sorted(subs)}, not class folders; "
                           f"pass split=<one of them>")
    return ClassFolders(path / split if split else path, limit=limit)


_SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


def _has_image_subfolders(path: Path) -> bool:
    return any(sub.is_dir() and any(is_image_file(f) for f in sub.rglob("*"))
               for sub in path.iterdir() if not sub.name.startswith("."))


LAYOUTS: tuple[Layout, ...] = (
    Layout("coco", "annotations/instances_<split>.json (or a .json file) + <split>/ or images/",
           lambda p: bool(_coco_files(p)), _build_coco),
    Layout("voc", "Annotations/*.xml + JPEGImages/ (+ ImageSets/Main/<split>.txt)",
           lambda p: (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir(),
           lambda p, split, limit: VocDetection(p, split=split, limit=limit)),
    Layout("cityscapes", "leftImg8bit/<split>/<city>/ + gtFine/<split>/<city>/",
           lambda p: (p / "leftImg8bit").is_dir() and (p / "gtFine").is_dir(),
           lambda p, split, limit: cityscapes(p, split=split or "val", limit=limit)),
    Layout("masks", "images/ + masks/ (class-id PNGs, same stem) (+ classes.txt)",
           lambda p: (p / "images").is_dir() and (p / "masks").is_dir(),
           lambda p, split, limit: MaskFolders(p, limit=limit)),
    Layout("class-folders", "<class name>/<images> (ImageNet style)", _has_image_subfolders,
           _build_class_folders),
    # Last: a folder of photos with no annotations at all (no labels: label-free evaluation).
    Layout("images", "<images> directly in the folder, no labels (calibration; label-free evaluation)",
           lambda p: p.is_dir() and bool(list_images(p, recursive=False)),
           lambda p, split, limit: ImageFolder(p, limit=limit)),
)


def open_dataset(path: str | Path, *, split: str | None = None, limit: int | None = None) -> ImageDataset:
    """Open the dataset at ``path``, recognising its format from the layout.

    Args:
        path: dataset folder (or a COCO ``.json`` file).
        split: which split where a layout has several (COCO ``instances_<split>.json``, VOC
            ``ImageSets/Main/<split>.txt``, Cityscapes ``<split>`` folders, a class-folder
            sub-folder).
        limit: iterate over at most this many samples.

    Raises:
        DatasetError: the path does not exist, is empty, or matches no known layout (the
            message lists them).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path '{path}' does not exist")
    if path.is_file() and path.suffix.lower() != ".json":
        raise DatasetError(f"dataset path '{path}' is a file, not a folder; give the folder that holds the images "
                           "(or a COCO .json annotation file)")
    try:
        if path.is_dir() and not any(path.iterdir()):
            raise DatasetError(f"dataset folder '{path}' is empty")
        for layout in LAYOUTS:
            if layout.probe(path):
                return layout.build(path, split, limit)
    except PermissionError as exc:
        raise DatasetError(f"cannot read dataset folder '{path}' ({exc.strerror}: '{exc.filename}'); check its "
                           "permissions") from exc
    known = "\n".join(f"  {layout.name}: {layout.description}" for layout in LAYOUTS)
    raise DatasetError(f"'{path}' matches no dataset layout edgekit knows:\n{known}")

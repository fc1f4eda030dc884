"""Segmentation as image/mask folders: ``images/<name>.jpg`` with ``masks/<name>.png``.

Masks are single-channel PNGs of class ids (palette ``P`` or grey ``L``; 16-bit allowed),
0..C-1, with ``ignore_index`` (255) for unlabelled pixels. A mask pairs with the image of
the same relative path and stem, or with Cityscapes names: ``<stem>_labelIds``,
``<city>_..._gtFine_labelTrainIds`` or ``_gtFine_labelIds`` for ``<city>_..._leftImg8bit``.
Cityscapes ``labelIds`` are raw ids (0..33), not classes: :data:`CITYSCAPES_LABEL_MAP`
turns them into the 19 training classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.data.base import ImageDataset, SegmentationSample
from edgekit.data.errors import DatasetError
from edgekit.data.image_io import list_images, load_image

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
# labelId -> trainId from cityscapesScripts' labels.py; ids not listed are ignored.
CITYSCAPES_LABEL_MAP = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


class MaskFolders(ImageDataset[tuple[Path, Path], SegmentationSample]):
    """Images and same-named class-id mask PNGs.

    Args:
        root: dataset folder.
        images: image folder relative to ``root`` (searched recursively).
        masks: mask folder relative to ``root``, mirroring the image folder's sub-folders.
        classes: class names in index order; default: ``root/classes.txt`` (one per line)
            if present, else unnamed (``num_classes`` 0, values unchecked).
        ignore_index: mask value that marks unlabelled pixels.
        label_map: raw mask value -> class id (e.g. :data:`CITYSCAPES_LABEL_MAP`); values
            not in it become ``ignore_index``.
        limit: iterate over at most this many images.
    """

    task = "segment"

    def __init__(self, root: str | Path, *, images: str = "images", masks: str = "masks",
                 classes: Sequence[str] | None = None, ignore_index: int = 255,
                 label_map: Mapping[int, int] | None = None, limit: int | None = None) -> None:
        root = Path(root)
        image_dir, mask_dir = root / images, root / masks
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(f"segmentation folder '{folder}' does not exist")
        records, unpaired = [], []
        for image in list_images(image_dir):
            mask = _find_mask(image, image_dir, mask_dir)
            if mask is None:
                unpaired.append(image)
            else:
                records.append((image, mask))
        if unpaired:
            raise DatasetError(
                f"{len(unpaired)} image(s) in '{image_dir}' have no mask in '{mask_dir}', e.g. "
                f"'{unpaired[0].name}' (looked for the same stem, '_labelIds' and Cityscapes names, .png)"
            )
        if not records:
            raise DatasetError(f"no images in '{image_dir}'")
        super().__init__(records, limit=limit)
        self.root = root
        self.ignore_index = ignore_index
        self.class_names = list(classes) if classes is not None else _read_classes(root)
        self._lut = _lookup_table(label_map, ignore_index) if label_map is not None else None

    def _load(self, record: tuple[Path, Path]) -> SegmentationSample:
        image_path, mask_path = record
        image = load_image(image_path)
        mask = read_mask(mask_path)
        if self._lut is not None:
            mask = self._lut[np.minimum(mask.astype(np.int64), len(self._lut) - 1)]
        if mask.shape != (image.height, image.width):
            raise DatasetError(f"mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]} but its image is "
                               f"{image.width}x{image.height}; masks must match their image")
        if self.num_classes:
            bad = (mask >= self.num_classes) & (mask != self.ignore_index)
            if bad.any():
                raise DatasetError(f"mask '{mask_path}' has values {np.unique(mask[bad])[:8].tolist()} outside "
                                   f"0..{self.num_classes - 1} and ignore_index {self.ignore_index}")
        return SegmentationSample(image=image, mask=mask, path=image_path)


def read_mask(path: Path) -> np.ndarray:
    """Read a class-id mask PNG as an ``[H, W]`` array (uint8, or int32 for 16-bit masks)."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("P", "L"):
                return np.asarray(mask, np.uint8)
            if mask.mode.startswith("I"):
                return np.asarray(mask).astype(np.int32)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode mask '{path}': {exc}") from exc
    raise DatasetError(
        f"mask '{path}' is a {mask.mode} image; masks must hold class ids in one channel (palette 'P' or "
        f"grey 'L' PNG). Convert colour-coded masks to class ids first."
    )


def cityscapes(root: str | Path, *, split: str = "val", limit: int | None = None) -> MaskFolders:
    """The Cityscapes layout: ``leftImg8bit/<split>/<city>/`` with ``gtFine/<split>/<city>/``.

    Uses ``*_gtFine_labelTrainIds.png`` where present (cityscapesScripts writes them),
    otherwise maps ``*_gtFine_labelIds.png`` through :data:`CITYSCAPES_LABEL_MAP`.
    """
    root = Path(root)
    train_ids = next((root / "gtFine" / split).rglob("*_gtFine_labelTrainIds.png"), None)
    return MaskFolders(root, images=f"leftImg8bit/{split}", masks=f"gtFine/{split}",
                       classes=CITYSCAPES_CLASSES, limit=limit,
                       label_map=None if train_ids else CITYSCAPES_LABEL_MAP)


def _find_mask(image: Path, image_dir: Path, mask_dir: Path) -> Path | None:
    folder = mask_dir / image.parent.relative_to(image_dir)
    base = image.stem.removesuffix("_leftImg8bit")
    for stem in (image.stem, f"{image.stem}_labelIds", f"{base}_gtFine_labelTrainIds", f"{base}_gtFine_labelIds"):
        if (folder / f"{stem}.png").is_file():
            return folder / f"{stem}.png"
    return None


def _read_classes(root: Path) -> list[str]:
    path = root / "classes.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _lookup_table(label_map: Mapping[int, int], ignore_index: int) -> np.ndarray:
    lut = np.full(max(max(label_map, default=0), 255) + 2, ignore_index, np.int32)
    for raw, cls in label_map.items():
        lut[raw] = cls
    return lut.astype(np.uint8) if max([ignore_index, *label_map.values()]) < 256 else lut

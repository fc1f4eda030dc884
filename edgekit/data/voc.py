"""Pascal VOC detection: ``Annotations/*.xml``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``.

VOC boxes are 1-based inclusive pixel indices (``xmin=1, xmax=W`` spans the whole image);
they become 0-based continuous xyxy by subtracting 1 from ``xmin`` and ``ymin``, as
Detectron2 does. The ``difficult`` flag is kept; the metrics neither reward nor penalise
those objects.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.data.base import DetectionSample, ImageDataset
from edgekit.data.errors import DatasetError
from edgekit.data.image_io import load_image

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class VocDetection(ImageDataset[tuple[Path, int], DetectionSample]):
    """A Pascal VOC-format detection set.

    Args:
        root: the folder holding ``Annotations/`` and ``JPEGImages/`` (e.g. ``VOC2007``).
        split: read the ids in ``ImageSets/Main/<split>.txt``; None: every annotation file.
        classes: class names in index order; default: the 20 VOC classes when every object
            name is one of them, otherwise the sorted names found in the annotations.
        limit: iterate over at most this many images.
    """

    task = "detect"

    def __init__(self, root: str | Path, *, split: str | None = None,
                 classes: Sequence[str] | None = None, limit: int | None = None) -> None:
        root = Path(root)
        ann_dir = root / "Annotations"
        if not ann_dir.is_dir() or not (root / "JPEGImages").is_dir():
            raise DatasetError(f"'{root}' is not a VOC folder: it needs Annotations/ and JPEGImages/")
        if split is None:
            xmls = sorted(ann_dir.glob("*.xml"))
        else:
            xmls = [ann_dir / f"{i}.xml" for i in _read_split(root, split)]
        if not xmls:
            raise DatasetError(f"no annotations in '{ann_dir}'" + (f" for split '{split}'" if split else ""))
        super().__init__([(x, i) for i, x in enumerate(xmls)], limit=limit)
        self.root = root
        self.split = split
        self.class_names = list(classes) if classes is not None else _derive_classes(xmls)
        self._index = {name: i for i, name in enumerate(self.class_names)}

    def _load(self, record: tuple[Path, int]) -> DetectionSample:
        xml, image_id = record
        tree = _parse(xml)
        boxes, labels, difficult = [], [], []
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in self._index:
                raise DatasetError(f"{xml}: object '{name}' is not one of the classes {self.class_names}")
            bb = obj.find("bndbox")
            if bb is None:
                raise DatasetError(f"{xml}: object '{name}' has no <bndbox>")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise DatasetError(f"{xml}: object '{name}' needs numeric xmin, ymin, xmax, ymax") from None
            boxes.append((x1 - 1.0, y1 - 1.0, x2, y2))
            labels.append(self._index[name])
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        filename = tree.findtext("filename") or f"{xml.stem}.jpg"
        path = self.root / "JPEGImages" / filename.strip()
        if not path.is_file():  # some exports leave <filename> stale; the id is the stem
            path = self.root / "JPEGImages" / f"{xml.stem}.jpg"
        return DetectionSample(image=load_image(path), boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                               labels=np.asarray(labels, np.int64), path=path,
                               image_id=image_id, difficult=np.asarray(difficult, bool))


def _read_split(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DatasetError(f"no split file '{path}'; splits here: {found or 'none'} (or split=None for all)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"annotation '{path}' does not exist (listed in the split file)") from None
    except ET.ParseError as exc:
        raise DatasetError(f"annotation '{path}' is not valid XML: {exc}") from None


def _derive_classes(xmls: list[Path]) -> list[str]:
    names = {(o.findtext("name") or "").strip() for x in xmls for o in _parse(x).iter("object")}
    return list(VOC_CLASSES) if names <= set(VOC_CLASSES) else sorted(names)

"""COCO JSON detection: ``instances_*.json`` plus an image folder.

Boxes are converted from COCO's ``[x, y, width, height]`` to xyxy. Category ids (sparse in
COCO: 1..90 for 80 classes) map to contiguous indices 0..C-1 in sorted id order;
``category_ids[i]`` turns index ``i`` back into the file's id (what COCO result files need).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.data.base import DetectionSample, ImageDataset
from edgekit.data.errors import DatasetError
from edgekit.data.image_io import load_image


@dataclass(frozen=True)
class CocoRecord:
    """One image's entry: where it is and its parsed boxes."""

    image_id: int
    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray


class CocoDetection(ImageDataset[CocoRecord, DetectionSample]):
    """A COCO-format detection set.

    Args:
        annotations: the ``instances_*.json`` file.
        images: folder the ``file_name`` entries are relative to; default: the first of
            ``<root>/<split>``, ``<root>/images/<split>``, ``<root>/images``, ``<root>`` that
            holds the first image, where ``<root>`` is the folder above ``annotations/``.
        limit: iterate over at most this many images.

    Annotations with zero or negative width or height are dropped (they have no area to
    match); images without annotations are kept as negatives.
    """

    task = "detect"

    def __init__(self, annotations: str | Path, images: str | Path | None = None, *,
                 limit: int | None = None) -> None:
        annotations = Path(annotations)
        data = _read_json(annotations)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        folder = Path(images) if images is not None else _find_image_folder(annotations, data["images"])
        per_image: dict[int, list[dict]] = {int(img.get("id", -1)): [] for img in data["images"]}
        for ann in data["annotations"]:
            if ann.get("category_id") not in index:
                raise DatasetError(
                    f"{annotations}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')}, not one of the categories {self.category_ids}"
                )
            if int(ann["image_id"]) not in per_image:
                raise DatasetError(f"{annotations}: annotation {ann.get('id')} names image_id "
                                   f"{ann['image_id']}, which is not in 'images'")
            per_image[int(ann["image_id"])].append(ann)
        try:
            records = [_record(img, per_image[int(img["id"])], index, folder)
                       for img in sorted(data["images"], key=lambda i: int(i["id"]))]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{annotations}: malformed image or annotation entry ({exc!r}); "
                               f"images need id and file_name, annotations a 4-number bbox") from None
        super().__init__(records, limit=limit)
        self.annotations = annotations
        self.images = folder
        self.class_names = [str(c.get("name", c["id"])) for c in categories]

    def _load(self, record: CocoRecord) -> DetectionSample:
        return DetectionSample(image=load_image(record.path), boxes=record.boxes.copy(),
                               labels=record.labels.copy(), path=record.path,
                               image_id=record.image_id, difficult=record.crowd.copy())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"COCO annotation file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"'{path}' is not valid JSON: {exc}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetError(f"'{path}' lacks the COCO keys {missing}; is it an instances_*.json file?")
    return data


def _record(img: dict, anns: list[dict], index: dict[int, int], folder: Path) -> CocoRecord:
    boxes, labels, crowd = [], [], []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w > 0 and h > 0:
            boxes.append((x, y, x + w, y + h))
            labels.append(index[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
    return CocoRecord(image_id=int(img["id"]), path=folder / img["file_name"],
                      boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                      labels=np.asarray(labels, np.int64), crowd=np.asarray(crowd, bool))


def _find_image_folder(annotations: Path, images: list[dict]) -> Path:
    root = annotations.parent.parent if annotations.parent.name == "annotations" else annotations.parent
    split = annotations.stem.removeprefix("instances_")
    candidates = [root / split, root / "images" / split, root / "images", root]
    if not images:
        return candidates[2] if candidates[2].is_dir() else root
    first = images[0]["file_name"]
    for folder in candidates:
        if (folder / first).is_file():
            return folder
    raise DatasetError(
        f"cannot find the images of '{annotations}': '{first}' is in none of "
        f"{[str(c) for c in candidates]}. Pass the image folder explicitly."
    )

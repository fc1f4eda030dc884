"""A folder of photos without labels: calibration images, and label-free evaluation.

Users often calibrate (and check) with a folder of unlabelled pictures. ``ImageFolder`` reads
the images directly inside a folder (sorted by name); its samples have an image and a path but
no label, and its ``task`` is empty, which is how the accuracy-drop report and the
mixed-precision search know to score agreement with the fp32 model instead of a metric
against ground truth (:mod:`edgekit.precision.agreement`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from edgekit.data.base import ImageDataset
from edgekit.data.errors import DatasetError
from edgekit.data.image_io import list_images, load_image


@dataclass
class ImageSample:
    """One unlabelled image."""

    image: Image.Image
    path: Path


class ImageFolder(ImageDataset[Path, ImageSample]):
    """The images directly inside ``root`` (not in sub-folders), without labels.

    Args:
        root: the folder.
        limit: iterate over at most this many images.
    """

    task = ""  # no ground truth

    def __init__(self, root: str | Path, *, limit: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder '{root}' is not a directory")
        records = list_images(root, recursive=False)
        if not records:
            raise DatasetError(f"no images (.jpg/.jpeg/.png/.bmp/.webp) directly inside '{root}'")
        super().__init__(records, limit=limit)
        self.root = root

    def _load(self, record: Path) -> ImageSample:
        return ImageSample(image=load_image(record), path=record)

"""Samples and the streaming dataset base every loader shares.

A dataset holds a list of light records (paths, and parsed boxes for COCO) and decodes one
image per step of iteration, so memory does not grow with the number of images. ``limit``
and :meth:`ImageDataset.shuffle` act on the record list: a shuffled, limited dataset is a
deterministic random subset (what calibration wants).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from edgekit.data.errors import DatasetError


@dataclass
class ClassificationSample:
    """One image and its class index."""

    image: Image.Image
    label: int
    path: Path


@dataclass
class DetectionSample:
    """One image and its boxes.

    Args:
        image: RGB image.
        boxes: ``[N, 4]`` float32 xyxy in image pixels (0 at the top-left edge).
        labels: ``[N]`` int64 contiguous class indices 0..C-1.
        difficult: ``[N]`` bool, VOC ``difficult`` or COCO ``iscrowd``: neither rewarded
            nor penalised by the metrics.
        path: the image file.
        image_id: the annotation file's image id (COCO) or the running index.
    """

    image: Image.Image
    boxes: np.ndarray
    labels: np.ndarray
    path: Path
    image_id: int = 0
    difficult: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), bool)
        if not len(self.boxes) == len(self.labels) == len(self.difficult):
            raise DatasetError(
                f"{self.path}: {len(self.boxes)} boxes, {len(self.labels)} labels and "
                f"{len(self.difficult)} difficult flags; they must have one entry per object"
            )


@dataclass
class SegmentationSample:
    """One image and its ``[H, W]`` class-id mask (``ignore_index`` where unlabelled)."""

    image: Image.Image
    mask: np.ndarray
    path: Path


S = TypeVar("S")
R = TypeVar("R")


class ImageDataset(Generic[R, S]):
    """A streaming, sized iterable of samples built from a list of records.

    Subclasses set ``task``, ``class_names`` and implement ``_load(record) -> sample``.

    Args:
        records: one light entry per image (paths, parsed annotations).
        limit: iterate over at most this many records (after shuffling).
    """

    task: str = ""

    def __init__(self, records: Sequence[R], *, limit: int | None = None) -> None:
        _check_limit(limit)
        self._records = list(records)
        self.limit = limit
        self.class_names: list[str] = []

    @property
    def num_classes(self) -> int:
        """Number of classes (0 where the dataset does not name them)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._records) if self.limit is None else min(self.limit, len(self._records))

    def __iter__(self) -> Iterator[S]:
        for record in self._records[: len(self)]:
            yield self._load(record)

    def __getitem__(self, index: int) -> S:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return self._load(self._records[index % len(self)])

    def shuffle(self, seed: int) -> ImageDataset[R, S]:
        """A copy whose records are permuted by ``numpy.random.default_rng(seed)``."""
        order = np.random.default_rng(seed).permutation(len(self._records))
        out = copy.copy(self)
        out._records = [self._records[i] for i in order]
        return out

    def take(self, limit: int | None) -> ImageDataset[R, S]:
        """A copy that iterates over at most ``limit`` samples."""
        _check_limit(limit)
        out = copy.copy(self)
        out.limit = limit
        return out

    def _load(self, record: R) -> S:
        raise NotImplementedError


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise DatasetError(f"limit {limit} must be >= 1 (or None for the whole dataset)")

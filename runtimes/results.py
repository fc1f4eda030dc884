"""What ``predict`` returns: one dataclass per task, in original-image pixels, numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def palette(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 colours, the PASCAL VOC colour map: class 0 black, then well separated hues.

    Colour ``i`` spreads the bits of ``i`` over the high bits of R, G and B (bit 0 -> R,
    bit 1 -> G, bit 2 -> B, then the next bit plane), so any class count gets distinct colours.
    """
    ids = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for plane in range(8):
        for channel in range(3):
            bit = (ids >> (plane * 3 + channel)) & 1
            colours[:, channel] |= bit << (7 - plane)
    return colours.astype(np.uint8)


def label_names(ids: np.ndarray, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The names of class ids, ``class_<id>`` where the bundle has no labels."""
    return tuple(labels[i] if 0 <= i < len(labels) else f"class_{i}" for i in ids.tolist())


@dataclass(frozen=True)
class ClassResult:
    """Top-k classes of one image, best first.

    Args:
        class_ids: ``[k]`` int64 class indices.
        scores: ``[k]`` float32 probabilities (softmax) or raw scores where the bundle asks for none.
        labels: the class names.
    """

    class_ids: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> str:
        """One line: ``name score, ...``."""
        return ", ".join(f"{name} {score:.3f}" for name, score in zip(self.labels, self.scores.tolist()))


@dataclass(frozen=True)
class Detections:
    """Objects found in one image, best first.

    Args:
        boxes: ``[D, 4]`` float32 ``x1, y1, x2, y2`` in original-image pixels.
        scores: ``[D]`` float32 class probabilities.
        class_ids: ``[D]`` int64 class indices (background excluded).
        labels: the class names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def summary(self) -> str:
        """One line per detection: ``name score [x1, y1, x2, y2]``."""
        return "\n".join(f"{name} {score:.3f} [{', '.join(f'{v:.1f}' for v in box)}]"
                         for name, score, box in zip(self.labels, self.scores.tolist(), self.boxes.tolist()))


@dataclass(frozen=True)
class SegmentationResult:
    """A class id per pixel of the original image.

    Args:
        mask: ``[H, W]`` class ids at the original resolution (uint8 up to 256 classes, else int32).
        class_ids: the classes present, ascending.
        labels: their names.
        num_classes: classes the model scores (sizes the palette).
    """

    mask: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]
    num_classes: int

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])

    def colorize(self, colours: np.ndarray | None = None) -> np.ndarray:
        """``[H, W, 3]`` uint8 picture of the mask; ``colours`` is ``[num_classes, 3]`` (default :func:`palette`)."""
        table = palette(max(self.num_classes, int(self.mask.max(initial=0)) + 1)) if colours is None else colours
        picture: np.ndarray = np.asarray(table, np.uint8)[self.mask]
        return picture

    def fractions(self) -> np.ndarray:
        """Share of the image's pixels per present class, in ``class_ids`` order."""
        counts = np.bincount(self.mask.reshape(-1).astype(np.int64), minlength=int(self.class_ids.max(initial=0)) + 1)
        shares: np.ndarray = counts[self.class_ids] / max(self.mask.size, 1)
        return shares

    def summary(self) -> str:
        """One line: ``name pct%, ...`` by area."""
        fractions = self.fractions()
        order = np.argsort(-fractions, kind="stable")
        return ", ".join(f"{self.labels[i]} {100 * fractions[i]:.1f}%" for i in order.tolist())

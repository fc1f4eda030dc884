"""Classification training: cross-entropy with label smoothing, random flips and quarter-turns.

Samples are resized once to the input size (the fixture's preprocessing, see
:meth:`TaskTrainer.default_preprocess`) and kept as uint8; each batch mirrors and rotates
them at random (a shape class is closed under both: the generator draws any rotation) and
normalises.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.data import ClassificationSample
from edgekit.models.registry import Task
from edgekit.train.core import TaskDefaults, TaskTrainer, register_task_trainer

LABEL_SMOOTHING = 0.1


@register_task_trainer(Task.CLASSIFY)
class ClassificationTrainer(TaskTrainer):
    """Trains ``[N, 3, H, W] -> [N, C]`` classifiers on class-folder data."""

    defaults = TaskDefaults(imgsz=96, batch=32, lr=2e-3, optimizer="adamw", weight_decay=0.05, warmup_epochs=1.0)

    def prepare_sample(self, sample: ClassificationSample) -> tuple[np.ndarray, int]:
        """The image at the input size (uint8 HWC) and its label."""
        pixels, _ = self.preprocess.resize_image(sample.image)
        return pixels, sample.label

    def make_batch(self, indices: Sequence[int], rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Images ``[N, 3, H, W]`` (randomly flipped, normalised) and labels ``[N]``."""
        items = [self.sample(i) for i in indices]
        (pixels,) = random_dihedral(rng, np.stack([p for p, _ in items]))
        x = np.concatenate([self.preprocess.normalize(p) for p in pixels])
        return torch.from_numpy(x), torch.tensor([label for _, label in items], dtype=torch.int64)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy of the logits against the labels."""
        x, y = batch
        return {"ce": F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)}


def random_dihedral(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """Flip and rotate item ``i`` of every ``[N, H, W, ...]`` array the same way, drawn per item.

    Square items get one of the 8 symmetries of the square (flip x quarter-turns); others
    one of 4 (flip x half-turns), so shapes never change. All arrays get the same transform
    (an image batch and its masks).
    """
    n, h, w = arrays[0].shape[:3]
    turn = 1 if h == w else 2  # quarter-turns per step: a non-square item may only turn by 180
    draws = rng.integers(0, 8 if h == w else 4, size=n)  # bit 0: mirror, bits 1-2: turns
    out = [a.copy() for a in arrays]
    for i, d in enumerate(draws.tolist()):
        for a in out:
            a[i] = np.rot90(a[i][:, ::-1] if d & 1 else a[i], turn * (d >> 1))
    return out

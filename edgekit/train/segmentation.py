"""Segmentation training: OHEM cross-entropy, auxiliary heads where the model has them.

Masks are resized with their image (nearest, ignore label where the image was padded) and
mirrored and turned with it. The loss is cross-entropy over the hard pixels only (online hard
example mining, as in BiSeNet's reference training code, TorchSeg): once the background is
easy, a plain pixel mean is dominated by it and the shape classes learn slowly. Models whose
factory takes ``aux_heads`` (BiSeNet) are trained with the heads built and each auxiliary
loss weighted by :data:`AUX_WEIGHT` (the paper's alpha = 1); the weights written exclude
them, so the file loads strictly into the default build.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.data import SegmentationSample, mask_to_input
from edgekit.models.registry import Task
from edgekit.train.classification import random_dihedral
from edgekit.train.core import TaskDefaults, TaskTrainer, register_task_trainer

AUX_WEIGHT = 1.0
IGNORE_INDEX = 255
OHEM_THRESHOLD = 0.7  # a pixel is hard while its true class has a probability below this
OHEM_MIN_KEPT = 1 / 16  # and at least this share of the labelled pixels is always kept


@register_task_trainer(Task.SEGMENT)
class SegmentationTrainer(TaskTrainer):
    """Trains ``[N, 3, H, W] -> [N, C, H, W]`` segmenters on image/mask data."""

    defaults = TaskDefaults(imgsz=256, batch=4, lr=1e-3, optimizer="adamw", weight_decay=0.01, warmup_epochs=1.0)

    @property
    def ignore_index(self) -> int:
        """Mask value not scored: the dataset's, else 255."""
        return int(getattr(self.dataset, "ignore_index", IGNORE_INDEX))

    def build_model(self) -> nn.Module:
        """The registry's build, with auxiliary heads where the factory offers them."""
        if "aux_heads" in inspect.signature(self.spec.factory).parameters:
            return self.spec.build(num_classes=self.num_classes, aux_heads=True)
        return self.spec.build(num_classes=self.num_classes)

    def prepare_sample(self, sample: SegmentationSample) -> tuple[np.ndarray, np.ndarray]:
        """The image (uint8 HWC) and its class-id mask, both at the input size."""
        pixels, meta = self.preprocess.resize_image(sample.image)
        return pixels, mask_to_input(sample.mask, meta, fill=self.ignore_index)

    def make_batch(self, indices: Sequence[int], rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Images ``[N, 3, H, W]`` and masks ``[N, H, W]`` (int64), mirrored and turned together."""
        items = [self.sample(i) for i in indices]
        pixels, masks = random_dihedral(rng, np.stack([p for p, _ in items]), np.stack([m for _, m in items]))
        x = np.concatenate([self.preprocess.normalize(p) for p in pixels])
        return torch.from_numpy(x), torch.from_numpy(masks.astype(np.int64))

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy of the main logits, plus each auxiliary head's in training."""
        x, y = batch
        out = model(x)
        logits = out if isinstance(out, tuple) else (out,)
        terms = {"ce": ohem_cross_entropy(logits[0], y, self.ignore_index)}
        for k, aux in enumerate(logits[1:], 1):
            terms[f"aux{k}"] = AUX_WEIGHT * ohem_cross_entropy(aux, y, self.ignore_index)
        return terms


def ohem_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX,
                       threshold: float = OHEM_THRESHOLD, min_kept: float = OHEM_MIN_KEPT) -> Tensor:
    """Mean cross-entropy of the hard pixels: true-class probability below ``threshold``.

    When fewer than ``min_kept`` of the labelled pixels are hard, the ``min_kept`` share with
    the highest loss is averaged instead, so the loss never rests on a handful of pixels.
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    loss = loss[target.flatten() != ignore_index]
    if loss.numel() == 0:
        return logits.sum() * 0.0  # nothing labelled: a zero that keeps the graph
    hard = loss[loss > -math.log(threshold)]
    kept = max(1, int(min_kept * loss.numel()))
    return (hard if hard.numel() >= kept else torch.topk(loss, kept).values).mean()

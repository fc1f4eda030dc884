"""Training losses of the two-stage detectors (ThunderNet, Light-Head R-CNN): Faster R-CNN's recipe.

``losses(model, images, targets)`` runs one training forward of a
:class:`~edgekit.models.detection.TwoStageDetector` and returns its four loss terms::

    stage1 --> RPN logits/deltas --(anchor targets, 256 sampled 1:1)--> rpn_cls (BCE), rpn_box (smooth L1)
           \\-> proposals() with the training counts, + the gt boxes
               --(RoI targets, 128 sampled, <= 25 % fg)--> pool --> head --> rcnn_cls (CE), rcnn_box (smooth L1)

- RPN anchors (Faster R-CNN, Ren et al. 2015, Sec. 3.1.2): IoU >= 0.7 with some gt is
  positive, < 0.3 with every gt negative, and for each gt the anchors of highest IoU are
  positive too (so every object has one); the rest are ignored. No anchor is dropped for
  crossing the border (at 320x320, 512-px anchors cross it everywhere). The model has one
  sigmoid logit per anchor, hence binary cross-entropy.
- RoIs: proposals from the model's own :meth:`proposals` with training counts (2000 before
  NMS as in the ThunderNet reference config, 300 after instead of its 1000: the RPN NMS is
  a Python loop whose cost grows with the boxes kept, a fifth of a CPU step at 300, and only
  128 RoIs per image are sampled from them), plus the gt boxes; IoU >= 0.5 is foreground
  (class of its gt), below 0.5 background; random sampling, not ThunderNet's OHEM.
- Box targets: the model's own coders (RPN weights 1, R-CNN (10, 10, 5, 5)); the R-CNN
  regression is class-agnostic, like the head. Smooth-L1 sums are divided by the number of
  sampled anchors / RoIs (Detectron's normalisation), so positives weigh by how many there are.
- Gradient reaches the backbone and CEM through both heads; ThunderNet's SAM is trained by
  the R-CNN loss through the RPN features it gates (``F_CEM * sigmoid(conv(F_RPN))``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.data import DetectionSample, Preprocess, boxes_to_input
from edgekit.evaluate import default_preprocess
from edgekit.models.detection import TwoStageDetector
from edgekit.models.ops import box_iou, rois_from_list
from edgekit.models.registry import Task
from edgekit.train.core import TaskDefaults, TaskTrainer, TrainError, register_task_trainer

IGNORE = -1  # anchor / RoI label: not sampled, no loss


@dataclass(frozen=True)
class DetectionTarget:
    """Ground truth of one training image, in model-input pixels.

    Args:
        boxes: ``[G, 4]`` float xyxy.
        labels: ``[G]`` int64 class indices ``0..num_classes-1`` (background is not a class here).
    """

    boxes: Tensor
    labels: Tensor


@dataclass(frozen=True)
class DetectionLossConfig:
    """Sampling and loss settings; defaults are Faster R-CNN's and the ThunderNet reference config's.

    Args:
        rpn_positive_iou: anchors with IoU >= this with some gt are positive.
        rpn_negative_iou: anchors with IoU < this with every gt are negative.
        rpn_batch: anchors sampled per image for the RPN loss.
        rpn_positive_fraction: at most this fraction of them positive (the rest negatives).
        train_pre_nms_top_n: anchors decoded per image before the RPN NMS while training.
        train_post_nms_top_n: proposals kept per image after it while training.
        rcnn_batch: RoIs sampled per image for the R-CNN loss.
        rcnn_positive_fraction: at most this fraction of them foreground.
        rcnn_fg_iou: RoIs with IoU >= this with a gt are foreground, the rest background.
        rpn_beta: smooth-L1 transition point of the RPN box loss (Detectron: 1/9).
        rcnn_beta: smooth-L1 transition point of the R-CNN box loss.
    """

    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    train_pre_nms_top_n: int = 2000
    train_post_nms_top_n: int = 300
    rcnn_batch: int = 128
    rcnn_positive_fraction: float = 0.25
    rcnn_fg_iou: float = 0.5
    rpn_beta: float = 1.0 / 9.0
    rcnn_beta: float = 1.0


DEFAULT_LOSS_CONFIG = DetectionLossConfig()


def match_anchors(anchors: Tensor, gt_boxes: Tensor, positive_iou: float = 0.7,
                  negative_iou: float = 0.3) -> tuple[Tensor, Tensor]:
    """Label anchors for the RPN: (labels ``[A]`` in {1 positive, 0 negative, -1 ignore}, matched gt ``[A]``).

    ``matched[a]`` is the gt of highest IoU with anchor ``a`` (0 when there is no gt). An
    anchor that is one gt's best (ties included, IoU > 0) is positive and matched to that gt
    even below ``positive_iou``: the small objects' only positives are such anchors.
    """
    num = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        zeros = torch.zeros(num, dtype=torch.int64, device=anchors.device)
        return zeros, zeros.clone()
    iou = box_iou(anchors, gt_boxes)  # [A, G]
    best_iou, matched = iou.max(dim=1)
    labels = torch.full((num,), IGNORE, dtype=torch.int64, device=anchors.device)
    labels[best_iou < negative_iou] = 0
    labels[best_iou >= positive_iou] = 1
    per_gt_best = iou.max(dim=0).values  # [G]
    anchor_idx, gt_idx = torch.nonzero((iou == per_gt_best[None]) & (per_gt_best[None] > 0), as_tuple=True)
    labels[anchor_idx] = 1
    matched[anchor_idx] = gt_idx
    return labels, matched


def subsample(labels: Tensor, batch: int, positive_fraction: float) -> Tensor:
    """Keep at most ``batch`` labelled entries, at most ``positive_fraction`` of them positive (> 0).

    Entries not kept become :data:`IGNORE`. Random choice from torch's global generator,
    so a seeded run repeats. Negatives (0) fill what positives leave.
    """
    positive = torch.nonzero(labels > 0).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(positive.numel(), int(batch * positive_fraction))
    num_neg = min(negative.numel(), batch - num_pos)
    keep = torch.cat((positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]],
                      negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]))
    out = torch.full_like(labels, IGNORE)
    out[keep] = labels[keep]
    return out


def rpn_losses(model: TwoStageDetector, rpn_logits: Tensor, rpn_deltas: Tensor, targets: list[DetectionTarget],
               config: DetectionLossConfig = DEFAULT_LOSS_CONFIG) -> tuple[Tensor, Tensor]:
    """(objectness BCE, box smooth-L1) over the sampled anchors of the batch."""
    n, a, fh, fw = rpn_logits.shape
    anchors = model.anchors((fh, fw), rpn_logits.device)
    # Same flattening as TwoStageDetector.proposals: index (y * W + x) * A + a.
    logits = rpn_logits.permute(0, 2, 3, 1).reshape(n, -1)
    deltas = rpn_deltas.reshape(n, a, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    labels, box_targets = [], []
    for t in targets:
        lab, matched = match_anchors(anchors, t.boxes, config.rpn_positive_iou, config.rpn_negative_iou)
        labels.append(subsample(lab, config.rpn_batch, config.rpn_positive_fraction))
        gt = t.boxes[matched] if t.boxes.shape[0] else anchors  # no gt: no positives, targets unused
        box_targets.append(model.rpn_coder.encode(gt, anchors))
    labels_t, targets_t = torch.stack(labels), torch.stack(box_targets)
    sampled, positive = labels_t >= 0, labels_t == 1
    count = max(int(sampled.sum()), 1)
    cls = F.binary_cross_entropy_with_logits(logits[sampled], labels_t[sampled].to(logits.dtype), reduction="sum")
    box = F.smooth_l1_loss(deltas[positive], targets_t[positive], beta=config.rpn_beta, reduction="sum")
    return cls / count, box / count


@contextmanager
def training_proposal_counts(model: TwoStageDetector, pre_nms_top_n: int, post_nms_top_n: int) -> Iterator[None]:
    """Temporarily give ``model.proposals`` the training counts (the model's defaults are test-time)."""
    saved = model.pre_nms_top_n, model.post_nms_top_n
    model.pre_nms_top_n, model.post_nms_top_n = pre_nms_top_n, post_nms_top_n
    try:
        yield
    finally:
        model.pre_nms_top_n, model.post_nms_top_n = saved


def sample_rois(model: TwoStageDetector, proposals: Tensor, target: DetectionTarget,
                config: DetectionLossConfig = DEFAULT_LOSS_CONFIG) -> tuple[Tensor, Tensor, Tensor]:
    """(RoIs ``[R, 4]``, class targets ``[R]`` with background 0, box targets ``[R, 4]``) of one image.

    The gt boxes join the proposals, so every object has a perfect foreground RoI from the
    first step, when the RPN still proposes noise.
    """
    rois = torch.cat((proposals, target.boxes.to(proposals.dtype)))
    if target.boxes.shape[0] == 0:
        cls = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        keep = torch.nonzero(subsample(cls, config.rcnn_batch, config.rcnn_positive_fraction) >= 0).flatten()
        return rois[keep], cls[keep], rois.new_zeros(keep.numel(), 4)
    best_iou, matched = box_iou(rois, target.boxes).max(dim=1)
    cls = torch.where(best_iou >= config.rcnn_fg_iou, target.labels[matched] + 1, 0)
    keep = torch.nonzero(subsample(cls, config.rcnn_batch, config.rcnn_positive_fraction) >= 0).flatten()
    rois, cls, matched = rois[keep], cls[keep], matched[keep]
    return rois, cls, model.rcnn_coder.encode(target.boxes[matched], rois)


def losses(model: TwoStageDetector, images: Tensor, targets: list[DetectionTarget],
           config: DetectionLossConfig = DEFAULT_LOSS_CONFIG) -> dict[str, Tensor]:
    """One training forward: ``{"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}`` scalar losses.

    Args:
        model: a two-stage detector (in train mode for BatchNorm statistics).
        images: ``[N, 3, H, W]`` preprocessed batch.
        targets: one :class:`DetectionTarget` per image, boxes in input pixels.
        config: sampling and loss settings.

    The total loss is the plain sum of the four terms (Faster R-CNN's weights, all 1).
    """
    if len(targets) != images.shape[0]:
        raise TrainError(f"{len(targets)} targets for a batch of {images.shape[0]} images; give one per image")
    h, w = images.shape[-2:]
    rpn_logits, rpn_deltas, features = model.stage1(images)
    rpn_cls, rpn_box = rpn_losses(model, rpn_logits, rpn_deltas, targets, config)
    with training_proposal_counts(model, config.train_pre_nms_top_n, config.train_post_nms_top_n):
        proposals = model.proposals(rpn_logits.detach(), rpn_deltas.detach(), (h, w))
    sampled = [sample_rois(model, p, t, config) for p, t in zip(proposals, targets)]
    rois = rois_from_list([s[0] for s in sampled])
    cls_targets = torch.cat([s[1] for s in sampled])
    box_targets = torch.cat([s[2] for s in sampled])
    cls_logits, box_deltas = model.head(model.pool(features, rois))
    rcnn_cls = F.cross_entropy(cls_logits, cls_targets)
    fg = cls_targets > 0
    rcnn_box = F.smooth_l1_loss(box_deltas[fg], box_targets[fg], beta=config.rcnn_beta,
                                reduction="sum") / max(cls_targets.numel(), 1)
    return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box}


@dataclass(frozen=True)
class PreparedImage:
    """A training image at the input size: RGB ``[H, W, 3]`` uint8 and its boxes in input pixels."""

    pixels: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def hflip(image: PreparedImage) -> PreparedImage:
    """Mirror left-right; a box ``(x1, y1, x2, y2)`` becomes ``(W - x2, y1, W - x1, y2)``."""
    width = image.pixels.shape[1]
    boxes = image.boxes.copy()
    boxes[:, [0, 2]] = width - image.boxes[:, [2, 0]]
    return PreparedImage(np.ascontiguousarray(image.pixels[:, ::-1]), boxes, image.labels)


@register_task_trainer(Task.DETECT)
class DetectionTrainer(TaskTrainer):
    """Two-stage detectors: letterbox to the input size, random horizontal flip, :func:`losses`.

    Letterbox is the detection default of the exported models' input spec
    (:data:`edgekit.inputspec.TASK_DEFAULTS`), so the weights, the bundle and the board SDK
    fit images the same way; on the square synthetic sets it equals a stretch (ThunderNet's
    own ``keep_ratio=False`` resize). Crowd / difficult boxes are left out of training
    (no anchor or RoI is pushed towards or away from them); boxes that lose their area in
    the resize are dropped. AdamW at 2e-3 with a short warm-up trains from scratch (there
    is no ImageNet SNet checkpoint here; in 200-250-step trials 1e-3 learned slower, 3e-3
    and a 50 % foreground RoI share no faster); batch 8 keeps BatchNorm statistics usable. The RPN objectness keeps the
    model's zero bias: its loss is on anchors sampled 1:1, so a low prior such as
    -log(99) (a focal-loss trick for all-anchor losses) would only start it wrong.
    """

    defaults = TaskDefaults(imgsz=320, batch=8, lr=2e-3, optimizer="adamw", weight_decay=0.01,
                            warmup_epochs=0.2, grad_clip=10.0)
    # Decoding a 320x320 JPEG costs ~2 ms against ~1 s for the step; caching thousands of
    # decoded images would cost gigabytes.
    cache_samples = False
    flip_probability = 0.5

    @classmethod
    def default_preprocess(cls, imgsz: int) -> Preprocess:
        """ImageNet mean/std, RGB, letterbox (pad 114) to ``imgsz`` x ``imgsz``."""
        return default_preprocess(Task.DETECT, (imgsz, imgsz))

    def prepare_sample(self, sample: DetectionSample) -> PreparedImage:
        """Resize to the input size and map the boxes with it."""
        pixels, meta = self.preprocess.resize_image(sample.image)
        keep = ~np.asarray(sample.difficult, bool)
        boxes = boxes_to_input(sample.boxes[keep], meta)
        labels = np.asarray(sample.labels, np.int64)[keep]
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return PreparedImage(pixels, boxes[nonempty], labels[nonempty])

    def make_batch(self, indices: Sequence[int], rng: np.random.Generator) -> tuple[Tensor, list[DetectionTarget]]:
        """Images ``[N, 3, H, W]`` and their targets, each flipped with probability 1/2."""
        images, targets = [], []
        for i in indices:
            item = self.sample(i)
            if rng.random() < self.flip_probability:
                item = hflip(item)
            images.append(self.preprocess.normalize(item.pixels)[0])
            targets.append(DetectionTarget(torch.from_numpy(item.boxes.astype(np.float32)),
                                           torch.from_numpy(item.labels.astype(np.int64))))
        return torch.from_numpy(np.stack(images)), targets

    def loss(self, model: nn.Module, batch: tuple[Tensor, list[DetectionTarget]]) -> dict[str, Tensor]:
        """The four Faster R-CNN terms of :func:`losses`."""
        if not isinstance(model, TwoStageDetector):
            raise TrainError(f"{type(model).__name__} is not a TwoStageDetector; the detection trainer trains "
                             "the two-stage zoo detectors (thundernet-*, lighthead-rcnn) only")
        images, targets = batch
        return losses(model, images, targets)


# The detection evaluator registers with edgekit.evaluate when this module is imported.
import edgekit.train.detection_eval  # noqa: E402,F401

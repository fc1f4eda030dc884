"""Two-stage detectors (Faster R-CNN family): the base class and the heads they share.

ThunderNet and Light-Head R-CNN differ only in how they build the feature maps; the rest is
common and lives here::

    image --stage1 (one conv graph, exported to ONNX)--> rpn_logits, rpn_deltas, features
          --proposals (anchor decode, clip, NMS)--> RoIs
          --pool (PSRoI align on features)--> [R, ps_channels, 7, 7]
          --head (R-CNN subnet: one FC, class scores + box deltas)--> postprocess --> detections

Only ``stage1`` and ``head`` are networks; proposals, pooling and postprocess are the float
glue that the numpy runtime re-implements (conventions in :mod:`edgekit.models.ops`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.models.ops import (
    BoxCoder,
    anchor_shapes,
    batched_nms,
    clip_boxes,
    grid_anchors,
    nms,
    ps_roi_align,
    rois_from_list,
)

# Box coder weights: the RPN regresses raw deltas, the R-CNN head deltas scaled by 1/std with
# Faster R-CNN's stds (0.1, 0.1, 0.2, 0.2), as both papers' reference code does.
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
RCNN_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class RPNHead(nn.Module):
    """Region proposal head: a shared ``body``, then 1x1 convs for objectness and deltas.

    Args:
        body: conv block from the detector's feature map to ``channels`` channels.
        channels: output channels of ``body``.
        num_anchors: anchors per cell ``A``.

    ``forward`` returns ``(body output, logits [N, A, H, W], deltas [N, 4A, H, W])``; delta
    channel ``4 * a + k`` is coordinate ``k`` (dx, dy, dw, dh) of anchor ``a``.
    """

    def __init__(self, body: nn.Module, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.body = body
        self.cls = nn.Conv2d(channels, num_anchors, 1)
        self.reg = nn.Conv2d(channels, 4 * num_anchors, 1)
        for conv in (self.cls, self.reg):  # Faster R-CNN's init for the prediction layers
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(features, objectness logits, box deltas)."""
        feat = self.body(x)
        return feat, self.cls(feat), self.reg(feat)


class RCNNHead(nn.Module):
    """R-CNN subnet of Light-Head R-CNN / ThunderNet: one FC + ReLU, then two sibling FCs.

    Box regression is class-agnostic (4 deltas per RoI): with it, ThunderNet's published
    MFLOPs (which include the head on 200 RoIs) are reproduced; per-class regression would
    add 200 x 1024 x 320 MACs (65 M, +25% for SNet49).

    Args:
        in_features: flattened pooled RoI size (``ps_channels * 7 * 7``).
        hidden: width of the FC (1024 ThunderNet, 2048 Light-Head R-CNN).
        num_classes: object classes; the class logits have one more (background, index 0).
    """

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden)
        self.cls = nn.Linear(hidden, num_classes + 1)
        self.box = nn.Linear(hidden, 4)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.box.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.box.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``[R, C, p, p]`` -> (class logits ``[R, num_classes + 1]``, box deltas ``[R, 4]``)."""
        x = F.relu(self.fc(pooled.flatten(1)))
        return self.cls(x), self.box(x)


class TwoStageDetector(nn.Module, ABC):
    """Base of the PSRoI-align two-stage detectors; subclasses define :meth:`stage1`.

    Every argument is also an attribute of the same name (the exporter, the runtime and the
    trainer read them). Defaults are ThunderNet's test-time settings.

    Args:
        num_classes: object classes without background (COCO: 80).
        input_size: (H, W) the model is built for.
        anchor_sizes: anchor sides in pixels (area ``size**2``).
        anchor_ratios: anchor ``h / w`` ratios.
        stride: stride of the RPN and PSRoI feature maps (1 / spatial scale).
        ps_channels: channels per pooled bin (thin feature map = ``ps_channels * pooled_size**2``).
        rcnn_hidden: width of the R-CNN FC.
        pooled_size: PSRoI align bins per side.
        sampling_ratio: PSRoI align samples per bin side.
        pre_nms_top_n: top-scoring anchors decoded per image before RPN NMS.
        post_nms_top_n: proposals kept per image after RPN NMS; ``forward`` always runs the
            head on this many RoIs per image (padding with empty boxes), so its cost is the
            paper's test-time cost whatever the image.
        rpn_nms_threshold: IoU threshold of the RPN NMS.
        box_nms_threshold: IoU threshold of the per-class NMS on detections.
        score_threshold: detections need a class probability strictly above this.
        max_detections: detections per image ``K`` returned by ``forward``.
    """

    def __init__(self, *, num_classes: int, input_size: tuple[int, int], anchor_sizes: tuple[float, ...],
                 anchor_ratios: tuple[float, ...], stride: int = 16, ps_channels: int, rcnn_hidden: int,
                 pooled_size: int = 7, sampling_ratio: int = 2, pre_nms_top_n: int = 2000,
                 post_nms_top_n: int = 200, rpn_nms_threshold: float = 0.7,
                 box_nms_threshold: float = 0.5, score_threshold: float = 0.05,
                 max_detections: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = tuple(input_size)
        self.anchor_sizes = tuple(anchor_sizes)
        self.anchor_ratios = tuple(anchor_ratios)
        self.stride = stride
        self.ps_channels = ps_channels
        self.rcnn_hidden = rcnn_hidden
        self.pooled_size = pooled_size
        self.sampling_ratio = sampling_ratio
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.rpn_nms_threshold = rpn_nms_threshold
        self.box_nms_threshold = box_nms_threshold
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.rpn_coder = BoxCoder(RPN_BOX_WEIGHTS)
        self.rcnn_coder = BoxCoder(RCNN_BOX_WEIGHTS)
        self.rcnn = RCNNHead(ps_channels * pooled_size * pooled_size, rcnn_hidden, num_classes)

    @property
    def num_anchors(self) -> int:
        """Anchors per feature cell ``A``."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @abstractmethod
    def stage1(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Images ``[N, 3, H, W]`` -> (rpn_logits ``[N, A, H/s, W/s]``, rpn_deltas
        ``[N, 4A, H/s, W/s]``, features ``[N, ps_channels * p * p, H/s, W/s]``), s = stride.

        A pure conv graph: this is what exports to ONNX as the detector's first stage.
        """

    def anchors(self, grid_hw: tuple[int, int], device: torch.device | None = None) -> Tensor:
        """``[H * W * A, 4]`` anchors of a feature grid, in the order of the RPN outputs."""
        shapes = anchor_shapes(self.anchor_sizes, self.anchor_ratios).to(device)
        return grid_anchors(shapes, self.stride, grid_hw)

    @torch.no_grad()
    def proposals(self, rpn_logits: Tensor, rpn_deltas: Tensor, image_size: tuple[int, int]) -> list[Tensor]:
        """Per image ``[R, 4]`` proposals (R <= post_nms_top_n), best first.

        Top ``pre_nms_top_n`` anchors by objectness, decoded, clipped to the image, NMS at
        ``rpn_nms_threshold``. No minimum-size filter, so an image always has proposals.
        Proposals are constants for the R-CNN head (no gradient), as in Faster R-CNN.
        """
        n, a, fh, fw = rpn_logits.shape
        anchors = self.anchors((fh, fw), rpn_logits.device)
        scores = rpn_logits.permute(0, 2, 3, 1).reshape(n, -1)
        deltas = rpn_deltas.reshape(n, a, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        out = []
        for i in range(n):
            order = torch.sort(scores[i], descending=True, stable=True).indices[: self.pre_nms_top_n]
            boxes = clip_boxes(self.rpn_coder.decode(deltas[i, order], anchors[order]), image_size)
            keep = nms(boxes, scores[i, order], self.rpn_nms_threshold, max_keep=self.post_nms_top_n)
            out.append(boxes[keep])
        return out

    def pool(self, features: Tensor, rois: Tensor) -> Tensor:
        """PSRoI align of ``[R, 5]`` RoIs ``(batch_index, x1, y1, x2, y2)`` -> ``[R, ps_channels, p, p]``."""
        return ps_roi_align(features, rois, self.pooled_size, 1.0 / self.stride, self.sampling_ratio, aligned=True)

    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """R-CNN subnet: (class logits ``[R, num_classes + 1]``, background at 0; class-agnostic
        box deltas ``[R, 4]`` with weights (10, 10, 5, 5))."""
        return self.rcnn(pooled)

    def postprocess(self, rois: Tensor, cls_logits: Tensor, box_deltas: Tensor,
                    image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Detections of one image: (boxes ``[K, 4]``, scores ``[K]``, labels ``[K]`` int64).

        Softmax over classes; each RoI's decoded, clipped box is a candidate for every class
        whose probability is above ``score_threshold`` (empty boxes dropped); NMS per class;
        the best ``max_detections`` by score (ties in RoI, then class order). Label ``k`` is
        class logit column ``k + 1`` (0-based object classes).
        """
        probs = F.softmax(cls_logits, dim=-1)[:, 1:]
        boxes = clip_boxes(self.rcnn_coder.decode(box_deltas, rois), image_size)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        roi_idx, labels = torch.nonzero((probs > self.score_threshold) & nonempty[:, None], as_tuple=True)
        boxes, scores = boxes[roi_idx], probs[roi_idx, labels]
        keep = batched_nms(boxes, scores, labels, self.box_nms_threshold)[: self.max_detections]
        return boxes[keep], scores[keep], labels[keep]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Full inference: (boxes ``[N, K, 4]`` xyxy input pixels, scores ``[N, K]``, labels
        ``[N, K]`` int64), K = max_detections, best first, padded with zeros / 0 / -1."""
        n, _, h, w = x.shape
        rpn_logits, rpn_deltas, features = self.stage1(x)
        props = self.proposals(rpn_logits, rpn_deltas, (h, w))
        per_image = self.post_nms_top_n
        padded = [torch.cat((p, p.new_zeros(per_image - p.shape[0], 4))) for p in props]
        cls_logits, box_deltas = self.head(self.pool(features, rois_from_list(padded)))
        k = self.max_detections
        boxes, scores = x.new_zeros(n, k, 4), x.new_zeros(n, k)
        labels = torch.full((n, k), -1, dtype=torch.int64, device=x.device)
        for i, p in enumerate(props):
            rows = slice(i * per_image, i * per_image + p.shape[0])  # padding RoIs are ignored
            b, s, c = self.postprocess(p, cls_logits[rows], box_deltas[rows], (h, w))
            boxes[i, : s.shape[0]], scores[i, : s.shape[0]], labels[i, : s.shape[0]] = b, s, c
        return boxes, scores, labels

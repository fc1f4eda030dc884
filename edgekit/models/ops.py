"""Detection ops in plain torch (no torchvision): box coder, anchors, NMS, PSRoI align.

These are the reference semantics of the two-stage detectors' glue; the numpy runtime
re-implements the same conventions, so every convention is spelled out here:

- Boxes are ``(x1, y1, x2, y2)`` in input pixels, width ``x2 - x1`` (no ``+ 1``).
- Anchors of one cell are centred on the cell's pixel centre ``((x + 0.5) * stride,
  (y + 0.5) * stride)``; flat anchor index = ``(y * W + x) * A + a`` and ``a`` runs over
  ratios (outer) then sizes (inner). ``ratio`` is ``h / w``; each anchor has area ``size**2``.
- NMS is exact greedy NMS: boxes visited by score, highest first, ties in input order (stable
  sort); a box is dropped when its IoU with an already kept box is strictly above the threshold.
- PSRoI align follows R-FCN's channel layout and RoIAlign's ``aligned=True`` sampling
  (see :func:`ps_roi_align`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Faster R-CNN's bound on decoded dw/dh: a box grows at most 1000/16 = 62.5x its reference, so
# exp() stays finite on untrained or wild deltas.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxCoder:
    """Faster R-CNN box parametrisation ``(dx, dy, dw, dh)`` relative to reference boxes.

    ``dx = wx * (cx - cx_ref) / w_ref``, ``dw = ww * log(w / w_ref)`` (likewise y, h).

    Args:
        weights: ``(wx, wy, ww, wh)``; ``(1, 1, 1, 1)`` for the RPN, ``(10, 10, 5, 5)`` for
            the R-CNN head (i.e. target stds 0.1/0.2).
        scale_clamp: upper bound of decoded ``dw``/``dh`` before ``exp``.
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clamp: float = DEFAULT_SCALE_CLAMP

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """Deltas ``[..., 4]`` that turn ``reference`` boxes into ``boxes``."""
        wx, wy, ww, wh = self.weights
        rw, rh, rx, ry = _size_centre(reference)
        bw, bh, bx, by = _size_centre(boxes)
        return torch.stack((wx * (bx - rx) / rw, wy * (by - ry) / rh,
                            ww * torch.log(bw / rw), wh * torch.log(bh / rh)), dim=-1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Boxes ``[..., 4]`` from ``deltas`` applied to ``reference`` (broadcasting)."""
        wx, wy, ww, wh = self.weights
        rw, rh, rx, ry = _size_centre(reference)
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        cx, cy = dx * rw + rx, dy * rh + ry
        w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def _size_centre(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return w, h, boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h


def anchor_shapes(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    """``[A, 2]`` anchor (width, height): ratios outer, sizes inner; area size**2, h/w = ratio."""
    s = torch.tensor(sizes, dtype=torch.float64)
    r = torch.tensor(ratios, dtype=torch.float64)
    w = (s[None, :] / r.sqrt()[:, None]).reshape(-1)
    h = (s[None, :] * r.sqrt()[:, None]).reshape(-1)
    return torch.stack((w, h), dim=1).float()


def grid_anchors(shapes: Tensor, stride: int, grid_hw: tuple[int, int]) -> Tensor:
    """``[H * W * A, 4]`` anchors for a feature grid (on ``shapes``' device); index ``(y * W + x) * A + a``."""
    h, w = grid_hw
    ys = (torch.arange(h, dtype=shapes.dtype, device=shapes.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=shapes.dtype, device=shapes.device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    half = torch.cat((-0.5 * shapes, 0.5 * shapes), dim=1)  # [A, 4]
    return (centres + half[None]).reshape(-1, 4)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp ``x`` to ``[0, W]`` and ``y`` to ``[0, H]``; ``image_size`` is ``(H, W)``."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``[N, M]`` IoU of ``a [N, 4]`` with ``b [M, 4]``; 0 where the union is empty."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(a.dtype).tiny), 0.0)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Exact greedy NMS; indices of kept boxes (int64), highest score first.

    Ties in score keep their input order (stable sort), so the result is deterministic.
    ``max_keep`` stops once that many boxes are kept (the same prefix as without it).
    """
    n = boxes.shape[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order]
    removed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    limit = n if max_keep is None else max_keep
    i = 0
    # Visit only kept boxes: each removes its overlaps among the later ones, then we jump to
    # the next survivor. O(n) memory per step (an n x n IoU matrix is 144 MB at n = 6000).
    while i < n and len(keep) < limit:
        keep.append(i)
        later = removed[i + 1:]
        later |= box_iou(ranked[i:i + 1], ranked[i + 1:])[0] > iou_threshold
        survivors = torch.nonzero(~later)
        if survivors.numel() == 0:
            break
        i += 1 + int(survivors[0, 0])
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (e.g. class) separately; kept indices sorted by score (stable).

    Runs one :func:`nms` per group rather than the coordinate-offset trick: memory stays
    quadratic in the largest group, not in all candidates (up to RoIs x classes).
    """
    kept = [idx[nms(boxes[idx], scores[idx], iou_threshold)]
            for idx in (torch.nonzero(groups == g).flatten() for g in torch.unique(groups))]
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    keep = torch.cat(kept)
    # Re-sort by score, ties by original index, so the order does not depend on group ids.
    keep = keep.sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def rois_from_list(boxes: list[Tensor]) -> Tensor:
    """``[R, 5]`` RoIs ``(batch_index, x1, y1, x2, y2)`` from per-image ``[R_i, 4]`` boxes."""
    index = [torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat((i, b), dim=1) for i, b in zip(index, boxes)], dim=0)


def _axis_samples(start: Tensor, length: Tensor, bins: int, ratio: int,
                  size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for ``[R, bins, ratio]`` sample points.

    Returns (valid, low index, high index, weight of low, weight of high), RoIAlign's rules:
    points beyond ``[-1, size]`` read 0; others are clamped into the map.
    """
    step = (length / bins)[:, None, None]
    offsets = torch.arange(bins, dtype=start.dtype, device=start.device)[:, None] + \
        (torch.arange(ratio, dtype=start.dtype, device=start.device)[None, :] + 0.5) / ratio
    pos = start[:, None, None] + offsets[None] * step
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    return valid, low, high, 1.0 - frac, frac


def ps_roi_align(features: Tensor, rois: Tensor, output_size: int = 7, spatial_scale: float = 1 / 16,
                 sampling_ratio: int = 2, aligned: bool = True) -> Tensor:
    """Position-sensitive RoI align: ``[N, C*p*p, H, W]`` x ``[R, 5]`` -> ``[R, C, p, p]``.

    Output ``[r, c, i, j]`` (bin row ``i``, column ``j``) averages ``sampling_ratio**2``
    bilinear samples, evenly spaced inside the bin, of input channel ``(c * p + i) * p + j``
    (R-FCN's layout). RoI corners map to the feature map as ``x * spatial_scale - 0.5`` when
    ``aligned`` (pixel centres, torchvision's ``aligned=True``; no minimum RoI size), else
    ``x * spatial_scale`` with RoI sides at least 1. Samples outside ``[-1, H] x [-1, W]``
    count as 0 in the average. No loop over RoIs: one gather on the flattened map.

    Args:
        features: position-sensitive score maps.
        rois: ``(batch_index, x1, y1, x2, y2)`` in input pixels.
        output_size: bins per side ``p``.
        spatial_scale: feature cells per input pixel (1/16 for stride 16).
        sampling_ratio: samples per bin side (fixed, > 0).
        aligned: half-pixel offset as above.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive int, got {sampling_ratio}")
    _, channels, height, width = features.shape
    p, s = output_size, sampling_ratio
    if channels % (p * p):
        raise ValueError(f"{channels} feature channels are not a multiple of {p}x{p} bins")
    out_ch = channels // (p * p)
    r = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    box = rois[:, 1:].to(features.dtype) * spatial_scale - offset
    w = box[:, 2] - box[:, 0]
    h = box[:, 3] - box[:, 1]
    if not aligned:
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    vy, y0, y1, ly0, ly1 = _axis_samples(box[:, 1], h, p, s, height)   # [R, p, s]
    vx, x0, x1, lx0, lx1 = _axis_samples(box[:, 0], w, p, s, width)
    # Broadcast to [R, C, p(i), p(j), s(iy), s(ix)].
    dev = features.device
    chan = (torch.arange(out_ch, device=dev)[:, None, None] * p
            + torch.arange(p, device=dev)[None, :, None]) * p + torch.arange(p, device=dev)[None, None, :]
    base = (rois[:, 0].long()[:, None, None, None] * channels + chan[None]) * height  # [R, C, p, p]
    base = base[..., None, None]

    def ys(t: Tensor) -> Tensor:
        return t[:, None, :, None, :, None]

    def xs(t: Tensor) -> Tensor:
        return t[:, None, None, :, None, :]

    flat = features.reshape(-1)
    total = flat.new_zeros(())
    for yi, wy in ((y0, ly0), (y1, ly1)):
        row = (base + ys(yi)) * width
        for xi, wx in ((x0, lx0), (x1, lx1)):
            total = total + flat[row + xs(xi)] * (ys(wy) * xs(wx))
    total = total * (ys(vy) & xs(vx)).to(features.dtype)
    out = total.sum(dim=(-1, -2)) / (s * s)
    return out.reshape(r, out_ch, p, p)

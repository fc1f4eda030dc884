"""Box arithmetic of the detectors in numpy: anchors, Faster R-CNN box decoding, clipping,
IoU and exact greedy NMS.

The same conventions as :mod:`edgekit.models.ops` (the PyTorch reference), in float32:
boxes are ``(x1, y1, x2, y2)`` in input pixels with width ``x2 - x1`` (no ``+ 1``); the
anchors of a cell are centred on its pixel centre, flat index ``(y * W + x) * A + a`` with
ratios (``h / w``) outer and sizes inner; NMS visits boxes by score with ties in input order
and drops a box whose IoU with a kept one is strictly above the threshold. Numpy only: this
runs on the board.
"""

from __future__ import annotations

import numpy as np


def anchor_shapes(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> np.ndarray:
    """``[A, 2]`` anchor (width, height), ratios outer and sizes inner; float64 math as the reference."""
    s = np.asarray(sizes, np.float64)[None, :]
    r = np.sqrt(np.asarray(ratios, np.float64))[:, None]
    return np.stack(((s / r).reshape(-1), (s * r).reshape(-1)), axis=1).astype(np.float32)


def grid_anchors(shapes: np.ndarray, stride: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """``[H * W * A, 4]`` anchors centred on the cells' pixel centres; index ``(y * W + x) * A + a``."""
    h, w = grid_hw
    ys = (np.arange(h, dtype=np.float32) + np.float32(0.5)) * np.float32(stride)
    xs = (np.arange(w, dtype=np.float32) + np.float32(0.5)) * np.float32(stride)
    cy, cx = np.meshgrid(ys, xs, indexing="ij")
    centres = np.stack((cx, cy, cx, cy), axis=-1).reshape(-1, 1, 4)
    half = np.concatenate((np.float32(-0.5) * shapes, np.float32(0.5) * shapes), axis=1)
    return (centres + half[None]).reshape(-1, 4).astype(np.float32)


def decode_boxes(deltas: np.ndarray, reference: np.ndarray, weights: tuple[float, float, float, float],
                 scale_clamp: float) -> np.ndarray:
    """Boxes ``[..., 4]`` from Faster R-CNN deltas ``(dx, dy, dw, dh) / weights`` on ``reference``."""
    wx, wy, ww, wh = (np.float32(v) for v in weights)
    rw = reference[..., 2] - reference[..., 0]
    rh = reference[..., 3] - reference[..., 1]
    rx, ry = reference[..., 0] + np.float32(0.5) * rw, reference[..., 1] + np.float32(0.5) * rh
    clamp = np.float32(scale_clamp)
    dw = np.minimum(deltas[..., 2] / ww, clamp)
    dh = np.minimum(deltas[..., 3] / wh, clamp)
    cx, cy = deltas[..., 0] / wx * rw + rx, deltas[..., 1] / wy * rh + ry
    w, h = np.exp(dw) * rw, np.exp(dh) * rh
    half_w, half_h = np.float32(0.5) * w, np.float32(0.5) * h
    return np.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), axis=-1).astype(np.float32)


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Clamp ``x`` to ``[0, W]`` and ``y`` to ``[0, H]``; ``image_size`` is ``(H, W)``."""
    h, w = image_size
    upper = np.asarray([w, h, w, h], dtype=boxes.dtype)
    return np.clip(boxes, np.zeros((), boxes.dtype), upper)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of ``a [N, 4]`` with ``b [M, 4]``; 0 where the union is empty."""
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    wh = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    tiny = np.finfo(a.dtype).tiny if np.issubdtype(a.dtype, np.floating) else 1
    return np.where(union > 0, inter / np.maximum(union, tiny), 0).astype(a.dtype, copy=False)


# ---------------------------------------------------------------- NMS

def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Exact greedy NMS: int64 indices of the kept boxes, highest score first.

    Ties in score keep their input order (stable sort). A box is dropped when its IoU with a
    kept box is strictly above ``iou_threshold``. ``max_keep`` stops after that many (the
    same prefix as without it).
    """
    n = boxes.shape[0]
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order]
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    limit = n if max_keep is None else max_keep
    i = 0
    # Visit only survivors; each one removes its overlaps among the later boxes. O(n) memory
    # per step: an n x n IoU matrix would be 144 MB at n = 6000.
    while i < n and len(keep) < limit:
        keep.append(i)
        later = removed[i + 1:]
        later |= box_iou(ranked[i:i + 1], ranked[i + 1:])[0] > iou_threshold
        survivors = np.flatnonzero(~later)
        if survivors.size == 0:
            break
        i += 1 + int(survivors[0])
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each group (class) separately; kept indices by score, ties by index."""
    kept = [idx[nms(boxes[idx], scores[idx], iou_threshold)]
            for idx in (np.flatnonzero(groups == g) for g in np.unique(groups))]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    keep = np.sort(np.concatenate(kept))
    return keep[np.argsort(-scores[keep], kind="stable")]

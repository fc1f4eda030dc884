"""Detection ops: box coder, anchors, IoU, NMS, PSRoI align, against hand cases and slow references."""

from __future__ import annotations

import math

import pytest
import torch

from edgekit.models.ops import (
    BoxCoder,
    anchor_shapes,
    batched_nms,
    box_iou,
    clip_boxes,
    grid_anchors,
    nms,
    ps_roi_align,
    rois_from_list,
)


# ---------------------------------------------------------------- box coder, anchors, IoU

def test_box_coder_round_trip_and_identity() -> None:
    torch.manual_seed(0)
    ref = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 16.0, 16.0]])
    boxes = torch.tensor([[12.0, 18.0, 60.0, 90.0], [4.0, 2.0, 10.0, 30.0]])
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights)
        assert torch.allclose(coder.decode(coder.encode(boxes, ref), ref), boxes, atol=1e-4)
        assert torch.equal(coder.decode(torch.zeros(2, 4), ref), ref)
    # Hand value: centre moves by half a width, width doubles -> dx = 0.5 * 10, dw = log 2 * 5.
    deltas = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(torch.tensor([[20.0, 0.0, 60.0, 10.0]]),
                                                      torch.tensor([[20.0, 0.0, 40.0, 10.0]]))
    assert torch.allclose(deltas, torch.tensor([[5.0, 0.0, 5 * math.log(2.0), 0.0]]))


def test_box_coder_clamps_dw_dh_at_log_1000_over_16() -> None:
    out = BoxCoder().decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    side = 2.0 * 1000.0 / 16  # exp(clamp) * reference side
    assert torch.allclose(out, torch.tensor([[1 - side / 2, 1 - side / 2, 1 + side / 2, 1 + side / 2]]))


def test_anchor_shapes_area_ratio_and_order() -> None:
    shapes = anchor_shapes((32.0, 64.0), (0.5, 1.0, 2.0))
    assert shapes.shape == (6, 2)
    w, h = shapes[:, 0], shapes[:, 1]
    assert torch.allclose(w * h, torch.tensor([32.0, 64.0] * 3) ** 2)
    assert torch.allclose(h / w, torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0]))  # ratios outer


def test_grid_anchors_centres_and_index_order() -> None:
    shapes = torch.tensor([[16.0, 16.0], [32.0, 8.0]])
    anchors = grid_anchors(shapes, 16, (2, 3))
    assert anchors.shape == (2 * 3 * 2, 4)
    # index (y * W + x) * A + a: y=1, x=2, a=1 -> centre (40, 24), 32 x 8.
    assert torch.equal(anchors[(1 * 3 + 2) * 2 + 1], torch.tensor([24.0, 20.0, 56.0, 28.0]))
    assert torch.equal(anchors[0], torch.tensor([0.0, 0.0, 16.0, 16.0]))


def test_clip_boxes() -> None:
    out = clip_boxes(torch.tensor([[-5.0, 3.0, 400.0, 250.0]]), (240, 320))
    assert torch.equal(out, torch.tensor([[0.0, 3.0, 320.0, 240.0]]))


def test_box_iou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [5.0, 5.0, 5.0, 5.0]])
    iou = box_iou(a, b)
    assert torch.allclose(iou[0], torch.tensor([1.0, 1.0 / 3.0, 0.0, 0.0]))
    assert torch.equal(iou[1], torch.zeros(4))  # empty boxes overlap nothing, not NaN


# ---------------------------------------------------------------- NMS

def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep: list[int] = []
    for i in order:
        if all(float(box_iou(boxes[i:i + 1], boxes[j:j + 1])) <= thr for j in keep):
            keep.append(i)
    return keep


def test_nms_overlapping_pair_keeps_the_higher_score() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.5)
    assert keep.tolist() == [1, 2] and keep.dtype == torch.int64


def test_nms_ties_keep_input_order_and_threshold_is_strict() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    scores = torch.tensor([0.8, 0.8, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]  # the duplicate goes; IoU 1/3 stays
    assert nms(boxes, scores, 1.0 / 3.0).tolist() == [0, 2]  # IoU == threshold is not "above"
    assert nms(boxes, scores, 0.3).tolist() == [0]


def test_nms_suppressed_box_does_not_suppress() -> None:
    # a suppresses b; b would suppress c, but b is gone, and a and c do not overlap enough.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0], [8.0, 0.0, 18.0, 10.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.4).tolist() == [0, 2]


def test_nms_empty_input() -> None:
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)


def test_nms_matches_reference_on_random_boxes_and_max_keep_is_a_prefix() -> None:
    torch.manual_seed(1)
    xy = torch.rand(60, 2) * 50
    boxes = torch.cat((xy, xy + 5 + torch.rand(60, 2) * 20), dim=1)
    scores = torch.randint(0, 10, (60,)).float()  # many ties
    keep = nms(boxes, scores, 0.4)
    assert keep.tolist() == _reference_nms(boxes, scores, 0.4)
    assert nms(boxes, scores, 0.4, max_keep=5).tolist() == keep[:5].tolist()


def test_batched_nms_is_per_group_and_sorted_by_score() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[1.0, 0.0, 11.0, 10.0]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.6])
    groups = torch.tensor([0, 1, 0, 1])
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == [1, 2]


# ---------------------------------------------------------------- PSRoI align

def _bilinear(fmap: torch.Tensor, y: float, x: float) -> float:
    """torchvision's RoIAlign bilinear sample of a 2-D map, scalar by scalar."""
    h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return float((1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1]
                 + ly * (1 - lx) * fmap[y1, x0] + ly * lx * fmap[y1, x1])


def _reference_ps_roi_align(feat: torch.Tensor, rois: torch.Tensor, p: int, scale: float, s: int,
                            aligned: bool) -> torch.Tensor:
    out = torch.zeros(rois.shape[0], feat.shape[1] // (p * p), p, p)
    off = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / p, rh / p
        for c in range(out.shape[1]):
            for i in range(p):
                for j in range(p):
                    fmap = feat[int(b), (c * p + i) * p + j]
                    acc = sum(_bilinear(fmap, y1 + i * bh + (iy + 0.5) * bh / s, x1 + j * bw + (ix + 0.5) * bw / s)
                              for iy in range(s) for ix in range(s))
                    out[r, c, i, j] = acc / (s * s)
    return out


@pytest.mark.parametrize("aligned", [True, False])
def test_ps_roi_align_matches_slow_reference(aligned: bool) -> None:
    torch.manual_seed(0)
    p = 3
    feat = torch.randn(2, 2 * p * p, 6, 7)
    rois = torch.tensor([[0, 8.0, 4.0, 60.0, 50.0],     # inside
                         [1, -20.0, -10.0, 30.0, 40.0],  # partly outside (zeros beyond -1)
                         [1, 90.0, 80.0, 130.0, 120.0],  # crossing the far edges (clamped)
                         [0, 33.0, 17.0, 34.0, 17.5]])   # tiny
    out = ps_roi_align(feat, rois, p, 1 / 8, 2, aligned)
    assert out.shape == (4, 2, p, p)
    assert torch.allclose(out, _reference_ps_roi_align(feat, rois, p, 1 / 8, 2, aligned), atol=1e-5)


def test_ps_roi_align_constant_map_gives_constant_output() -> None:
    out = ps_roi_align(torch.full((1, 5 * 49, 20, 20), 3.5), torch.tensor([[0, 17.0, 40.0, 250.0, 199.0]]))
    assert torch.allclose(out, torch.full((1, 5, 7, 7), 3.5))


def test_ps_roi_align_x_coordinate_map_gives_bin_centres() -> None:
    xs = torch.arange(20.0).expand(1, 2 * 49, 20, 20).contiguous()  # value = x of the cell
    x1, x2 = 64.0, 176.0
    out = ps_roi_align(xs, torch.tensor([[0, x1, 32.0, x2, 200.0]]))
    # aligned: feature x = pixel x / 16 - 0.5; bin j's centre = start + (j + 0.5) * bin width.
    start, width = x1 / 16 - 0.5, (x2 - x1) / 16 / 7
    centres = start + (torch.arange(7.0) + 0.5) * width
    assert torch.allclose(out, centres.expand(1, 2, 7, 7), atol=1e-5)


def test_ps_roi_align_reads_one_channel_group_per_bin() -> None:
    chan = torch.arange(3 * 49.0)[None, :, None, None].expand(1, -1, 10, 10).contiguous()
    out = ps_roi_align(chan, torch.tensor([[0, 10.0, 10.0, 100.0, 120.0]]))
    expected = (torch.arange(3)[:, None, None] * 7 + torch.arange(7)[:, None]) * 7 + torch.arange(7)
    assert torch.allclose(out[0], expected.float(), atol=1e-4)


def test_ps_roi_align_batches_index_their_image_and_gradients_flow() -> None:
    feat = torch.stack((torch.zeros(49, 8, 8), torch.ones(49, 8, 8))).requires_grad_()
    rois = rois_from_list([torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([[8.0, 8.0, 100.0, 90.0]])])
    assert torch.equal(rois[:, 0], torch.tensor([0.0, 1.0]))
    out = ps_roi_align(feat, rois)
    assert torch.equal(out[0], torch.zeros(1, 7, 7)) and torch.allclose(out[1], torch.ones(1, 7, 7))
    out.sum().backward()
    assert feat.grad is not None and feat.grad[1].sum() > 0 and feat.grad[0].sum() > 0


def test_ps_roi_align_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of 7x7"):
        ps_roi_align(torch.zeros(1, 50, 4, 4), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="sampling_ratio"):
        ps_roi_align(torch.zeros(1, 49, 4, 4), torch.zeros(1, 5), sampling_ratio=0)

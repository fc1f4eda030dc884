"""The numpy glue of the two-stage detectors against the PyTorch reference (edgekit.models.ops,
TwoStageDetector) on random cases, plus hand cases and the no-torch import contract."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from edgekit.errors import BundleError
from edgekit.models import ops
from edgekit.models.detection import TwoStageDetector
from edgekit.runtimes.boxes import (NMS_BLOCK, anchor_shapes, batched_nms, box_iou, clip_boxes, decode_boxes,
                                   grid_anchors, nms, top_k)
from edgekit.runtimes.twostage import TwoStageParams, detect, postprocess, proposals, ps_roi_align

THUNDERNET_ANCHORS = ((32.0, 64.0, 128.0, 256.0, 512.0), (0.5, 0.75, 1.0, 4.0 / 3.0, 2.0))
LIGHTHEAD_ANCHORS = ((32.0, 64.0, 128.0, 256.0, 512.0), (0.5, 1.0, 2.0))


def random_boxes(rng: np.random.Generator, n: int, extent: float = 300.0) -> np.ndarray:
    """``[n, 4]`` float32 boxes with corners in ``[0, extent]`` and sides 2..80 px."""
    xy = rng.uniform(0, extent, (n, 2))
    return np.concatenate((xy, xy + rng.uniform(2, 80, (n, 2))), axis=1).astype(np.float32)


# ---------------------------------------------------------------- anchors, decode, clip, IoU

@pytest.mark.parametrize("sizes, ratios", [THUNDERNET_ANCHORS, LIGHTHEAD_ANCHORS])
def test_anchors_equal_the_reference_exactly(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> None:
    shapes = anchor_shapes(sizes, ratios)
    assert np.array_equal(shapes, ops.anchor_shapes(sizes, ratios).numpy())
    grid = grid_anchors(shapes, 16, (20, 15))
    assert grid.dtype == np.float32 and grid.shape == (20 * 15 * len(sizes) * len(ratios), 4)
    assert np.array_equal(grid, ops.grid_anchors(torch.from_numpy(shapes), 16, (20, 15)).numpy())


def test_anchor_hand_values() -> None:
    # Cell (y=1, x=2) of a stride-16 grid has centre (40, 24); a = ratio 2 (h/w), size 16.
    grid = grid_anchors(anchor_shapes((16.0,), (0.5, 2.0)), 16, (2, 3))
    w, h = 16 / np.sqrt(2), 16 * np.sqrt(2)
    np.testing.assert_allclose(grid[(1 * 3 + 2) * 2 + 1], [40 - w / 2, 24 - h / 2, 40 + w / 2, 24 + h / 2], rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_matches_box_coder(weights: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(0)
    ref = random_boxes(rng, 500)
    deltas = rng.normal(0, 2, (500, 4)).astype(np.float32)
    deltas[:10, 2:] = 20.0  # past the clamp log(1000 / 16)
    ours = decode_boxes(deltas, ref, weights, ops.DEFAULT_SCALE_CLAMP)
    theirs = ops.BoxCoder(weights).decode(torch.from_numpy(deltas), torch.from_numpy(ref)).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)  # np.exp and torch.exp differ by 1 ulp


def test_decode_hand_cases() -> None:
    ref = np.array([[20.0, 0.0, 40.0, 10.0]], np.float32)
    assert np.array_equal(decode_boxes(np.zeros((1, 4), np.float32), ref, (10, 10, 5, 5), 4.0), ref)
    # dx = 0.5 * 10 moves the centre by half a width; dw = log 2 * 5 doubles the width.
    out = decode_boxes(np.array([[5.0, 0.0, 5 * np.log(2.0), 0.0]], np.float32), ref, (10, 10, 5, 5), 4.0)
    np.testing.assert_allclose(out, [[20.0, 0.0, 60.0, 10.0]], atol=1e-5)


def test_clip_and_iou_match_the_reference() -> None:
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 200, extent=400.0) - 50.0
    assert np.array_equal(clip_boxes(boxes, (240, 320)), ops.clip_boxes(torch.from_numpy(boxes), (240, 320)).numpy())
    a, b = boxes[:60], boxes[60:]
    assert np.array_equal(box_iou(a, b), ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())
    unit = np.array([[0, 0, 2, 2], [1, 0, 3, 2]], np.float32)
    assert box_iou(unit[:1], unit[1:])[0, 0] == pytest.approx(1 / 3)  # overlap 2 of union 6


# ---------------------------------------------------------------- NMS

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n, threshold", [(40, 0.5), (600, 0.7), (600, 0.3)])
def test_nms_keeps_the_reference_indices(seed: int, n: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, extent=200.0)
    scores = rng.random(n).astype(np.float32)
    scores[::5] = scores[0]  # ties: both keep input order
    expected = ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64 and np.array_equal(keep, expected)
    assert np.array_equal(nms(boxes, scores, threshold, max_keep=7), expected[:7])
    groups = rng.integers(0, 6, n)
    expected = ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups),
                               threshold).numpy()
    assert np.array_equal(batched_nms(boxes, scores, groups, threshold), expected)


@pytest.mark.parametrize("seed", range(3))
def test_blocked_nms_crosses_block_boundaries_exactly(seed: int) -> None:
    # Clusters of near-duplicates straddle the NMS blocks, scores are heavily tied and some
    # boxes are empty (IoU 0 with everything): every rule of the one-at-a-time algorithm.
    rng = np.random.default_rng(10 + seed)
    n = 5 * NMS_BLOCK + 7
    centres = random_boxes(rng, 12, extent=150.0)
    boxes = centres[rng.integers(0, 12, n)] + rng.normal(0, 3, (n, 4)).astype(np.float32)
    boxes[::17, 2:] = boxes[::17, :2]
    scores = rng.integers(0, 8, n).astype(np.float32)
    groups = rng.integers(0, 3, n)
    for threshold in (0.0, 0.5, 0.9):
        tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
        expected = ops.nms(tb, ts, threshold).numpy()
        assert np.array_equal(nms(boxes, scores, threshold), expected)
        for limit in (0, 1, NMS_BLOCK, len(expected)):
            assert np.array_equal(nms(boxes, scores, threshold, max_keep=limit), expected[:limit])
        expected = ops.batched_nms(tb, ts, torch.from_numpy(groups), threshold).numpy()
        assert np.array_equal(batched_nms(boxes, scores, groups, threshold), expected)
        assert np.array_equal(batched_nms(boxes, scores, groups, threshold, max_keep=9), expected[:9])


def test_top_k_equals_the_stable_sort() -> None:
    rng = np.random.default_rng(6)
    for scores in (rng.normal(size=500).astype(np.float32), rng.integers(0, 5, 500).astype(np.float32)):
        scores[[3, 77]] = np.nan
        scores[[5, 9]] = -np.inf
        for k in (0, 1, 10, 100, 497, 499, 500, 600):
            assert np.array_equal(top_k(scores, k), np.argsort(-scores, kind="stable")[:k]), k
    assert top_k(np.array([1.0, 2.0, 2.0, 0.5], np.float32), 2).tolist() == [1, 2]  # ties by index


def test_nms_hand_cases() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.9], np.float32)
    # Box 3 ties box 0 and comes later, so box 0 wins; box 1 overlaps box 0 (IoU 9/11).
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2]  # 9/11 < 0.9; the duplicate (IoU 1) goes
    # Strictly above the threshold: IoU exactly 0.5 survives.
    half = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], np.float32)
    assert nms(half, np.array([1.0, 0.5], np.float32), 0.5).tolist() == [0, 1]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []
    # Per class: the overlapping pair survives when the classes differ.
    assert batched_nms(boxes[:2], scores[:2], np.array([0, 1]), 0.5).tolist() == [0, 1]


# ---------------------------------------------------------------- PSRoI align

@pytest.mark.parametrize("aligned", [True, False])
def test_ps_roi_align_matches_the_reference(aligned: bool) -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 5 * 49, 20, 18)).astype(np.float32)
    xy = rng.uniform(-40, 320, (300, 2))
    rois = np.concatenate((rng.integers(0, 2, (300, 1)), xy, xy + rng.uniform(0, 200, (300, 2))), axis=1)
    rois = rois.astype(np.float32)
    ours = ps_roi_align(features, rois, 7, 1 / 16, 2, aligned)
    theirs = ops.ps_roi_align(torch.from_numpy(features), torch.from_numpy(rois), 7, 1 / 16, 2, aligned).numpy()
    assert ours.shape == (300, 5, 7, 7) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_ps_roi_align_is_bit_exact_up_to_two_samples(sampling_ratio: int) -> None:
    # Same float operations in the same order as the reference: equal, not merely close.
    rng = np.random.default_rng(7)
    features = rng.normal(size=(2, 3 * 9, 11, 13)).astype(np.float32)
    xy = rng.uniform(-60, 220, (40, 2))
    rois = np.concatenate((rng.integers(0, 2, (40, 1)), xy, xy + rng.uniform(0, 150, (40, 2))), axis=1)
    rois = rois.astype(np.float32)
    for aligned in (True, False):
        ours = ps_roi_align(features, rois, 3, 1 / 16, sampling_ratio, aligned)
        theirs = ops.ps_roi_align(torch.from_numpy(features), torch.from_numpy(rois), 3, 1 / 16, sampling_ratio,
                                  aligned).numpy()
        assert np.array_equal(ours, theirs)
    assert ps_roi_align(features, rois[:0], 3, 1 / 16, sampling_ratio).shape == (0, 3, 3, 3)


def test_ps_roi_align_reads_channel_c_p_p_plus_bin() -> None:
    # Channel k holds the constant k: bin (i, j) of output channel c must read (c * 3 + i) * 3 + j.
    features = np.broadcast_to(np.arange(2 * 9, dtype=np.float32)[None, :, None, None], (1, 18, 6, 6)).copy()
    out = ps_roi_align(features, np.array([[0, 4.0, 8.0, 70.0, 60.0]], np.float32), 3, 1 / 16, 2)
    assert np.array_equal(out[0], np.arange(18, dtype=np.float32).reshape(2, 3, 3))
    # x-coordinate map: aligned bins read their sample positions x / 16 - 0.5.
    xs = np.broadcast_to(np.arange(20, dtype=np.float32), (1, 49, 20, 20)).copy()
    out = ps_roi_align(xs, np.array([[0, 64.0, 32.0, 176.0, 200.0]], np.float32), 7, 1 / 16, 2)
    centres = 64 / 16 - 0.5 + (np.arange(7) + 0.5) * (112 / 16 / 7)
    np.testing.assert_allclose(out[0, 0], np.broadcast_to(centres, (7, 7)), atol=1e-5)


# ---------------------------------------------------------------- the pipeline on a tiny detector

class TinyDetector(TwoStageDetector):
    """A one-conv stage 1 with the detectors' contract: fast, and every output is random."""

    def __init__(self) -> None:
        super().__init__(num_classes=4, input_size=(64, 96), anchor_sizes=(16.0, 48.0), anchor_ratios=(0.5, 1.0, 2.0),
                         stride=8, ps_channels=2, rcnn_hidden=16, pooled_size=3, pre_nms_top_n=50,
                         post_nms_top_n=12, score_threshold=0.2, max_detections=6)
        a, ps = self.num_anchors, self.ps_channels * 9
        self.conv = nn.Conv2d(3, 5 * a + ps, 8, stride=8)
        nn.init.normal_(self.rcnn.cls.weight, std=1.0)  # spread the class scores past the threshold
        nn.init.normal_(self.rcnn.box.weight, std=0.1)

    def stage1(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, deltas scaled to ~0.3, position-sensitive map)."""
        y = self.conv(x)
        a = self.num_anchors
        return y[:, :a], 0.3 * y[:, a:5 * a], y[:, 5 * a:]


def params_of(model: TwoStageDetector) -> TwoStageParams:
    """What the exporter writes for ``model`` (see edgekit.detector_export.twostage_params)."""
    from edgekit.detector_export import twostage_params

    return twostage_params(model)


@pytest.fixture(scope="module")
def tiny() -> TinyDetector:
    torch.manual_seed(0)
    return TinyDetector().eval()


def torch_stage(fn: Callable[[Tensor], tuple[Tensor, ...]]) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """Wrap a torch stage as numpy in, numpy out (what a runtime backend looks like to the glue)."""
    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return tuple(t.numpy() for t in fn(torch.from_numpy(x)))
    return run


def test_proposals_and_postprocess_match_the_detector(tiny: TinyDetector) -> None:
    params = params_of(tiny)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, deltas, _ = tiny.stage1(x)
        expected = tiny.proposals(logits, deltas, (64, 96))
    ours = proposals(logits.numpy(), deltas.numpy(), params, (64, 96))
    for a, b in zip(ours, expected):
        assert a.shape == b.shape and a.shape[0] == 12
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    rng = np.random.default_rng(4)
    rois = random_boxes(rng, 30, extent=60.0)
    cls_logits = rng.normal(0, 2, (30, 5)).astype(np.float32)
    box_deltas = rng.normal(0, 1, (30, 4)).astype(np.float32)
    b, s, c = postprocess(rois, cls_logits, box_deltas, params, (64, 96))
    tb, ts, tc = tiny.postprocess(torch.from_numpy(rois), torch.from_numpy(cls_logits), torch.from_numpy(box_deltas),
                                  (64, 96))
    assert c.dtype == np.int64 and np.array_equal(c, tc.numpy()) and len(c) == params.max_detections
    np.testing.assert_allclose(b, tb.numpy(), atol=1e-4)
    np.testing.assert_allclose(s, ts.numpy(), atol=1e-6)


def test_detect_equals_forward_with_padding(tiny: TinyDetector) -> None:
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = [t.numpy() for t in tiny(x)]
    boxes, scores, labels = detect(x.numpy(), torch_stage(tiny.stage1), torch_stage(tiny.head), params_of(tiny))
    assert (boxes.shape, scores.shape, labels.shape) == ((2, 6, 4), (2, 6), (2, 6))
    assert np.array_equal(labels, expected[2]) and (labels >= 0).any()
    np.testing.assert_allclose(boxes, expected[0], atol=1e-4)
    np.testing.assert_allclose(scores, expected[1], atol=1e-6)
    tiny.score_threshold = 0.99  # nothing fires: all padding
    try:
        _, scores, labels = detect(x.numpy(), torch_stage(tiny.stage1), torch_stage(tiny.head), params_of(tiny))
    finally:
        tiny.score_threshold = 0.2
    assert (labels == -1).all() and (scores == 0).all()


# ---------------------------------------------------------------- parameters and the board contract

def test_params_round_trip_through_json_and_refuse_bad_values(tiny: TinyDetector) -> None:
    params = params_of(tiny)
    assert TwoStageParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    data = params.to_dict()
    with pytest.raises(BundleError, match="missing \\['stride'\\]"):
        TwoStageParams.from_dict({k: v for k, v in data.items() if k != "stride"})
    with pytest.raises(BundleError, match="unknown \\['soft_nms'\\]"):
        TwoStageParams.from_dict({**data, "soft_nms": True})
    with pytest.raises(BundleError, match="pooled_size=0"):
        TwoStageParams.from_dict({**data, "pooled_size": 0})


def test_glue_imports_without_torch() -> None:
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('no torch on this board')
sys.meta_path.insert(0, Block())
import numpy as np
from edgekit.runtimes.twostage import nms, ps_roi_align
assert nms(np.array([[0, 0, 1, 1]], np.float32), np.ones(1, np.float32), 0.5).tolist() == [0]
assert 'torch' not in sys.modules
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

"""ThunderNet: the paper's structure (CEM, compressed RPN, SAM, PSRoI 5x7x7, FC 1024) and the
two-stage detector contract (stage1 shapes, ONNX stage 1, forward = the glue, fixed RoI count)."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgekit.models.counting import count_macs
from edgekit.models.ops import rois_from_list
from edgekit.models.zoo.snet import snet
from edgekit.models.zoo.thundernet import ThunderNet, thundernet_snet49

SIZE = (320, 320)


@pytest.fixture(scope="module")
def model() -> ThunderNet:
    """SNet49 ThunderNet with a few classes (the head's width does not matter here)."""
    torch.manual_seed(0)
    return thundernet_snet49(num_classes=3).eval()


@pytest.mark.parametrize("variant", [49, 146, 535])
def test_structure_follows_the_paper(variant: int) -> None:
    m = ThunderNet(snet(variant))
    c4, c5 = m.backbone.out_channels
    assert (m.cem.c4.in_channels, m.cem.c5.in_channels, m.cem.glb.in_channels) == (c4, c5, c5)
    assert {m.cem.c4.out_channels, m.cem.c5.out_channels, m.cem.glb.out_channels} == {245}  # 5 x 7 x 7
    dw, pw = m.rpn.body[0], m.rpn.body[3]
    assert (dw.kernel_size, dw.groups, dw.out_channels) == ((5, 5), 245, 245)
    assert (pw.kernel_size, pw.out_channels) == ((1, 1), 256)
    assert (m.rpn.cls.out_channels, m.rpn.reg.out_channels) == (25, 100)
    assert (m.sam.conv.in_channels, m.sam.conv.out_channels) == (256, 245)
    assert (m.rcnn.fc.in_features, m.rcnn.fc.out_features) == (245, 1024)
    assert (m.rcnn.cls.out_features, m.rcnn.box.out_features) == (81, 4)
    assert (m.ps_channels, m.pooled_size, m.num_anchors, m.stride) == (5, 7, 25, 16)
    assert (m.pre_nms_top_n, m.post_nms_top_n, m.rpn_nms_threshold) == (2000, 200, 0.7)


def test_stage1_shapes_at_320(model: ThunderNet) -> None:
    with torch.no_grad():
        logits, deltas, feats = model.stage1(torch.rand(1, 3, *SIZE))
    assert logits.shape == (1, 25, 20, 20)
    assert deltas.shape == (1, 100, 20, 20)
    assert feats.shape == (1, 245, 20, 20)
    assert model.anchors((20, 20)).shape == (20 * 20 * 25, 4)


def test_sam_scales_cem_by_sigmoid_of_the_rpn_feature(model: ThunderNet) -> None:
    cem, rpn = torch.randn(1, 245, 4, 4), torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        expected = cem * torch.sigmoid(model.sam.bn(model.sam.conv(rpn)))
        assert torch.allclose(model.sam(cem, rpn), expected)
        sam = type(model.sam)().eval()
        nn.init.zeros_(sam.conv.weight)  # sigmoid(BN(0)) = 0.5 with fresh BN statistics
        assert torch.allclose(sam(cem, rpn), 0.5 * cem, atol=1e-6)


def test_cem_global_branch_is_broadcast(model: ThunderNet) -> None:
    cem = type(model.cem)(8, 16, 245)
    for conv in (cem.c4, cem.c5):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    c5 = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        out = cem(torch.randn(1, 8, 6, 8), c5)
        glb = cem.glb(c5.mean(dim=(2, 3), keepdim=True))
    assert out.shape == (1, 245, 6, 8)
    assert torch.allclose(out, glb.expand_as(out), atol=1e-6)


def test_forward_returns_padded_detections_inside_the_image(model: ThunderNet) -> None:
    model.score_threshold = 0.0  # untrained weights: every class is ~1/(C+1) likely
    try:
        with torch.no_grad():
            boxes, scores, labels = model(torch.rand(2, 3, *SIZE))
    finally:
        model.score_threshold = 0.05
    k = model.max_detections
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.dtype == torch.int64
    valid = labels >= 0
    assert valid.any() and bool(torch.isfinite(boxes).all())
    b = boxes[valid]
    assert bool((b >= 0).all() & (b[:, 0::2] <= SIZE[1]).all() & (b[:, 1::2] <= SIZE[0]).all())
    assert bool((b[:, 2] > b[:, 0]).all() & (b[:, 3] > b[:, 1]).all())
    assert bool((labels[valid] < 3).all())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first, padding (score 0) last
    assert bool((boxes[~valid] == 0).all() & (scores[~valid] == 0).all())


def test_forward_is_the_glue_and_is_deterministic(model: ThunderNet) -> None:
    x = torch.rand(1, 3, *SIZE)
    model.score_threshold = 0.0
    try:
        with torch.no_grad():
            first, second = model(x), model(x)
            logits, deltas, feats = model.stage1(x)
            props = model.proposals(logits, deltas, SIZE)
            r = props[0].shape[0]
            padded = torch.cat((props[0], torch.zeros(model.post_nms_top_n - r, 4)))
            cls, box = model.head(model.pool(feats, rois_from_list([padded])))
            b, s, c = model.postprocess(props[0], cls[:r], box[:r], SIZE)
    finally:
        model.score_threshold = 0.05
    for a, z in zip(first, second):
        assert torch.equal(a, z)
    n = s.shape[0]
    assert 0 < n <= model.max_detections
    assert torch.equal(first[0][0, :n], b) and torch.equal(first[1][0, :n], s) and torch.equal(first[2][0, :n], c)
    assert r <= model.post_nms_top_n


def test_macs_include_the_head_on_exactly_post_nms_top_n_rois() -> None:
    torch.manual_seed(0)
    m = thundernet_snet49()
    full = count_macs(m, SIZE)
    m.post_nms_top_n = 100
    fewer = count_macs(m, SIZE)
    per_roi = 245 * 1024 + 1024 * 81 + 1024 * 4
    assert full - fewer == 100 * per_roi


def test_stage1_exports_to_onnx_and_matches_torch(model: ThunderNet) -> None:
    class Stage1(nn.Module):
        def __init__(self, det: ThunderNet) -> None:
            super().__init__()
            self.det = det

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self.det.stage1(x)

    x = torch.rand(1, 3, *SIZE)
    buf = io.BytesIO()
    # eval() on the wrapper: the exporter restores the wrapper's mode recursively afterwards.
    torch.onnx.export(Stage1(model).eval(), (x,), buf, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["rpn_logits", "rpn_deltas", "features"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model.stage1(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)

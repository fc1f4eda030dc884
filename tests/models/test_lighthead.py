"""Light-Head R-CNN (fast head on SNet146): the paper's head structure and the detector contract."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgekit.models.counting import count_params
from edgekit.models.detection import RCNNHead, RPNHead, TwoStageDetector
from edgekit.models.zoo.lighthead import LargeSeparableConv, LightHeadRCNN, lighthead_rcnn
from edgekit.models.zoo.thundernet import ThunderNet

SIZE = (320, 320)


@pytest.fixture(scope="module")
def model() -> LightHeadRCNN:
    torch.manual_seed(0)
    return lighthead_rcnn(num_classes=3, post_nms_top_n=100).eval()


def test_structure_follows_the_fast_light_head() -> None:
    m = lighthead_rcnn()
    c4, c5 = m.backbone.out_channels
    assert (c4, c5) == (264, 528)  # SNet146
    rpn_conv = m.rpn.body[0]
    assert (rpn_conv.in_channels, rpn_conv.kernel_size, rpn_conv.out_channels) == (c4, (3, 3), 256)
    assert (m.rpn.cls.out_channels, m.rpn.reg.out_channels) == (15, 60)
    kernels = [conv.kernel_size for conv in (*m.thin.col, *m.thin.row)]
    assert kernels == [(15, 1), (1, 15), (1, 15), (15, 1)]
    assert [conv.out_channels for conv in (*m.thin.col, *m.thin.row)] == [64, 490, 64, 490]
    assert m.thin.col[0].in_channels == c5
    assert (m.rcnn.fc.in_features, m.rcnn.fc.out_features, m.rcnn.cls.out_features) == (490, 2048, 81)
    assert (m.ps_channels, m.pooled_size, m.num_anchors) == (10, 7, 15)
    assert (m.pre_nms_top_n, m.post_nms_top_n, m.rpn_nms_threshold, m.box_nms_threshold) == (6000, 1000, 0.7, 0.5)


def test_large_separable_conv_params_and_receptive_field() -> None:
    conv = LargeSeparableConv(4, 2, 3, kernel_size=15)
    assert count_params(conv) == 2 * (4 * 2 * 15 + 2) + 2 * (2 * 3 * 15 + 3)
    for layer in conv.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    impulse = torch.zeros(1, 4, 31, 31)
    impulse[0, :, 15, 15] = 1.0
    with torch.no_grad():
        touched = conv(impulse)[0, 0] != 0
    # Both branches reach the full 15x15 window around the impulse, nothing beyond.
    assert touched[8:23, 8:23].all() and int(touched.sum()) == 15 * 15


def test_stage1_shapes_at_320(model: LightHeadRCNN) -> None:
    with torch.no_grad():
        logits, deltas, feats = model.stage1(torch.rand(1, 3, *SIZE))
    assert logits.shape == (1, 15, 20, 20)
    assert deltas.shape == (1, 60, 20, 20)
    assert feats.shape == (1, 490, 20, 20)
    assert bool((feats >= 0).all())  # ReLU on the thin feature map


def test_forward_contract_and_determinism(model: LightHeadRCNN) -> None:
    x = torch.rand(1, 3, *SIZE)
    model.score_threshold = 0.0
    try:
        with torch.no_grad():
            first, second = model(x), model(x)
    finally:
        model.score_threshold = 0.05
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    boxes, scores, labels = first
    assert boxes.shape == (1, model.max_detections, 4) and labels.dtype == torch.int64
    valid = labels >= 0
    assert valid.any() and bool(torch.isfinite(boxes).all())
    b = boxes[valid]
    assert bool((b >= 0).all() & (b[:, 0::2] <= SIZE[1]).all() & (b[:, 1::2] <= SIZE[0]).all())


def test_shares_the_detector_code_with_thundernet() -> None:
    light = lighthead_rcnn()
    assert isinstance(light, TwoStageDetector) and issubclass(ThunderNet, TwoStageDetector)
    assert isinstance(light.rpn, RPNHead) and isinstance(light.rcnn, RCNNHead)
    for name in ("proposals", "pool", "head", "postprocess", "forward"):
        assert getattr(LightHeadRCNN, name) is getattr(ThunderNet, name), name


def test_stage1_exports_to_onnx_and_matches_torch(model: LightHeadRCNN) -> None:
    class Stage1(nn.Module):
        def __init__(self, det: LightHeadRCNN) -> None:
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

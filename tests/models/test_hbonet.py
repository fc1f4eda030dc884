"""HBONet: the HBO block's two halves, the stage layout, the authors' checkpoint layout, Table 2 sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.models.counting import count_macs
from edgekit.models.zoo.hbonet import HarmoniousBottleneck, InvertedResidual, hbonet


def test_stride1_hbo_passes_the_last_input_channels_through_in_front() -> None:
    block = HarmoniousBottleneck(40, 64, stride=1, expand_ratio=2).eval()
    x = torch.randn(1, 40, 16, 16)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (1, 64, 16, 16)
    torch.testing.assert_close(out[:, :32], x[:, 8:])  # out - out // 2 = 32 last channels


def test_stride1_hbo_branch_is_upsampled_low_resolution_work_added_to_the_input() -> None:
    block = HarmoniousBottleneck(32, 32, stride=1, expand_ratio=2).eval()
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        low = block.conv(x)
        expected = block.upconv(x[:, :16] + F.interpolate(low, scale_factor=2.0, mode="nearest"))
        out = block(x)
    assert low.shape == (1, 16, 4, 4)  # spatial contraction x2, channel contraction to out // 2
    torch.testing.assert_close(out[:, 16:], expected)


def test_stride2_hbo_pools_the_passthrough_and_has_no_upsampling() -> None:
    block = HarmoniousBottleneck(36, 72, stride=2, expand_ratio=2).eval()
    assert not hasattr(block, "upconv")
    x = torch.randn(1, 36, 16, 16)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (1, 72, 8, 8)
    torch.testing.assert_close(out[:, :36], F.avg_pool2d(x, 2))


def test_stages_and_resolutions() -> None:
    model = hbonet().eval()
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["ConvBNAct", "InvertedResidual"] + ["HarmoniousBottleneck"] * 13 + ["ConvBNAct"] + [
        "InvertedResidual"
    ] * 3
    widths = []
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for m in model.features:
            x = m(x)
            widths.append(tuple(x.shape[1:]))
    # The table's 20 and 36 channels become 24 and 40 after rounding to multiples of 8, as in
    # the authors' code (their checkpoints have these widths).
    assert widths[1] == (24, 112, 112) and widths[2] == (40, 112, 112)
    assert widths[5] == (72, 56, 56) and widths[9] == (96, 28, 28)
    assert widths[13] == (192, 14, 14) and widths[14] == (288, 14, 14) and widths[15] == (144, 14, 14)
    assert widths[-1] == (400, 7, 7)
    assert model.conv[0].out_channels == 1600


def test_state_dict_follows_the_authors_layout() -> None:
    # github.com/d-li14/HBONet models/imagenet/hbonet.py, width 1.0: 458 entries in this layout.
    state = hbonet().state_dict()
    assert len(state) == 458
    assert state["features.1.conv.0.weight"].shape == (32, 1, 3, 3)  # t=1 block starts depthwise
    assert state["features.2.conv.0.weight"].shape == (24, 1, 5, 5)  # HBO: depthwise 5x5 first
    assert state["features.2.conv.8.weight"].shape == (20, 48, 1, 1)  # to half of 40 channels
    assert state["features.2.upconv.0.weight"].shape == (20, 1, 5, 5)
    assert "features.3.upconv.0.weight" not in state  # stride-2 HBO
    assert state["features.15.0.weight"].shape == (144, 288, 1, 1)
    assert state["conv.0.weight"].shape == (1600, 400, 1, 1)
    assert state["classifier.weight"].shape == (1000, 1600)


# Paper Table 2 (also the authors' README): width -> MFLOPs (multiply-adds) at 224x224.
@pytest.mark.parametrize(("width", "mflops"), [(0.5, 96), (0.25, 37), (0.1, 14)])
def test_narrow_widths_match_table2(width: float, mflops: float) -> None:
    assert count_macs(hbonet(width_mult=width), (224, 224)) / 1e6 == pytest.approx(mflops, rel=0.03)


def test_inverted_residual_shortcut_only_when_shapes_match() -> None:
    assert InvertedResidual(200, 200, 1, 6).identity
    assert not InvertedResidual(144, 200, 2, 6).identity
    assert isinstance(InvertedResidual(32, 20, 1, 1).conv[0], nn.Conv2d)


def test_bad_stride_is_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        HarmoniousBottleneck(8, 8, stride=3, expand_ratio=2)


def test_too_few_input_channels_for_the_passthrough_is_refused() -> None:
    with pytest.raises(ValueError, match="in_ch"):
        HarmoniousBottleneck(8, 24, stride=1, expand_ratio=2)

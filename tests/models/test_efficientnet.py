"""EfficientNet-B0 / Lite0 / V2-B0: expansion ratios, SE and Fused-MBConv placement, stochastic depth."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgekit.models.counting import count_params
from edgekit.models.zoo.efficientnet import (
    DropPath,
    FusedMBConv,
    MBConv,
    SqueezeExcitation,
    efficientnet_b0,
    efficientnet_lite0,
    efficientnetv2_b0,
)


def _stages(model: nn.Module) -> list[nn.Sequential]:
    return list(model.features[1:-1])


def _hidden(block: nn.Module) -> int:
    # Width after the expansion (MBConv: depthwise conv width; Fused: fused conv output).
    first = block.block[0][0]
    return first.out_channels if isinstance(block, FusedMBConv) or first.groups == 1 else first.in_channels


def _expand_ratio(block: nn.Module) -> int:
    return _hidden(block) // block.block[0][0].in_channels


def _has_se(block: nn.Module) -> bool:
    return any(isinstance(m, SqueezeExcitation) for m in block.block)


def test_b0_stages_follow_table1() -> None:
    stages = _stages(efficientnet_b0())
    assert [len(s) for s in stages] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[0].out_channels for s in stages] == [16, 24, 40, 80, 112, 192, 320]
    assert [_expand_ratio(s[0]) for s in stages] == [1, 6, 6, 6, 6, 6, 6]
    kernels = [next(m for m in s[0].modules() if isinstance(m, nn.Conv2d) and m.groups > 1).kernel_size[0]
               for s in stages]
    assert kernels == [3, 3, 5, 3, 5, 5, 3]
    assert all(_has_se(b) for s in stages for b in s)
    assert not any(isinstance(m, nn.ReLU6) for m in stages[0].modules())  # swish everywhere


def test_se_squeezes_to_a_quarter_of_the_block_input() -> None:
    stages = _stages(efficientnet_b0())
    se = stages[3][0].block[2]  # 40 -> 80, hidden 240: squeeze 40 // 4 = 10
    assert (se.fc1.in_channels, se.fc1.out_channels, se.fc2.out_channels) == (240, 10, 240)
    assert isinstance(se.activation, nn.SiLU) and isinstance(se.scale_activation, nn.Sigmoid)


def test_b0_parameter_count_equals_torchvisions() -> None:
    # torchvision EfficientNet_B0_Weights meta "num_params": the same layers, key for key.
    model = efficientnet_b0()
    assert count_params(model) == 5288548
    state = model.state_dict()
    assert state["features.1.0.block.1.fc1.weight"].shape == (8, 32, 1, 1)
    assert state["features.2.0.block.0.0.weight"].shape == (96, 16, 1, 1)
    assert state["features.8.0.weight"].shape == (1280, 320, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)


def test_lite0_has_no_se_and_only_relu6() -> None:
    model = efficientnet_lite0()
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) > 30
    assert model.features[0][0].out_channels == 32 and model.features[-1][0].out_channels == 1280
    assert [_expand_ratio(s[0]) for s in _stages(model)] == [1, 6, 6, 6, 6, 6, 6]


def test_v2_b0_fuses_the_first_three_stages() -> None:
    stages = _stages(efficientnetv2_b0())
    assert [len(s) for s in stages] == [1, 2, 2, 3, 5, 8]
    assert [s[0].out_channels for s in stages] == [16, 32, 48, 96, 112, 192]
    assert [type(s[0]) for s in stages] == [FusedMBConv] * 3 + [MBConv] * 3
    assert [_expand_ratio(s[0]) for s in stages[1:]] == [4, 4, 4, 6, 6]  # stage 1: ratio 1, see below
    assert [any(_has_se(b) for b in s) for s in stages] == [False] * 3 + [True] * 3
    # No depthwise conv at all in the fused stages: the expansion is a regular 3x3.
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for s in stages[:3] for m in s.modules())
    fused = stages[1][0].block
    assert (fused[0][0].kernel_size, fused[0][0].stride, fused[0][0].out_channels) == ((3, 3), (2, 2), 64)
    assert len(fused[1]) == 2  # linear 1x1 projection: conv + BN, no activation
    # Expansion 1: the fused block is a single 3x3 conv 32 -> 16 with its activation.
    assert len(stages[0][0].block) == 1 and isinstance(stages[0][0].block[0][2], nn.SiLU)


@pytest.mark.parametrize("factory", [efficientnet_b0, efficientnet_lite0, efficientnetv2_b0])
def test_feature_map_is_7x7x1280(factory: Callable[[], nn.Module]) -> None:
    with torch.no_grad():
        feats = factory().eval().features(torch.zeros(1, 3, 224, 224))
    assert feats.shape == (1, 1280, 7, 7)


def test_stochastic_depth_grows_linearly_and_is_identity_in_eval() -> None:
    model = efficientnet_b0(drop_path=0.2)
    rates = [b.stochastic_depth.p for s in _stages(model) for b in s]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2 * 15 / 16)
    assert rates == sorted(rates)
    drop = DropPath(0.5)
    x = torch.ones(64, 2, 1, 1)
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(0)
    kept = drop.train()(x)
    assert set(kept.unique().tolist()) == {0.0, 2.0}  # whole samples dropped, the rest rescaled


def test_residual_only_where_shapes_match() -> None:
    stages = _stages(efficientnetv2_b0())
    assert [b.use_res_connect for b in stages[1]] == [False, True]
    assert not stages[0][0].use_res_connect  # 32 -> 16

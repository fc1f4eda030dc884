"""MobileNetV3: the paper's layer tables (SE, hard-swish, strides), the SE gate, torchvision sizes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgekit.models.counting import count_params
from edgekit.models.zoo.mobilenetv3 import (
    InvertedResidual,
    SqueezeExcitation,
    mobilenetv3_large,
    mobilenetv3_small,
)


def _blocks(model: nn.Module) -> list[InvertedResidual]:
    return [m for m in model.features if isinstance(m, InvertedResidual)]


def _has_se(block: InvertedResidual) -> bool:
    return any(isinstance(m, SqueezeExcitation) for m in block.block)


def _uses_hswish(block: InvertedResidual) -> bool:
    return any(isinstance(m, nn.Hardswish) for m in block.modules())


# 1-based bneck rows of paper Table 1 (Large) / Table 2 (Small) with SE, and with "HS".
@pytest.mark.parametrize(
    ("factory", "se_rows", "hs_rows", "n_blocks"),
    [
        (mobilenetv3_large, {4, 5, 6, 11, 12, 13, 14, 15}, set(range(7, 16)), 15),
        (mobilenetv3_small, {1} | set(range(4, 12)), set(range(4, 12)), 11),
    ],
)
def test_se_and_hardswish_placement_follow_the_tables(
    factory: Callable[[], nn.Module], se_rows: set[int], hs_rows: set[int], n_blocks: int
) -> None:
    blocks = _blocks(factory())
    assert len(blocks) == n_blocks
    assert {i for i, b in enumerate(blocks, 1) if _has_se(b)} == se_rows
    assert {i for i, b in enumerate(blocks, 1) if _uses_hswish(b)} == hs_rows


@pytest.mark.parametrize(("factory", "head"), [(mobilenetv3_large, 960), (mobilenetv3_small, 576)])
def test_feature_map_is_7x7_with_the_tables_head_width(factory: Callable[[], nn.Module], head: int) -> None:
    model = factory().eval()
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, 224, 224))
    assert feats.shape == (1, head, 7, 7)
    assert isinstance(model.features[0][2], nn.Hardswish)  # stem: 16 filters with h-swish (Sec. 5.1)
    assert model.features[0][0].out_channels == 16


def test_se_squeezes_to_a_quarter_of_the_expansion() -> None:
    blocks = _blocks(mobilenetv3_large())
    se = [m for b in blocks for m in b.block if isinstance(m, SqueezeExcitation)]
    # exp 72, 120, 120, 480, 672, 672, 960, 960 -> /4 rounded to a multiple of 8.
    assert [s.fc1.out_channels for s in se] == [24, 32, 32, 120, 168, 168, 240, 240]


def test_se_gate_is_hard_sigmoid() -> None:
    se = SqueezeExcitation(16)
    nn.init.zeros_(se.fc2.weight)
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        se.fc2.bias.fill_(3.0)  # relu6(3 + 3) / 6 = 1: a sigmoid would give 0.95
        torch.testing.assert_close(se(x), x)
        se.fc2.bias.fill_(0.0)  # relu6(0 + 3) / 6 = 0.5
        torch.testing.assert_close(se(x), x * 0.5)


@pytest.mark.parametrize(("factory", "count"), [(mobilenetv3_large, 5483032), (mobilenetv3_small, 2542856)])
def test_parameter_count_equals_torchvisions(factory: Callable[[], nn.Module], count: int) -> None:
    # torchvision MobileNet_V3_*_Weights meta "num_params": same layers, same widths.
    assert count_params(factory()) == count


def test_classifier_is_linear_hswish_dropout_linear() -> None:
    head = mobilenetv3_small(num_classes=10).classifier
    assert [type(m) for m in head] == [nn.Linear, nn.Hardswish, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (576, 1024, 10)

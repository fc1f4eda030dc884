"""MobileNetV2: torchvision state-dict layout, the narrower widths' published sizes, the blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekit.models.counting import count_macs, count_params
from edgekit.models.zoo.mobilenetv2 import InvertedResidual, mobilenetv2

DATA = Path(__file__).parent / "data"


def _reference() -> dict[str, list[int]]:
    # {key: shape} dumped from torchvision's own mobilenet_v2() (source commit in the file).
    return json.loads((DATA / "torchvision_mobilenet_v2_keys.json").read_text())["state_dict"]


def test_state_dict_keys_and_shapes_match_torchvision() -> None:
    ours = {k: list(v.shape) for k, v in mobilenetv2().state_dict().items()}
    assert ours == _reference()
    assert list(ours) == list(_reference())  # same order too: diffs read line by line


def test_torchvision_shaped_checkpoint_loads_strict() -> None:
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=gen)
        for k, shape in _reference().items()
    }
    model = mobilenetv2()
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(model.features[2].conv[1][0].weight, state["features.2.conv.1.0.weight"])
    torch.testing.assert_close(model.classifier[1].bias, state["classifier.1.bias"])


# Official checkpoint table (tensorflow/models research/slim/nets/mobilenet/README.md):
# width -> (MMACs, Mparams) at 224x224. The paper's Fig. 5 plots the same models.
@pytest.mark.parametrize(("width", "macs_m", "params_m"), [(0.75, 209, 2.61), (0.5, 97, 1.95)])
def test_narrow_widths_match_published_size(width: float, macs_m: float, params_m: float) -> None:
    model = mobilenetv2(width_mult=width)
    assert count_macs(model, (224, 224)) / 1e6 == pytest.approx(macs_m, rel=0.02)
    assert count_params(model) / 1e6 == pytest.approx(params_m, rel=0.02)


def test_last_conv_stays_1280_below_width_one() -> None:
    # Paper Sec. 6.1: the width multiplier is applied to every layer except the last conv.
    assert mobilenetv2(width_mult=0.5).features[-1][0].out_channels == 1280
    assert mobilenetv2(width_mult=1.4).features[-1][0].out_channels == 1792


def test_blocks_follow_table2() -> None:
    blocks = [m for m in mobilenetv2().features if isinstance(m, InvertedResidual)]
    widths = [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320]
    assert [b.out_channels for b in blocks] == widths
    # t=1 in the first block: no expansion conv, so its Sequential starts at the depthwise conv.
    assert blocks[0].conv[0][0].groups == 32 and len(blocks[0].conv) == 3
    assert blocks[1].conv[0][0].out_channels == 16 * 6
    assert sum(b.use_res_connect for b in blocks) == 10  # every repeat after a stage's first


def test_linear_bottleneck_and_shortcut() -> None:
    block = InvertedResidual(24, 24, stride=1, expand_ratio=6).eval()
    assert isinstance(block.conv[-1], torch.nn.BatchNorm2d)  # no activation after projection
    for p in block.conv[-2].parameters():
        torch.nn.init.zeros_(p)  # projection outputs zero -> BN output is its bias (zero)
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_non_positive_width_is_refused() -> None:
    with pytest.raises(ValueError, match="width_mult"):
        mobilenetv2(width_mult=0)

"""SqueezeNet 1.0: Fire module widths (Table 1), no BatchNorm, the Fire concat, torchvision layout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.models.counting import count_params
from edgekit.models.zoo.squeezenet import Fire, squeezenet


def _fires(model: nn.Module) -> list[Fire]:
    return [m for m in model.features if isinstance(m, Fire)]


def test_fire_widths_follow_table1() -> None:
    widths = [(f.squeeze.out_channels, f.expand1x1.out_channels, f.expand3x3.out_channels)
              for f in _fires(squeezenet())]
    assert widths == [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
                      (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]
    # Squeeze ratio 1/8: every squeeze layer is an eighth of its module's expand width.
    assert all(8 * s == e1 + e3 for s, e1, e3 in widths)


def test_no_batchnorm_and_every_conv_has_a_bias() -> None:
    model = squeezenet()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 8 * 3 + 1 and all(c.bias is not None for c in convs)


def test_parameter_count_is_table1_total() -> None:
    assert count_params(squeezenet()) == 1_248_424


def test_fire_concatenates_relu_of_both_expand_branches() -> None:
    fire = Fire(24, 8, 16, 16).eval()
    x = torch.randn(1, 24, 9, 9)
    with torch.no_grad():
        s = F.relu(fire.squeeze(x))
        expected = torch.cat((F.relu(fire.expand1x1(s)), F.relu(fire.expand3x3(s))), 1)
        torch.testing.assert_close(fire(x), expected)
    assert fire(x).shape == (1, 32, 9, 9)


def test_pooling_positions_and_resolutions() -> None:
    model = squeezenet().eval()
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [2, 6, 11]  # after conv1, fire4 and fire8 (Table 1)
    with torch.no_grad():
        # 227x227 is the Caffe crop Table 1's 111 -> 55 -> 27 -> 13 sizes come from.
        assert model.features(torch.zeros(1, 3, 227, 227)).shape == (1, 512, 13, 13)
        assert model.features(torch.zeros(1, 3, 224, 224)).shape == (1, 512, 13, 13)


def test_state_dict_follows_torchvision_layout() -> None:
    state = squeezenet().state_dict()
    assert len(state) == 52
    assert state["features.0.weight"].shape == (96, 3, 7, 7)
    assert state["features.3.squeeze.weight"].shape == (16, 96, 1, 1)
    assert state["features.12.expand3x3.weight"].shape == (256, 64, 3, 3)
    assert state["classifier.1.weight"].shape == (1000, 512, 1, 1)

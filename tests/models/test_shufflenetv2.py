"""ShuffleNetV2: torchvision state-dict layout, paper Table 5 widths, the unit's split/shuffle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.models.zoo.shufflenetv2 import (
    InvertedResidual,
    ShuffleNetV2,
    shufflenetv2_0_5,
    shufflenetv2_1_0,
)

DATA = Path(__file__).parent / "data"

# {key: shape} dumped from torchvision's own shufflenet_v2_x*_* (source commit in the file).
REFERENCES = [
    ("torchvision_shufflenetv2_x1_0_keys.json", shufflenetv2_1_0),
    ("torchvision_shufflenetv2_x0_5_keys.json", shufflenetv2_0_5),
]


def _reference(file: str) -> dict[str, list[int]]:
    return json.loads((DATA / file).read_text())["state_dict"]


@pytest.mark.parametrize(("file", "factory"), REFERENCES)
def test_state_dict_keys_and_shapes_match_torchvision(file: str, factory: Callable[[], nn.Module]) -> None:
    ours = {k: list(v.shape) for k, v in factory().state_dict().items()}
    assert ours == _reference(file)
    assert list(ours) == list(_reference(file))  # same order too: diffs read line by line


@pytest.mark.parametrize(("file", "factory"), REFERENCES)
def test_torchvision_shaped_checkpoint_loads_strict(file: str, factory: Callable[[], nn.Module]) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=gen)
        for k, shape in _reference(file).items()
    }
    model = factory()
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(model.stage3[0].branch1[0].weight, state["stage3.0.branch1.0.weight"])
    torch.testing.assert_close(model.fc.bias, state["fc.bias"])


def test_widths_and_resolutions_follow_table5() -> None:
    # ShuffleNetV2 1.0x at 224x224: stage2 28x28x116, stage3 14x14x232, stage4 7x7x464, conv5 1024.
    model = shufflenetv2_1_0().eval()
    x = torch.zeros(1, 3, 224, 224)
    shapes = []
    with torch.no_grad():
        x = model.maxpool(model.conv1(x))
        for stage in (model.stage2, model.stage3, model.stage4, model.conv5):
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(116, 28, 28), (232, 14, 14), (464, 7, 7), (1024, 7, 7)]
    assert [len(s) for s in (model.stage2, model.stage3, model.stage4)] == [4, 8, 4]


def test_stride1_unit_passes_half_the_channels_through_to_even_slots() -> None:
    # Split keeps the first half untouched; the 2-group shuffle puts it at channels 0, 2, 4 ...
    unit = InvertedResidual(16, 16, stride=1).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        out = unit(x)
    torch.testing.assert_close(out[:, 0::2], x[:, :8])
    assert not torch.allclose(out[:, 1::2], x[:, 8:])


def test_stride2_unit_doubles_width_and_halves_resolution() -> None:
    unit = InvertedResidual(24, 116, stride=2, kernel_size=5).eval()
    with torch.no_grad():
        out = unit(torch.randn(1, 24, 56, 56))
    assert out.shape == (1, 116, 28, 28)
    dw = [m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.kernel_size for m in dw] == [(5, 5), (5, 5)]


@pytest.mark.parametrize(("args", "match"), [((16, 15, 2), "even"), ((16, 32, 1), "keeps"),
                                             ((16, 16, 3), "stride")])
def test_bad_unit_arguments_are_refused(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InvertedResidual(*args)


def test_custom_num_classes() -> None:
    model = ShuffleNetV2((24, 48, 96, 192, 1024), num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)

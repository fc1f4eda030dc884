"""SNet49/146/535: ThunderNet Table 1 widths, 5x5 depthwise units, C4/C5 features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.models.counting import count_macs
from edgekit.models.zoo.snet import SNet, snet

# ThunderNet Table 1: conv1, stage2, stage3, stage4, conv5 (None: removed).
TABLE1 = {
    49: (24, 60, 120, 240, 512),
    146: (24, 132, 264, 528, None),
    535: (48, 248, 496, 992, None),
}


def _widths(model: SNet) -> list[int]:
    """Channels after conv1, stage2, stage3, stage4 and conv5 (if any), from a forward pass."""
    x = torch.zeros(1, 3, 64, 64)
    out = []
    with torch.no_grad():
        for layer in (model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4, model.conv5):
            if layer is not None:
                x = layer(x)
                out.append(x.shape[1])
    del out[1]  # maxpool
    return out


@pytest.mark.parametrize("variant", sorted(TABLE1))
def test_every_depthwise_conv_is_5x5(variant: int) -> None:
    model = snet(variant)
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    # Stride-2 units hold two depthwise convs, stride-1 units one: 3 * 2 + (3 + 7 + 3).
    assert len(dw) == 19
    assert all(m.kernel_size == (5, 5) and m.padding == (2, 2) and m.groups == m.in_channels for m in dw)


@pytest.mark.parametrize("variant", sorted(TABLE1))
def test_widths_follow_table1(variant: int) -> None:
    c1, c2, c3, c4, c5 = TABLE1[variant]
    model = snet(variant).eval()
    assert _widths(model) == [c for c in (c1, c2, c3, c4, c5) if c is not None]
    assert [len(s) for s in (model.stage2, model.stage3, model.stage4)] == [4, 8, 4]
    assert (model.conv5 is None) == (c5 is None)
    assert model.out_channels == (c3, c5 or c4)
    assert model.fc.in_features == (c5 or c4)


@pytest.mark.parametrize("variant", sorted(TABLE1))
def test_forward_features_strides_16_and_32(variant: int) -> None:
    model = snet(variant).eval()
    with torch.no_grad():
        c4, c5 = model.forward_features(torch.randn(1, 3, 320, 192))
        logits = model(torch.randn(1, 3, 64, 64))
    assert c4.shape == (1, model.out_channels[0], 20, 12)
    assert c5.shape == (1, model.out_channels[1], 10, 6)
    assert logits.shape == (1, 1000)


def test_logits_are_fc_of_pooled_c5() -> None:
    model = snet(49, num_classes=7).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, c5 = model.forward_features(x)
        torch.testing.assert_close(model(x), model.fc(c5.mean((2, 3))))


def test_keys_follow_the_shufflenetv2_layout() -> None:
    # SNet reuses the torchvision-layout unit, so its keys are ShuffleNetV2's (less conv5 where removed).
    ref = json.loads((Path(__file__).parent / "data" / "torchvision_shufflenetv2_x1_0_keys.json").read_text())
    keys = set(ref["state_dict"])
    assert set(snet(49).state_dict()) == keys
    assert set(snet(146).state_dict()) == {k for k in keys if not k.startswith("conv5.")}


def test_snet535_macs_match_the_paper_closely() -> None:
    # The one variant whose Table 1 widths and published FLOPs agree exactly (535M).
    assert count_macs(snet(535), (224, 224)) / 1e6 == pytest.approx(535, rel=0.01)


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="49, 146, 535"):
        SNet(100)

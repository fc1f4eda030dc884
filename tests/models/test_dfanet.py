"""DFANet A/B: three aggregated backbone passes, Table 1 widths, the decoder's output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekit.models.zoo.dfanet import CONFIGS, DFANet, FCAttention, XceptionBlock

SIZE = (128, 256)
WIDTHS = {"a": (48, 96, 192), "b": (32, 64, 128)}


@pytest.fixture(scope="module", params=["a", "b"])
def model(request: pytest.FixtureRequest) -> DFANet:
    torch.manual_seed(0)
    return DFANet(request.param, num_classes=19).eval()


def _widths(model: DFANet) -> tuple[int, int, int]:
    first = model.passes[0]
    stages = (first.enc2, first.enc3, first.enc4)
    c2, c3, c4 = (stage[0].branch[2].pw.out_channels for stage in stages)
    return c2, c3, c4


def test_table1_widths_and_blocks(model: DFANet) -> None:
    c2, c3, c4 = _widths(model)
    assert (c2, c3, c4) in WIDTHS.values()
    for encoder in model.passes:
        assert [len(encoder.enc2), len(encoder.enc3), len(encoder.enc4)] == [4, 6, 4]
        # every block is three separable convs c/4, c/4, c
        block = encoder.enc3[1]
        assert isinstance(block, XceptionBlock)
        assert [s.pw.out_channels for s in block.branch] == [c3 // 4, c3 // 4, c3]
        assert [s.dw.groups for s in block.branch] == [s.dw.in_channels for s in block.branch]
        fca = encoder.fca
        assert isinstance(fca, FCAttention)
        assert (fca.fc.in_features, fca.fc.out_features) == (c4, 1000)
        assert (fca.conv.in_channels, fca.conv.out_channels) == (1000, c4)


def test_three_passes_each_one_octave_deeper(model: DFANet) -> None:
    with torch.no_grad():
        outs = model.forward_features(torch.rand(1, 3, *SIZE))
    assert len(outs) == len(model.passes) == 3
    c2, c3, c4 = _widths(model)
    for k, (e2, e3, e4, att) in enumerate(outs):
        s = 4 * 2**k  # stride of this pass's enc2
        assert e2.shape == (1, c2, SIZE[0] // s, SIZE[1] // s)
        assert e3.shape == (1, c3, SIZE[0] // (2 * s), SIZE[1] // (2 * s))
        assert e4.shape == (1, c4, SIZE[0] // (4 * s), SIZE[1] // (4 * s))
        assert att.shape == e4.shape


def test_sub_stage_aggregation_widens_later_passes(model: DFANet) -> None:
    c2, c3, c4 = _widths(model)
    assert model.passes[0].enc2[0].branch[0].dw.in_channels == 8
    for encoder in model.passes[1:]:
        assert encoder.enc2[0].branch[0].dw.in_channels == c4 + c2
        assert encoder.enc3[0].branch[0].dw.in_channels == c2 + c3
        assert encoder.enc4[0].branch[0].dw.in_channels == c3 + c4


def test_sub_network_aggregation_feeds_the_upsampled_attention(model: DFANet) -> None:
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        enc.enc2.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0]))
        for k, enc in enumerate(model.passes)
    ]
    try:
        with torch.no_grad():
            outs = model.forward_features(torch.rand(1, 3, *SIZE))
    finally:
        for h in hooks:
            h.remove()
    c4 = outs[0][3].shape[1]
    for k in (1, 2):
        prev = outs[k - 1]
        up = F.interpolate(prev[3], size=prev[0].shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(seen[k][:, :c4], up)
        torch.testing.assert_close(seen[k][:, c4:], prev[0])


def test_output_shapes_eval_and_train(model: DFANet) -> None:
    with torch.no_grad():
        out = model(torch.rand(1, 3, *SIZE))
    assert out.shape == (1, 19, *SIZE) and bool(torch.isfinite(out).all())
    model.train()
    try:
        out = model(torch.rand(2, 3, *SIZE))
    finally:
        model.eval()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 19, *SIZE)


def _macs_on_meta(variant: str, size: tuple[int, int]) -> int:
    with torch.device("meta"):
        model = DFANet(variant).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() // 2


def test_a_and_b_differ_only_in_backbone_widths() -> None:
    # Paper Table 4: A 3.4 and B 2.1 GFLOPs at 1024x1024; the decoder is shared, so the gap
    # between the two is the backbones' (1.3 G, within the rounding of both figures).
    macs = {v: _macs_on_meta(v, (1024, 1024)) / 1e9 for v in CONFIGS}
    assert 1.2 <= macs["a"] - macs["b"] <= 1.4
    decoders = [
        sum(p.numel() for n, p in DFANet(v).named_parameters()
            if n.startswith(("fuse", "classifier")))
        for v in CONFIGS
    ]
    assert decoders[0] == decoders[1]


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        DFANet("c")


def test_eval_is_deterministic(model: DFANet) -> None:
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_no_batchnorm_on_pooled_vectors(model: DFANet) -> None:
    # The FC attention works on [N, C, 1, 1]; BN there would break training at batch 1.
    for fca in (m for m in model.modules() if isinstance(m, FCAttention)):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fca.modules())
    model.train()
    try:
        out = model(torch.rand(1, 3, *SIZE))
    finally:
        model.eval()
    assert out.shape == (1, 19, *SIZE)

"""BiSeNet v1 (Xception39): the two paths, ARM/FFM, auxiliary heads, backbone size."""

from __future__ import annotations

import pytest
import torch

from edgekit.models.counting import count_macs, count_params
from edgekit.models.zoo.bisenet import (
    AttentionRefinement,
    BiSeNet,
    FeatureFusion,
    SegHead,
    Xception39,
    XceptionBlock,
)

SIZE = (128, 256)


@pytest.fixture(scope="module")
def model() -> BiSeNet:
    torch.manual_seed(0)
    return BiSeNet(num_classes=19).eval()


def test_eval_output_is_logits_at_input_resolution(model: BiSeNet) -> None:
    with torch.no_grad():
        out = model(torch.rand(1, 3, *SIZE))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 19, *SIZE)
    assert bool(torch.isfinite(out).all())


def test_spatial_path_is_at_one_eighth_with_three_stride_two_layers(model: BiSeNet) -> None:
    with torch.no_grad():
        out = model.spatial_path(torch.rand(1, 3, *SIZE))
    assert out.shape == (1, 128, SIZE[0] // 8, SIZE[1] // 8)
    strides = [m[0].stride for m in model.spatial_path]
    assert strides == [(2, 2), (2, 2), (2, 2), (1, 1)]


def test_context_path_strides_and_widths(model: BiSeNet) -> None:
    with torch.no_grad():
        feats = model.context_path(torch.rand(1, 3, *SIZE))
    assert [f.shape[1] for f in feats] == [64, 128, 256]
    assert [f.shape[-2:] for f in feats] == [
        (SIZE[0] // s, SIZE[1] // s) for s in (8, 16, 32)
    ]
    blocks = [m for m in model.context_path.modules() if isinstance(m, XceptionBlock)]
    assert len(blocks) == 4 + 8 + 4


def test_arms_on_1_16_and_1_32_and_one_ffm(model: BiSeNet) -> None:
    arms = [m for m in model.modules() if isinstance(m, AttentionRefinement)]
    ffms = [m for m in model.modules() if isinstance(m, FeatureFusion)]
    assert len(arms) == 2 and len(ffms) == 1
    # ARM inputs are the 1/32 (256 ch) and 1/16 (128 ch) context features.
    assert model.arm32.conv[0].in_channels == 256
    assert model.arm16.conv[0].in_channels == 128
    # FFM fuses the 128-ch spatial path with the 128-ch context path.
    assert model.ffm.conv[0].in_channels == 256


def test_xception39_matches_the_papers_backbone_flops() -> None:
    # BiSeNet Table 1: Xception39 costs 185.5M FLOPs (= MACs) at 640x360.
    macs = count_macs(Xception39().eval(), (360, 640))
    assert macs / 1e6 == pytest.approx(185.5, rel=0.01)


def test_train_mode_returns_main_and_two_aux_logits() -> None:
    torch.manual_seed(0)
    model = BiSeNet(num_classes=19, aux_heads=True).train()
    # batch 2: the attention branches hold BN on 1x1 maps, which needs >1 value in training
    outs = model(torch.rand(2, 3, *SIZE))
    assert isinstance(outs, tuple) and len(outs) == 3
    assert all(o.shape == (2, 19, *SIZE) for o in outs)
    sum(o.mean() for o in outs).backward()
    assert model.aux16.cls.weight.grad is not None and model.aux8.cls.weight.grad is not None
    # eval still returns the main logits only, identical to a model without aux heads
    model.eval()
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        main = model(x)
    plain = BiSeNet(num_classes=19).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux")})
    with torch.no_grad():
        torch.testing.assert_close(plain(x), main)


def test_default_model_is_the_inference_network() -> None:
    plain, with_aux = BiSeNet(), BiSeNet(aux_heads=True)
    assert not [m for m in plain.modules() if isinstance(m, SegHead) and m is not plain.head]
    assert count_params(with_aux) - count_params(plain) == sum(
        p.numel() for p in list(with_aux.aux16.parameters()) + list(with_aux.aux8.parameters())
    )
    out = plain.train()(torch.rand(2, 3, *SIZE))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 19, *SIZE)


def test_eval_is_deterministic(model: BiSeNet) -> None:
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)

"""LPS-Net S/M/L: 3x3-only paths, path scales per variant, Bilateral-B interaction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.models.zoo.lpsnet import CONFIGS, LPSNet, LPSNetConfig, bilateral_interaction

SIZE = (128, 256)
# (depth, width, path scales) per variant, as in the official lpsnet.py
EXPECTED = {
    "s": ((1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (0.75, 0.25)),
    "m": ((1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (1.0, 0.25)),
    "l": ((1, 3, 3, 10, 10), (8, 24, 64, 160, 160), (1.0, 0.25)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(variant: str) -> LPSNet:
    torch.manual_seed(0)
    return LPSNet(CONFIGS[variant], num_classes=19).eval()


def test_paths_use_only_3x3_convs(model: LPSNet) -> None:
    kernels = {m.kernel_size for m in model.paths.modules() if isinstance(m, nn.Conv2d)}
    assert kernels == {(3, 3)}
    groups = {m.groups for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert groups == {1}  # dense convs, no depthwise
    others = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (3, 3)]
    assert others == [model.head] and model.head.kernel_size == (1, 1)


def test_depth_width_and_paths_per_variant(variant: str, model: LPSNet) -> None:
    depth, width, scales = EXPECTED[variant]
    assert model.scales == pytest.approx(scales)
    assert len(model.paths) == len(scales) == 2
    for path in model.paths:
        assert [len(stage) for stage in path] == list(depth)
        assert [stage[-1][0].out_channels for stage in path] == list(width)
        assert [stage[0][0].stride[0] for stage in path] == [2, 2, 2, 2, 1]
    assert model.head.in_channels == width[-1] * len(scales)


def test_each_path_ends_at_one_sixteenth_of_its_scaled_input(variant: str, model: LPSNet) -> None:
    shapes: list[torch.Size] = []
    hooks = [
        p[4].register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for p in model.paths
    ]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, *SIZE))
    finally:
        for h in hooks:
            h.remove()
    width = EXPECTED[variant][1][-1]
    expected = [(1, width, int(SIZE[0] * r) // 16, int(SIZE[1] * r) // 16) for r in model.scales]
    assert [tuple(s) for s in shapes] == expected


def test_output_shapes_eval_and_train(model: LPSNet) -> None:
    with torch.no_grad():
        out = model(torch.rand(1, 3, *SIZE))
    assert out.shape == (1, 19, *SIZE) and bool(torch.isfinite(out).all())
    model.train()
    try:
        out = model(torch.rand(1, 3, *SIZE))
    finally:
        model.eval()
    assert isinstance(out, torch.Tensor) and out.shape == (1, 19, *SIZE)


def test_bilateral_b_adds_resized_features_without_parameters() -> None:
    hi, lo = torch.rand(1, 4, 16, 32), torch.rand(1, 4, 4, 8)
    out_hi, out_lo = bilateral_interaction([hi, lo])
    up = F.interpolate(lo, size=(16, 32), mode="bilinear", align_corners=False)
    down = F.interpolate(hi, size=(4, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out_hi, hi + up)
    torch.testing.assert_close(out_lo, lo + down)
    # three paths: every path receives both others
    mid = torch.rand(1, 4, 8, 16)
    a, b, c = bilateral_interaction([hi, mid, lo])
    assert (a.shape, b.shape, c.shape) == (hi.shape, mid.shape, lo.shape)
    expected_b = mid + F.interpolate(hi, size=(8, 16), mode="bilinear", align_corners=False) \
        + F.interpolate(lo, size=(8, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(b, expected_b)


def test_paths_interact_after_stages_3_and_4() -> None:
    # With interaction, the low-resolution path's prediction depends on the high-res input.
    torch.manual_seed(0)
    model = LPSNet(CONFIGS["m"], num_classes=3).eval()
    x = torch.rand(1, 3, *SIZE)
    seen: list[torch.Tensor] = []
    hook = model.paths[1][3].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    with torch.no_grad():
        low_only = model.paths[1][2](model.paths[1][1](model.paths[1][0](
            F.interpolate(x, size=(32, 64), mode="bilinear", align_corners=False))))
        high = x
        for stage in list(model.paths[0])[:3]:
            high = stage(high)
    expected = low_only + F.interpolate(high, size=low_only.shape[-2:], mode="bilinear",
                                        align_corners=False)
    torch.testing.assert_close(seen[0], expected)


def test_single_path_config_and_bad_scales() -> None:
    tiny = LPSNet(LPSNetConfig((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.5, 0.0)), num_classes=5)
    assert len(tiny.paths) == 1
    with torch.no_grad():
        assert tiny.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    with pytest.raises(ValueError, match="descending"):
        LPSNet(LPSNetConfig((1, 1, 1, 1, 1), (4, 8, 16, 32, 32), (0.25, 1.0)))


def test_eval_is_deterministic(model: LPSNet) -> None:
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)

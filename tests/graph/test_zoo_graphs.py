"""The zoo's shuffle networks, exported from torch and optimized: no BN, no shuffle left."""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx
import pytest
import torch
from onnx_cases import assert_matches_torch, export_torch, ops, reshape_ranks, run

import edgekit.models.zoo  # noqa: F401  (registers the zoo)
from edgekit.graph import optimize
from edgekit.models import get_model, get_spec, list_models

# The two the issue names run at their published input size; every other ShuffleNetV2/SNet
# classifier in the registry runs at 64x64 (same graph structure, smaller tensors).
FULL_SIZE = ("shufflenetv2-1.0", "snet146")
SHUFFLE_NETS = sorted(
    n for n in list_models() if any(fnmatch.fnmatch(n, p) for p in ("shufflenetv2-*", "snet*"))
)


@pytest.mark.parametrize("name", SHUFFLE_NETS)
def test_zoo_shuffle_net_optimizes_to_convs_and_slices(name: str) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = get_model(name).eval()
    size = spec.input_size if name in FULL_SIZE else (64, 64)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    exported = export_torch(model, x)
    assert ops(exported)["Transpose"] > 0
    optimized, records = optimize(exported)
    onnx.checker.check_model(optimized, full_check=True)
    counts = ops(optimized)
    assert counts["BatchNormalization"] == counts["Transpose"] == counts["Gather"] == 0, dict(counts)
    assert 5 not in reshape_ranks(optimized)
    with torch.no_grad():
        expected = model(x).numpy()
    assert_matches_torch(optimized, expected, x.numpy())
    assert counts["Conv"] == ops(exported)["Conv"]  # only weights changed, no conv added or lost
    assert records[2].name == "fuse_channel_shuffle" and np.isfinite(records[2].elapsed_ms)


@pytest.mark.parametrize("name", ["shufflenetv2-1.0", "snet146"])
def test_unfolded_export_loses_every_batchnorm(name: str) -> None:
    # Without do_constant_folding torch leaves each BN after its conv: fold_batchnorm's job.
    torch.manual_seed(0)
    model = get_model(name).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exported = export_torch(model, x, fold=False)
    n_bn = ops(exported)["BatchNormalization"]
    assert n_bn == ops(exported)["Conv"] > 50
    optimized, records = optimize(exported)
    assert records[0].description.startswith(f"removed {n_bn} BatchNormalization")
    counts = ops(optimized)
    assert counts["BatchNormalization"] == counts["Transpose"] == counts["Gather"] == counts["Mul"] == 0
    with torch.no_grad():
        assert_matches_torch(optimized, model(x).numpy(), x.numpy())


class _Stage1(torch.nn.Module):
    """ThunderNet's first graph stage (backbone, CEM, RPN, SAM), as the pipeline exports it."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.stage1(x))


@pytest.mark.slow
def test_thundernet_stage1_keeps_three_outputs_without_shuffles() -> None:
    torch.manual_seed(0)
    stage = _Stage1(get_model("thundernet-snet146").eval())
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(3))
    exported = export_torch(stage, x)
    optimized, _ = optimize(exported)
    counts = ops(optimized)
    assert counts["Transpose"] == counts["Gather"] == counts["BatchNormalization"] == 0
    with torch.no_grad():
        expected = [t.numpy() for t in stage(x)]
    for want, got in zip(expected, run(optimized, {"input": x.numpy()}), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(want.max() - want.min()))
